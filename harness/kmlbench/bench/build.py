"""``kmlbench bench build``: cold and warm kernel build times.

A cold build goes into a fresh, empty cache (extract, configure, compile);
the warm run then asks for the same kernel again, which the build cache
must answer without compiling anything. Both run in one invocation so the
two figures come from the same machine state.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from kmlbench.build import kernel


def command(args: argparse.Namespace) -> int:
    """``kmlbench bench build``: a cold and a warm build into a fresh cache."""

    cache = Path(tempfile.mkdtemp(prefix="kmlbench-bench-cache-"))
    request = kernel.KernelRequest("debian", ())
    try:
        started = time.monotonic()
        cold = kernel.build_kernel(request, cache, cache / "logs")
        cold_s = time.monotonic() - started
        started = time.monotonic()
        warm = kernel.build_kernel(request, cache, cache / "logs")
        warm_s = time.monotonic() - started
    finally:
        if not args.keep:
            shutil.rmtree(cache, ignore_errors=True)
    result = {
        "cold_build_s": round(cold_s, 1),
        "cold_compiled": cold.compiled,
        "warm_build_s": round(warm_s, 3),
        "warm_compiled": warm.compiled,
        "build_key": cold.build_key,
    }
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"cold build: {cold_s:.1f} s (compiled: {cold.compiled})")
        print(f"warm re-run: {warm_s:.3f} s (compiled: {warm.compiled})")
    return 0 if cold.compiled and not warm.compiled else 1
