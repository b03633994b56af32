"""fio job files: the templates, a workload rendered into a job, the command that runs it.

Job files are rendered on the host from ``workloads/templates/<name>.fio``
with :class:`string.Template`, so the exact job a guest ran is stored next
to its results (``job.fio``) and a missing variable fails when the matrix
is loaded, before a guest boots. Part of the plan: a matrix whose
workloads do not render is refused. Reading fio's output is
:mod:`kmlbench.data.fio`'s job.
"""

from __future__ import annotations

import shlex
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kmlbench import paths

OUTPUT_FORMAT = "json+"
# Put before every rendered job: fio then keeps the histogram of each
# request's total latency (submission to completion, ``lat_ns``) beside
# that of its completion latency (``clat_ns``, from the moment the request
# left io_submit). They differ by the time io_submit blocked before the
# request was queued, which depends on the scheduler (none, kyber and bfq
# size their queue by the device's tags, mq-deadline by nr_requests), so
# schedulers compare by ``lat``. fio allows several [global] sections; each
# applies to the jobs after it.
PREAMBLE = (
    "; kmlbench: total latency percentiles beside completion latency's\n"
    "[global]\nlat_percentiles=1\n\n"
)


class FioError(Exception):
    """A template that does not render, or fio output that cannot be used.

    Defined here, the lowest layer that raises it; :mod:`kmlbench.data.fio`
    raises it for output.
    """


def template_path(name: str, templates_dir: Path | None = None) -> Path:
    return (templates_dir or paths.TEMPLATES_DIR) / f"{name}.fio"


def template_variables(workload: Mapping[str, Any], filename: str) -> dict[str, str]:
    """``${FILENAME}`` plus every workload field under its upper-case name.

    One mechanical rule (``runtime_s`` -> ``${RUNTIME_S}``) means a new
    workload field is usable in templates without touching this module.
    """
    variables = {k.upper(): str(v) for k, v in workload.items() if k != "template"}
    variables["FILENAME"] = filename
    return variables


def render_job(
    workload: Mapping[str, Any], filename: str, *, templates_dir: Path | None = None
) -> str:
    """The fio job file for ``workload`` (a cell's ``params["workload"]``) on ``filename``."""
    name = workload.get("template")
    if not isinstance(name, str) or not name:
        raise FioError("workload has no template name")
    path = template_path(name, templates_dir)
    try:
        text = path.read_text()
    except OSError as e:
        raise FioError(f"template {name!r}: cannot read {path}: {e.strerror or e}") from e
    variables = template_variables(workload, filename)
    try:
        return PREAMBLE + string.Template(text).substitute(variables)
    except KeyError as e:
        raise FioError(
            f"template {path.name} uses ${{{e.args[0]}}} but the workload has no such field "
            f"(available: {', '.join(sorted(variables))})"
        ) from e
    except ValueError as e:  # a lone "$": fio job files must write "$$"
        raise FioError(f"template {path.name}: {e}") from e


def fio_command(job_path: str, *, fio: str = "fio", output: str | None = None) -> list[str]:
    """The argv that runs a job; always ``json+`` because metrics need the histogram."""
    argv = [fio, f"--output-format={OUTPUT_FORMAT}"]
    if output:
        argv.append(f"--output={output}")
    argv.append(job_path)
    return argv


def fio_shell_command(job_path: str, *, fio: str = "fio", output: str | None = None) -> str:
    """:func:`fio_command` quoted for a remote shell (SSH)."""
    return shlex.join(fio_command(job_path, fio=fio, output=output))
