"""matrix.py: the ``model`` axis (KML inside mq-deadline)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kmlbench import paths
from kmlbench.cell import calibration, device
from kmlbench.cell.guest_paths import KMLCTL
from kmlbench.cell.model import kml_setup_script
from kmlbench.plan import fio_job
from kmlbench.plan import kernel as plan_kernel
from kmlbench.plan.matrix import load_matrix
from kmlbench.plan.schema import (
    ALL_GEOMETRY_PARAMS,
    NULL_BLK_SERVICE_MODELS,
    SEEK_CURVE_PARAMS,
    device_geometry,
)
from kmlbench.plan.source import MatrixError

HEAD = """\
name: t
axes:
  device: [{type: null_blk}]
  scheduler: [{name: mq-deadline}, {name: none}]
  workload: [{template: randread, runtime_s: 2, size_mib: 64}]
"""

# The ids of the shipped matrices without a model axis, as they were before
# the axis existed: a new axis must not re-key old results.
SMOKE_IDS = {
    "randrw-nullb-none-07a7cb96-r0",
    "randread-nullb-mqdl-357104e2-r0",
    "randread-nullb-none-45889643-r0",
    "randrw-nullb-mqdl-7c14d445-r0",
}


def load(tmp_path: Path, text: str):
    path = tmp_path / "m.yaml"
    path.write_text(text)
    return load_matrix(path)


def test_no_model_axis_changes_nothing() -> None:
    smoke = load_matrix(paths.WORKLOADS_DIR / "smoke.yaml")
    assert {c.id for c in smoke.cells} == SMOKE_IDS
    nightly = load_matrix(paths.WORKLOADS_DIR / "nightly.yaml")
    assert all("model" not in c.params for c in [*smoke.cells, *nightly.cells])
    assert "randread-virtio-bfq-6378f8b9-r0" in {c.id for c in nightly.cells}


def test_modes_expand_and_other_schedulers_run_with_the_model_off(tmp_path: Path) -> None:
    m = load(tmp_path, HEAD + "  model: [{mode: [off, observe, active]}]\n")
    by_sched: dict[str, list[dict]] = {}
    for c in m.cells:
        by_sched.setdefault(c.params["scheduler"]["name"], []).append(c.params["model"])
    # mq-deadline: one cell per mode; none: the three entries are one cell, model off
    assert sorted(p["mode"] for p in by_sched["mq-deadline"]) == ["active", "observe", "off"]
    assert by_sched["none"] == [{"mode": "off"}]
    slugs = sorted(c.id.split("-")[2] + "-" + c.id.split("-")[3] for c in m.cells)
    assert slugs == ["mqdl-kmlact", "mqdl-kmlobs", "mqdl-kmloff", "none-kmloff"]
    active = next(p for p in by_sched["mq-deadline"] if p["mode"] == "active")
    # every field the kernel sees is recorded; the trainer's only with a trainer
    assert active == {
        "mode": "active",
        "trainer": "none",
        "ring_mode": "drop",
        "sample_filter": "all",
        "decision_permille": 1000,
        "model_file": None,
    }


def test_trainer_fields_and_reduction(tmp_path: Path) -> None:
    m = load(
        tmp_path,
        HEAD
        + "  model:\n"
        + "    - {mode: [off, active], trainer: none, rate: [10, 20]}\n"
        + "    - {mode: active, trainer: [user, kernel], ring_mode: block, rate: 500,"
        + " cpu_pct: 25, publish_every: 256, sample_filter: uncertain}\n",
    )
    models = [c.params["model"] for c in m.cells if c.params["scheduler"]["name"] != "none"]
    # rate does not apply without a trainer: the four entries reduce to off + active
    assert len(models) == 4
    kernel = next(p for p in models if p.get("trainer") == "kernel")
    assert kernel == {
        "mode": "active",
        "trainer": "kernel",
        "ring_mode": "block",
        "sample_filter": "uncertain",
        "decision_permille": 1000,
        "model_file": None,
        "rate": 500,
        "cpu_pct": 25,
        "publish_every": 256,
        "warm_start": None,
    }


def test_model_files_are_keyed_by_content(tmp_path: Path) -> None:
    model = tmp_path / "models" / "m.kmlm"
    model.parent.mkdir()
    model.write_bytes(b"first")
    text = HEAD + "  model: [{mode: active, model_file: models/m.kmlm}]\n"
    first = load(tmp_path, text)
    cell = next(c for c in first.cells if c.params["scheduler"]["name"] == "mq-deadline")
    assert cell.params["model"]["model_file"] == str(model.resolve())
    assert cell.params["model"]["model_file_sha256"] == hashlib.sha256(b"first").hexdigest()
    model.write_bytes(b"second")
    second = load(tmp_path, text)
    assert {c.id for c in first.cells} != {c.id for c in second.cells}
    # a file inside the checkout is recorded repo-relative, as fragments are
    inside = load_matrix(paths.WORKLOADS_DIR / "deadline.yaml")
    files = {c.params["model"].get("model_file") for c in inside.cells}
    assert "workloads/models/deadline.kmlm" in files


def test_exclude_by_model_field(tmp_path: Path) -> None:
    m = load(
        tmp_path,
        HEAD + "  model: [{mode: [off, observe, active]}]\n" + "exclude: [{model.mode: observe}]\n",
    )
    assert sorted(c.params["model"]["mode"] for c in m.cells) == ["active", "off", "off"]


@pytest.mark.parametrize(
    ("model", "line", "key", "message"),
    [
        ("{mode: on}", 6, "axes.model[0].mode", "must be a string, got bool True"),
        ("{mode: sometimes}", 6, "axes.model[0].mode", "must be one of off, observe, active"),
        ("{trainer: user}", 6, "axes.model[0]", "missing required key 'mode'"),
        ("{mode: off, trainer: user}", 6, "axes.model[0].trainer", "a cell with mode off"),
        ("{mode: active, ring_mode: spin}", 6, "axes.model[0].ring_mode", "block, drop"),
        ("{mode: active, trainer: user, cpu_pct: 0}", 6, "axes.model[0].cpu_pct", "1..100"),
        ("{mode: active, decision_permille: 0}", 6, "axes.model[0].decision_permille", "1..64000"),
        ("{mode: active, model_file: nope.kmlm}", 6, "axes.model[0].model_file", "not found"),
        (
            "{mode: active, trainer: kernel, warm_start: m.yaml}",
            6,
            "axes.model[0].warm_start",
            "warm_start is for trainer user",
        ),
        ("{mode: active, colour: red}", 6, "axes.model[0].colour", "unknown key 'colour'"),
        ("{mode: active, policy: fastest}", 6, "axes.model[0].policy", "one of expire, cost"),
        (
            "{mode: active, policy: cost, cost_age_shift: 41}",
            6,
            "axes.model[0].cost_age_shift",
            "0..40",
        ),
        ("{mode: observe, observe_every: 0}", 6, "axes.model[0].observe_every", "1..1024"),
        ("{mode: active, lazy: sometimes}", 6, "axes.model[0].lazy", "true or false"),
        (
            "{mode: active, skill_min_permille: 1001}",
            6,
            "axes.model[0].skill_min_permille",
            "0..1000",
        ),
        (
            "{mode: active, skill_min_permille: -1}",
            6,
            "axes.model[0].skill_min_permille",
            "0..1000",
        ),
        (
            "{mode: observe, sample_unclaimed: 0}",
            6,
            "axes.model[0].sample_unclaimed",
            "true or false",
        ),
        (
            "{mode: observe, trainer: kernel, publish_dtype: half}",
            6,
            "axes.model[0].publish_dtype",
            "one of float32, fixed",
        ),
        ("{mode: observe, calibrate_s: -1}", 6, "axes.model[0].calibrate_s", "0..3600"),
        (
            "{mode: observe, calibrate_s: 5}",
            6,
            "axes.model[0].calibrate_s",
            "calibrate_s needs a model_file",
        ),
        (
            "{mode: observe, trainer: kernel, calibrate_s: 5}",
            6,
            "axes.model[0].calibrate_s",
            "trainer 'kernel' sets the threshold itself",
        ),
        ("{mode: off, calibrate_s: 5}", 6, "axes.model[0].calibrate_s", "observe or active"),
        ("[]", 6, "axes.model", "non-empty list"),
    ],
)
def test_model_errors_are_located(
    tmp_path: Path, model: str, line: int, key: str, message: str
) -> None:
    with pytest.raises(MatrixError) as info:
        load(tmp_path, HEAD + f"  model: [{model}]\n" if model != "[]" else HEAD + "  model: []\n")
    err = info.value
    assert (err.line, err.key) == (line, key), str(err)
    assert message in err.message
    assert str(err).startswith(f"{tmp_path / 'm.yaml'}:{line}: {key}: ")


def test_exclude_of_model_without_axis_is_useless(tmp_path: Path) -> None:
    with pytest.raises(MatrixError, match="excludes no cell"):
        load(tmp_path, HEAD + "exclude: [{model.mode: active}]\n")


def test_nr_requests_is_a_queue_setting_recorded_only_when_given(tmp_path: Path) -> None:
    m = load(
        tmp_path,
        HEAD.replace("{name: none}", "{name: none, nr_requests: 256}").replace(
            "{name: mq-deadline}", "{name: mq-deadline, nr_requests: [64, 128]}"
        ),
    )
    got = sorted(
        (c.params["scheduler"]["name"], c.params["scheduler"].get("nr_requests")) for c in m.cells
    )
    assert got == [("mq-deadline", 64), ("mq-deadline", 128), ("none", 256)]
    script = device.setup_script({"type": "null_blk"}, {"name": "none", "nr_requests": 256})
    # after the scheduler (a switch resets it), under queue/, not queue/iosched/
    assert script.index('setattr "/sys/block/$dev/queue/nr_requests" 256') > script.index(
        "/queue/scheduler"
    )
    assert "iosched/nr_requests" not in script
    for bad in (1, 4096):  # below BLKDEV_MIN_RQ, above MAX_SCHED_RQ
        with pytest.raises(MatrixError, match=r"must be in 4\.\.2048"):
            load(tmp_path, HEAD.replace("{name: none}", f"{{name: none, nr_requests: {bad}}}"))


def test_policy_is_recorded_where_it_steers(tmp_path: Path) -> None:
    """``policy`` only in active mode and only when not the default (so
    active cells from before the key keep their ids); the shift only under
    policy cost; the set-up writes both whatever the record holds."""
    m = load(
        tmp_path,
        HEAD
        + "  model:\n"
        + "    - {mode: [observe, active], policy: [expire, cost], cost_age_shift: 3}\n",
    )
    models = sorted(
        (c.params["model"] for c in m.cells if c.params["scheduler"]["name"] == "mq-deadline"),
        key=lambda p: (p["mode"], p.get("policy", "")),
    )
    # observe x 2 policies reduce to one; active expire is the old record
    assert [(p["mode"], p.get("policy"), p.get("cost_age_shift")) for p in models] == [
        ("active", None, None),
        ("active", "cost", 3),
        ("observe", None, None),
    ]
    default = load(tmp_path, HEAD + "  model: [{mode: active}]\n")
    explicit = load(tmp_path, HEAD + "  model: [{mode: active, policy: expire}]\n")
    assert {c.id for c in default.cells} == {c.id for c in explicit.cells}
    dev = device.BlockDevice("nullb0")
    cost = kml_setup_script(
        {"mode": "active", "policy": "cost", "cost_age_shift": 3}, dev, trainer_seconds=1
    )
    assert "setchoice /sys/module/kml/parameters/policy cost" in cost
    assert "setnum /sys/module/kml/parameters/cost_age_shift 3" in cost
    expire = kml_setup_script({"mode": "active"}, dev, trainer_seconds=1)
    assert "setchoice /sys/module/kml/parameters/policy expire" in expire
    with pytest.raises(device.DeviceError, match="kml policy 'fastest'"):
        kml_setup_script({"mode": "active", "policy": "fastest"}, dev, trainer_seconds=1)


# A model key recorded only where it means something and only when not its
# default, so that cells from before the key keep their ids; the set-up
# writes it always. (key, its values in the matrix, the mode-value pairs
# the cells record, its default, a value that is not)
SPARSE_KEYS = [
    pytest.param(
        "observe_every", "[1, 16]",
        [("active", None), ("observe", None), ("observe", 16)],  # active x 2 reduce to one
        1, 16, id="observe_every",
    ),
    pytest.param(
        "lazy", "[false, true]",
        [("active", None), ("active", True), ("observe", None)],  # observe x 2 reduce to one
        False, True, id="lazy",
    ),
    pytest.param(
        "sample_unclaimed", "[true, false]",
        [("active", None), ("active", False), ("observe", None), ("observe", False)],
        True, False, id="sample_unclaimed",
    ),
    pytest.param(
        "skill_min_permille", "[500, 1000]",
        [("active", None), ("active", 1000), ("observe", None)],  # observe x 2 reduce to one
        500, 1000, id="skill_min_permille",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("key", "values", "records", "default", "other"), SPARSE_KEYS)
def test_sparse_model_keys_are_recorded_where_they_mean_something(
    tmp_path: Path,
    key: str,
    values: str,
    records: list[tuple[str, Any]],
    default: Any,
    other: Any,
) -> None:
    m = load(
        tmp_path, HEAD + f"  model:\n    - {{mode: [off, observe, active], {key}: {values}}}\n"
    )
    models = [c.params["model"] for c in m.cells if c.params["scheduler"]["name"] == "mq-deadline"]
    got = [(p["mode"], p.get(key)) for p in models if p["mode"] != "off"]
    assert sorted(got, key=repr) == sorted(records, key=repr)
    assert [p for p in models if p["mode"] == "off"] == [{"mode": "off"}]
    yaml_default = str(default).lower()
    for mode in ("observe", "active"):
        old = load(tmp_path, HEAD + f"  model: [{{mode: {mode}}}]\n")
        explicit = load(tmp_path, HEAD + f"  model: [{{mode: {mode}, {key}: {yaml_default}}}]\n")
        assert {c.id for c in old.cells} == {c.id for c in explicit.cells}
    dev = device.BlockDevice("nullb0")
    told_mode = next(mode for mode, value in records if value is not None)
    told = kml_setup_script({"mode": told_mode, key: other}, dev, trainer_seconds=1)
    assert f"setnum /sys/module/kml/parameters/{key} {int(other)}" in told
    untold = kml_setup_script({"mode": "active"}, dev, trainer_seconds=1)
    assert f"setnum /sys/module/kml/parameters/{key} {int(default)}" in untold


ROTATIONAL = "{type: null_blk, irqmode: timer, service: rotational, hw_queue_depth: 1}"


def test_geometry_is_the_disks_and_recorded_only_when_told(tmp_path: Path) -> None:
    """``geometry: true`` tells policy cost the rotational model's own
    revolution and track and cylinder sizes (schema.NULL_BLK_SERVICE_MODELS,
    one place); without it neither it nor the credit is recorded, so policy
    cost's cells from before the key keep their ids; every set-up writes
    all four parameters, 0 for a geometry not told (they are global)."""
    head = HEAD.replace("[{type: null_blk}]", f"[{ROTATIONAL}]")
    m = load(
        tmp_path,
        head
        + "  model:\n"
        + "    - {mode: active, policy: cost, geometry: [false, true],"
        + " cost_credit_permille: [1000, 500]}\n"
        + "    - {mode: [observe, active], geometry: true}\n",
    )
    models = sorted(
        (
            (p.get("policy"), p.get("geometry"), p.get("cost_credit_permille"))
            for c in m.cells
            if (p := c.params["model"])["mode"] == "active"
        ),
        key=str,
    )
    # without a geometry the credit is not recorded (two entries reduce to
    # one); under policy expire the geometry is not either
    assert models == [
        ("cost", None, None),
        ("cost", True, 1000),
        ("cost", True, 500),
        (None, None, None),
    ]
    # the lateness rate is recorded only when not 0 (its default): the cells
    # of the credit alone keep their ids
    late = load(
        tmp_path,
        head
        + "  model: [{mode: active, policy: cost, geometry: true,"
        + " cost_late_permille: [0, 1000], cost_horizon_ms: [0, 200],"
        + " cost_svc_permille: [1000, 0], cost_window_permille: [0, 64],"
        + " cost_wait_cap_permille: [0, 1400]}]\n",
    )
    recorded = {
        (
            str(c.params["model"].get("cost_late_permille")),
            str(c.params["model"].get("cost_horizon_ms")),
            str(c.params["model"].get("cost_svc_permille")),
            str(c.params["model"].get("cost_window_permille")),
            str(c.params["model"].get("cost_wait_cap_permille")),
        )
        for c in late.cells
    }
    assert sorted(recorded) == [
        (late_, horizon, svc, window, cap)
        for late_ in ("1000", "None")
        for horizon in ("200", "None")
        for svc in ("0", "None")
        for window in ("64", "None")
        for cap in ("1400", "None")
    ]
    plain = load(tmp_path, head + "  model: [{mode: active, policy: cost, geometry: true}]\n")
    assert {c.id for c in plain.cells} < {c.id for c in late.cells}
    before = load(tmp_path, head + "  model: [{mode: active, policy: cost}]\n")
    untold = load(tmp_path, head + "  model: [{mode: active, policy: cost, geometry: false}]\n")
    assert {c.id for c in before.cells} == {c.id for c in untold.cells}
    # the cap on waiting is no geometry's: recorded with or without one
    capped = load(
        tmp_path,
        head
        + "  model: [{mode: active, policy: cost, geometry: false,"
        + " cost_wait_cap_permille: 1400}]\n",
    )
    (mqdl,) = [c for c in capped.cells if c.params["scheduler"]["name"] == "mq-deadline"]
    assert mqdl.params["model"].get("cost_wait_cap_permille") == 1400
    assert "geometry" not in mqdl.params["model"]
    # and so are its ramp and bound, each recorded only when set (old cells'
    # ids stay)
    set_so_far = "cost_wait_cap_permille: 1300"
    for key, value in (("cost_wait_ramp_permille", 250), ("cost_wait_bound_permille", 1600)):
        assert key not in mqdl.params["model"]
        set_so_far += f", {key}: {value}"
        matrix = load(tmp_path, head + f"  model: [{{mode: active, policy: cost, {set_so_far}}}]\n")
        (mqdl,) = [c for c in matrix.cells if c.params["scheduler"]["name"] == "mq-deadline"]
        assert mqdl.params["model"].get(key) == value

    dev = device.BlockDevice("nullb0")
    disk = {"type": "null_blk", "service": "rotational"}
    told = kml_setup_script(
        {
            "mode": "active",
            "policy": "cost",
            "geometry": True,
            "cost_credit_permille": 500,
            "cost_late_permille": 1000,
            "cost_horizon_ms": 200,
            "cost_svc_permille": 250,
            "cost_miss_budget_permille": 120,
            "cost_window_permille": 64,
            "cost_wait_cap_permille": 1400,
            "cost_wait_ramp_permille": 250,
            "cost_wait_bound_permille": 1600,
        },
        dev,
        trainer_seconds=1,
        geometry=device_geometry(disk),
    )
    rot = NULL_BLK_SERVICE_MODELS["rotational"]
    for param, value in (
        ("cost_rev_ns", rot["svc_rev_ns"]),
        ("cost_track_sectors", rot["svc_track_sectors"]),
        ("cost_cyl_sectors", rot["svc_cyl_sectors"]),
        ("cost_credit_permille", 500),
        ("cost_late_permille", 1000),
        ("cost_horizon_ms", 200),
        ("cost_svc_permille", 250),
        ("cost_miss_budget_permille", 120),
        ("cost_window_permille", 64),
        ("cost_wait_cap_permille", 1400),
        ("cost_wait_ramp_permille", 250),
        ("cost_wait_bound_permille", 1600),
    ):
        assert f"/sys/module/kml/parameters/{param} {value}\n" in told, param
    untold_script = kml_setup_script({"mode": "active", "policy": "cost"}, dev, trainer_seconds=1)
    for param in ALL_GEOMETRY_PARAMS:
        assert f"/sys/module/kml/parameters/{param} 0\n" in untold_script, param
    assert "/sys/module/kml/parameters/cost_credit_permille 1000\n" in untold_script
    assert "/sys/module/kml/parameters/cost_late_permille 0\n" in untold_script
    assert "/sys/module/kml/parameters/cost_horizon_ms 0\n" in untold_script
    assert "/sys/module/kml/parameters/cost_svc_permille 1000\n" in untold_script
    assert "/sys/module/kml/parameters/cost_miss_budget_permille 0\n" in untold_script
    assert "/sys/module/kml/parameters/cost_window_permille 0\n" in untold_script
    assert "/sys/module/kml/parameters/cost_wait_cap_permille 0\n" in untold_script
    assert "/sys/module/kml/parameters/cost_wait_ramp_permille 0\n" in untold_script
    assert "/sys/module/kml/parameters/cost_wait_bound_permille 0\n" in untold_script
    for param in ("cost_channels", "cost_stripe_sectors"):
        assert f"/sys/module/kml/parameters/{param} 0\n" in told, param
    # a flash device's geometry is its channels and stripe, and nothing of a disk's
    flash = NULL_BLK_SERVICE_MODELS["flash"]
    assert device_geometry({"type": "null_blk", "service": "flash"}, seek_curve=True) == {
        "cost_rev_ns": 0,
        "cost_track_sectors": 0,
        "cost_cyl_sectors": 0,
        "cost_channels": flash["svc_channels"],
        "cost_stripe_sectors": flash["svc_stripe_sectors"],
        **dict.fromkeys(SEEK_CURVE_PARAMS, 0),
    }
    flash_told = kml_setup_script(
        {"mode": "active", "policy": "cost", "geometry": True},
        dev,
        trainer_seconds=1,
        geometry=device_geometry({"type": "null_blk", "service": "flash"}),
    )
    for param, value in (("cost_channels", 8), ("cost_stripe_sectors", 8), ("cost_rev_ns", 0)):
        assert f"/sys/module/kml/parameters/{param} {value}\n" in flash_told, param
    assert not any(device_geometry({"type": "null_blk"}).values())
    assert not any(device_geometry({"type": "virtio"}).values())


def _off_and(devices: str, entry: str) -> str:
    """A matrix of ``devices`` whose model axis is ``mode: off`` and ``entry`` (line 8)."""
    return (
        HEAD.replace("[{type: null_blk}]", devices)
        + "  model:\n"
        + "    - {mode: off}\n"
        + f"    - {entry}\n"
    )


def test_geometry_needs_a_device_model_that_has_one(tmp_path: Path) -> None:
    flash = "{type: null_blk, irqmode: timer, service: flash}"
    fixed = "{type: null_blk, irqmode: timer, completion_nsec: 1000000}"
    text = _off_and(
        f"[{ROTATIONAL}, {flash}, {fixed}]", "{mode: active, policy: cost, geometry: true}"
    )
    with pytest.raises(MatrixError) as info:
        load(tmp_path, text)
    err = info.value
    assert (err.line, err.key) == (8, "axes.model[1].geometry"), str(err)
    assert "needs a device with service: rotational or flash" in err.message
    assert "axes.device[2]" in err.message
    # excluded where there is none, it runs on the disk and the flash device
    m = load(
        tmp_path, text + "exclude: [{device.completion_nsec: 1000000, model.geometry: true}]\n"
    )
    told = [c for c in m.cells if c.params["model"].get("geometry")]
    assert sorted(c.params["device"].get("service") for c in told) == ["flash", "rotational"]
    for bad, message in (
        ("cost_credit_permille: 8001", "0..8000"),
        ("cost_late_permille: 8001", "0..8000"),
        ("cost_horizon_ms: -1", "0..60000"),
        ("cost_svc_permille: 1001", "0..1000"),
        ("cost_miss_budget_permille: 1001", "0..1000"),
        ("cost_window_permille: 1001", "0..1000"),
        ("cost_window_permille: -1", "0..1000"),
        ("cost_wait_cap_permille: 100001", "0..100000"),
        ("cost_wait_cap_permille: -1", "0..100000"),
        ("cost_wait_ramp_permille: 8001", "0..8000"),
        ("cost_wait_ramp_permille: -1", "0..8000"),
        ("cost_wait_bound_permille: 100001", "0..100000"),
        ("cost_wait_bound_permille: -1", "0..100000"),
        ('geometry: "on"', "must be true or false"),
        ("seek_curve: 1", "must be true or false"),
    ):
        with pytest.raises(MatrixError, match=message):
            load(tmp_path, HEAD + f"  model: [{{mode: active, policy: cost, {bad}}}]\n")


def _mqdl(cell) -> bool:
    return cell.params["scheduler"]["name"] == "mq-deadline"


def test_seek_curve_is_the_disks_and_recorded_only_when_told(tmp_path: Path) -> None:
    """``seek_curve: true`` beside ``geometry: true`` tells policy cost the
    rotational model's own seek curve (NULL_BLK_SERVICE_MODELS, one place),
    which it otherwise learns; recorded only when told, so the cells of the
    learned curve keep their ids; every set-up writes its five parameters,
    0 when not told; on a device without a seek curve a cell is refused
    with the entry's line and key."""
    head = HEAD.replace("[{type: null_blk}]", f"[{ROTATIONAL}]")
    m = load(
        tmp_path,
        head
        + "  model: [{mode: active, policy: cost, geometry: true, seek_curve: [false, true]}]\n",
    )
    plain = load(tmp_path, head + "  model: [{mode: active, policy: cost, geometry: true}]\n")
    curves = {c.id: c.params["model"].get("seek_curve") for c in m.cells if _mqdl(c)}
    assert sorted(curves.values(), key=str) == [None, True]
    assert {i for i, told in curves.items() if not told} == {c.id for c in plain.cells if _mqdl(c)}
    # without a geometry it tells nothing, and is not recorded either
    untold = load(tmp_path, head + "  model: [{mode: active, policy: cost, seek_curve: true}]\n")
    assert all("seek_curve" not in c.params["model"] for c in untold.cells)

    dev = device.BlockDevice("nullb0")
    disk = {"type": "null_blk", "service": "rotational"}
    rot = NULL_BLK_SERVICE_MODELS["rotational"]
    model = {"mode": "active", "policy": "cost", "geometry": True, "seek_curve": True}
    told = kml_setup_script(
        model, dev, trainer_seconds=1, geometry=device_geometry(disk, seek_curve=True)
    )
    learned = kml_setup_script(model, dev, trainer_seconds=1, geometry=device_geometry(disk))
    assert len(SEEK_CURVE_PARAMS) == 5
    for param, attr in SEEK_CURVE_PARAMS.items():
        assert rot[attr] > 0, attr
        assert f"/sys/module/kml/parameters/{param} {rot[attr]}\n" in told, param
        assert f"/sys/module/kml/parameters/{param} 0\n" in learned, param
    assert f"/sys/module/kml/parameters/cost_rev_ns {rot['svc_rev_ns']}\n" in learned

    flash = "{type: null_blk, irqmode: timer, service: flash}"
    entry = "{mode: active, policy: cost, geometry: true, seek_curve: true}"
    with pytest.raises(MatrixError) as info:
        load(tmp_path, _off_and(f"[{ROTATIONAL}, {flash}]", entry))
    err = info.value
    assert (err.line, err.key) == (8, "axes.model[1].seek_curve"), str(err)
    assert "needs a device with service: rotational" in err.message
    assert "axes.device[1]" in err.message


def test_a_model_needs_the_kml_parts_its_kernel_variant_keeps(tmp_path: Path) -> None:
    """A cell whose model needs a part of KML that its kernel variant's
    fragments leave out (kernel/kml/Kconfig) is refused when the matrix is
    loaded, naming the entry, the option and the fragment, not in a guest."""
    configs = paths.CONFIGS_DIR
    kernels = (
        "  kernel:\n"
        "    - {name: default}\n"
        f"    - {{name: lean, fragments: [{configs / 'kml-lean.config'}]}}\n"
        f"    - {{name: nokml, fragments: [{configs / 'no-kml-iosched.config'}]}}\n"
    )
    q16 = paths.WORKLOADS_DIR / "models" / "deadline-small-q16.kmlm"
    f32 = paths.WORKLOADS_DIR / "models" / "deadline.kmlm"
    cases = [
        # (model entry, the option it needs, the variant without it, its fragment)
        ("{mode: observe}", "CONFIG_KML_IOSCHED", "nokml", "no-kml-iosched.config:"),
        (f"{{mode: active, model_file: {f32}}}", "CONFIG_KML_FLOAT", "lean", "kml-lean.config:"),
        ("{mode: observe, trainer: kernel}", "CONFIG_KML_FLOAT", "lean", "kml-lean.config:"),
        (
            f"{{mode: active, model_file: {q16}, policy: cost}}",
            "CONFIG_KML_IOSCHED_COST",
            "lean",
            "kml-lean.config:",
        ),
    ]
    for entry, option, variant, fragment in cases:
        text = HEAD + kernels + f"  model:\n    - {{mode: off}}\n    - {entry}\n"
        with pytest.raises(MatrixError) as info:
            load(tmp_path, text)
        err = info.value
        assert err.key == "axes.model[1]", str(err)
        assert err.line == 12, str(err)  # the entry's line
        assert option in err.message and f"variant {variant!r}" in err.message, err.message
        assert f"({fragment}" in err.message and "exclude the pair" in err.message, err.message
        # excluded where the part is missing, the rest runs
        excl = "lean, nokml" if variant == "lean" else "nokml"
        m = load(
            tmp_path,
            text + f"exclude: [{{kernel.name: [{excl}], model.mode: [observe, active]}}]\n",
        )
        assert {c.params["kernel"]["name"] for c in m.cells} == {"default", "lean", "nokml"}
    # what the lean kernel keeps: Q16.16 models, the user trainer, every
    # mode, policy expire (policy cost means nothing outside active mode)
    text = (
        HEAD
        + kernels
        + f"  model:\n    - {{mode: [observe, active], model_file: {q16}, trainer: user}}\n"
        + f"    - {{mode: observe, model_file: {q16}, policy: cost}}\n"
        + "exclude: [{kernel.name: nokml, model.mode: [observe, active]}]\n"
    )
    m = load(tmp_path, text)
    lean = [
        c.params["model"]
        for c in m.cells
        if c.params["kernel"]["name"] == "lean" and c.params["scheduler"]["name"] == "mq-deadline"
    ]
    assert len(lean) == 3 and all("model_file" in model for model in lean), lean
    # a kernel without training only: the kernel trainer needs it; a float
    # warm start (the user trainer's, in user space) does not
    no_train = f"  kernel:\n    - {{name: nt, fragments: [{configs / 'kml-no-train.config'}]}}\n"
    with pytest.raises(MatrixError, match="trainer kernel needs CONFIG_KML_TRAIN"):
        load(tmp_path, HEAD + no_train + "  model: [{mode: observe, trainer: kernel}]\n")
    warm = f"  model: [{{mode: active, model_file: {q16}, trainer: user, warm_start: {f32}}}]\n"
    assert load(tmp_path, HEAD + kernels.split("    - {name: nokml")[0] + warm).cells


def test_an_option_whose_kconfig_dependency_is_off_is_left_out_too(tmp_path: Path) -> None:
    """A fragment that turns off what a KML option depends on (kernel/kml/
    Kconfig: CONFIG_KML_IOSCHED on CONFIG_KML and CONFIG_MQ_IOSCHED_DEADLINE)
    turns that option off as well: a model cell is refused naming both."""
    assert plan_kernel.kml_depends()["CONFIG_KML_IOSCHED"] == [
        "CONFIG_KML",
        "CONFIG_MQ_IOSCHED_DEADLINE",
    ]
    for off in ("CONFIG_KML", "CONFIG_MQ_IOSCHED_DEADLINE"):
        frag = tmp_path / "off.config"
        frag.write_text(f"# a variant without it\n# {off} is not set\n")
        text = (
            HEAD + f"  kernel: [{{name: bare, fragments: [{frag}]}}]\n"
            "  model: [{mode: observe}]\n"
        )
        with pytest.raises(MatrixError) as info:
            load(tmp_path, text)
        msg = info.value.message
        assert "mode observe needs CONFIG_KML_IOSCHED" in msg, msg
        assert f"(off.config:2, via {off})" in msg, msg
    # turned on again by a later fragment: nothing left out
    again = tmp_path / "again.config"
    again.write_text("CONFIG_KML=y\n")
    frag.write_text("# CONFIG_KML is not set\n")
    assert "CONFIG_KML_IOSCHED" not in plan_kernel.options_left_out([frag, again])


def test_publish_dtype_is_recorded_for_a_trainer_that_publishes_fixed(tmp_path: Path) -> None:
    """``publish_dtype``: recorded only with a trainer and when ``fixed``, so
    cells from before the key keep their ids; the set-up tells each trainer."""
    m = load(
        tmp_path,
        HEAD + "  model:\n    - {mode: observe, trainer: [none, kernel, user], "
        "publish_dtype: [float32, fixed]}\n",
    )
    got = sorted(
        (
            (c.params["model"]["trainer"], c.params["model"].get("publish_dtype"))
            for c in m.cells
            if c.params["scheduler"]["name"] == "mq-deadline"
        ),
        key=repr,
    )
    want = [
        ("kernel", None),
        ("kernel", "fixed"),
        ("none", None),
        ("user", None),
        ("user", "fixed"),
    ]
    assert got == sorted(want, key=repr)
    for trainer in ("kernel", "user"):
        old = load(tmp_path, HEAD + f"  model: [{{mode: active, trainer: {trainer}}}]\n")
        explicit = load(
            tmp_path,
            HEAD + f"  model: [{{mode: active, trainer: {trainer}, publish_dtype: float32}}]\n",
        )
        assert {c.id for c in old.cells} == {c.id for c in explicit.cells}
    dev = device.BlockDevice("nullb0")
    param = "/sys/module/kml/parameters/ktrainer_publish_q16"
    for model, want in [
        ({}, f"echo 0 > {param}"),
        ({"publish_dtype": "fixed"}, f"echo 1 > {param}"),
    ]:
        script = kml_setup_script(
            {"mode": "observe", "trainer": "kernel", **model}, dev, trainer_seconds=1
        )
        assert want in script
    for dtype, told in [("float32", False), ("fixed", True)]:
        script = kml_setup_script(
            {"mode": "observe", "trainer": "user", "publish_dtype": dtype}, dev, trainer_seconds=1
        )
        assert ("--publish-dtype fixed" in script) == told
        assert "kmlctl train" in script and "--publish-dtype float32" not in script
    with pytest.raises(device.DeviceError, match="kml publish_dtype 'half'"):
        kml_setup_script(
            {"mode": "observe", "trainer": "user", "publish_dtype": "half"}, dev, trainer_seconds=1
        )


def test_calibrate_s_observes_the_cells_load_first_and_is_recorded_only_when_set(
    tmp_path: Path,
) -> None:
    """``calibrate_s``: the set-up runs the calibration's job in observe mode
    from zeroed statistics, making no sample, and runs ``kmlctl calibrate``,
    before any consumer takes the ring and before the statistics are zeroed
    for the cell's run;
    cells from before the key keep their ids."""
    model = tmp_path / "m.kmlm"
    model.write_bytes(b"a model")
    old = load(tmp_path, HEAD + "  model: [{mode: active, model_file: m.kmlm}]\n")
    explicit = load(
        tmp_path, HEAD + "  model: [{mode: active, model_file: m.kmlm, calibrate_s: 0}]\n"
    )
    assert {c.id for c in old.cells} == {c.id for c in explicit.cells}
    told = load(tmp_path, HEAD + "  model: [{mode: active, model_file: m.kmlm, calibrate_s: 4}]\n")
    [params] = [c.params["model"] for c in told.cells if c.params["model"]["mode"] != "off"]
    assert params["calibrate_s"] == 4
    dev = device.BlockDevice("nullb0")
    stats = "/sys/kernel/debug/kml/iosched"
    script = kml_setup_script({"mode": "active"}, dev, trainer_seconds=1, calibrate=True)
    unclaimed = "/sys/module/kml/parameters/sample_unclaimed"
    steps = [
        f"setnum {unclaimed} 1",  # the cell's
        f"setnum {unclaimed} 0",  # no sample while nobody takes them
        f"echo reset > {stats}",
        'setchoice "$q/kml_mode" observe',
        "fio --output-format=json+ /tmp/calibrate.fio",
        'setchoice "$q/kml_mode" off',
        f"{KMLCTL} calibrate",
        f"setnum {unclaimed} 1",
        f"echo reset > {stats}",
        'setchoice "$q/kml_mode" active',
    ]
    at = 0
    for step in steps:  # in this order
        found = script.find(step, at)
        assert found >= 0, f"{step!r} after {script[:at]!r}"
        at = found + len(step)
    # a cell that makes no unclaimed sample gets its own value back
    script = kml_setup_script(
        {"mode": "active", "sample_unclaimed": False}, dev, trainer_seconds=1, calibrate=True
    )
    after = script[script.index(f"{KMLCTL} calibrate") :]
    assert f"setnum {unclaimed} 0" in after and f"setnum {unclaimed} 1" not in after
    assert "calibrate" not in kml_setup_script({"mode": "active"}, dev, trainer_seconds=1)


KMLCTL_SAYS = """\
kmlbench-calibrate: predictions 13054
kmlbench-calibrate: met 12762
kmlbench-calibrate: calibrated 1
kmlbench-calibrate: status ok
kmlbench-calibrate: decision_permille 707
kmlbench-calibrate: balanced_accuracy 0.812345
kmlbench-calibrate: auc 0.880000
kmlbench-kml: kml_mode=observe trainer=none
"""


def test_the_calibrations_outcome_is_read_from_the_set_up() -> None:
    assert calibration.outcome(KMLCTL_SAYS, 6) == {
        "seconds": 6, "predictions": 13054, "met": 12762, "calibrated": True, "status": "ok",
        "decision_permille": 707, "balanced_accuracy": 0.812345, "auc": 0.88,
    }  # fmt: skip
    refused = KMLCTL_SAYS.replace("calibrated 1", "calibrated 0").replace("ok", "few-missed")
    assert calibration.outcome(refused, 6)["calibrated"] is False


@pytest.mark.parametrize(
    ("output", "error"),
    [
        ("", "did not say"),
        (KMLCTL_SAYS.replace("kmlbench-calibrate: auc 0.880000\n", ""), "did not say auc"),
        (KMLCTL_SAYS + "kmlbench-calibrate: met 1\n", "unexpected line"),
        (KMLCTL_SAYS.replace("met 12762", "met many"), "invalid literal"),
    ],
)
def test_a_set_up_without_one_calibration_outcome_is_an_error(output: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        calibration.outcome(output, 6)


def _offsets(job_text: str, tmp_path: Path, name: str) -> list[tuple[str, int]]:
    """The first operations fio issues for ``job_text`` on a file in
    ``tmp_path`` (buffered: tmpfs has no O_DIRECT), from its I/O log."""
    job = tmp_path / f"{name}.fio"
    job.write_text(job_text.replace("direct=1", "direct=0"))
    log = tmp_path / f"{name}.log"
    subprocess.run(
        ["fio", "--output-format=json", f"--write_iolog={log}", str(job)],
        cwd=tmp_path, capture_output=True, check=True, timeout=120,
    )  # fmt: skip
    ops = [line.split() for line in log.read_text().splitlines()]
    return [(w[2], int(w[3])) for w in ops if len(w) == 5 and w[2] in ("read", "write")][:32]


@pytest.mark.skipif(shutil.which("fio") is None, reason="no fio on the host (scripts/setup.sh)")
def test_the_calibration_sees_the_cells_load_not_its_requests(tmp_path: Path) -> None:
    """The calibration's job is the cell's with a random sequence of its own,
    the same from run to run: fio itself, on the host, says which requests
    each job issues."""
    matrix = load_matrix(paths.WORKLOADS_DIR / "generalise-calibrate.yaml")
    cell = next(c for c in matrix.cells if c.params["model"].get("calibrate_s"))
    workload = {**cell.params["workload"], "runtime_s": 1, "size_mib": 8}
    target = str(tmp_path / "target.dat")
    cells_own = _offsets(fio_job.render_job(workload, target), tmp_path, "cell")
    first = _offsets(calibration.job(workload, target, 1), tmp_path, "calibration")
    again = _offsets(calibration.job(workload, target, 1), tmp_path, "again")
    assert len(first) == len(cells_own) == 32
    assert first == again
    # the offsets, not only the read/write mix (fio keeps its fixed seed for
    # the offsets under randrepeat, whatever randseed says)
    assert sum(a[1] != b[1] for a, b in zip(first, cells_own, strict=True)) > 16
