"""The guest initramfs: built by Python as a cpio (newc), no root needed.

Why an initramfs and not a disk image: it needs no root, no loop mounts and
no chroot to build, it is read straight into page cache by the kernel (the
fastest possible TCG boot), and a run's secrets can be added by simply
appending a second small archive (the kernel unpacks concatenated archives
in order, later entries replacing earlier ones).

So there are two layers:

* :func:`build_base_image` -- busybox and its applet links, a static fio,
  dropbear with its libraries, ``/usr/bin/kmlctl`` (:func:`build_kmlctl`),
  ``/etc``, ``/init`` and ``guest-image/extra/``; cached by a content hash
  of every input byte, so it is built once per change of any input and
  shared by all runs;
* :func:`make_guest_initrd` -- base + an overlay with the run's
  ``authorized_keys`` and dropbear host key, written per run.

Every entry is owned by root (uid/gid 0) with fixed mtimes, so the archive
is reproducible. No device nodes: the kernel's devtmpfs provides /dev.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kmlbench import procs
from kmlbench.build.debian_source import file_lock
from kmlbench.build.fio_build import FioBinary, guest_fio, ldd_libraries
from kmlbench.hashing import sha256_file
from kmlbench.paths import GUEST_IMAGE_DIR, KML_SRC_DIR

# Bump when the layout written below changes in a way the inputs do not show.
IMAGE_FORMAT_VERSION = 1

GUEST_HOST_KEY_PATH = "/etc/dropbear/dropbear_ed25519_host_key"
READY_MARKER = "KMLBENCH-GUEST-READY"
HEARTBEAT_MARKER = "kmlbench-heartbeat"

_ETC_FILES: dict[str, tuple[str, int]] = {
    # dropbear refuses users with an empty password field: "x" (no shadow) is
    # a non-empty, unusable password, and -s disables password logins anyway.
    "/etc/passwd": ("root:x:0:0:root:/root:/bin/sh\n", 0o644),
    "/etc/group": ("root:x:0:\ntty:x:5:\n", 0o644),
    "/etc/shells": ("/bin/sh\n/bin/ash\n", 0o644),
    "/etc/nsswitch.conf": ("passwd: files\ngroup: files\nshadow: files\nhosts: files\n", 0o644),
    "/etc/hosts": ("127.0.0.1 localhost\n10.0.2.15 kmlbench-guest\n", 0o644),
    "/etc/profile": ("export PATH=/usr/sbin:/usr/bin:/sbin:/bin\n", 0o644),
}

_DIRS: dict[str, int] = {
    "/bin": 0o755, "/sbin": 0o755, "/usr": 0o755, "/usr/bin": 0o755, "/usr/sbin": 0o755,
    "/lib": 0o755, "/lib64": 0o755, "/etc": 0o755, "/etc/dropbear": 0o700,
    "/root": 0o700, "/root/.ssh": 0o700, "/proc": 0o755, "/sys": 0o755, "/dev": 0o755,
    "/run": 0o755, "/tmp": 0o1777, "/var": 0o755, "/var/run": 0o755, "/var/log": 0o755,
    "/mnt": 0o755, "/opt": 0o755, "/opt/kml": 0o755,
}  # fmt: skip


class ImageError(Exception):
    """The initramfs could not be built; the message names the missing input."""


# ------------------------------------------------------------------ kmlctl
# The guest tool (guest-image/kmlctl/*.c, main in kmlctl.c), linked statically
# against the user-space build of the KML sources (kernel/kml/Makefile.user
# without the benchmark loops), so the guest needs no libraries for it.

KMLCTL_GUEST_PATH = "/usr/bin/kmlctl"
# Bump when the recipe below changes in a way the flags do not show.
KMLCTL_RECIPE_VERSION = 2
KMLCTL_CC = "gcc"
KMLCTL_KML_SOURCES = (
    "kml_platform_user.c", "kml_model.c", "kml_fixed.c", "kml_nn_q16.c",
    "kml_format.c", "kml_ring.c", "kml_math.c", "kml_nn.c",
    "kml_dd_calib.c", "kml_dd_calib_fpu.c",
)  # fmt: skip
KMLCTL_KML_HEADERS = (
    "kml.h", "kml_internal.h", "kml_platform.h", "kml_iosched_uapi.h", "kml_dd_calib.h",
)  # fmt: skip
# Makefile.user's flags minus -fPIC/visibility (a static program, not a .so).
_KMLCTL_CFLAGS = (
    "-std=gnu11", "-O2", "-falign-loops=32", "-fno-strict-aliasing", "-fno-math-errno",
    "-ffunction-sections", "-fdata-sections", "-Wall", "-Wextra",
)  # fmt: skip
_KMLCTL_LIB_CFLAGS = ("-Wno-unused-parameter", "-Wno-sign-compare")  # as Makefile.user
_KMLCTL_LDFLAGS = ("-static", "-pthread", "-Wl,--gc-sections", "-s", "-lm")


def _kmlctl_sources(guest_dir: Path) -> list[Path]:
    """kmlctl's own C files: every ``.c`` in ``guest-image/kmlctl/`` (main in kmlctl.c)."""
    tool = guest_dir / "kmlctl"
    if not (tool / "kmlctl.c").is_file():
        raise ImageError(f"{tool / 'kmlctl.c'} does not exist")
    return sorted(tool.glob("*.c"))


def _kmlctl_inputs(guest_dir: Path) -> list[Path]:
    """Every file kmlctl is built from: its ``.c`` and ``.h`` files, KML's."""
    files = _kmlctl_sources(guest_dir) + sorted((guest_dir / "kmlctl").glob("*.h"))
    return files + [KML_SRC_DIR / name for name in (*KMLCTL_KML_SOURCES, *KMLCTL_KML_HEADERS)]


def _compiler_version(cc: str) -> str:
    if shutil.which(cc) is None:
        raise ImageError(
            f"cannot build kmlctl: {cc} not found in PATH "
            "(apt-get install build-essential; scripts/setup.sh does)"
        )
    out = procs.run([cc, "--version"], capture_output=True, text=True, check=False)
    return str(out.stdout).strip()


def kmlctl_key(guest_dir: Path = GUEST_IMAGE_DIR, cc: str = KMLCTL_CC) -> str:
    """Hash of kmlctl's sources, the KML sources and headers, flags and compiler."""
    h = hashlib.sha256()
    recipe = [KMLCTL_RECIPE_VERSION, _KMLCTL_CFLAGS, _KMLCTL_LIB_CFLAGS, _KMLCTL_LDFLAGS]
    h.update(json.dumps(recipe).encode())
    h.update(_compiler_version(cc).encode())
    for path in _kmlctl_inputs(guest_dir):
        if not path.is_file():
            raise ImageError(f"kmlctl input {path} does not exist")
        h.update(f"\0{path.name}\0{sha256_file(path)}".encode())
    return h.hexdigest()[:20]


def _check_static_libc(cc: str) -> None:
    """gcc prints the bare name back when it cannot find a library file."""
    for lib in ("libc.a", "libm.a"):
        out = procs.run(
            [cc, f"-print-file-name={lib}"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if not out or not Path(out).is_absolute() or not Path(out).exists():
            raise ImageError(
                f"cannot build kmlctl: static C library ({lib}) not found "
                "(apt-get install libc6-dev; build-essential pulls it in)"
            )


def _compile(cmd: list[str], cwd: Path) -> None:
    proc = procs.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ImageError(f"building kmlctl failed: {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")


def build_kmlctl(cache: Path, guest_dir: Path = GUEST_IMAGE_DIR, cc: str = KMLCTL_CC) -> Path:
    """Return ``cache/kmlctl/<key>/kmlctl``, compiling it (about a second) if missing.

    The KML library sources get Makefile.user's warning flags, kmlctl's own
    files (every ``.c`` in ``guest-image/kmlctl/``) the strict ``-Wall
    -Wextra``; one static, stripped executable comes out.
    """
    key = kmlctl_key(guest_dir, cc)
    out_dir = cache / "kmlctl" / key
    target = out_dir / "kmlctl"
    if target.exists():
        return target
    with file_lock(cache / "kmlctl" / ".lock"):
        if target.exists():
            return target
        _check_static_libc(cc)
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp_name:
            tmp = Path(tmp_name)
            inc = f"-I{KML_SRC_DIR}"
            lib_srcs = [str(KML_SRC_DIR / name) for name in KMLCTL_KML_SOURCES]
            _compile([cc, *_KMLCTL_CFLAGS, *_KMLCTL_LIB_CFLAGS, inc, "-c", *lib_srcs], tmp)
            # kmlctl's objects in a folder of their own: no name can clash
            tool_srcs = [str(path) for path in _kmlctl_sources(guest_dir)]
            (tmp / "tool").mkdir()
            _compile([cc, *_KMLCTL_CFLAGS, inc, "-c", *tool_srcs], tmp / "tool")
            objs = [
                *(f"tool/{Path(name).with_suffix('.o').name}" for name in tool_srcs),
                *(Path(name).with_suffix(".o").name for name in lib_srcs),
            ]
            _compile([cc, "-o", "kmlctl", *objs, *_KMLCTL_LDFLAGS], tmp)
            os.replace(tmp / "kmlctl", target)
    return target


class CpioWriter:
    """A minimal writer for the "newc" cpio format the kernel unpacks.

    Each entry: a 110-byte ASCII header ("070701" + 13 8-digit hex fields),
    the NUL-terminated name padded to 4 bytes, then the data padded to 4
    bytes; the archive ends with a "TRAILER!!!" entry. Parent directories
    are emitted before their contents, because the kernel creates entries in
    archive order.
    """

    def __init__(self) -> None:
        self._out = io.BytesIO()
        self._ino = 1
        self._seen: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", nlink: int = 1) -> None:
        encoded = name.encode() + b"\0"
        fields = (
            self._ino, mode, 0, 0, nlink, 0, len(data),  # ino mode uid gid nlink mtime size
            0, 0, 0, 0, len(encoded), 0,  # dev maj/min, rdev maj/min, namesize, check
        )  # fmt: skip
        self._ino += 1
        header = b"070701" + b"".join(b"%08X" % value for value in fields)
        self._out.write(header + encoded)
        self._pad()
        self._out.write(data)
        self._pad()

    def _pad(self) -> None:
        self._out.write(b"\0" * (-self._out.tell() % 4))

    @staticmethod
    def _name(path: str) -> str:
        rel = str(PurePosixPath("/", path).relative_to("/"))
        if rel in ("", ".") or ".." in PurePosixPath(rel).parts:
            raise ImageError(f"bad path in image: {path!r}")
        return rel

    def _parents(self, name: str) -> None:
        for parent in reversed(PurePosixPath(name).parents[:-1]):
            if str(parent) not in self._seen:
                self.add_dir(str(parent), 0o755)

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        name = self._name(path)
        self._parents(name)
        self._seen.add(name)
        self._entry(name, stat.S_IFDIR | mode, nlink=2)

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        name = self._name(path)
        self._parents(name)
        self._seen.add(name)
        self._entry(name, stat.S_IFREG | mode, data)

    def add_symlink(self, path: str, target: str) -> None:
        name = self._name(path)
        self._parents(name)
        self._seen.add(name)
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def has(self, path: str) -> bool:
        return self._name(path) in self._seen

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0, nlink=1)
        return self._out.getvalue()


@dataclass(frozen=True)
class _Input:
    guest_path: str
    host_path: Path
    mode: int


def _read_file_list(path: Path) -> list[tuple[str, str]]:
    entries = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[0].startswith("/"):
            raise ImageError(f"{path}:{number}: expected '<guest path> <host source>'")
        entries.append((parts[0], parts[1]))
    return entries


def _is_dynamic(path: Path) -> bool:
    with path.open("rb") as handle:
        head = handle.read(4096)
    if not head.startswith(b"\x7fELF"):
        return False
    return bool(ldd_libraries(path))


def _collect_inputs(fio: FioBinary, guest_dir: Path) -> list[_Input]:
    """Every host file that goes into the base image, libraries included."""
    inputs: list[_Input] = []
    libs: dict[str, Path] = {}
    for guest_path, source in _read_file_list(guest_dir / "files.list"):
        if source == "@fio":
            host = fio.path
            libs.update({str(lib): lib for lib in fio.libraries})
        else:
            host = Path(source)
        if not host.exists():
            raise ImageError(f"{host} (for {guest_path}) does not exist: install it first")
        inputs.append(_Input(guest_path, host, 0o755))
        if _is_dynamic(host):
            libs.update({str(lib): lib for lib in ldd_libraries(host)})
    for guest_lib, host_lib in sorted(libs.items()):
        inputs.append(_Input(guest_lib, host_lib, 0o755))
    return inputs


def _extra_files(guest_dir: Path) -> list[tuple[str, Path]]:
    """guest-image/extra/ mirrors the guest's root (e.g. extra/opt/kml/...)."""
    extra = guest_dir / "extra"
    if not extra.is_dir():
        return []
    files = []
    for path in sorted(extra.rglob("*")):
        if path.is_file() and path.name != ".gitkeep":
            files.append(("/" + path.relative_to(extra).as_posix(), path))
    return files


def _busybox_applets(busybox: Path) -> list[str]:
    out = procs.run(
        [str(busybox), "--list-full"], capture_output=True, text=True, check=True
    ).stdout
    return ["/" + line.strip() for line in out.splitlines() if line.strip()]


def base_image_key(fio: FioBinary, guest_dir: Path = GUEST_IMAGE_DIR) -> str:
    """Content hash of every input: init, file list, binaries, libraries, extras."""
    inputs = _collect_inputs(fio, guest_dir)
    manifest = {
        "format": IMAGE_FORMAT_VERSION,
        "etc": _ETC_FILES,
        "dirs": _DIRS,
        "init": sha256_file(guest_dir / "init"),
        "files.list": sha256_file(guest_dir / "files.list"),
        "inputs": [(i.guest_path, sha256_file(i.host_path), i.mode) for i in inputs],
        "extra": [(g, sha256_file(h), os.access(h, os.X_OK)) for g, h in _extra_files(guest_dir)],
        "kmlctl": kmlctl_key(guest_dir),
    }
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:20]


def _build(fio: FioBinary, guest_dir: Path, kmlctl: Path) -> bytes:
    cpio = CpioWriter()
    for path, mode in _DIRS.items():
        cpio.add_dir(path, mode)
    inputs = _collect_inputs(fio, guest_dir)
    busybox = None
    for item in inputs:
        cpio.add_file(item.guest_path, item.host_path.read_bytes(), item.mode)
        if item.host_path.name == "busybox":
            busybox = item
    if busybox is None:
        raise ImageError("files.list has no busybox: the guest needs a shell")
    for applet in _busybox_applets(busybox.host_path):
        if not cpio.has(applet):
            cpio.add_symlink(applet, busybox.guest_path)
    cpio.add_file(KMLCTL_GUEST_PATH, kmlctl.read_bytes(), 0o755)
    for path, (text, mode) in _ETC_FILES.items():
        cpio.add_file(path, text.encode(), mode)
    for guest_path, host in _extra_files(guest_dir):
        mode = 0o755 if os.access(host, os.X_OK) else 0o644
        cpio.add_file(guest_path, host.read_bytes(), mode)
    cpio.add_file("/init", (guest_dir / "init").read_bytes(), 0o755)
    return cpio.finish()


def build_base_image(cache: Path, guest_dir: Path = GUEST_IMAGE_DIR) -> Path:
    """Return the cached base initramfs, building it if any input changed.

    The second call with unchanged inputs is a no-op returning the same path.
    ``image.json`` beside it records which fio was used (static or fallback).
    """
    fio = guest_fio(cache)
    key = base_image_key(fio, guest_dir)
    out_dir = cache / "images"
    out = out_dir / f"base-{key}.cpio"
    if out.exists():
        return out
    with file_lock(out_dir / ".lock"):
        if out.exists():
            return out
        kmlctl = build_kmlctl(cache, guest_dir)
        data = _build(fio, guest_dir, kmlctl)
        tmp = out.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        meta = {"key": key, "fio": {"path": str(fio.path), "version": fio.version,
                                    "kind": fio.kind, "note": fio.note},
                "kmlctl": {"path": str(kmlctl), "key": kmlctl.parent.name}}  # fmt: skip
        out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp, out)
    return out


def image_info(base: Path) -> dict[str, object]:
    """What :func:`build_base_image` recorded about ``base`` (e.g. which fio)."""
    meta = base.with_suffix(".json")
    return json.loads(meta.read_text()) if meta.exists() else {}


def overlay_cpio(authorized_key: str, host_key: Path) -> bytes:
    """The per-run archive: the client's public key and dropbear's host key."""
    cpio = CpioWriter()
    cpio.add_dir("/root", 0o700)
    cpio.add_dir("/root/.ssh", 0o700)
    cpio.add_file("/root/.ssh/authorized_keys", authorized_key.strip().encode() + b"\n", 0o600)
    cpio.add_dir("/etc", 0o755)
    cpio.add_dir("/etc/dropbear", 0o700)
    cpio.add_file(GUEST_HOST_KEY_PATH, host_key.read_bytes(), 0o600)
    return cpio.finish()


def make_guest_initrd(base: Path, out_dir: Path, authorized_key: str, host_key: Path) -> Path:
    """Write ``out_dir/initrd.cpio``: the cached base followed by the key overlay."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "initrd.cpio"
    overlay = overlay_cpio(authorized_key, host_key)
    with out.open("wb") as handle, base.open("rb") as src:
        shutil.copyfileobj(src, handle)
        handle.write(overlay)
    out.chmod(0o600)  # it holds the run's host private key
    return out
