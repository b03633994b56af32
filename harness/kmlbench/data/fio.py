"""fio's ``json+`` output turned into metrics (job files: :mod:`kmlbench.plan.fio_job`).

Latency percentiles are recomputed from fio's completion-latency
histogram (``clat_ns.bins``, present only with ``--output-format=json+``)
and total-latency histogram (``lat_ns.bins``, with ``lat_percentiles``,
which every rendered job sets) instead of taken from fio's per-job
percentiles: percentiles cannot be
averaged, but histograms can be added. Merging the bins of every job and
direction and walking the merged histogram with fio's own rule gives the
exact percentile of the pooled samples, up to fio's bucket width (0.4%
of the value in the guest's fio, :data:`kmlbench.data.histogram.FIO_PLAT_BITS`).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter
from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import Any

from kmlbench import procs
from kmlbench.data.histogram import Histogram, bucket_bits
from kmlbench.plan.fio_job import OUTPUT_FORMAT, FioError
from kmlbench.plan.schema import LATE_DIRECTIONS

DIRECTIONS = ("read", "write", "trim")
PERCENTILES = {"p50": 50.0, "p99": 99.0, "p999": 99.9}


def fio_version(fio: str = "fio", timeout: float = 10) -> str:
    """What ``fio --version`` prints, e.g. ``fio-3.33`` (same form as the JSON's)."""
    try:
        proc = procs.run(
            [fio, "--version"], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FioError(f"cannot run {fio} --version: {e}") from e
    out = proc.stdout.strip()
    if proc.returncode != 0 or not out:
        raise FioError(f"{fio} --version failed ({proc.returncode}): {proc.stderr.strip()}")
    return str(out)


# --------------------------------------------------------------------------
# Output.


def _snippet(text: str, limit: int = 300) -> str:
    text = text.strip()
    if len(text) > limit:
        text = text[:limit] + f"... [{len(text) - limit} more chars]"
    return text or "(empty)"


def parse_fio_output(text: str) -> dict[str, Any]:
    """The JSON object in fio's output, ignoring whatever fio printed around it.

    fio writes notes (``note: both iodepth >= 1 and synchronous I/O engine
    ...``) and warnings to stdout before the JSON, and a remote shell may
    mix in stderr. The report is the first top-level object that decodes
    and looks like fio's (``jobs`` or ``fio version``); candidates at the
    start of a line are tried first since that is where fio puts it.
    """
    decoder = json.JSONDecoder()
    line_starts = [m.start() for m in re.finditer(r"(?m)^[ \t]*\{", text)]
    others = [m.start() for m in re.finditer(r"\{", text)]
    tried: set[int] = set()
    last_error = ""
    for pos in line_starts + others:
        pos = text.index("{", pos)
        if pos in tried:
            continue
        tried.add(pos)
        try:
            obj, _ = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            last_error = str(e)
            continue
        if isinstance(obj, dict) and ("jobs" in obj or "fio version" in obj):
            return obj
    detail = f" (last decode error: {last_error})" if last_error else ""
    raise FioError(f"no fio JSON report in output{detail}; output begins: {_snippet(text)}")


def merge_bins(bin_maps: Iterable[Mapping[str, int]]) -> Counter[int]:
    """Add fio histograms; keys are bucket values in ns (strings in JSON)."""
    merged: Counter[int] = Counter()
    for bins in bin_maps:
        for value, count in bins.items():
            merged[int(value)] += int(count)
    return merged


def percentile_from_bins(bins: Mapping[int, int], pct: float) -> float:
    """fio's percentile rule on a histogram: the first bucket whose running
    total reaches ``pct/100 * samples`` (``calc_clat_percentiles`` in
    fio's stat.c). Exact rational arithmetic avoids off-by-one-bucket
    differences at the boundary.
    """
    total = sum(bins.values())
    if total <= 0:
        raise FioError("percentile of an empty histogram")
    threshold = Fraction(pct) / 100 * total
    running = 0
    for value in sorted(bins):
        running += bins[value]
        if running >= threshold:
            return float(value)
    return float(max(bins))


def report_bucket_bits(data: Mapping[str, Any]) -> int | None:
    """The bucket width (``FIO_IO_U_PLAT_BITS``) of the fio build that wrote
    ``data``, read from its latency histograms' bucket values; None when
    they do not say (no histogram, or no bucket past fio's exact range)."""
    bins = merge_bins(
        lat["bins"]
        for job in data.get("jobs") or []
        if isinstance(job, Mapping)
        for direction in DIRECTIONS
        if isinstance(d := job.get(direction), Mapping)
        for kind in ("clat_ns", "lat_ns")
        if isinstance(lat := d.get(kind), Mapping) and isinstance(lat.get("bins"), Mapping)
    )
    return bucket_bits(Histogram.from_pairs(bins.items())) if bins else None


def _did_io(d: Mapping[str, Any]) -> bool:
    return int(d.get("total_ios", 0) or 0) > 0 or int(d.get("io_bytes", 0) or 0) > 0


def _latency(parts: list[tuple[str, Mapping[str, Any]]], kind: str = "clat") -> dict[str, float]:
    """``kind`` latency's mean (sample-weighted) and histogram percentiles in
    microseconds: ``clat`` (completion: from io_submit's return) or ``lat``
    (total: from the submission, the time io_submit blocked included). A
    report without ``lat_ns`` bins (fio run without ``lat_percentiles``, as
    before kmlbench asked for them) gives ``lat``'s mean alone."""
    samples = 0
    weighted = 0.0
    bin_maps = []
    every_bin = True
    for where, d in parts:
        lat = d.get(f"{kind}_ns") or {}
        n = int(lat.get("N", 0) or 0)
        if n <= 0:
            continue
        if "bins" in lat:
            bin_maps.append(lat["bins"])
        elif kind == "clat":
            raise FioError(
                f"{where}: clat_ns has no 'bins': run fio with --output-format={OUTPUT_FORMAT}"
            )
        else:
            every_bin = False
        samples += n
        weighted += float(lat["mean"]) * n
    if samples == 0:
        return {}
    out = {f"{kind}_mean_us": weighted / samples / 1000.0}
    if every_bin:
        bins = merge_bins(bin_maps)
        for name, pct in PERCENTILES.items():
            out[f"{kind}_{name}_us"] = percentile_from_bins(bins, pct) / 1000.0
    return out


def _latencies(parts: list[tuple[str, Mapping[str, Any]]]) -> dict[str, float]:
    return {**_latency(parts, "clat"), **_latency(parts, "lat")}


def _by_direction(jobs: list[Any]) -> dict[str, list[tuple[str, Mapping[str, Any]]]]:
    """Each direction's reports, from every job that did I/O in it, named for errors."""
    per_dir: dict[str, list[tuple[str, Mapping[str, Any]]]] = {d: [] for d in DIRECTIONS}
    for i, job in enumerate(jobs):
        for direction in DIRECTIONS:
            d = job.get(direction)
            if isinstance(d, Mapping) and _did_io(d):
                per_dir[direction].append((f"jobs[{i}].{direction}", d))
    return per_dir


def late_targets(workload: Mapping[str, Any]) -> dict[str, int]:
    """The latency targets a cell's workload params set, by direction (none: nothing counted)."""
    return {
        d: int(workload[f"{d}_target_ms"])
        for d in LATE_DIRECTIONS
        if workload.get(f"{d}_target_ms") is not None
    }


def late_metrics(data: Mapping[str, Any], targets_ms: Mapping[str, float]) -> dict[str, float]:
    """The share of requests whose total latency exceeded their direction's
    target: ``late_frac`` over the directions given a target, and
    ``read_late_frac``/``write_late_frac`` (matrix keys
    ``workload.read_target_ms``/``write_target_ms``).

    It is what a user sees of a deadline, whatever the scheduler: none,
    kyber and bfq have no deadline of their own to count misses against
    (:mod:`kmlbench.data.deadline_misses` counts mq-deadline's, at
    dispatch), but every request's completion can be held to the same
    target. Counted on fio's total-latency histogram (``lat_ns.bins``): a
    bucket is late when its value, fio's bucket middle, is above the target,
    so a request within half a bucket (0.2% of the value in the guest's
    fio) of it may fall either side. A targeted direction that did I/O without its
    histogram (fio run without ``lat_percentiles``) gives nothing at all,
    rather than a share of the other direction alone.
    """
    jobs = data.get("jobs")
    if not isinstance(jobs, list):
        raise FioError("fio report has no jobs")
    out: dict[str, float] = {}
    late = total = 0
    for direction, parts in _by_direction(jobs).items():
        target = targets_ms.get(direction)
        if target is None or not parts:
            continue
        bin_maps = [(d.get("lat_ns") or {}).get("bins") for _, d in parts]
        if any(b is None for b in bin_maps):
            return {}
        bins = merge_bins(b for b in bin_maps if b is not None)
        n = sum(bins.values())
        limit_ns = round(target * 1_000_000)
        over = sum(count for value, count in bins.items() if value > limit_ns)
        if n:
            out[f"{direction}_late_frac"] = over / n
            late += over
            total += n
    if total:
        out["late_frac"] = late / total
    return out


def metrics_from_fio(data: Mapping[str, Any]) -> dict[str, float]:
    """Totals over every job (group) and direction, then ``read_*``,
    ``write_*`` (and ``trim_*``) for each direction that did I/O.

    Keys: ``iops``, ``bw_kib_s``, ``clat_mean_us``, ``clat_p50_us``,
    ``clat_p99_us``, ``clat_p999_us``, and the same for ``lat`` (total
    latency; its percentiles only where fio kept its histogram). Compare
    schedulers by ``lat``: ``clat`` leaves out the time io_submit blocked,
    which differs from scheduler to scheduler (docs/results.md, "Which
    latency"). IOPS and bandwidth add up across
    jobs (with ``group_reporting`` fio already summed each group).
    A job that reports an error raises :class:`FioError`.
    """
    jobs = data.get("jobs")
    if not isinstance(jobs, list) or not jobs:
        raise FioError("fio report has no jobs")
    failed = [f"{j.get('jobname', '?')}: error {j.get('error')}" for j in jobs if j.get("error")]
    if failed:
        raise FioError("fio job failed: " + "; ".join(failed))

    per_dir = _by_direction(jobs)
    everything = [p for parts in per_dir.values() for p in parts]
    if not everything:
        raise FioError("fio report shows no completed I/O")

    def throughput(parts: list[tuple[str, Mapping[str, Any]]]) -> dict[str, float]:
        return {
            "iops": sum(float(d.get("iops", 0.0)) for _, d in parts),
            "bw_kib_s": sum(float(d.get("bw", 0.0)) for _, d in parts),
        }

    metrics = {**throughput(everything), **_latencies(everything)}
    for direction, parts in per_dir.items():
        if parts:
            for key, value in {**throughput(parts), **_latencies(parts)}.items():
                metrics[f"{direction}_{key}"] = value
    return metrics
