"""Building libkml.so: the user-space Makefile, exports, size, errors."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from kmlbench import paths
from kmlbench.kml import build
from kmlbench.kml.build import KmlBuildError, build_libkml


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_makefile_user_builds_small_library_with_hidden_internals(tmp_path):
    subprocess.run(
        ["make", "-s", "-C", str(paths.KML_SRC_DIR), "-f", "Makefile.user", f"OUT={tmp_path}"],
        check=True,
    )
    so = tmp_path / "libkml.so"
    assert so.stat().st_size <= 64 * 1024  # target
    syms = subprocess.run(
        ["nm", "-D", "--defined-only", str(so)], capture_output=True, text=True, check=True
    ).stdout
    names = {line.split()[-1] for line in syms.splitlines()}
    for api in ("kml_model_create", "kml_model_load", "kml_ring_push", "kml_expf"):
        assert api in names
    for internal in ("kml_f32_predict", "kml_q16_forward", "kml_cfg_check", "kml_zalloc"):
        assert internal not in names


def test_missing_compiler_is_named(monkeypatch):
    monkeypatch.delenv("KML_LIB", raising=False)
    monkeypatch.setattr(build, "_lib_root", lambda: paths.cache_dir() / "libkml-test-nocc")
    with pytest.raises(KmlBuildError, match="no-such-cc-kml"):
        build_libkml(force=True, cc="no-such-cc-kml")


# the only objects built with SSE in the kernel
FPU_FILES = {"kml_math.c", "kml_nn.c", "kml_dd_fpu.c", "kml_dd_calib_fpu.c"}
USER_ONLY = {"kml_platform_user.c", "kml_bench.c"}
# Kernel-only objects need kernel headers, so they cannot be compiled here;
# the real kernel build (tests/test_kernel.py) compiles them without the FPU.
KERNEL_ONLY = {
    "kml_platform_kernel.c",
    "kml_test.c",
    "kml_dd_core.c",
    "kml_iosched.c",
    "kml_dd_cost.c",
    "kml_dd_dev.c",
    "kml_ktrain.c",
}


def test_kernel_only_files_are_not_in_the_user_library():
    makefile = (paths.KML_SRC_DIR / "Makefile.user").read_text()
    srcs = re.search(r"^SRCS := ((?:.*\\\n)*.*)$", makefile, re.M).group(1).split()
    assert "kml_model.c" in srcs
    assert not (KERNEL_ONLY | {"kml_dd_fpu.c"}) & set(srcs)


def test_kbuild_fpu_flags_cover_exactly_the_float_files():
    kbuild = (paths.KML_SRC_DIR / "Kbuild").read_text()
    for f in FPU_FILES:
        obj = f.replace(".c", ".o")
        assert f"CFLAGS_{obj} += $(kml_fpu_cflags)" in kbuild
        assert f"CFLAGS_REMOVE_{obj} += $(kml_nofpu_cflags)" in kbuild
    assert kbuild.count("$(kml_fpu_cflags)") == len(FPU_FILES)


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
@pytest.mark.parametrize(
    "src",
    sorted(
        p.name
        for p in paths.KML_SRC_DIR.glob("*.c")
        if p.name not in FPU_FILES | USER_ONLY | KERNEL_ONLY
    ),
)
def test_integer_files_compile_without_fpu(src):
    """What the kernel requires of every non-FPU object, checked in user space:
    with -mgeneral-regs-only any float operation is a compile error."""
    proc = subprocess.run(
        ["cc", "-std=gnu11", "-O2", "-mgeneral-regs-only", "-c", src, "-o", "/dev/null"],
        cwd=paths.KML_SRC_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_only_the_platform_header_branches_on_kernel():
    """The platform layer is the only place the two builds differ."""
    offenders = []
    for p in sorted(paths.KML_SRC_DIR.glob("*.[ch]")):
        if p.name == "kml_platform.h":
            continue
        if "__KERNEL__" in p.read_text():
            offenders.append(p.name)
    assert offenders == []
