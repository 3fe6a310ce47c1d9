"""The results store: one parquet row per case run, typed, versioned, written atomically.

Schema version 5 (version 2 added the LM head settings and the ``head_peak_*`` columns; version
3 the per-layer midpoint and the Hamiltonian coefficients, ``readout``, ``measure.memory_cap``,
and the ``lm_eval`` metric's ``lm_eval_*`` columns and ``data.lm_eval_*`` settings; version 4 the
retrofit settings ``model.force``, ``model.readout``, ``model.ham_carry`` and
``train.distill_init``; version 5 ``model.revffn_adapters``). Files of an older version are
read, their new columns null. Every column, its type and unit (``revbench schema`` prints this
table, and docs/results-schema.md is generated from it):

* provenance — who measured what, where and with which software (``PROVENANCE`` below);
* configuration — every setting of the case, flattened as ``section.field`` (``model.n_layers``,
  ``data.batch_size``, ``train.dtype``, ``measure.steps``), typed from the suite schema;
* metrics — the columns each registered metric fills (``revbench.measure.metrics``), nullable,
  units in their names (``peak_mem_bytes``, ``step_time_s_median``, ``tokens_per_s``);
* ``status`` (ok | oom | error | timeout) and ``error`` (the failure's last line).

Layout: ``<out>/<suite>/<case-slug>__<config_hash>__r<repeat>__<run_id>.parquet``, one file per
case run, written to a hidden temp file and renamed, so a ``kill -9`` at any moment leaves either
the whole row or nothing. ``load`` reads every parquet under a folder and skips (with a warning)
files that are corrupt or were not written by revbench.
"""

from __future__ import annotations

import functools
import os
import statistics
import types
import typing
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from revbench.columns import STATUSES, Column
from revbench.errors import ResultsError

if TYPE_CHECKING:
    import pandas as pd

SCHEMA_VERSION = 5
_META_KEY = b"revbench.schema_version"


PROVENANCE: tuple[Column, ...] = (
    Column("schema_version", pa.int32(), "", "results schema version"),
    Column("suite", pa.string(), "", "suite name"),
    Column("suite_file", pa.string(), "", "path of the suite file as given"),
    Column("case", pa.string(), "", "case name (matrix point or explicit case)"),
    Column("case_index", pa.int32(), "", "position of the case in the expanded suite"),
    Column("config_hash", pa.string(), "", "hash of the resolved configuration (resume key)"),
    Column("repeat", pa.int32(), "", "repeat index, 0-based; -1 for the median over repeats"),
    Column(
        "repeats_in_median",
        pa.int32(),
        "",
        "median row only: number of ok repeats the median is taken over",
    ),
    Column(
        "step_time_spread",
        pa.float64(),
        "",
        "median row only: (max - min) / median of step_time_s_median over the repeats",
    ),
    Column(
        "unstable",
        pa.bool_(),
        "",
        "median row only: step_time_spread exceeds measure.unstable_spread",
    ),
    Column("run_id", pa.string(), "", "one invocation of `revbench run`"),
    Column("timestamp_utc", pa.timestamp("us", tz="UTC"), "", "when the case run finished"),
    Column("wall_time_s", pa.float64(), "s", "wall time of the case run, all processes"),
    Column("revbench_version", pa.string(), "", ""),
    Column("git_commit", pa.string(), "", "commit of the revbench checkout, when in git"),
    Column("python_version", pa.string(), "", ""),
    Column("torch_version", pa.string(), "", ""),
    Column("transformers_version", pa.string(), "", "null when not installed"),
    Column("hostname", pa.string(), "", ""),
    Column("cpu_model", pa.string(), "", ""),
    Column("cpu_count", pa.int32(), "", "logical CPUs"),
    Column("ram_bytes", pa.int64(), "bytes", "host memory"),
    Column("device_type", pa.string(), "", "cpu or cuda"),
    Column("device_name", pa.string(), "", "GPU model, or the CPU model"),
    Column("device_memory_bytes", pa.int64(), "bytes", "GPU memory, or host memory on CPU"),
    Column("driver_version", pa.string(), "", "NVIDIA driver (GPU only)"),
    Column("cuda_version", pa.string(), "", "CUDA runtime torch was built with (GPU only)"),
    Column("compute_capability", pa.string(), "", "CUDA compute capability (GPU only)"),
    Column("gpu_sm_clock_mhz", pa.int64(), "MHz", "max SM clock from NVML (GPU only)"),
    Column("gpu_power_limit_w", pa.float64(), "W", "enforced power limit from NVML (GPU only)"),
    Column(
        "gpu_other_processes",
        pa.int32(),
        "",
        "other compute processes on the GPU during the case (shared GPU when > 0)",
    ),
    Column(
        "torch_threads",
        pa.int32(),
        "",
        "CPU threads torch used in the case process (train.threads, else OMP_NUM_THREADS, "
        "which Ray sets to a task's CPUs and torchrun to 1, else all cores)",
    ),
    Column("seed", pa.int64(), "", "train.seed, repeated for convenience"),
)
OUTCOME: tuple[Column, ...] = (
    Column("status", pa.string(), "", "ok | oom | error | timeout"),
    Column("error", pa.string(), "", "last line of the failure, null when ok"),
)


def _arrow_type(annotation: Any) -> pa.DataType:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _arrow_type(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        return pa.string()
    if origin is list:
        return pa.list_(_arrow_type(typing.get_args(annotation)[0]))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _arrow_type(args[0])
    mapping = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}
    return mapping.get(annotation, pa.string())


def config_columns() -> tuple[Column, ...]:
    from revbench.settings import SECTIONS

    cols = []
    for section, cls in SECTIONS.items():
        for name, info in cls.__pydantic_fields__.items():
            desc = (info.description or "").split("\n")[0]
            cols.append(Column(f"{section}.{name}", _arrow_type(info.annotation), "", desc))
    cols.append(Column("metrics", pa.string(), "", "comma-separated metric names of the case"))
    cols.append(
        Column(
            "readout",
            pa.string(),
            "",
            "what the LM head reads from a reversible model's final state, revbench's choice: "
            "last (slot), mean (of the two slots), concat (of halves); null for residual models",
        )
    )
    return tuple(cols)


def columns() -> tuple[Column, ...]:
    """Every column of schema version ``SCHEMA_VERSION``, in file order."""
    from revbench.measure.metrics import METRICS

    metric_cols: list[Column] = []
    seen: set[str] = set()
    for entry in METRICS.entries():
        for col in entry.obj.columns:
            if col.name not in seen:
                seen.add(col.name)
                metric_cols.append(col)
    return (*PROVENANCE, *config_columns(), *metric_cols, *OUTCOME)


@functools.cache
def column_info() -> dict[str, Column]:
    """Every column of the schema by name: its unit, description, and which way is better
    (what ``compare`` and the views read instead of restating it)."""
    return {c.name: c for c in columns()}


def arrow_schema() -> pa.Schema:
    meta = {_META_KEY: str(SCHEMA_VERSION).encode()}
    return pa.schema([pa.field(c.name, c.type, nullable=True) for c in columns()], metadata=meta)


def schema_markdown() -> str:
    lines = ["| column | type | unit | meaning |", "|---|---|---|---|"]
    for c in columns():
        lines.append(f"| `{c.name}` | {c.type} | {c.unit} | {c.description} |")
    return "\n".join(lines) + "\n"


# --- writing -------------------------------------------------------------------------------


def write_row(row: dict[str, Any], path: Path) -> Path:
    """Write one row to ``path`` atomically (hidden temp file, fsync, rename)."""
    schema = arrow_schema()
    unknown = set(row) - set(schema.names)
    if unknown:
        raise ResultsError(f"row has columns outside schema v{SCHEMA_VERSION}: {sorted(unknown)}")
    table = pa.Table.from_pylist([row], schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def writable_row(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` if it fits the schema, else the row without the metric values that do not fit
    (a value overflowing its column, a wrong type, an unknown column), with status ``error``
    and the reason: a case that ran is never lost to a value that cannot be stored."""
    schema = arrow_schema()
    try:
        if set(row) <= set(schema.names):
            pa.Table.from_pylist([row], schema=schema)
            return row
    except (pa.ArrowException, OverflowError, TypeError, ValueError):
        pass
    keep = {c.name for c in (*PROVENANCE, *config_columns(), *OUTCOME)}
    bad = []
    out: dict[str, Any] = {}
    for name, value in row.items():
        if name in keep:
            out[name] = value
            continue
        if name not in schema.names:
            bad.append(name)
            continue
        try:
            pa.array([value], type=schema.field(name).type)
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            bad.append(name)
            continue
        out[name] = value
    shown = ", ".join(sorted(bad)[:5]) + (", ..." if len(bad) > 5 else "")
    reason = f"could not store {len(bad)} value(s) of the schema v{SCHEMA_VERSION}: {shown}"
    out["status"] = "error"
    out["error"] = f"{reason}; {row.get('error')}" if row.get("error") else reason
    return out


# --- reading -------------------------------------------------------------------------------


class ResultsWarning(UserWarning):
    """A file under a results folder was skipped."""


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The median over the ok repeats of one case (``rows``: its per-repeat rows), with spread
    and instability flag; None when no repeat succeeded."""
    ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: r["repeat"])
    if not ok:
        return None
    metric_names = (
        {c.name for c in columns()}
        - {c.name for c in PROVENANCE}
        - {c.name for c in config_columns()}
        - {c.name for c in OUTCOME}
    )
    numeric = {
        c.name
        for c in columns()
        if c.name in metric_names and (pa.types.is_integer(c.type) or pa.types.is_floating(c.type))
    }
    out = dict(ok[-1])
    out.update(repeat=-1, repeats_in_median=len(ok), status="ok", error=None)
    for name in numeric:
        values = [r[name] for r in ok if r.get(name) is not None and r[name] == r[name]]
        if values:
            med = statistics.median(values)
            out[name] = int(med) if all(isinstance(v, int) for v in values) else float(med)
    times = [r["step_time_s_median"] for r in ok if r.get("step_time_s_median")]
    if len(times) > 1:
        spread = (max(times) - min(times)) / statistics.median(times)
        out["step_time_spread"] = spread
        out["unstable"] = spread > ok[-1]["measure.unstable_spread"]
    return out


def _parquet_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*.parquet") if not p.name.startswith(".") and p.is_file())


# Columns every row has from schema v1 on: without them a file cannot be placed or resumed.
REQUIRED = (
    "schema_version",
    "suite",
    "case",
    "case_index",
    "config_hash",
    "repeat",
    "run_id",
    "timestamp_utc",
    "status",
)


def _conform(table: pa.Table) -> tuple[pa.Table | None, str]:
    """``table`` cast to this schema's column types, or (None, why it cannot be read)."""
    try:
        version = int((table.schema.metadata or {})[_META_KEY])
    except (KeyError, ValueError):
        return None, "not a revbench results file"
    if version > SCHEMA_VERSION:
        return None, (
            f"written by a newer revbench (schema v{version}; this one reads up to "
            f"v{SCHEMA_VERSION}): upgrade revbench to read it"
        )
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        return None, f"missing required column(s) {', '.join(missing)}"
    ts = table.schema.field("timestamp_utc").type
    if not pa.types.is_timestamp(ts) or ts.tz is None:
        return None, f"timestamp_utc is {ts}, not a UTC timestamp"
    for name in ("repeat", "config_hash", "status", "timestamp_utc"):
        if table.column(name).null_count:
            return None, f"null {name}"
    bad = set(table.column("status").to_pylist()) - set(STATUSES)
    if bad:
        return None, f"unknown status {sorted(map(str, bad))[0][:40]!r}"
    schema = arrow_schema()
    arrays, fields = [], []
    for field in table.schema:
        col = table.column(field.name)
        if field.name in schema.names:
            want = schema.field(field.name).type
            try:
                col = col.cast(want) if col.type != want else col
            except (pa.ArrowException, ValueError, TypeError):
                return None, f"column {field.name[:60]} is {col.type}, not {want}"
            field = pa.field(field.name, want)
        arrays.append(col)
        fields.append(field)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields)), ""


def load(path: str | Path) -> pd.DataFrame:
    """Every revbench row under ``path`` (a parquet file or a folder searched recursively).

    Any file that cannot be read as rows of this schema is skipped with a ``ResultsWarning``
    naming it and why: corrupt files, parquet files not written by revbench, files of a newer
    schema version (never merged silently), files missing a required column, with a time stamp
    without time zone, a null ``repeat`` or an unknown ``status``. Older schema versions are read
    (their missing columns are null). A missing path raises ``ResultsError``. An empty folder
    gives an empty frame that still has the schema's columns.
    """
    import pandas as pd  # here, not at the top: the runner writes rows without pandas

    root = Path(path)
    if not root.exists():
        raise ResultsError(f"{root}: no such results file or folder")
    frames = []
    for f in _parquet_files(root):
        try:
            if _META_KEY not in (pq.read_schema(f).metadata or {}):
                why = "not a revbench results file"
                table = None
            else:
                table, why = _conform(pq.read_table(f))
        except Exception as e:  # pyarrow raises several types for damaged files
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            table, why = None, f"corrupt ({first})"
        if table is None:
            warnings.warn(f"skipping {f}: {why}", ResultsWarning, stacklevel=2)
            continue
        if table.num_rows:
            frames.append(table.to_pandas())
    if not frames:
        return arrow_schema().empty_table().to_pandas()
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return df.sort_values(
        ["timestamp_utc", "suite", "case_index", "repeat"],
        kind="stable",
        ignore_index=True,
        na_position="last",
    )
