"""KML on the sanitizer kernels: the reports are caught, and KML causes none.

Two kernel variants (``kernel/configs/debug.config``: KASAN, lockdep, UBSAN,
sleep-in-atomic, list and RCU-callback checks; ``kcsan.config``: KCSAN)
each take a cold build of about ten minutes, so these tests run only with
``KMLBENCH_SANITIZERS=1`` (the nightly workflow; README, "Sanitizer
kernels"). With them, ``tests/test_kml_faults.py`` (fault injection and the
fuzzer) also runs on both variants.

- Each sanitizer's report, provoked on purpose by a throw-away module in a
  real guest of its kernel, is classified by :mod:`kmlbench.guest.console`
  as its own kind and fails a cell. The console text the kernel really
  printed is kept as ``tests/data/sanitizer-console.txt``, which the host
  test :func:`test_saved_sanitizer_console` re-reads in every CI run.
- KML's KUnit suite passes on both kernels with a clean console.
- ``workloads/sanitizers.yaml``: active mode with the offline model, the
  user trainer and the kernel trainer, policy cost on a light model, active
  predicting lazily (``lazy``: the float model's FPU section at dispatch,
  under the scheduler lock, while the kernel trainer swaps models; and the
  light model with no consumer, ``sample_unclaimed`` false) and a
  duty-cycled observer (``observe_every``), on both kernels, every cell ok.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kmlbench import paths
from kmlbench.build.kernel import KernelBuild
from kmlbench.guest.console import (
    SANITIZER_KINDS,
    ConsoleEvent,
    classify,
    kcsan_through_kml,
    status_for,
)
from kmlbench.guest.qemu import Guest
from test_console import build_modules
from test_qemu import boot

DATA = Path(__file__).parent / "data" / "sanitizer-console.txt"

# One throw-away module per report, each doing one wrong thing in its init
# and refusing to stay loaded. Order matters in one boot: a KASAN report
# taints the kernel in a way that turns lockdep off, so lockdep goes first.
BAD_MODULE = r"""
// SPDX-License-Identifier: GPL-2.0
#include <linux/delay.h>
#include <linux/kthread.h>
#include <linux/list.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/rcupdate.h>
#include <linux/slab.h>
#include <linux/spinlock.h>

static DEFINE_MUTEX(lock_a);
static DEFINE_MUTEX(lock_b);
static struct rcu_head twice;
static int shared;

static void rcu_nop(struct rcu_head *h) { }

/* named kml_ so that the console parser takes its races for KML's own */
static int kml_test_racer(void *unused)
{
	int i;

	for (i = 0; i < 2000000 && !kthread_should_stop(); i++)
		shared++;
	while (!kthread_should_stop())
		msleep(10);
	return 0;
}

static int __init bad_init(void)
{
#if defined(DO_LOCKDEP)
	mutex_lock(&lock_a);
	mutex_lock(&lock_b);
	mutex_unlock(&lock_b);
	mutex_unlock(&lock_a);
	mutex_lock(&lock_b);
	mutex_lock(&lock_a);		/* B then A after A then B */
	mutex_unlock(&lock_a);
	mutex_unlock(&lock_b);
#elif defined(DO_ATOMIC_SLEEP)
	static DEFINE_SPINLOCK(spin);

	spin_lock(&spin);
	msleep(1);
	spin_unlock(&spin);
#elif defined(DO_LIST_CORRUPTION)
	LIST_HEAD(head);
	struct list_head a, b;

	list_add(&a, &head);
	a.prev = &b;			/* head->next->prev no longer head */
	list_add(&b, &head);		/* refused by __list_add_valid() */
#elif defined(DO_DEBUGOBJECTS)
	call_rcu(&twice, rcu_nop);
	call_rcu(&twice, rcu_nop);	/* queued twice: leaked, reported */
	rcu_barrier();
#elif defined(DO_UBSAN)
	volatile int by = 40;

	pr_info("kmlbench_ubsan: %d\n", 1 << by);
#elif defined(DO_KASAN)
	volatile char *p = kmalloc(64, GFP_KERNEL);

	kfree((void *)p);
	pr_info("kmlbench_kasan: %d\n", p[8]);	/* use after free */
#elif defined(DO_KCSAN)
	struct task_struct *t1 = kthread_run(kml_test_racer, NULL, "kmlbench-race1");
	struct task_struct *t2 = kthread_run(kml_test_racer, NULL, "kmlbench-race2");

	msleep(3000);
	kthread_stop(t1);
	kthread_stop(t2);
	pr_info("kmlbench_kcsan: %d\n", shared);
#endif
	return -EAGAIN;
}
module_init(bad_init);
MODULE_LICENSE("GPL");
"""

# variant -> the modules to load in its guest, in order, each with its kind
PROVOKE = {
    "debug": ("lockdep", "atomic_sleep", "list_corruption", "debugobjects", "ubsan", "kasan"),
    "kcsan": ("kcsan",),
}


def wait_kind(guest: Guest, kind: str, timeout: float = 60) -> list[ConsoleEvent]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = [e for e in guest.events() if e.kind == kind]
        if events:
            return events
        time.sleep(0.5)
    raise AssertionError(f"no {kind} report: {guest.console_text()[-3000:]}")


@pytest.fixture(scope="module")
def sanitizer_guest(
    request: pytest.FixtureRequest,
    variant_kernel: Callable[[str], KernelBuild],
    base_image: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, Guest, dict[str, Path]]]:
    variant = request.param
    build = variant_kernel(variant)
    src = tmp_path_factory.mktemp(f"badmod-{variant}")
    proc, modules = build_modules(build.build_dir, BAD_MODULE, PROVOKE[variant], src)
    assert proc.returncode == 0, proc.stderr[-3000:]
    work = tmp_path_factory.mktemp(f"sanitizer-{variant}")
    with boot(
        work,
        build.bzimage,
        base_image,
        append="null_blk.nr_devices=0",
        memory_mib=1024,
        boot_timeout_s=600,
        silence_timeout_s=600,
    ) as guest:
        yield variant, guest, modules


@pytest.mark.kernel
@pytest.mark.sanitizer
@pytest.mark.parametrize("sanitizer_guest", ["debug", "kcsan"], indirect=True)
def test_real_sanitizer_reports(
    sanitizer_guest: tuple[str, Guest, dict[str, Path]], saved_consoles: dict[str, str]
) -> None:
    """Each report the sanitizer kernels print is its own kind, and fatal."""
    variant, guest, modules = sanitizer_guest
    clean = [e for e in guest.events() if e.kind in SANITIZER_KINDS]
    assert clean == [], clean  # the boot itself is clean (of reports that are ours)
    assert guest.ssh is not None
    for kind, module in modules.items():
        guest.ssh.put(f"/tmp/{module.name}", module.read_bytes(), 0o644)
        guest.ssh.run(f"insmod /tmp/{module.name}", timeout=120)
        event = wait_kind(guest, kind)[0]
        assert status_for([event]) == "panic", event
    kinds = {e.kind for e in guest.events()}
    assert set(modules) <= kinds, kinds
    saved_consoles[variant] = guest.console_text()


@pytest.fixture(scope="module")
def saved_consoles() -> Iterator[dict[str, str]]:
    """The consoles of :func:`test_real_sanitizer_reports`, kept for CI."""
    consoles: dict[str, str] = {}
    yield consoles
    if set(consoles) == set(PROVOKE) and os.environ.get("KMLBENCH_UPDATE_FIXTURES") == "1":
        text = "".join(consoles[v] for v in sorted(consoles))
        DATA.write_text(text)


def test_saved_sanitizer_console() -> None:
    """The reports two real sanitizer kernels printed (tests/data), re-read as
    text: every sanitizer kind is found, on the line it names, and fatal."""
    text = DATA.read_text(errors="replace")
    events = classify(text)
    kinds = {e.kind for e in events}
    assert set(SANITIZER_KINDS) <= kinds, kinds
    lines = text.splitlines()
    for event in events:
        assert event.excerpt in lines[event.line_no - 1]
    assert status_for(events) == "panic"
    # the boot of a sanitizer kernel prints none of them by itself
    first = min(e.line_no for e in events if e.kind in SANITIZER_KINDS)
    assert "kmlbench_" in "\n".join(lines[first - 30 : first + 30])


@pytest.mark.kernel
@pytest.mark.sanitizer
@pytest.mark.parametrize("variant", ["debug", "kcsan"])
def test_kunit_on_sanitizer_kernel(
    variant: str,
    variant_kernel: Callable[[str], KernelBuild],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """KML's KUnit suite on each sanitizer kernel: all pass, no report."""
    from kmlbench import cli  # late: the CLI's handlers load on use

    variant_kernel(variant)  # built (or found) first, under the build's budget
    config = f"{variant}.config"
    status = cli.main(
        [
            "kunit",
            "--accel",
            "tcg",
            "--config",
            config,
            "--timeout",
            "900",
            "--out",
            str(tmp_path),
            "--json",
        ]
    )
    result = json.loads(capsys.readouterr().out)
    assert status == 0, result["reason"]
    console = (tmp_path / "console.log").read_text(errors="replace")
    assert [e for e in classify(console) if e.kind in SANITIZER_KINDS] == []


@pytest.mark.kernel
@pytest.mark.sanitizer
# 16 cells on the two sanitizer kernels: 742 s on an idle machine
# (2026-12-07), and past the default guest budget with the machine busy.
# The run and its one retry are bounded at an hour each below: this
# budget lets both bounds act
@pytest.mark.timeout(2 * 3600 + 600)
def test_active_mode_with_each_trainer_on_sanitizer_kernels(
    variant_kernel: Callable[[str], KernelBuild], tmp_path: Path
) -> None:
    """``kmlbench run workloads/sanitizers.yaml``: every cell ok on both kernels."""
    for variant in PROVOKE:
        variant_kernel(variant)
    env = {**os.environ, "KMLBENCH_RESULTS": str(tmp_path)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kmlbench.cli",
            "run",
            str(paths.REPO_ROOT / "workloads/sanitizers.yaml"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=3600,
    )
    run = max(p for p in tmp_path.iterdir() if p.is_dir() and (p / "manifest.json").exists())
    records = [json.loads(p.read_text()) for p in run.glob("cells/*/cell.json")]
    if any(r["status"] == "boot-failure" for r in records):
        # A KASAN guest on 2 vCPUs of a loaded host once booted so slowly that
        # ACPI's interpreter timed out and its network card got no interrupt.
        # A boot that never came up found no bug: boot it once more.
        proc = subprocess.run(
            [sys.executable, "-m", "kmlbench.cli", "run", "--resume", run.name,
             "--retry", "boot-failure"],
            capture_output=True, text=True, env=env, timeout=3600,
        )  # fmt: skip
        records = [json.loads(p.read_text()) for p in run.glob("cells/*/cell.json")]
    # 2 kernels x 8 models: each trainer (the kernel's publishing float
    # and Q16.16), policy cost, active predicting lazily (with the kernel
    # trainer, and without a consumer), a duty-cycled observer
    assert len(records) == 16, proc.stdout[-3000:] + proc.stderr[-3000:]
    for rec in records:
        events = rec.get("console_events", [])
        assert rec["status"] == "ok", (rec["id"], rec.get("error"), events)
        # the kernel's own races (kcsan_other) are recorded, not ours unless
        # a stack passes through KML or mq-deadline
        assert [e for e in events if e["kind"] != "kcsan_other"] == [], (rec["id"], events)
        text = (run / "cells" / rec["id"] / "console.log").read_text(errors="replace")
        assert kcsan_through_kml(text) == [], (rec["id"], events)
        model = rec["params"]["model"]
        counters = rec["kml_stats"]["counters"]
        if model.get("lazy"):
            # the lazy path ran: predictions at dispatch, under the
            # scheduler lock
            assert counters["lazy"] == 1 and counters["inferences"] > 0, counters
        if model.get("lazy") and model["model_file"].endswith("/deadline.kmlm"):
            # the float model's FPU sections there
            assert counters["fpu_sections"] > 0, counters
        if model.get("publish_dtype") == "fixed":
            # compiled Q16.16 copies swapped in under I/O
            assert counters["updates_compiled"] > 0, counters
        if model.get("sample_unclaimed") is False:
            # no consumer: every sample counted as unclaimed, none made
            assert counters["ring_unclaimed"] == counters["samples"] > 0, counters
            assert counters["ring_produced"] == 0, counters
    assert proc.returncode == 0, proc.stderr[-3000:]
