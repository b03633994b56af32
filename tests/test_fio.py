"""fio.py against the real fio: templates, json+ parsing and merged metrics.

Every fio report here comes from running /usr/bin/fio for about a second
on a small file; nothing is hand-written, so a change in fio's output
format shows up here first.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from kmlbench import paths
from kmlbench.data.fio import (
    fio_version,
    late_metrics,
    merge_bins,
    metrics_from_fio,
    parse_fio_output,
    percentile_from_bins,
)
from kmlbench.plan.fio_job import FioError, fio_command, fio_shell_command, render_job
from kmlbench.plan.schema import UNSET, WORKLOAD_FIELDS

FIO = shutil.which("fio") or "/usr/bin/fio"
pytestmark = pytest.mark.skipif(not os.path.exists(FIO), reason="fio is not installed")

TEMPLATES = sorted(p.stem for p in paths.TEMPLATES_DIR.glob("*.fio"))


def workload(template: str, **overrides: object) -> dict:
    given = {n: f for n, f in WORKLOAD_FIELDS.items() if f.default is not UNSET}  # no target
    w = {name: f.default for name, f in given.items() if name != "template"}
    w.update(template=template, bs="4k", iodepth=4, numjobs=2, runtime_s=1, ramp_s=0)
    w.update(size_mib=8, thinktime_us=0, thinktime_blocks=1)
    w.update(overrides)
    return w


def direct_io_works(folder: Path) -> bool:
    probe = folder / "odirect-probe"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_RDWR | os.O_DIRECT, 0o600)
    except OSError as e:
        if e.errno == errno.EINVAL:
            return False
        raise
    os.close(fd)
    probe.unlink()
    return True


def run_fio(folder: Path, job_text: str, name: str) -> subprocess.CompletedProcess[str]:
    if not direct_io_works(folder):  # e.g. tmpfs: same job, buffered
        job_text = job_text.replace("direct=1", "direct=0")
    job = folder / f"{name}.fio"
    job.write_text(job_text)
    proc = subprocess.run(
        fio_command(str(job), fio=FIO), capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


@pytest.fixture(scope="module")
def fio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fio")


@pytest.fixture(scope="module")
def randrw_report(fio_dir: Path) -> dict:
    """The real randrw template: 2 jobs in one group, reads and writes."""
    text = render_job(workload("randrw", rwmix_read=60), str(fio_dir / "randrw.dat"))
    return parse_fio_output(run_fio(fio_dir, text, "randrw").stdout)


@pytest.fixture(scope="module")
def competing_report(fio_dir: Path) -> dict:
    """The real competing template: a reader group and a writer group, 2 jobs each."""
    text = render_job(workload("competing"), str(fio_dir / "competing.dat"))
    return parse_fio_output(run_fio(fio_dir, text, "competing").stdout)


# -- job files -------------------------------------------------------------------


@pytest.mark.parametrize("template", TEMPLATES)
def test_every_template_renders_to_a_job_fio_accepts(tmp_path: Path, template: str) -> None:
    text = render_job(workload(template), "/dev/nullb0")
    assert "filename=/dev/nullb0" in text
    for line in ("direct=1", "ioengine=libaio", "time_based=1", "group_reporting=1"):
        assert line in text.splitlines()
    assert "$" not in text.replace("${FILENAME}", "").replace("${VAR}", "")
    job = tmp_path / "job.fio"
    job.write_text(text)
    proc = subprocess.run(
        [FIO, "--parse-only", str(job)], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_expected_templates_exist() -> None:
    assert set(TEMPLATES) >= {
        "randread",
        "randwrite",
        "randrw",
        "seqread",
        "seqwrite",
        "bursty",
        "competing",
    }


def test_render_fails_clearly_on_a_missing_variable(tmp_path: Path) -> None:
    (tmp_path / "t.fio").write_text("[j]\nfilename=${FILENAME}\nbs=${BLOCKSIZE}\n")
    with pytest.raises(FioError, match=r"\$\{BLOCKSIZE\}"):
        render_job(workload("t"), "/dev/x", templates_dir=tmp_path)
    (tmp_path / "u.fio").write_text("[j]\nrate=$ 5\n")
    with pytest.raises(FioError, match=r"u\.fio"):
        render_job(workload("u"), "/dev/x", templates_dir=tmp_path)
    with pytest.raises(FioError, match="cannot read"):
        render_job(workload("absent"), "/dev/x", templates_dir=tmp_path)


def test_command_line_always_asks_for_json_plus() -> None:
    assert fio_command("/tmp/job.fio") == ["fio", "--output-format=json+", "/tmp/job.fio"]
    assert fio_shell_command("/tmp/a b.fio", output="/tmp/o.json") == (
        "fio --output-format=json+ --output=/tmp/o.json '/tmp/a b.fio'"
    )


def test_fio_version_matches_the_report(randrw_report: dict) -> None:
    assert fio_version(FIO) == randrw_report["fio version"]


# -- metrics -----------------------------------------------------------------------


def test_mixed_job_metrics_are_sane_and_per_direction(randrw_report: dict) -> None:
    m = metrics_from_fio(randrw_report)
    for prefix in ("", "read_", "write_"):
        for key in ("iops", "bw_kib_s", "clat_mean_us", "clat_p50_us", "clat_p99_us"):
            assert m[f"{prefix}{key}"] > 0, prefix + key
        assert m[f"{prefix}clat_p50_us"] <= m[f"{prefix}clat_p99_us"]
        assert m[f"{prefix}clat_p99_us"] <= m[f"{prefix}clat_p999_us"]
        # 4 KiB blocks: bandwidth and IOPS agree (fio rounds bw to whole KiB/s).
        assert m[f"{prefix}bw_kib_s"] == pytest.approx(4 * m[f"{prefix}iops"], rel=0.02)
    assert m["iops"] == pytest.approx(m["read_iops"] + m["write_iops"])
    assert "trim_iops" not in m
    # The mean lies between the directions' means, weighted by their samples.
    low, high = sorted((m["read_clat_mean_us"], m["write_clat_mean_us"]))
    assert low <= m["clat_mean_us"] <= high
    job = randrw_report["jobs"][0]
    n_r, n_w = job["read"]["clat_ns"]["N"], job["write"]["clat_ns"]["N"]
    expected = (job["read"]["clat_ns"]["mean"] * n_r + job["write"]["clat_ns"]["mean"] * n_w) / (
        n_r + n_w
    )
    assert m["clat_mean_us"] == pytest.approx(expected / 1000)


def test_histogram_percentile_follows_fios_rule(competing_report: dict) -> None:
    """On one group and direction our percentile is exactly fio's own."""
    for job in competing_report["jobs"]:
        for direction in ("read", "write"):
            clat = job[direction]["clat_ns"]
            if not clat["N"]:
                continue
            bins = merge_bins([clat["bins"]])
            for label, pct in (("50.000000", 50.0), ("99.000000", 99.0), ("99.900000", 99.9)):
                assert percentile_from_bins(bins, pct) == clat["percentile"][label]


def pooled_percentile_us(report: dict, pct: float) -> float:
    """Independently: expand every bin into its samples, pool, sort, pick the rank."""
    samples = []
    for job in report["jobs"]:
        for direction in ("read", "write", "trim"):
            bins = job[direction]["clat_ns"].get("bins", {})
            values = np.array([int(v) for v in bins], dtype=np.int64)
            counts = np.array(list(bins.values()), dtype=np.int64)
            samples.append(np.repeat(values, counts))
    pooled = np.sort(np.concatenate(samples))
    rank = math.ceil(Fraction(pct) * len(pooled) / 100)  # smallest x with CDF(x) >= pct
    return float(pooled[rank - 1]) / 1000


def test_merged_percentiles_equal_the_pooled_samples(competing_report: dict) -> None:
    assert len(competing_report["jobs"]) == 2  # readers and writers are separate groups
    m = metrics_from_fio(competing_report)
    for name, pct in (("p50", 50.0), ("p99", 99.0), ("p999", 99.9)):
        assert m[f"clat_{name}_us"] == pooled_percentile_us(competing_report, pct)
    reads_only = {"jobs": [competing_report["jobs"][0]]}
    assert m["read_clat_p99_us"] == pooled_percentile_us(reads_only, 99.0)
    assert m["iops"] == pytest.approx(m["read_iops"] + m["write_iops"])


def test_total_latency_is_measured_beside_completion_latency(randrw_report: dict) -> None:
    """lat (submission to completion) from its own histogram: every job kmlbench
    renders asks fio for it; it includes io_submit's time, so never below clat."""
    m = metrics_from_fio(randrw_report)
    for prefix in ("", "read_", "write_"):
        for name in ("mean", "p50", "p99", "p999"):
            assert m[f"{prefix}lat_{name}_us"] >= m[f"{prefix}clat_{name}_us"], prefix + name
    job = randrw_report["jobs"][0]
    lat = job["read"]["lat_ns"]
    bins = merge_bins([lat["bins"]])
    assert percentile_from_bins(bins, 99.0) == lat["percentile"]["99.000000"]
    reads = {"jobs": [{"read": job["read"], "write": {}, "trim": {}}]}
    assert metrics_from_fio(reads)["lat_p99_us"] == lat["percentile"]["99.000000"] / 1000
    # a report from before lat_percentiles: the mean alone, no percentile invented
    import copy

    old = copy.deepcopy(randrw_report)
    for j in old["jobs"]:
        for direction in ("read", "write"):
            j[direction]["lat_ns"].pop("bins")
            j[direction]["lat_ns"].pop("percentile")
    m_old = metrics_from_fio(old)
    assert m_old["lat_mean_us"] == m["lat_mean_us"] and "lat_p99_us" not in m_old
    assert m_old["clat_p99_us"] == m["clat_p99_us"]


def pooled_late_share(report: dict, direction: str, target_ns: float) -> tuple[int, int]:
    """Independently: every total-latency sample of a direction, and those over the target."""
    samples = []
    for job in report["jobs"]:
        bins = job[direction]["lat_ns"]["bins"]
        samples.append(np.repeat(np.array([int(v) for v in bins]), list(bins.values())))
    pooled = np.concatenate(samples)
    return int((pooled > target_ns).sum()), len(pooled)


def test_late_share_counts_the_samples_over_each_directions_target(randrw_report: dict) -> None:
    """A target at each direction's own median: about half are late, exactly
    the samples over it; nothing is late past the slowest, everything before
    the fastest; a direction without a target counts nothing."""
    job = randrw_report["jobs"][0]
    read_t = job["read"]["lat_ns"]["percentile"]["50.000000"]
    write_t = job["write"]["lat_ns"]["percentile"]["50.000000"]
    m = late_metrics(randrw_report, {"read": read_t / 1e6, "write": write_t / 1e6})
    read_late, reads = pooled_late_share(randrw_report, "read", read_t)
    write_late, writes = pooled_late_share(randrw_report, "write", write_t)
    assert 0 < read_late < reads and 0 < write_late < writes
    assert m["read_late_frac"] == read_late / reads <= 0.5
    assert m["write_late_frac"] == write_late / writes <= 0.5
    assert m["late_frac"] == (read_late + write_late) / (reads + writes)
    slowest = max(int(v) for v in job["read"]["lat_ns"]["bins"])
    fastest = min(int(v) for v in job["read"]["lat_ns"]["bins"])
    assert late_metrics(randrw_report, {"read": slowest / 1e6}) == {
        "read_late_frac": 0.0,
        "late_frac": 0.0,
    }
    assert late_metrics(randrw_report, {"read": (fastest - 1) / 1e6})["late_frac"] == 1.0
    assert late_metrics(randrw_report, {}) == {}
    # a targeted direction without its histogram: no share of the other alone
    import copy

    no_write_bins = copy.deepcopy(randrw_report)
    for j in no_write_bins["jobs"]:
        j["write"]["lat_ns"].pop("bins")
    assert late_metrics(no_write_bins, {"read": read_t / 1e6, "write": write_t / 1e6}) == {}
    assert late_metrics(no_write_bins, {"read": read_t / 1e6}) == {
        "read_late_frac": m["read_late_frac"],
        "late_frac": m["read_late_frac"],
    }


def test_metrics_refuse_plain_json_without_bins(randrw_report: dict) -> None:
    import copy

    plain = copy.deepcopy(randrw_report)
    for job in plain["jobs"]:
        for direction in ("read", "write", "trim"):
            job[direction]["clat_ns"].pop("bins", None)
    with pytest.raises(FioError, match=r"json\+"):
        metrics_from_fio(plain)


# -- parsing ---------------------------------------------------------------------


def test_parse_skips_fios_notes_before_the_json(fio_dir: Path) -> None:
    """psync with iodepth > 1 makes fio print a note on stdout before the JSON."""
    job = (
        f"[global]\nfilename={fio_dir / 'note.dat'}\nsize=4M\nbs=4k\nruntime=1s\n"
        "time_based=1\nioengine=psync\niodepth=4\n[reader]\nrw=randread\n"
    )
    proc = run_fio(fio_dir, job, "note")
    assert not proc.stdout.startswith("{")
    assert "note:" in proc.stdout.split("{", 1)[0]
    # A remote shell may also mix fio's stderr into the same stream.
    text = "fio: warning: {something odd}\n" + proc.stderr + proc.stdout
    data = parse_fio_output(text)
    assert data["jobs"][0]["jobname"] == "reader"
    assert metrics_from_fio(data)["read_iops"] > 0


def test_parse_without_json_gives_a_snippet() -> None:
    with pytest.raises(FioError, match=r"no fio JSON report.*fio: failed parsing"):
        parse_fio_output("fio: failed parsing thinktime=${NOPE}\nfio: job x dropped\n")
    with pytest.raises(FioError, match=r"\(empty\)"):
        parse_fio_output("")


def test_parse_truncated_report(randrw_report: dict) -> None:
    import json

    text = json.dumps(randrw_report, indent=2)
    with pytest.raises(FioError, match="no fio JSON report"):
        parse_fio_output(text[: len(text) // 2])
