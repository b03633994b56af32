"""Every guest script and command a cell sends, for every cell of every shipped matrix.

``tests/data/guest-scripts.golden.json`` holds them as the harness rendered
them before its guest shell moved from Python string lists into ``.sh``
files (commit 9c3e592, ``cell/devices.py`` and ``run/runner.py``:
:class:`OldBackend`); ``tests/test_guest_scripts.py`` asserts that today's
code (:class:`CurrentBackend`) renders the same bytes. Per cell of
``workloads/*.yaml`` (and of :data:`EXTRA_MATRIX`, for the branches they
leave out): the device set-up, KML's snapshot and reset (shared boots),
its set-up and stop (model cells), and both again as ``kmlbench trace``
runs them (every mq-deadline cell); once for all cells: the one-line
commands (fio between two CPU snapshots, reading the snapshots, fetching
a file as text or as base64).

Texts are stored once, by content hash; cells name them.

    python tests/guest_scripts.py --rev 9c3e592   # the golden, from that commit's code
    python tests/guest_scripts.py --current       # from today's (after a deliberate change)
    python tests/guest_scripts.py --add-new       # keep it; add matrices it lacks, from today's

A matrix added after the golden was made has no older rendering to match:
``--add-new`` pins its cells (and any one-line command the file lacks, such
as the profiled fio run) as today's code renders them, and leaves every
cell and command already in the file as it was.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, Protocol

from kmlbench import paths
from kmlbench.cell import device as device_mod
from kmlbench.cell import guest_paths, kml_reset
from kmlbench.cell import model as model_mod
from kmlbench.cell import workload as workload_mod
from kmlbench.plan.matrix import load_matrix
from kmlbench.plan.schema import MODEL_SCHEDULER

GOLDEN = Path(__file__).parent / "data" / "guest-scripts.golden.json"
GOLDEN_REV = "9c3e592"
# What a trace cell without a model runs (kmlbench trace): observe, a complete ring.
TRACE_MODEL = {"mode": "observe", "trainer": "none", "ring_mode": "block", "sample_filter": "all"}
# Beyond the shipped matrices: the branches they leave out (irqmode none and
# softirq, 512-byte blocks, string tunables, every mq-deadline tunable on
# virtio, a user trainer with a model, a warm start and the uncertain filter).
EXTRA_MATRIX = """\
name: extra
axes:
  device:
    - {{type: null_blk, irqmode: none, blocksize: 512, completion_nsec: 0, submit_queues: 2}}
    - {{type: null_blk, irqmode: softirq, hw_queue_depth: 4096, size_mib: 300}}
    - {{type: virtio, size_mib: 64, cache: writethrough, num_queues: 2}}
  scheduler:
    - {{name: mq-deadline, read_expire: 250, write_expire: 2500, fifo_batch: 8,
       writes_starved: 3, front_merges: 0, nr_requests: 64}}
    - {{name: kyber, nr_requests: 4}}
  workload:
    - {{template: randrw, runtime_s: 3, ramp_s: 0, size_mib: 32}}
  model:
    - {{mode: off}}
    - {{mode: active, trainer: user, ring_mode: block, sample_filter: uncertain,
       model_file: {model}, warm_start: {model}, rate: 100, cpu_pct: 30, publish_every: 64,
       decision_permille: 64000}}
    - {{mode: observe, trainer: kernel, ring_mode: drop, rate: 7, cpu_pct: 1}}
"""
# The block device each device type's set-up prints on its last line.
BLOCK_DEVICES = {"null_blk": "/dev/nullb0", "virtio": "/dev/vda"}


class Backend(Protocol):
    """One version of the harness's script renderers."""

    def device_setup(self, device: dict, scheduler: dict) -> str: ...
    def kml_model(self, params: dict) -> dict | None: ...
    def kml_setup(self, model: dict, block_device: str, **kw: Any) -> str: ...
    def kml_stop(self, model: dict, *, trace: bool) -> str: ...
    def kml_snapshot(self) -> str: ...
    def kml_reset(self, block_device: str) -> str: ...
    def trainer_seconds(self, workload: dict) -> float: ...
    def commands(self) -> dict[str, str]: ...


class _Recorder:
    """A guest that only remembers the commands it is given (and fails them all)."""

    def __init__(self) -> None:
        self.commands: list[str] = []
        self.cfg = SimpleNamespace(clock="realtime", icount_shift=0)

    def run(self, cmd: str, timeout: float) -> SimpleNamespace:
        self.commands.append(cmd)
        return SimpleNamespace(exit_status=1, stdout="", stderr="")


def _recorded(call: Callable[[_Recorder], object]) -> str:
    guest = _Recorder()
    call(guest)
    (command,) = guest.commands
    return command


TEXT_FILES = ("/tmp/trainer.txt", "/tmp/curve.jsonl", "/tmp/tracer.txt",
              "/sys/kernel/debug/kml/iosched")  # fmt: skip
BINARY_FILES = ("/tmp/trained.kmlm", "/tmp/trace.kmltrc")


class OldBackend:
    """The renderers of a past commit, loaded from git (``devices.py``, ``runner.py``)."""

    def __init__(self, rev: str) -> None:
        self.devices = _module_at(rev, "harness/kmlbench/cell/devices.py", "_golden_devices")
        self.runner = _module_at(rev, "harness/kmlbench/run/runner.py", "_golden_runner")

    def device_setup(self, device: dict, scheduler: dict) -> str:
        return str(self.devices.setup_script(device, scheduler))

    def kml_model(self, params: dict) -> dict | None:
        return self.runner.kml_model(params)  # type: ignore[no-any-return]

    def kml_setup(self, model: dict, block_device: str, **kw: Any) -> str:
        return str(self.devices.kml_setup_script(model, block_device, **kw))

    def kml_stop(self, model: dict, *, trace: bool) -> str:
        return str(self.devices.kml_stop_script(model, trace=trace))

    def kml_snapshot(self) -> str:
        return str(self.devices.kml_snapshot_script())

    def kml_reset(self, block_device: str) -> str:
        return str(self.devices.kml_reset_script(block_device))

    def trainer_seconds(self, workload: dict) -> float:
        return float(workload["runtime_s"] + workload["ramp_s"] + self.runner.KML_MARGIN_S)

    def commands(self) -> dict[str, str]:
        from kmlbench.plan import fio_job

        r = self.runner
        scratch = Path(tempfile.mkdtemp(prefix="golden-"))
        out = {
            "fio_run": r._with_cpu_snapshots(fio_job.fio_shell_command(r.GUEST_JOB_PATH)),
            "cpu_read": _recorded(lambda g: r._guest_cpu_metrics(g, scratch, 1, 1)),
        }
        for path in TEXT_FILES:
            out[f"fetch_text {path}"] = _recorded(lambda g, p=path: r._fetch_text(g, p, 1))
        for path in BINARY_FILES:
            out[f"fetch_bytes {path}"] = _recorded(lambda g, p=path: r._fetch_bytes(g, p, 1))
        return out


class CurrentBackend:
    """Today's renderers (``kmlbench.cell``)."""

    def device_setup(self, device: dict, scheduler: dict) -> str:
        return device_mod.setup_script(device, scheduler)

    def kml_model(self, params: dict) -> dict | None:
        return model_mod.kml_model(params)

    def kml_setup(self, model: dict, block_device: str, **kw: Any) -> str:
        return model_mod.kml_setup_script(model, guest_paths.block_device(block_device), **kw)

    def kml_stop(self, model: dict, *, trace: bool) -> str:
        return model_mod.kml_stop_script(model, trace=trace)

    def kml_snapshot(self) -> str:
        return kml_reset.kml_snapshot_script()

    def kml_reset(self, block_device: str) -> str:
        return kml_reset.kml_reset_script(guest_paths.block_device(block_device))

    def trainer_seconds(self, workload: dict) -> float:
        return model_mod.trainer_seconds(workload)

    def commands(self) -> dict[str, str]:
        out = {
            "fio_run": workload_mod.fio_command(),
            "fio_run_profiled": workload_mod.fio_command(profiled=True),
            "cpu_read": workload_mod.cpu_read_command(),
        }
        for path in TEXT_FILES:
            out[f"fetch_text {path}"] = _recorded(lambda g, p=path: model_mod.fetch_text(g, p, 1))
        for path in BINARY_FILES:
            out[f"fetch_bytes {path}"] = _recorded(lambda g, p=path: model_mod.fetch_bytes(g, p, 1))
        return out


def _module_at(rev: str, path: str, name: str) -> ModuleType:
    text = subprocess.run(
        ["git", "-C", str(paths.REPO_ROOT), "show", f"{rev}:{path}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    folder = Path(tempfile.mkdtemp(prefix="golden-"))
    file = folder / Path(path).name
    file.write_text(text)
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def render_all(backend: Backend) -> dict[str, Any]:
    """Every script of every cell of ``workloads/*.yaml``, as the golden file holds them."""
    texts: dict[str, str] = {}

    def keep(text: str) -> str:
        key = _digest(text)
        assert texts.setdefault(key, text) == text
        return key

    cells: dict[str, dict[str, dict[str, str]]] = {}
    extra = Path(tempfile.mkdtemp(prefix="golden-")) / "(extra).yaml"
    extra.write_text(EXTRA_MATRIX.format(model=paths.WORKLOADS_DIR / "models" / "deadline.kmlm"))
    for path in [*sorted(paths.WORKLOADS_DIR.glob("*.yaml")), extra]:
        matrix = load_matrix(path)
        per_cell = cells.setdefault(path.name, {})
        for cell in matrix.cells:
            per_cell[cell.id] = {
                name: keep(text) for name, text in cell_scripts(backend, cell.params).items()
            }
    commands = {name: keep(text) for name, text in backend.commands().items()}
    return {"source": "", "texts": dict(sorted(texts.items())), "commands": commands,
            "cells": cells}  # fmt: skip


def cell_scripts(backend: Backend, params: dict) -> dict[str, str]:
    """The scripts one cell's params give, by name."""
    block_device = BLOCK_DEVICES[params["device"]["type"]]
    out = {
        "device_setup": backend.device_setup(params["device"], params["scheduler"]),
        "kml_snapshot": backend.kml_snapshot(),
        "kml_reset": backend.kml_reset(block_device),
    }
    seconds = backend.trainer_seconds(params["workload"])
    model = backend.kml_model(params)
    if model is not None:
        # what the cell step passes (cell/model.py): the device's geometry when told
        geometry = model_mod.told_geometry(params, model)
        told = {"geometry": geometry} if geometry is not None else {}
        # and the calibration phase, where the cell asks for one
        calibrate = {"calibrate": True} if model.get("calibrate_s") else {}
        out["kml_setup"] = backend.kml_setup(
            model, block_device, trainer_seconds=seconds,
            model_uploaded=bool(model.get("model_file")),
            warm_uploaded=bool(model.get("warm_start")), **told, **calibrate,
        )  # fmt: skip
        out["kml_stop"] = backend.kml_stop(model, trace=False)
    if params["scheduler"]["name"] == MODEL_SCHEDULER:
        traced = {**(model or TRACE_MODEL), "trainer": "none"}
        calibrate = {"calibrate": True} if traced.get("calibrate_s") else {}
        out["kml_setup_trace"] = backend.kml_setup(
            traced, block_device, trainer_seconds=seconds,
            model_uploaded=bool(traced.get("model_file")),
            warm_uploaded=bool(traced.get("warm_start")), trace_seconds=seconds, **calibrate,
        )  # fmt: skip
        out["kml_stop_trace"] = backend.kml_stop(traced, trace=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--rev", help="render with this commit's devices.py and runner.py")
    which.add_argument("--current", action="store_true", help="render with today's kmlbench.cell")
    which.add_argument(
        "--add-new", action="store_true", help="add the matrices the golden lacks, from today's"
    )
    args = parser.parse_args(argv)
    if args.add_new:
        data = json.loads(GOLDEN.read_text())
        now = render_all(CurrentBackend())
        added = sorted(set(now["cells"]) - set(data["cells"]))
        for name in added:
            data["cells"][name] = now["cells"][name]
            for keys in now["cells"][name].values():
                for key in keys.values():
                    data["texts"][key] = now["texts"][key]
        data["texts"] = dict(sorted(data["texts"].items()))
        new_commands = sorted(set(now["commands"]) - set(data["commands"]))
        for name in new_commands:
            data["commands"][name] = now["commands"][name]
            data["texts"][now["commands"][name]] = now["texts"][now["commands"][name]]
        data["texts"] = dict(sorted(data["texts"].items()))
        added += [f"command {name}" for name in new_commands]
        if added:
            data["source"] += f"; {', '.join(added)} from kmlbench.cell as added"
    elif args.rev:
        data = render_all(OldBackend(args.rev))
        data["source"] = f"git {args.rev}: harness/kmlbench/cell/devices.py, run/runner.py"
    else:
        data = render_all(CurrentBackend())
        data["source"] = "kmlbench.cell (today's renderer)"
    GOLDEN.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    n = sum(len(c) for c in data["cells"].values())
    print(f"{GOLDEN}: {len(data['texts'])} distinct texts, {n} cells")
    return 0


if __name__ == "__main__":
    sys.exit(main())
