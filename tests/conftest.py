"""Fixtures shared by the tests that build and boot kernels.

One kernel build serves the whole session (and, through the shared build
cache, every later session and CI run on the same machine): the kernel and
guest tests, KUnit, and the end-to-end run all boot the same bzImage that
``kmlbench run`` builds from the repository.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kmlbench import kernel, paths
from kmlbench.image import build_base_image
from kmlbench.kernel import KernelBuild, KernelRequest


@pytest.fixture(scope="session")
def kernel_cache() -> Path:
    """The real build cache (``KMLBENCH_CACHE`` or ``~/.cache/kmlbench``).

    Sharing it with ``kmlbench run`` is the point: the end-to-end test then
    finds the kernel these tests built, as a user's second run would.
    """
    return paths.cache_dir()


@pytest.fixture(scope="session")
def kernel_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A copy of kernel/kml, kernel/patches and kernel/configs, taken once.

    The build is keyed by content, so this builds (or finds) exactly the
    repo's kernel; but an edit to the repo while the session runs cannot
    turn the "same inputs" call into a different build.
    """
    snap = tmp_path_factory.mktemp("kernel-inputs")
    result = {}
    for name, src in (
        ("kml_dir", paths.KML_SRC_DIR),
        ("patches_dir", paths.PATCHES_DIR),
        ("configs_dir", paths.CONFIGS_DIR),
    ):
        if src.is_dir():
            shutil.copytree(src, snap / name)
        else:
            (snap / name).mkdir()
        result[name] = snap / name
    return result


@pytest.fixture(scope="session")
def kernel_build(
    kernel_cache: Path, kernel_inputs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> KernelBuild:
    """The guest kernel from the repo's KML sources, patches and fragments."""
    if not paths.DEBIAN_KERNEL_TARBALL.exists():
        pytest.fail(f"{paths.DEBIAN_KERNEL_TARBALL} missing: run scripts/setup.sh")
    log_dir = tmp_path_factory.mktemp("kernel-logs")
    return kernel.build_kernel(KernelRequest("debian", ()), kernel_cache, log_dir, **kernel_inputs)


@pytest.fixture(scope="session")
def guest_kernel(kernel_build: KernelBuild) -> Path:
    """The bzImage the guest tests boot."""
    return kernel_build.bzimage


@pytest.fixture(scope="session")
def base_image(kernel_cache: Path) -> Path:
    """The cached guest initramfs (busybox, static fio, dropbear)."""
    return build_base_image(kernel_cache)
