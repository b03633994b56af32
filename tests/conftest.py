"""Fixtures shared by the tests that build and boot kernels, and every test's timeout.

One kernel build serves the whole session (and, through the shared build
cache, every later session and CI run on the same machine): the kernel and
guest tests, KUnit, and the end-to-end run all boot the same bzImage that
``kmlbench run`` builds from the repository.

Every test has a hard timeout of its own (pytest-timeout, signal method: a
hang fails that test with a stack trace and the session goes on), so no
hung child process can eat CI's 90 minutes again (issue 16). A test's own
``@pytest.mark.timeout`` is its budget; otherwise it gets
:data:`HOST_TIMEOUT_S`, or :data:`GUEST_TIMEOUT_S` if it boots guests
(marker ``kernel``). The timeout covers fixture set-up, so the budget is
decided as each test starts, from what it will really set up: the cold
kernel build's allowance for the session's first test that needs the
kernel (through ``kernel_build`` or a ``kmlbench run`` child), and a
smaller one when it sets up any other of our session- or module-wide
fixtures (a guest booted once per module, the guest image).

The sanitizer kernels (``kernel/configs/debug.config``: KASAN, lockdep,
UBSAN, ...; ``kcsan.config``: KCSAN) are kernel variants of their own:
tests parametrized over :data:`KERNEL_VARIANTS` run on the stock kernel in
the README's test command and, with ``KMLBENCH_SANITIZERS=1`` (the nightly
workflow), on both sanitizer kernels too (marker ``sanitizer``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from kmlbench import paths
from kmlbench.build import kernel
from kmlbench.build.image import build_base_image
from kmlbench.build.kernel import KernelBuild, KernelRequest


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


# A kernel variant: the fragment it adds to base.config and kml.config
# (looked up in kernel/configs/), None for the stock KML kernel.
SANITIZER_CONFIGS = {"debug": "debug.config", "kcsan": "kcsan.config"}
# Every variant ``variant_kernel`` builds: the sanitizers, stock
# mq-deadline on a kernel without KML's hooks (CONFIG_KML_IOSCHED=n), and
# KML that only predicts (no float models, no training in the kernel), and
# each of those two options alone.
VARIANT_CONFIGS = {
    **SANITIZER_CONFIGS,
    "nokml": "no-kml-iosched.config",
    "lean": "kml-lean.config",
    "no-float": "kml-no-float.config",
    "no-train": "kml-no-train.config",
}
SANITIZERS_ENV = "KMLBENCH_SANITIZERS"
# For ``params=`` of a fixture that boots a kernel: the stock one always,
# the sanitizer ones as ``sanitizer`` tests.
KERNEL_VARIANTS = [
    "stock",
    *(pytest.param(name, marks=pytest.mark.sanitizer) for name in SANITIZER_CONFIGS),
]


@pytest.fixture(scope="session")
def variant_kernel(
    kernel_cache: Path, kernel_inputs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], KernelBuild]:
    """``get(variant)``: the stock (``"stock"``) kernel or a variant of it, built once.

    A variant's first build starts from the stock kernel's objects
    (``seed_object_dir``), so ``nokml`` recompiles a few files, not all.
    """
    builds: dict[str, KernelBuild] = {}
    log_dir = tmp_path_factory.mktemp("variant-kernel-logs")

    def get(variant: str) -> KernelBuild:
        if variant not in builds:
            extra = () if variant == "stock" else (Path(VARIANT_CONFIGS[variant]),)
            builds[variant] = kernel.build_kernel(
                KernelRequest("debian", extra), kernel_cache, log_dir, **kernel_inputs
            )
        return builds[variant]

    return get


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the sanitizer tests unless KMLBENCH_SANITIZERS=1 asks for them."""
    if os.environ.get(SANITIZERS_ENV) == "1":
        return
    skip = pytest.mark.skip(
        reason=f"sanitizer kernel: set {SANITIZERS_ENV}=1 (the nightly workflow does)"
    )
    for item in items:
        if item.get_closest_marker("sanitizer"):
            item.add_marker(skip)


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
# the source extraction, the config check and the guest image after it.
BUILD_ALLOWANCE_S = 2400
# Any other shared fixture of ours: the guest image with a static fio built
# from source, a guest booted once for a whole module, a `kmlbench run`.
FIXTURE_ALLOWANCE_S = 900
TESTS_DIR = Path(__file__).parent


def _pending_shared_fixtures(item: pytest.Item) -> set[str]:
    """Our session/module fixtures that ``item`` will set up (not yet cached)."""
    info = getattr(item, "_fixtureinfo", None)
    pending = set()
    for name in getattr(item, "fixturenames", ()):
        defs = info.name2fixturedefs.get(name) if info is not None else None
        if not defs:
            continue
        fixturedef = defs[-1]
        func = getattr(fixturedef, "func", None)
        source = getattr(getattr(func, "__code__", None), "co_filename", "")
        if (
            fixturedef.scope != "function"
            and Path(source).parent == TESTS_DIR  # ours, not tmp_path_factory & co
            and getattr(fixturedef, "cached_result", None) is None
        ):
            pending.add(name)
    return pending


def timeout_budget(item: pytest.Item) -> float:
    """This test's hard timeout: its own (or the default) plus its fixtures' set-up."""
    own = item.get_closest_marker("timeout")
    given = None
    if own is not None:
        given = own.kwargs.get("timeout", own.args[0] if own.args else None)
    if given is not None:
        budget = float(given)
    else:
        budget = GUEST_TIMEOUT_S if item.get_closest_marker("kernel") else HOST_TIMEOUT_S
    pending = _pending_shared_fixtures(item)
    if "kernel_build" in pending or (
        item.get_closest_marker("kernel") and not item.config.stash.get(_BUILT, False)
    ):
        # the build happens here, in a fixture or in a `kmlbench run` child
        budget += BUILD_ALLOWANCE_S
    if item.get_closest_marker("sanitizer") and pending:
        # a module's guest on a sanitizer kernel: maybe its cold build first
        budget += BUILD_ALLOWANCE_S
    if pending - {"kernel_build"}:
        budget += FIXTURE_ALLOWANCE_S
    return budget


# Set once a test that needs the kernel has passed: the build is cached.
_BUILT = pytest.StashKey[bool]()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)  # before pytest-timeout arms its timer
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """Decided when the test runs, in the order tests really run (after -k, --lf, ...)."""
    own = item.get_closest_marker("timeout")
    options = {k: v for k, v in own.kwargs.items() if k != "timeout"} if own else {}
    item.add_marker(pytest.mark.timeout(timeout_budget(item), **options), append=False)
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.passed and item.get_closest_marker("kernel"):
        item.config.stash[_BUILT] = True
