"""cell/model.py: the guest shell that sets KML up for a model cell and stops it.

The scripts run for real in tests/test_e2e_model.py; here they must at
least parse in the guest's shell (busybox ash) and say what they do.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from kmlbench.cell import model as kml
from kmlbench.cell.guest_paths import DeviceError, block_device

BUSYBOX = shutil.which("busybox")
NULLB0 = block_device("/dev/nullb0")

MODELS = [
    {"mode": "observe", "trainer": "none", "ring_mode": "drop", "sample_filter": "all"},
    {"mode": "active", "trainer": "kernel", "ring_mode": "block", "sample_filter": "uncertain",
     "rate": 500, "cpu_pct": 25, "publish_every": 256},
    {"mode": "active", "trainer": "user", "ring_mode": "drop", "sample_filter": "all",
     "rate": 0, "cpu_pct": 100, "publish_every": 512, "warm_start": "x"},
]  # fmt: skip


def _parses(script: str) -> None:
    shells = [["sh", "-n"]] + ([[BUSYBOX, "sh", "-n"]] if BUSYBOX else [])
    for shell in shells:
        proc = subprocess.run([*shell], input=script, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, (shell, proc.stderr)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: f"{m['mode']}-{m['trainer']}")
def test_setup_and_stop_scripts_parse(model: dict) -> None:
    setup = kml.kml_setup_script(
        model, NULLB0, trainer_seconds=40, model_uploaded=True, warm_uploaded=True
    )
    _parses(setup)
    _parses(kml.kml_stop_script(model))
    # the order that loses no sample: model, parameters, trainer, reset, mode
    order = [
        setup.index("kmlctl load /tmp/model.kmlm"),
        setup.index("/sys/module/kml/parameters/ring_mode"),
        setup.index("reset > /sys/kernel/debug/kml/iosched"),
        setup.index('"$q/kml_mode"', setup.index("reset >")),
    ]
    assert order == sorted(order)
    assert 'q="/sys/block/nullb0/queue/iosched"' in setup
    assert "setnum /sys/module/kml/parameters/decision_permille 1000" in setup
    if model["trainer"] == "user":
        assert (
            "setsid /usr/bin/kmlctl train --mode drop --rate 0 --cpu-pct 100 --publish-every 512 "
            "--seconds 40 --save /tmp/trained.kmlm --curve /tmp/curve.jsonl --warm /tmp/warm.kmlm"
        ) in setup
        assert "stop /tmp/trainer.pid" in kml.kml_stop_script(model)
    if model["trainer"] == "kernel":
        assert "setnum /sys/module/kml/parameters/ktrainer_rate 500" in setup
        assert "setnum /sys/module/kml/parameters/ktrainer_cpu_pct 25" in setup
        assert "echo 1 > /sys/module/kml/parameters/ktrainer" in setup
        assert "echo 0 > /sys/module/kml/parameters/ktrainer" in kml.kml_stop_script(model)


def test_trace_takes_the_ring() -> None:
    model = MODELS[0]
    setup = kml.kml_setup_script(model, NULLB0, trainer_seconds=9, trace_seconds=9)
    _parses(setup)
    assert "setsid /usr/bin/kmlctl trace /tmp/trace.kmltrc --seconds 9" in setup
    assert "stop /tmp/tracer.pid" in kml.kml_stop_script(model, trace=True)
    with pytest.raises(DeviceError, match="no trainer"):
        kml.kml_setup_script(MODELS[1], NULLB0, trainer_seconds=9, trace_seconds=9)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"mode": "off"}, "off needs no set-up"),
        ({"mode": "observe", "ring_mode": "spin"}, "ring_mode 'spin'"),
        ({"mode": "observe", "trainer": "gpu"}, "trainer 'gpu'"),
    ],
)
def test_bad_models_are_refused(model: dict, message: str) -> None:
    with pytest.raises(DeviceError, match=message):
        kml.kml_setup_script(model, NULLB0, trainer_seconds=1)
    with pytest.raises(DeviceError, match="bad block device"):
        kml.kml_setup_script(MODELS[0], block_device("/dev/null b0; rm"), trainer_seconds=1)
