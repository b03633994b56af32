"""The results database: every run folder in one embedded SQLite file.

Run folders (``docs/results.md``) stay the source of truth; the database is
an index over them, so it can always be rebuilt with ``kmlbench import``.
It holds what reports, figures and comparisons need without re-reading
thousands of JSON files: runs (with their manifest), cells, their
parameters flattened to ``axis.key = value`` rows (so cells can be
filtered in SQL), their metrics, fio's completion- and total-latency
histograms per cell and direction (so percentiles of merged repeats are
recomputed exactly instead of averaged) and KML's statistics
(``kml_stats``).
``docs/reporting.md`` describes the schema. One job per module:

| module | one job |
|---|---|
| ``schema`` | where the file is, migrations, the WAL connection, transactions, stored params |
| ``ingest`` | run folders in: a finished cell's rows replaced in one transaction |
| ``queries`` | runs and cells out (:class:`RunRow`, :class:`CellRow`), filters, dump |
| ``exports`` | every table as CSV or Parquet |
| ``commands`` | ``kmlbench import`` |

This package exposes the first three; ``exports`` and ``commands`` (and with
them pyarrow) load only for ``kmlbench import``, so that the runner, which
ingests each cell as it finishes, stays light.
"""

from __future__ import annotations

from kmlbench.data.db.ingest import (
    DIRECTIONS,
    delete_run,
    fio_histograms,
    ingest_cell,
    ingest_run,
    resolve_run_dir,
    run_id_of,
)
from kmlbench.data.db.queries import (
    CellRow,
    RunRow,
    dump,
    get_run,
    list_runs,
    load_cells,
    parse_filter,
)
from kmlbench.data.db.schema import (
    DB_ENV,
    DB_NAME,
    MIGRATIONS,
    SCHEMA_VERSION,
    connect,
    default_db_path,
    flatten_params,
    migrate,
    param_value,
    schema_version,
)
from kmlbench.plan.cells import config_hash  # the hash cell ids carry

__all__ = [
    "DB_ENV",
    "DB_NAME",
    "DIRECTIONS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "CellRow",
    "RunRow",
    "config_hash",
    "connect",
    "default_db_path",
    "delete_run",
    "dump",
    "fio_histograms",
    "flatten_params",
    "get_run",
    "ingest_cell",
    "ingest_run",
    "list_runs",
    "load_cells",
    "migrate",
    "param_value",
    "parse_filter",
    "resolve_run_dir",
    "run_id_of",
    "schema_version",
]
