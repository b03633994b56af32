"""matrix.py: expansion, exclusion, ids, run order, and located errors."""

from __future__ import annotations

import itertools
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from kmlbench import paths
from kmlbench.data.fio import late_targets
from kmlbench.plan.fio_job import render_job
from kmlbench.plan.matrix import Matrix, load_matrix
from kmlbench.plan.schema import DEVICE_TYPES, QUEUE_FIELDS, SCHEDULERS, UNSET, WORKLOAD_FIELDS
from kmlbench.plan.source import MatrixError

BASE = """\
name: t
seed: 7
repeat: {repeat}
axes:
  device:
    - {{type: null_blk, completion_nsec: 50000}}
    - {{type: virtio, size_mib: 512}}
  scheduler:
    - {{name: mq-deadline, fifo_batch: 8}}
    - {{name: none}}
    - {{name: kyber}}
  workload:
    - {{template: [randread, seqread], bs: [4k, 64k], runtime_s: 2, size_mib: 64}}
"""


def write(tmp_path: Path, text: str, name: str = "m.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load(tmp_path: Path, text: str) -> Matrix:
    return load_matrix(write(tmp_path, text))


def config_key(cell) -> str:
    return cell.id.rsplit("-r", 1)[0]


# -- expansion -----------------------------------------------------------------


def test_smoke_matrix_is_valid_and_small() -> None:
    m = load_matrix(paths.WORKLOADS_DIR / "smoke.yaml")
    assert len(m.cells) == 4
    assert {c.params["scheduler"]["name"] for c in m.cells} == {"mq-deadline", "none"}
    assert {c.params["workload"]["template"] for c in m.cells} == {"randread", "randrw"}
    assert all(c.params["workload"]["runtime_s"] == 3 for c in m.cells)
    assert all(c.params["device"]["completion_nsec"] > 0 for c in m.cells)


def test_nightly_is_valid_and_can_gate() -> None:
    m = load_matrix(paths.WORKLOADS_DIR / "nightly.yaml")
    # With fewer than 4 repeats per side a Mann-Whitney test over repeats
    # cannot reach p < 0.05, so the nightly regression gate could never fire.
    assert m.repeat >= 4
    assert {c.params["device"]["type"] for c in m.cells} == {"null_blk", "virtio"}
    assert len({c.params["scheduler"]["name"] for c in m.cells}) == 4
    assert len(m.cells) % m.repeat == 0


def test_expansion_counts(tmp_path: Path) -> None:
    m = load(tmp_path, BASE.format(repeat=2))
    # 2 devices x 3 schedulers x (2 templates x 2 block sizes) x 2 repeats
    assert len(m.cells) == 2 * 3 * 4 * 2
    assert Counter(c.repeat for c in m.cells) == {0: 24, 1: 24}
    assert m.kernel_variants == {"default": []}
    assert m.kernel_source == "debian"
    assert m.guest == {
        "memory_mib": 1024,
        "cpus": 1,  # the virtual clock's default: one vCPU
        "clock": "virtual",
        "icount_shift": 0,
        "boot_timeout_s": 120,
        "command_timeout_s": 600,
        "silence_timeout_s": 120,
        "share_boot": False,
        "insn_profile": False,
    }


def test_list_fields_expand_to_the_cartesian_product(tmp_path: Path) -> None:
    m = load(
        tmp_path,
        "name: t\naxes:\n  workload:\n"
        "    - {template: randread, bs: [4k, 64K, 8192], iodepth: [1, 32], runtime_s: 1}\n",
    )
    combos = {(c.params["workload"]["bs"], c.params["workload"]["iodepth"]) for c in m.cells}
    assert combos == set(itertools.product(["4k", "64k", "8192"], [1, 32]))


def test_params_are_fully_resolved(tmp_path: Path) -> None:
    m = load(tmp_path, BASE.format(repeat=1))
    for cell in m.cells:
        p = cell.params
        assert set(p) == {"kernel", "device", "scheduler", "workload"}
        assert p["kernel"] == {"name": "default", "source": "debian", "fragments": []}
        # every field with a default; the optional ones only when given
        fields = DEVICE_TYPES[p["device"]["type"]]
        assert set(p["device"]) == {
            "type",
            *(k for k, f in fields.items() if f.default is not UNSET),
        }
        # every tunable with a default; queue settings (nr_requests) only when given
        assert set(p["scheduler"]) == {"name", *SCHEDULERS[p["scheduler"]["name"]]} - set(
            QUEUE_FIELDS
        )
        # every workload field with a default; the latency targets only when given
        assert set(p["workload"]) == {
            k for k, f in WORKLOAD_FIELDS.items() if f.default is not UNSET
        }
    mqdl = next(c for c in m.cells if c.params["scheduler"]["name"] == "mq-deadline")
    assert mqdl.params["scheduler"] == {
        "name": "mq-deadline",
        "read_expire": 500,
        "write_expire": 5000,
        "fifo_batch": 8,
        "writes_starved": 2,
        "front_merges": 1,
    }


def test_null_blk_blocksize(tmp_path: Path) -> None:
    """The blocksize devices.py sets up is a matrix key, 4096 unless given."""
    m = load(
        tmp_path,
        "name: t\naxes:\n  device:\n    - {type: null_blk}\n"
        "    - {type: null_blk, blocksize: [512, 2048]}\n  workload: [{template: randread}]\n",
    )
    sizes = sorted(c.params["device"]["blocksize"] for c in m.cells)
    assert sizes == [512, 2048, 4096]
    assert len({c.id for c in m.cells}) == 3


def test_exclude_drops_cells_matching_every_pair(tmp_path: Path) -> None:
    text = BASE.format(repeat=1) + (
        "exclude:\n"
        "  - {scheduler.name: none, workload.template: seqread}\n"
        "  - {device.type: virtio, workload.bs: [64k, 64K]}\n"
    )
    m = load(tmp_path, text)
    assert len(m.cells) == 24 - 4 - 6 + 1  # the rules overlap on virtio/none/seqread/64k
    for c in m.cells:
        p = c.params
        assert not (p["scheduler"]["name"] == "none" and p["workload"]["template"] == "seqread")
        assert not (p["device"]["type"] == "virtio" and p["workload"]["bs"] == "64k")


# -- ids -------------------------------------------------------------------------


def test_ids_are_unique_readable_and_stable_across_places(tmp_path: Path) -> None:
    text = BASE.format(repeat=3)
    first = load(tmp_path, text)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    second = load_matrix(write(elsewhere, text))
    ids = [c.id for c in first.cells]
    assert len(set(ids)) == len(ids)
    assert ids == [c.id for c in second.cells]
    for c in first.cells:
        assert re.fullmatch(
            r"(randread|seqread)-(nullb|virtio)-(mqdl|none|kyber)-[0-9a-f]{8}-r\d", c.id
        )
        assert c.id.endswith(f"-r{c.repeat}")
    # Repeats of one configuration share the hash; the seed does not enter it.
    reseeded = load(tmp_path, text.replace("seed: 7", "seed: 8"))
    assert {c.id for c in reseeded.cells} == set(ids)


def test_kernel_variants_group_cells_and_name_ids(tmp_path: Path) -> None:
    (tmp_path / "kml.config").write_text("CONFIG_KML=y\n")
    text = BASE.format(repeat=2).replace(
        "axes:\n",
        "axes:\n  kernel:\n    - {name: default}\n    - {name: kml, fragments: [kml.config]}\n",
    )
    m = load(tmp_path, text)
    variants = [c.kernel_variant for c in m.cells]
    half = len(variants) // 2
    assert variants == ["default"] * half + ["kml"] * half
    assert m.kernel_variants == {"default": [], "kml": [(tmp_path / "kml.config").resolve()]}
    kml_cell = m.cells[-1]
    assert "-kml-" in kml_cell.id
    assert kml_cell.params["kernel"]["fragments"] == [str((tmp_path / "kml.config").resolve())]


# -- order -----------------------------------------------------------------------


def test_order_interleaves_repeats_in_shuffled_rounds(tmp_path: Path) -> None:
    m = load(tmp_path, BASE.format(repeat=3))
    configs = {config_key(c) for c in m.cells}
    n = len(configs)
    rounds = [m.cells[i * n : (i + 1) * n] for i in range(3)]
    for r, round_ in enumerate(rounds):
        assert {c.repeat for c in round_} == {r}
        assert {config_key(c) for c in round_} == configs  # every config once per round
    orders = [[config_key(c) for c in round_] for round_ in rounds]
    assert len({tuple(o) for o in orders}) > 1, "each round is shuffled on its own"
    keys = [config_key(c) for c in m.cells]
    assert all(a != b for a, b in itertools.pairwise(keys)), "never the same config twice in a row"


def test_order_is_seeded(tmp_path: Path) -> None:
    text = BASE.format(repeat=2)
    a = [c.id for c in load(tmp_path, text).cells]
    b = [c.id for c in load(tmp_path, text).cells]
    c = [c.id for c in load(tmp_path, text.replace("seed: 7", "seed: 99")).cells]
    assert a == b
    assert a != c and sorted(a) == sorted(c)


# -- errors ----------------------------------------------------------------------

ERRORS = [
    # (matrix text, line, key, part of the message)
    # null_blk's service-time models (kernel/patches/0003)
    (
        "name: t\naxes:\n  workload: [{template: randread}]\n  device:\n"
        "    - {type: null_blk, service: tape}\n",
        5,
        "axes.device[0].service",
        "must be one of fixed, rotational, flash",
    ),
    (
        "name: t\naxes:\n  workload: [{template: randread}]\n  device:\n"
        "    - {type: null_blk, irqmode: softirq,\n       service: flash}\n",
        6,
        "axes.device[0].service",
        "needs irqmode: timer",
    ),
    (
        "name: t\naxes:\n  workload: [{template: randread}]\n  device:\n"
        "    - {type: null_blk, mbps: 50000}\n",
        5,
        "axes.device[0].mbps",
        "must be in 0..40960",
    ),
    (
        "name: t\naxes:\n  workload: [{template: randread}]\n  device:\n"
        "    - {type: virtio, service: rotational}\n",
        5,
        "axes.device[0].service",
        "does not apply to device type 'virtio'",
    ),
    # QEMU's throttling of a virtio disk
    (
        "name: t\nguest: {clock: realtime}\naxes:\n  workload: [{template: randread}]\n"
        "  device:\n    - {type: virtio,\n       throttle_iops_total: 0}\n",
        7,
        "axes.device[0].throttle_iops_total",
        "must be in 1..1000000000000000",
    ),
    (
        "name: t\nguest: {clock: realtime}\naxes:\n  workload: [{template: randread}]\n"
        "  device:\n    - {type: virtio,\n       throttle_bps_write: 1000000000000001}\n",
        7,
        "axes.device[0].throttle_bps_write",
        "must be in 1..1000000000000000",
    ),
    (
        "name: t\nguest: {clock: realtime}\naxes:\n  workload: [{template: randread}]\n"
        "  device:\n    - {type: virtio, throttle_bps_read: 1000,\n"
        "       throttle_bps_total: 4000}\n",
        7,
        "axes.device[0].throttle_bps_total",
        "cannot be given with throttle_bps_read",
    ),
    (
        "name: t\nguest: {clock: realtime}\naxes:\n  workload: [{template: randread}]\n"
        "  device:\n    - {type: virtio, throttle_bps_total: 4000,\n"
        "       throttle_iops_size: 4096}\n",
        7,
        "axes.device[0].throttle_iops_size",
        "needs an iops limit",
    ),
    (
        "name: t\naxes:\n  workload: [{template: randread}]\n  device:\n"
        "    - {type: virtio,\n       throttle_iops_read: 100}\n",
        6,
        "axes.device[0].throttle_iops_read",
        "runs on the host's clock: needs guest.clock: realtime",
    ),
    (
        "name: t\nguest: {clock: realtime}\naxes:\n  workload: [{template: randread}]\n"
        "  device:\n    - {type: null_blk, throttle_iops_total: 100}\n",
        6,
        "axes.device[0].throttle_iops_total",
        "does not apply to device type 'null_blk'",
    ),
    (
        "name: t\naxes:\n  workload:\n    - {template: randrw,\n       read_target_ms: 0}\n",
        5,
        "axes.workload[0].read_target_ms",
        "must be in 1..3600000",
    ),
    ("name: t\nsede: 1\naxes: {workload: [{template: randread}]}\n", 2, "sede", "unknown key"),
    (
        "seed: 1\naxes:\n  workload: [{template: randread}]\n",
        1,
        "(top)",
        "missing required key 'name'",
    ),
    ("name: t\nrepeat: 0\naxes:\n  workload: [{template: randread}]\n", 2, "repeat", ">= 1"),
    (
        "name: t\naxes:\n  workload:\n    - template: randread\n      bz: 4k\n",
        5,
        "axes.workload[0].bz",
        "unknown key 'bz'",
    ),
    (
        "name: t\naxes:\n  workload:\n    - template: randread\n      iodepth: deep\n",
        5,
        "axes.workload[0].iodepth",
        "must be an integer",
    ),
    (
        "name: t\naxes:\n  workload:\n    - template: randread\n\n      runtime_s: -3\n",
        6,
        "axes.workload[0].runtime_s",
        "must be >= 1",
    ),
    (
        "name: t\naxes:\n  workload:\n    - {template: randred}\n",
        4,
        "axes.workload[0].template",
        "unknown template 'randred'",
    ),
    (
        "name: t\naxes:\n  workload:\n    - template: randread\n"
        "      bs:\n        - 4k\n        - 3x\n",
        7,
        "axes.workload[0].bs[1]",
        "block size",
    ),
    (
        "name: t\naxes:\n  workload:\n    - {template: randread, bs: 1000}\n",
        4,
        "axes.workload[0].bs",
        "multiple of 512",
    ),
    (
        "name: t\naxes:\n  scheduler:\n    - name: mq-deadline\n    - name: cfq\n"
        "  workload: [{template: randread}]\n",
        5,
        "axes.scheduler[1].name",
        "unknown scheduler 'cfq'",
    ),
    (
        "name: t\naxes:\n  scheduler:\n    - name: mq-deadline\n    - name: none\n"
        "      fifo_batch: 4\n  workload: [{template: randread}]\n",
        6,
        "axes.scheduler[1].fifo_batch",
        "has no tunable 'fifo_batch'",
    ),
    (
        "name: t\naxes:\n  device:\n    - type: null_blk\n    - type: virtio\n"
        "      completion_nsec: 5\n  workload: [{template: randread}]\n",
        6,
        "axes.device[1].completion_nsec",
        "does not apply to device type 'virtio'",
    ),
    (
        "name: t\naxes:\n  device:\n    - type: nvme\n  workload: [{template: randread}]\n",
        4,
        "axes.device[0].type",
        "unknown device type 'nvme'",
    ),
    (
        "name: t\naxes:\n  device:\n    - {type: null_blk, irqmode: polling}\n"
        "  workload: [{template: randread}]\n",
        4,
        "axes.device[0].irqmode",
        "must be one of",
    ),
    (
        "name: t\naxes:\n  device:\n    - {type: null_blk, blocksize: 3000}\n"
        "  workload: [{template: randread}]\n",
        4,
        "axes.device[0].blocksize",
        "must be one of 512, 1024, 2048, 4096, got 3000",
    ),
    (
        "name: t\nkernel:\n  source: debian\n  fragments:\n    - nope.config\n"
        "axes: {workload: [{template: randread}]}\n",
        5,
        "kernel.fragments[0]",
        "config fragment 'nope.config' not found",
    ),
    (
        "name: t\nkernel:\n  source:\n    url: https://example.org/linux.tar.xz\n"
        "    sha256: abc123\naxes: {workload: [{template: randread}]}\n",
        5,
        "kernel.source.sha256",
        "64 hex digits",
    ),
    (
        "name: t\nguest:\n  cpus: 2\n  cpus: 4\naxes: {workload: [{template: randread}]}\n",
        4,
        "guest.cpus",
        "duplicate key",
    ),
    ("name: t\naxes: {workload: [{template: randread}\n", 3, "(yaml)", "expected"),
    (
        "name: t\nguest:\n  clock: wallclock\naxes: {workload: [{template: randread}]}\n",
        3,
        "guest.clock",
        "must be one of virtual, realtime, got 'wallclock'",
    ),
    (
        "name: t\nguest:\n  clock: virtual\n  icount_shift: 11\n"
        "axes: {workload: [{template: randread}]}\n",
        4,
        "guest.icount_shift",
        "must be in 0..10, got 11",
    ),
    (
        "name: t\nguest:\n  icount_shift: auto\naxes: {workload: [{template: randread}]}\n",
        3,
        "guest.icount_shift",
        "must be an integer, got str 'auto'",
    ),
    (
        "name: t\nguest:\n  memory_mib: 512\n  cpus: 2\naxes: {workload: [{template: randread}]}\n",
        4,
        "guest.cpus",
        "guest.clock virtual (the default) supports one vCPU",
    ),
    (
        "name: t\nguest:\n  clock: realtime\n  icount_shift: 2\n"
        "axes: {workload: [{template: randread}]}\n",
        4,
        "guest.icount_shift",
        "only means something with guest.clock: virtual",
    ),
    (
        "name: t\nguest:\n  insn_profile: yes please\naxes: {workload: [{template: randread}]}\n",
        3,
        "guest.insn_profile",
        "must be true or false, got str 'yes please'",
    ),
    (
        "name: t\nguest:\n  clock: realtime\n  insn_profile: true\n"
        "axes: {workload: [{template: randread}]}\n",
        4,
        "guest.insn_profile",
        "needs guest.clock: virtual",
    ),
    (
        "name: t\naxes: {workload: [{template: randread}]}\nexclude:\n  - {scheduler.name: none}\n",
        4,
        "exclude[0]",
        "excludes no cell",
    ),
    (
        "name: t\naxes: {workload: [{template: randread}]}\nexclude:\n  - {sched.name: none}\n",
        4,
        "exclude[0].sched.name",
        "unknown key 'sched.name'",
    ),
    (
        "name: t\naxes:\n  device: [{type: null_blk, size_mib: 128}]\n  workload:\n"
        "    - template: randread\n      size_mib: 256\n",
        6,
        "axes.workload[0].size_mib",
        "exceeds the 128 MiB",
    ),
    (
        "name: t\nguest: {command_timeout_s: 30}\naxes:\n  workload:\n"
        "    - {template: randread,\n       runtime_s: 40}\n",
        6,
        "axes.workload[0].runtime_s",
        "does not fit guest.command_timeout_s",
    ),
]


@pytest.mark.parametrize(("text", "line", "key", "message"), ERRORS, ids=[e[2] for e in ERRORS])
def test_errors_name_file_line_and_key(
    tmp_path: Path, text: str, line: int, key: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(MatrixError) as info:
        load_matrix(path)
    err = info.value
    assert (err.path, err.line, err.key) == (path, line, key), str(err)
    assert str(err).startswith(f"{path}:{line}: {key}: "), str(err)
    assert message in err.message, str(err)


def test_missing_file_is_a_matrix_error(tmp_path: Path) -> None:
    with pytest.raises(MatrixError, match="cannot read"):
        load_matrix(tmp_path / "absent.yaml")


def test_source_path_and_copied_matrix_base_dir(tmp_path: Path) -> None:
    """A run folder's copy of the matrix resolves paths against the original folder."""
    tree = tmp_path / "linux"
    tree.mkdir()
    (tmp_path / "extra.config").write_text("CONFIG_X=y\n")
    text = (
        "name: t\nkernel: {source: linux, fragments: [extra.config]}\n"
        "axes: {workload: [{template: randread, runtime_s: 1}]}\n"
    )
    original = load(tmp_path, text)
    assert original.kernel_source == str(tree.resolve())
    copy_dir = tmp_path / "results" / "run"
    copy_dir.mkdir(parents=True)
    copied = copy_dir / "matrix.yaml"
    shutil.copy(tmp_path / "m.yaml", copied)
    with pytest.raises(MatrixError, match="not found"):
        load_matrix(copied)
    again = load_matrix(copied, base_dir=tmp_path)
    assert [c.id for c in again.cells] == [c.id for c in original.cells]


def test_paths_inside_the_checkout_are_recorded_repo_relative(tmp_path: Path) -> None:
    text = (
        "name: t\nkernel: {source: kernel, fragments: [kernel/configs/base.config]}\n"
        "axes: {workload: [{template: randread, runtime_s: 1}]}\n"
    )
    m = load(tmp_path, text)
    assert m.kernel_source == str(paths.REPO_ROOT / "kernel")  # usable from any cwd
    assert m.kernel_variants["default"] == [paths.CONFIGS_DIR / "base.config"]
    assert m.cells[0].params["kernel"] == {
        "name": "default",
        "source": "kernel",
        "fragments": ["kernel/configs/base.config"],
    }


def test_clock_defaults_and_realtime_keeps_two_vcpus(tmp_path: Path) -> None:
    wl = "axes: {workload: [{template: randread}]}\n"
    virtual = load(tmp_path, "name: t\n" + wl).guest
    assert (virtual["clock"], virtual["icount_shift"], virtual["cpus"]) == ("virtual", 0, 1)
    shifted = load(tmp_path, "name: t\nguest: {icount_shift: 3}\n" + wl).guest
    assert shifted["icount_shift"] == 3
    real = load(tmp_path, "name: t\nguest: {clock: realtime}\n" + wl).guest
    assert (real["clock"], real["cpus"]) == ("realtime", 2)
    real4 = load(tmp_path, "name: t\nguest: {clock: realtime, cpus: 4}\n" + wl).guest
    assert real4["cpus"] == 4


def test_shipped_matrices_say_their_clock() -> None:
    """Every shipped matrix runs on the virtual clock but nightly (written for KVM)
    and bench-harness (which measures the harness's own wall-clock time), and
    sanitizers (concurrency, not timing)."""
    for path in sorted(paths.WORKLOADS_DIR.glob("*.yaml")):
        m = load_matrix(path)
        # sanitizers: two vCPUs racing, which a fixed icount shift cannot boot
        realtime = ("nightly", "bench-harness", "sanitizers")
        want = "realtime" if path.stem in realtime else "virtual"
        assert m.guest["clock"] == want, path.name
        assert "clock" in (m.raw.get("guest") or {}), f"{path.name}: say the clock explicitly"


def test_service_models_are_recorded_only_when_given(tmp_path: Path) -> None:
    """A null_blk without ``service``, ``mbps`` or ``memory_backed`` keeps the
    params (and so the cell id) it had before they existed."""
    plain = load(tmp_path, "name: t\naxes:\n  workload: [{template: randread}]\n")
    device = plain.cells[0].params["device"]
    assert not {"service", "mbps", "memory_backed"} & set(device)
    m = load(
        tmp_path,
        "name: t\naxes:\n  workload: [{template: randread}]\n  device:\n"
        "    - {type: null_blk, service: [rotational, flash], mbps: 100, memory_backed: true}\n",
    )
    assert [c.params["device"]["service"] for c in m.cells] == ["rotational", "flash"]
    assert all(c.params["device"]["mbps"] == 100 for c in m.cells)
    devices = load_matrix(paths.WORKLOADS_DIR / "devices.yaml").cells
    assert {c.params["device"].get("service", "fixed") for c in devices} == {
        "rotational",
        "flash",
        "fixed",
    }


def test_latency_targets_are_recorded_only_when_given(tmp_path: Path) -> None:
    """A workload without ``read_target_ms``/``write_target_ms`` keeps the
    params (and so the cell id) it had before they existed; with them, every
    scheduler's cell records them (the late share is counted at completion,
    whatever the scheduler), and the set-up the cell runs is the same."""
    text = "name: t\naxes:\n  scheduler: [{name: none}]\n  workload: [{template: randrw}]\n"
    plain = load(tmp_path, text)
    assert not {"read_target_ms", "write_target_ms"} & set(plain.cells[0].params["workload"])
    told = load(
        tmp_path, text.replace("{template: randrw}", "{template: randrw, read_target_ms: 100}")
    )
    assert told.cells[0].params["workload"]["read_target_ms"] == 100
    assert "write_target_ms" not in told.cells[0].params["workload"]
    assert told.cells[0].id != plain.cells[0].id
    assert late_targets(told.cells[0].params["workload"]) == {"read": 100}
    assert late_targets(plain.cells[0].params["workload"]) == {}
    assert render_job(told.cells[0].params["workload"], "/dev/x") == render_job(
        plain.cells[0].params["workload"], "/dev/x"
    )
