"""Fixtures shared by the tests that build and boot kernels, and every test's timeout.

One kernel build serves the whole session (and, through the shared build
cache, every later session and CI run on the same machine): the kernel and
guest tests, KUnit, and the end-to-end run all boot the same bzImage that
``kmlbench run`` builds from the repository.

Every test has a hard timeout of its own (pytest-timeout, signal method: a
hang fails that test with a stack trace and the session goes on), so no
hung child process can eat CI's 90 minutes again (issue 16). A test's own
``@pytest.mark.timeout`` wins; otherwise it gets :data:`HOST_TIMEOUT_S`,
or :data:`GUEST_TIMEOUT_S` if it boots guests (marker ``kernel``). The
timeout covers fixture set-up, so the first test (in run order) that sets
up a shared fixture also gets that set-up's allowance: the cold kernel
build for the one that first needs ``kernel_build``, a smaller one for any
other session- or module-wide fixture (a guest booted once per module, the
guest image).
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


# --- timeouts ------------------------------------------------------------------

HOST_TIMEOUT_S = 300
GUEST_TIMEOUT_S = 900
# A cold kernel build (4.5-7.5 min on 2 idle cores, more when loaded) with
# the source extraction and the config check before it.
BUILD_ALLOWANCE_S = 2400
# A shared fixture's set-up: the guest image with a static fio built from
# source, or a guest booted once for a whole module.
FIXTURE_ALLOWANCE_S = 900


def _shared_fixtures(item: pytest.Item) -> list[tuple[str, str]]:
    """The session/module/package fixtures ``item`` sets up, with their scope keys."""
    info = getattr(item, "_fixtureinfo", None)
    out = []
    for name in getattr(item, "fixturenames", ()):
        defs = info.name2fixturedefs.get(name) if info is not None else None
        if not defs:
            continue
        scope = defs[-1].scope
        if scope == "session":
            out.append((name, "session"))
        elif scope in ("module", "package", "class"):
            out.append((name, f"{scope}:{item.nodeid.split('::')[0]}"))
    return out


@pytest.hookimpl(trylast=True)  # after -k/-m deselection: budgets go to the tests that run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    seen: set[tuple[str, str]] = set()
    for item in items:
        shared = [f for f in _shared_fixtures(item) if f not in seen]
        seen.update(shared)
        if item.get_closest_marker("timeout") is not None:
            continue
        budget = GUEST_TIMEOUT_S if item.get_closest_marker("kernel") else HOST_TIMEOUT_S
        if any(name == "kernel_build" for name, _ in shared):
            budget += BUILD_ALLOWANCE_S
        elif shared:
            budget += FIXTURE_ALLOWANCE_S
        item.add_marker(pytest.mark.timeout(budget))
