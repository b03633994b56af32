"""The guest's clock: what a time in a result means, defined once.

``virtual`` runs QEMU with ``-icount shift=N,sleep=off``: every guest
instruction advances guest time by 2^N ns and idle time is skipped, so every
timing the guest sees (fio's latencies, timers, null_blk's completion delay,
/proc/stat) is a count of instructions and does not depend on the host's
speed or load. ``realtime`` is TCG or KVM against the host's clock.

The matrix (``guest.clock``, ``guest.icount_shift``), the QEMU command line,
the manifest, ``summary.json``, every report page and ``kmlbench compare``
use the names and sentences here.
"""

from __future__ import annotations

from typing import Any

CLOCKS = ("virtual", "realtime")
# QEMU's ``-icount shift`` range (7.2: shift must be 0..10).
ICOUNT_SHIFT_MAX = 10
# Runs recorded before guest.clock existed ran against the host's clock.
LEGACY_CLOCK = "realtime"

# Why --accel kvm cannot run a virtual-clock matrix.
KVM_REFUSED = (
    "--accel kvm cannot run guest.clock virtual (QEMU's -icount is TCG only); "
    "set guest.clock: realtime in the matrix to use KVM"
)
# Why a virtual guest has one vCPU (docs/matrix.md, "Clocks").
VIRTUAL_CPUS_REASON = (
    "guest.clock virtual (the default) supports one vCPU: with a fixed icount shift "
    "QEMU 7.2 hangs bringing up a second CPU (use cpus: 1, or clock: realtime)"
)


# Host seconds a busy guest second may take under the virtual clock, with
# margin: a CPU-bound guest ran 17 host seconds per guest second at shift 0
# while the other core was busy (docs/benchmarks.md). The host-side timeout
# of a command that keeps the guest busy (fio) grows by it.
VIRTUAL_WALL_FACTOR = 40
# The guest's heartbeat period (guest seconds) under the virtual clock: one
# guest second is still well inside guest.silence_timeout_s host seconds.
VIRTUAL_HEARTBEAT_S = 1


def host_timeout(timeout_s: float, clock: str, busy_guest_s: float = 0.0) -> float:
    """The host seconds to allow a guest command whose own limit is ``timeout_s``.

    Under the virtual clock a command that keeps the guest busy for
    ``busy_guest_s`` guest seconds (fio's runtime and ramp) may take up to
    :data:`VIRTUAL_WALL_FACTOR` host seconds for each; only that part is
    scaled. The runner scales fio's command alone: every other guest
    command keeps ``guest.command_timeout_s``, so a hung short command is
    caught as fast as under the realtime clock.
    """
    if clock != "virtual":
        return timeout_s
    return timeout_s + busy_guest_s * (VIRTUAL_WALL_FACTOR - 1)


def kernel_append(clock: str) -> str:
    """Kernel command-line words the clock needs.

    Under the virtual clock: the guest's heartbeat period, and no randomised
    user-space address layout (``norandmaps``), so that two boots execute
    the same instructions (see :func:`tcg_cpu`).
    """
    return f"kmlbench.heartbeat={VIRTUAL_HEARTBEAT_S} norandmaps" if clock == "virtual" else ""


def tcg_cpu(clock: str) -> str:
    """The ``-cpu`` model under TCG: ``max``, without RDRAND/RDSEED on the virtual clock.

    RDRAND hands the guest the host's randomness: address layouts, hash
    seeds and the kernel's RNG then differ from boot to boot, and with them
    the instructions per I/O. On a CPU-bound cell (10 us null_blk, randread
    at iodepth 16, 2 s) four boots spread 2.7% in IOPS with RDRAND and
    ASLR, 0.66% without (docs/benchmarks.md, "The virtual clock").
    """
    return "max,rdrand=off,rdseed=off" if clock == "virtual" else "max"


def icount_arg(shift: int) -> str:
    """QEMU's ``-icount`` value: 2^shift ns per instruction, idle time skipped.

    ``sleep=off``: when the vCPU idles, virtual time jumps to the next timer
    instead of waiting for the host clock to catch up, so time never depends
    on the host (and an idle guest runs as fast as the host can emulate it).
    """
    return f"shift={shift},sleep=off"


def clock_record(clock: str, shift: int) -> dict[str, Any]:
    """The provenance keys of a manifest and a cell record."""
    return {"clock": clock, "icount_shift": shift if clock == "virtual" else None}


def clock_of(record: dict[str, Any]) -> tuple[str, int | None]:
    """``(clock, icount_shift)`` of a manifest or cell record; legacy runs are realtime."""
    clock = record.get("clock") or LEGACY_CLOCK
    shift = record.get("icount_shift") if clock == "virtual" else None
    return str(clock), shift


def clock_label(clock: str, shift: int | None) -> str:
    """Short form for tables and titles: ``virtual (shift 0)`` or ``realtime``."""
    return f"virtual (shift {shift})" if clock == "virtual" else "realtime"


def clock_meaning(clock: str, shift: int | None) -> str:
    """What a latency means under this clock, in one sentence."""
    if clock == "virtual":
        n = shift or 0
        ghz = 1 / (1 << n)
        speed = f"{ghz:g} GHz" if ghz >= 0.01 else f"{ghz * 1000:g} MHz"
        per_ns = "one instruction per ns" if n == 0 else f"one instruction per {1 << n} ns"
        return (
            f"virtual clock (-icount shift={n}): times are those of a {speed}, {per_ns} CPU; "
            "device timings as configured; independent of the host's load"
        )
    return (
        "realtime clock: absolute latencies are not those of hardware and vary with the host's load"
    )


def instructions_per_us(shift: int | None) -> float:
    """Guest instructions per virtual microsecond (1000 at shift 0)."""
    return 1000.0 / (1 << (shift or 0))
