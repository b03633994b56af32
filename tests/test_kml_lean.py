"""KML that only predicts: a kernel without float models or training (issue 11).

``kernel/configs/kml-lean.config`` builds KML without ``CONFIG_KML_FLOAT``,
``CONFIG_KML_TRAIN`` and ``CONFIG_KML_IOSCHED_COST``: Q16.16 models, no FPU
section, no kernel trainer, active mode by policy expire alone. Its
footprint must keep within issue 11's 29 KB, both in resident bytes and as
size(1) counts text and data. In a real guest (the ``lean`` variant, built
from the stock kernel's objects) a Q16.16 model must predict in active
mode; a float one be refused with -EOPNOTSUPP and counted, the model in use
kept; a user trainer (``kmlctl train``) publish its model in Q16.16; policy
cost be refused; and a cell that asks for the kernel trainer or policy cost
fail saying why, while the reset between cells of a shared boot still
works.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from device_guest import SLOW_NULL_BLK, VIRTUAL, device_guest
from kmlbench import paths
from kmlbench.bench import footprint
from kmlbench.build.kernel import KernelBuild
from kmlbench.cell import guest_paths, kml_reset
from kmlbench.cell import model as kml_model
from kmlbench.data import kmlstats
from kmlbench.guest import console
from kmlbench.guest.qemu import Guest
from kmlbench.kml.model import Model

pytestmark = pytest.mark.kernel

# Issue 11: "KML in the kernel is about 29 KB of text+data today", held
# here both to what the kernel keeps resident (footprint.kernel_sections)
# and to size(1)'s text and data, as the 29 KB was measured, which also
# counts what the link of vmlinux drops and the per-CPU counters' template
# (docs/benchmarks.md, "A kernel that only predicts").
FOOTPRINT_BAR = 29 * 1024
KML_ARCHIVE = Path("lib/kml/built-in.a")
# What a kernel that only predicts leaves out (kernel/kml/Kbuild).
FLOAT_OBJECTS = {"kml_math.o", "kml_nn.o", "kml_dd_fpu.o"}
KTRAINER_OBJECTS = {"kml_ktrain.o", "kml_dd_calib_fpu.o"}
COST_OBJECTS = {"kml_dd_cost.o"}
LEFT_OUT = FLOAT_OBJECTS | KTRAINER_OBJECTS | COST_OBJECTS

DEVICE = SLOW_NULL_BLK
SCHEDULER = {"name": "mq-deadline", "nr_requests": 64}
STATS = guest_paths.KML_STATS
PARAMS = guest_paths.KML_PARAMS
FIO = (
    "fio --name=lean --filename={dev} --direct=1 --ioengine=libaio --iodepth=16"
    " --rw=randrw --rwmixread=70 --bs=4k --size=16m --randrepeat=0 --output-format=terse"
)


def sh(guest: Guest, cmd: str, timeout: float = 120) -> str:
    result = guest.run(cmd, timeout=timeout)
    assert result.exit_status == 0, f"{cmd!r}: {result.stdout}{result.stderr}"
    return result.stdout


def stats(guest: Guest) -> kmlstats.KmlStats:
    return kmlstats.parse_stats(sh(guest, f"cat {STATS}"), source=STATS)


def sections(build: KernelBuild) -> list[tuple[str, str, int]]:
    got = footprint.allocated_sections(build.build_dir / KML_ARCHIVE)
    assert got is not None, build.build_dir
    return got


def resident(build: KernelBuild) -> tuple[int, dict[str, int]]:
    """KML's resident bytes in ``build``, and per object."""
    got = sections(build)
    return footprint.sum_sections(got)["resident"], footprint.resident_by_object(got)


@pytest.fixture(scope="module")
def lean(variant_kernel: Callable[[str], KernelBuild]) -> KernelBuild:
    variant_kernel("stock")  # first: the lean build starts from its objects
    return variant_kernel("lean")


def test_a_kernel_that_only_predicts_keeps_under_29_kib(
    lean: KernelBuild, variant_kernel: Callable[[str], KernelBuild]
) -> None:
    """Issue 11's footprint bar in resident bytes and by size(1), on the
    archive ``kmlbench bench lib`` reads."""
    read = sections(lean)  # one read: both measures of the same archive
    kinds = footprint.sum_sections(read)
    total, objects = kinds["resident"], footprint.resident_by_object(read)
    assert total <= FOOTPRINT_BAR, objects
    text_data = footprint.text_and_data(read)
    assert text_data <= FOOTPRINT_BAR, (text_data, kinds)
    assert not LEFT_OUT & set(objects), objects
    full, full_objects = resident(variant_kernel("stock"))
    assert set(full_objects) >= LEFT_OUT, full_objects
    assert total < full, (total, full)


# Each option alone: what it leaves out, and what it keeps.
HALVES = {
    "no-float": (FLOAT_OBJECTS | KTRAINER_OBJECTS, COST_OBJECTS),
    "no-train": (KTRAINER_OBJECTS, FLOAT_OBJECTS | COST_OBJECTS),
}


@pytest.mark.parametrize("variant", list(HALVES))
def test_each_option_alone_builds_between_the_two(
    variant: str, lean: KernelBuild, variant_kernel: Callable[[str], KernelBuild]
) -> None:
    """Without float models only, or without training only: the kernel builds
    (the compiler drops every call the option leaves out, or the link
    fails), leaves out its own objects, and lies between lean and stock."""
    gone, kept = HALVES[variant]
    total, objects = resident(variant_kernel(variant))
    assert not gone & set(objects), objects
    assert set(objects) >= kept, objects
    assert resident(lean)[0] < total < resident(variant_kernel("stock"))[0]


@pytest.fixture(scope="module")
def guest(
    lean: KernelBuild, base_image: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Guest, guest_paths.BlockDevice]]:
    work = tmp_path_factory.mktemp("lean")
    with device_guest(
        lean.bzimage, work, base_image, DEVICE, SCHEDULER, memory_mib=512, **VIRTUAL
    ) as (g, dev):
        sh(g, kml_reset.kml_snapshot_script())
        yield g, guest_paths.block_device(dev)
        bad = [e for e in g.events() if e.kind in (*console.FATAL_KINDS, "warn")]
        assert not bad, f"{bad}\n{console.quote(g.console_text(), bad)}"


def set_up(
    g: Guest, dev: guest_paths.BlockDevice, model: dict[str, object], trainer_seconds: float = 2
) -> tuple[int, str]:
    """A cell's KML set-up, as the runner renders it; (exit status, output)."""
    script = kml_model.kml_setup_script(
        model, dev, trainer_seconds=trainer_seconds, model_uploaded="model_file" in model
    )
    result = g.run(script, timeout=120)
    return result.exit_status, result.stdout + result.stderr


def reset(g: Guest, dev: guest_paths.BlockDevice) -> None:
    sh(g, kml_reset.kml_reset_script(dev))


def test_a_q16_model_predicts_without_the_fpu(
    guest: tuple[Guest, guest_paths.BlockDevice],
) -> None:
    g, dev = guest
    g.put(guest_paths.GUEST_MODEL, Model.mlp(14, (16,), dtype="fixed", normalize=True).to_bytes())
    status, out = set_up(g, dev, {"mode": "active", "model_file": "q16.kmlm"})
    assert status == 0, out
    sh(g, FIO.format(dev=dev.dev))
    after = stats(g)
    assert after.get("model_loaded") == 1
    assert after.get("predictions") > 1000, after
    reset(g, dev)


def test_a_float_model_is_refused_and_says_why(
    guest: tuple[Guest, guest_paths.BlockDevice],
) -> None:
    """Refused over a Q16.16 model in use, which stays and predicts; and a
    cell given a float model fails at its set-up, naming it."""
    g, dev = guest
    g.put(guest_paths.GUEST_MODEL, Model.mlp(14, (16,), dtype="fixed").to_bytes())
    status, out = set_up(g, dev, {"mode": "active", "model_file": "q16.kmlm"})
    assert status == 0, out
    float_model = Model.mlp(14, (16,), normalize=True).to_bytes()
    g.put("/tmp/float.kmlm", float_model)
    before = stats(g)
    result = g.run(f"{guest_paths.KMLCTL} load /tmp/float.kmlm", timeout=60)
    assert result.exit_status == 1, result
    assert "(KML_IOC_COMMIT): EOPNOTSUPP" in result.stderr, result.stderr
    assert "built without CONFIG_KML_FLOAT" in result.stderr, result.stderr
    after = stats(g)
    assert after.get("updates_refused") - before.get("updates_refused") == 1, after
    assert after.get("model_generation") == before.get("model_generation")
    assert after.get("model_loaded") == 1
    sh(g, FIO.format(dev=dev.dev))
    assert stats(g).get("predictions") > after.get("predictions") + 1000
    reset(g, dev)
    g.put(guest_paths.GUEST_MODEL, float_model)
    status, out = set_up(g, dev, {"mode": "observe", "model_file": "float.kmlm"})
    assert status != 0
    assert "kmlctl load float.kmlm failed" in out, out
    reset(g, dev)


def test_the_user_trainer_publishes_in_q16(
    guest: tuple[Guest, guest_paths.BlockDevice],
) -> None:
    """A cell with the user trainer, as the runner sets it up and stops it:
    its first float model is refused, and from then on it publishes the
    same model in Q16.16, which the kernel applies and predicts with."""
    g, dev = guest
    model = {"mode": "active", "trainer": "user", "publish_every": 256}
    # longer than fio: an idle guest's virtual clock runs ahead of the host,
    # and the stop script ends the trainer
    status, out = set_up(g, dev, model, trainer_seconds=600)
    assert status == 0, out
    sh(g, FIO.format(dev=dev.dev))
    stop = g.run(kml_model.kml_stop_script(model), timeout=120)
    assert stop.exit_status == 0, stop.stdout + stop.stderr
    log = sh(g, f"cat {guest_paths.GUEST_TRAINER_LOG}")
    summary = kmlstats.parse_summary(log)
    assert summary.get("publish_dtype") == "fixed", log
    assert "publishing in Q16.16" in log, log
    published = summary["published"]
    assert isinstance(published, int) and published >= 2, log
    assert summary["refused"] == 0, log
    after = stats(g)
    assert after.get("updates_refused") == 1, after  # the first, float
    assert after.get("updates_applied") == published, after
    assert after.get("predictions") > 0, after
    reset(g, dev)


def test_policy_cost_is_refused_and_a_cell_that_asks_for_it_fails_saying_why(
    guest: tuple[Guest, guest_paths.BlockDevice],
) -> None:
    """No cost_* parameters; writing policy cost fails with EOPNOTSUPP and
    the policy stays expire; a cell's set-up under policy expire runs and
    one under policy cost stops, naming the option."""
    g, dev = guest
    assert "cost_" not in sh(g, f"ls {PARAMS}")
    assert "policy" in sh(g, f"ls {PARAMS}")
    result = g.run(f"echo cost > {PARAMS}/policy", timeout=60)
    assert result.exit_status != 0, result
    assert "not supported" in result.stderr.lower(), result.stderr
    assert sh(g, f"cat {PARAMS}/policy").strip() == "expire"
    assert "policy expire" in sh(g, f"cat {STATS}")
    q16 = Model.mlp(14, (16,), dtype="fixed").to_bytes()
    g.put(guest_paths.GUEST_MODEL, q16)
    status, out = set_up(g, dev, {"mode": "active", "model_file": "q16.kmlm"})
    assert status == 0, out
    reset(g, dev)  # which removes the cell's files
    g.put(guest_paths.GUEST_MODEL, q16)
    cell = {"mode": "active", "model_file": "q16.kmlm", "policy": "cost"}
    status, out = set_up(g, dev, cell)
    assert status != 0
    assert "this kernel has no policy cost" in out and "CONFIG_KML_IOSCHED_COST" in out, out
    reset(g, dev)


def test_a_cell_that_asks_for_the_kernel_trainer_fails_saying_why(
    guest: tuple[Guest, guest_paths.BlockDevice],
) -> None:
    g, dev = guest
    assert "ktrainer" not in sh(g, f"ls {PARAMS}")
    status, out = set_up(g, dev, {"mode": "observe", "trainer": "kernel"})
    assert status != 0
    assert "this kernel has no kernel trainer" in out, out
    reset(g, dev)  # which stops a kernel trainer only where there is one


def _calibrated_permille(stats: kmlstats.KmlStats) -> int | None:
    """The threshold kmlctl calibrate must set from the printed score
    histograms, worked out here apart: the split with the highest balanced
    accuracy among the buckets within a factor 8 of the deadline, ties to
    the deadline's bucket, at least 32 of each class and better than chance;
    its edge's 1000 * 2^(k/8)."""
    met, missed = (
        {b.lo: b.count for b in stats.histograms.get(key, [])} for key in kmlstats.SCORE_HIST_KEYS
    )
    n_met, n_missed = sum(met.values()), sum(missed.values())
    if n_met < 32 or n_missed < 32:
        return None
    best: tuple[int, int] | None = None
    for split in range(64 - 24, 64 + 25):
        tn = sum(n for b, n in met.items() if b < split)
        tp = sum(n for b, n in missed.items() if b >= split)
        # the recalls' sum times n_met * n_missed, exact as kmlctl's
        score = tn * n_missed + tp * n_met
        if best is None or (score, -abs(split - 64)) > (best[0], -abs(best[1] - 64)):
            best = (score, split)
    assert best is not None
    if best[0] <= n_met * n_missed:
        return None
    return round(1000 * 2 ** ((best[1] - 64) / 8))


def test_a_model_no_trainer_calibrates_is_calibrated_on_its_own_predictions(
    guest: tuple[Guest, guest_paths.BlockDevice],
) -> None:
    """kmlctl calibrate (the lean kernel has no trainer to do it): with no
    prediction it refuses and the threshold stays; after the shipped light
    model observed a load where requests miss, it sets the threshold the
    printed histograms give; once a prediction was acted on, it is an
    error (EBUSY) and the threshold stays."""
    g, dev = guest
    expire = {
        name: sh(g, f"cat {dev.iosched}/{name}").strip() for name in ("read_expire", "write_expire")
    }
    g.put(
        guest_paths.GUEST_MODEL,
        (paths.WORKLOADS_DIR / "models/deadline-small-q16.kmlm").read_bytes(),
    )
    model = {"mode": "observe", "model_file": "deadline-small-q16.kmlm", "decision_permille": 858}
    status, out = set_up(g, dev, model)
    assert status == 0, out
    permille = f"{PARAMS}/decision_permille"
    calibrate = f"{guest_paths.KMLCTL} calibrate"
    try:
        said = kmlstats.parse_summary(sh(g, calibrate))
        assert (said["calibrated"], said["status"], said["predictions"]) == (0, "few-met", 0), said
        assert sh(g, f"cat {permille}").strip() == "858"
        # 1 and 2 ms expiries behind a 200 us device with two slots
        sh(g, f"echo 1 > {dev.iosched}/read_expire; echo 2 > {dev.iosched}/write_expire")
        sh(g, FIO.format(dev=dev.dev))
        seen = stats(g)
        want = _calibrated_permille(seen)
        assert want is not None, seen.histograms
        said = kmlstats.parse_summary(sh(g, calibrate))
        assert (said["calibrated"], said["decision_permille"]) == (1, want), said
        assert int(sh(g, f"cat {permille}")) == want != 858
        assert said["predictions"] == seen.get("predictions"), said
        # acted on: every request predicted to miss, its FIFO head moved ahead
        sh(g, f"echo 1 > {permille}; echo reset > {STATS}; echo active > {dev.iosched}/kml_mode")
        sh(g, FIO.format(dev=dev.dev))
        acted = stats(g)
        assert acted.get("steered_met") + acted.get("steered_missed") > 0, acted.counters
        busy = g.run(calibrate, timeout=60)
        assert busy.exit_status == 1 and "EBUSY" in busy.stderr, busy
        assert sh(g, f"cat {permille}").strip() == "1"
    finally:
        sh(g, "; ".join(f"echo {v} > {dev.iosched}/{k}" for k, v in expire.items()))
        reset(g, dev)
