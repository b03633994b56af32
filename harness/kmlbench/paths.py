"""Where things live: the repository's own folders and the build cache.

Every other module asks here instead of computing paths itself, so that a
user can move the cache (``KMLBENCH_CACHE``) or the results
(``KMLBENCH_RESULTS``) without touching code.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
KERNEL_DIR = REPO_ROOT / "kernel"
KML_SRC_DIR = KERNEL_DIR / "kml"
PATCHES_DIR = KERNEL_DIR / "patches"
CONFIGS_DIR = KERNEL_DIR / "configs"
GUEST_IMAGE_DIR = REPO_ROOT / "guest-image"
FIO_PATCHES_DIR = GUEST_IMAGE_DIR / "fio-patches"
WORKLOADS_DIR = REPO_ROOT / "workloads"
TEMPLATES_DIR = WORKLOADS_DIR / "templates"

DEBIAN_KERNEL_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")


def cache_dir() -> Path:
    """The build cache (kernel sources, builds, guest images, fio binary).

    Kept outside the checkout so that a fresh clone on the same machine
    reuses earlier builds; ``KMLBENCH_CACHE`` overrides it.
    """
    env = os.environ.get("KMLBENCH_CACHE")
    if env:
        path = Path(env)
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        path = base / "kmlbench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def results_dir() -> Path:
    """Where run folders go: ``results/`` in the checkout unless overridden."""
    env = os.environ.get("KMLBENCH_RESULTS")
    path = Path(env) if env else REPO_ROOT / "results"
    path.mkdir(parents=True, exist_ok=True)
    return path
