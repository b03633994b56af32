"""The guest initramfs: cpio format, contents, caching and the key overlay.

The archive is checked with independent readers (GNU cpio and busybox cpio),
not with our own writer's assumptions.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kmlbench.build.fio_build import build_static_fio, fio_patches, guest_fio
from kmlbench.build.image import (
    GUEST_HOST_KEY_PATH,
    KMLCTL_GUEST_PATH,
    CpioWriter,
    ImageError,
    base_image_key,
    build_base_image,
    build_kmlctl,
    image_info,
    kmlctl_key,
    make_guest_initrd,
)
from kmlbench.data.fio import report_bucket_bits
from kmlbench.data.histogram import FIO_PLAT_BITS, fio_bucket_value
from kmlbench.guest.ssh import SSHKeys
from kmlbench.paths import GUEST_IMAGE_DIR, cache_dir


@pytest.fixture(scope="module")
def base() -> Path:
    return build_base_image(cache_dir())


def listing(archive: Path, tool: list[str]) -> dict[str, str]:
    """name -> `ls -l`-style mode string, as printed by an external cpio."""
    with archive.open("rb") as handle:
        out = subprocess.run(
            [*tool, "-t", "-v"], stdin=handle, capture_output=True, text=True, check=True
        ).stdout
    entries = {}
    for line in out.splitlines():
        fields = line.split(" -> ")[0].split()  # names have no spaces here
        entries[fields[-1]] = fields[0]
    return entries


# On a cold cache this builds fio from Debian's source (or waits for the other
# test worker's build of it), beside a kernel build on the same two cores.
@pytest.mark.timeout(1200)
def test_static_fio_is_static() -> None:
    fio = build_static_fio()
    assert fio.kind == "static"
    assert fio.version.startswith("fio-3.")
    out = subprocess.run(["file", str(fio.path)], capture_output=True, text=True).stdout
    assert "statically linked" in out
    assert fio.path.stat().st_size < 8 << 20
    # built with our fixes (the behaviour: tests/test_guest_fio.py)
    recipe = json.loads((fio.path.parent / "recipe.json").read_text())
    assert sorted(recipe["patches"]) == [p.name for p in fio_patches()] != []
    log = (fio.path.parent / "build.log").read_text()
    assert "patching file engines/libaio.c" in log


def test_static_fio_buckets_are_the_harness_s(tmp_path: Path) -> None:
    """The guest's fio reports latencies in the buckets
    ``kmlbench.data.histogram`` mirrors (``FIO_PLAT_BITS``, set by our fio
    patch): every bucket value is the middle of its own bucket at that
    width, and none is one at Debian's. Run on the host, on a file,
    so that the latencies spread over a few powers of two."""
    fio = build_static_fio()
    target = tmp_path / "f"
    out = subprocess.run(
        [str(fio.path), "--name=t", f"--filename={target}", "--size=8m", "--bs=4k",
         "--rw=randrw", "--ioengine=psync", "--loops=4", "--lat_percentiles=1",
         "--output-format=json+"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    job = json.loads(out[out.index("{") :])["jobs"][0]
    values = {int(v) for d in ("read", "write") for v in job[d]["lat_ns"]["bins"]}
    coarse = [v for v in values if v >= 4 << FIO_PLAT_BITS]  # past the exact ones
    assert len(coarse) >= 20, sorted(values)
    assert all(fio_bucket_value(v) == v for v in coarse), sorted(coarse)
    # past 512 ns a bucket middle of one width is never one of the other
    assert not [v for v in coarse if fio_bucket_value(v, bits=6) == v]


@pytest.mark.parametrize("which", ["guest", "debian"])
def test_a_report_tells_its_fio_s_bucket_width(tmp_path: Path, which: str) -> None:
    """What a cell records as ``fio_bucket_bits``: read from a real report's
    histograms, the guest's fio's width (``FIO_PLAT_BITS``), or Debian's
    (6, the host's fio, as runs before the finer buckets had); nothing from
    a report without histograms."""
    fio = str(build_static_fio().path) if which == "guest" else shutil.which("fio")
    assert fio, "setup installs the host's fio"
    args = [fio, "--name=t", f"--filename={tmp_path / 'f'}", "--size=4m", "--bs=4k",
            "--rw=randread", "--ioengine=psync", "--lat_percentiles=1"]  # fmt: skip
    reports = {}
    for form in ("json+", "json"):
        out = subprocess.run(
            [*args, f"--output-format={form}"], capture_output=True, text=True, check=True,
            timeout=120,
        ).stdout  # fmt: skip
        reports[form] = json.loads(out[out.index("{") :])
    expected = FIO_PLAT_BITS if which == "guest" else 6
    assert report_bucket_bits(reports["json+"]) == expected
    assert report_bucket_bits(reports["json"]) is None


def test_base_image_is_cached(base: Path) -> None:
    mtime = base.stat().st_mtime_ns
    again = build_base_image(cache_dir())
    assert again == base
    assert base.stat().st_mtime_ns == mtime
    assert image_info(base)["fio"]["kind"] == "static"


@pytest.mark.parametrize(
    "tool",
    [["cpio", "--quiet"], ["/bin/busybox", "cpio"]],
    ids=["gnu-cpio", "busybox-cpio"],
)
def test_base_image_contents(base: Path, tool: list[str]) -> None:
    if shutil.which(tool[0]) is None:
        pytest.skip(f"{tool[0]} not installed")
    entries = listing(base, tool)
    for path in ("init", "bin/busybox", "bin/sh", "sbin/ip", "sbin/poweroff", "usr/bin/fio",
                 "usr/sbin/dropbear", "lib64/ld-linux-x86-64.so.2", "etc/passwd", "usr/bin/kmlctl",
                 "root", "opt/kml", "tmp"):  # fmt: skip
        assert path in entries, path
    assert entries["init"] == "-rwxr-xr-x"
    assert entries["root"] == "drwx------"
    assert entries["tmp"] == "drwxrwxrwt"
    assert entries["bin/sh"].startswith("l")
    assert entries["usr/bin/kmlctl"] == "-rwxr-xr-x"
    assert not any(name.startswith("dev/") for name in entries)  # devtmpfs does that


def test_base_image_extracts(base: Path, tmp_path: Path) -> None:
    with base.open("rb") as handle:
        subprocess.run(
            ["cpio", "--quiet", "-i", "-d", "--no-absolute-filenames"],
            stdin=handle, cwd=tmp_path, check=True,
        )  # fmt: skip
    assert (tmp_path / "init").read_bytes() == (GUEST_IMAGE_DIR / "init").read_bytes()
    passwd = (tmp_path / "etc/passwd").read_text()
    assert passwd.startswith("root:x:0:0:root:/root:/bin/sh")
    assert os.readlink(tmp_path / "bin/sh") == "/bin/busybox"
    libs = list((tmp_path / "lib/x86_64-linux-gnu").iterdir())
    assert any(lib.name.startswith("libc.so") for lib in libs)
    # kmlctl: a static ELF (the guest has no libraries for it), the cached build
    kmlctl = tmp_path / KMLCTL_GUEST_PATH.lstrip("/")
    assert kmlctl.read_bytes()[:4] == b"\x7fELF"
    out = subprocess.run(["file", str(kmlctl)], capture_output=True, text=True).stdout
    assert "statically linked" in out, out
    assert kmlctl.read_bytes() == build_kmlctl(cache_dir()).read_bytes()
    usage = subprocess.run([str(kmlctl), "--help"], capture_output=True, text=True)
    assert usage.returncode == 0 and "kmlctl" in usage.stdout


def test_kmlctl_sources_change_the_image_key(tmp_path: Path) -> None:
    """Editing kmlctl.c changes the kmlctl key and so the base image key."""
    guest = tmp_path / "guest-image"
    shutil.copytree(GUEST_IMAGE_DIR, guest)
    fio = guest_fio(cache_dir())
    before = (kmlctl_key(guest), base_image_key(fio, guest))
    assert before == (kmlctl_key(GUEST_IMAGE_DIR), base_image_key(fio, GUEST_IMAGE_DIR))
    with (guest / "kmlctl" / "kmlctl.c").open("a") as handle:
        handle.write("/* changed */\n")
    after = (kmlctl_key(guest), base_image_key(fio, guest))
    assert after[0] != before[0] and after[1] != before[1]
    assert "kmlctl" in image_info(build_base_image(cache_dir()))


def test_kmlctl_build_names_missing_compiler(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no-such-gcc not found"):
        build_kmlctl(tmp_path, cc="no-such-gcc")


def test_kmlctl_build_names_missing_static_libc(tmp_path: Path) -> None:
    """A compiler without libc.a: gcc then prints the bare name back."""
    fake = tmp_path / "fake-gcc"
    fake.write_text(
        '#!/bin/sh\ncase "$1" in -print-file-name=*) echo "${1#*=}";; *) echo fake 1.0;; esac\n'
    )
    fake.chmod(0o755)
    with pytest.raises(ImageError, match=r"static C library \(libc.a\) not found"):
        build_kmlctl(tmp_path / "cache", cc=str(fake))


def test_cpio_writer_is_reproducible_and_owned_by_root(tmp_path: Path) -> None:
    def build() -> bytes:
        cpio = CpioWriter()
        cpio.add_file("/a/b/c.txt", b"hello", 0o640)
        cpio.add_symlink("/a/link", "b/c.txt")
        return cpio.finish()

    data = build()
    assert data == build()
    assert len(data) % 4 == 0
    archive = tmp_path / "t.cpio"
    archive.write_bytes(data)
    out = subprocess.run(
        ["cpio", "--quiet", "-t", "-v", "--numeric-uid-gid"],
        stdin=archive.open("rb"), capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    lines = out.splitlines()
    names = [line.split(" -> ")[0].split()[-1] for line in lines]
    assert names == ["a", "a/b", "a/b/c.txt", "a/link"]  # parents first
    for line in lines:
        assert line.split()[2:4] == ["0", "0"], line


def test_guest_initrd_appends_overlay(base: Path, tmp_path: Path) -> None:
    keys = SSHKeys.generate(tmp_path / "keys")
    initrd = make_guest_initrd(base, tmp_path / "run", keys.authorized_key, keys.host_key)
    data = initrd.read_bytes()
    assert data.startswith(base.read_bytes())
    assert initrd.stat().st_mode & 0o077 == 0
    overlay = tmp_path / "overlay.cpio"
    overlay.write_bytes(data[base.stat().st_size :])
    entries = listing(overlay, ["cpio", "--quiet"])
    assert entries["root/.ssh/authorized_keys"] == "-rw-------"
    assert entries[GUEST_HOST_KEY_PATH.lstrip("/")] == "-rw-------"
    assert keys.authorized_key.split()[1].encode() in data
    assert keys.host_public.startswith("ssh-ed25519 ")


def test_fio_fallback_to_host_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a static build, the host's fio is used with its libraries, and says so."""
    from kmlbench.build import fio_build

    if shutil.which("fio") is None:
        pytest.skip("no host fio")

    def broken(cache: Path | None = None) -> fio_build.FioBinary:
        raise fio_build.FioBuildError("apt-get source fio failed (test)")

    monkeypatch.setattr(fio_build, "build_static_fio", broken)
    fio = fio_build.guest_fio()
    assert fio.kind == "host-dynamic"
    assert "static build failed" in fio.note
    assert any("libc.so" in str(lib) for lib in fio.libraries)
    assert any("ld-linux" in str(lib) for lib in fio.libraries)
