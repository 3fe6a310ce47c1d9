"""Result rows -> points: the pandas layer every view shares.

``results.load`` gives one row per measurement; a view shows one *point* per case. This module
reads columns defensively (the schema grows; older files lack newer columns, so every function
accepts any frame ``results.load`` returns, an empty one included), labels architectures, applies
the dashboard's filters and folds repeats into points.

Repeats: a case measured with ``measure.repeats`` > 1 has per-repeat rows (repeat 0..N-1) and a
median row (repeat -1, written by the runner). A point of a view is the median row when there is
one (else the median of the repeats); its error bar spans the repeats (min to max).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from revbench import results

MIB = 2**20

# Identity of a point: what a reader needs to tell two points apart.
IDENTITY = (
    "suite",
    "case",
    "config_hash",
    "arch_label",
    "model.arch",
    "model.block",
    "model.n_layers",
    "model.d_model",
    "data.batch_size",
    "data.seq_len",
    "train.dtype",
    "train.parallel",
    "train.nproc_per_node",
    "device_type",
    "device_name",
    "measure.budget",
    "revbench_version",
)
_CONVERSION = re.compile(r"(^|\.)conversion_steps?$")


def col(df: pd.DataFrame, name: str) -> pd.Series:
    """``df[name]``, or an all-missing column when this frame predates ``name``."""
    if name in df.columns:
        return df[name]
    return pd.Series(pd.NA, index=df.index, dtype="object")


def arch_label(df: pd.DataFrame) -> pd.Series:
    """``model.arch``, with ``+ckpt`` for the baseline run with gradient checkpointing and
    `` ddp×2`` / `` fsdp×8`` for a case trained by several processes."""
    arch = col(df, "model.arch").astype("string").fillna("?")
    ckpt = col(df, "model.checkpointing").astype("boolean").fillna(False).astype(bool)
    label = arch.where(~ckpt, arch + "+ckpt")
    parallel = col(df, "train.parallel").astype("string").fillna("none")
    nproc = col(df, "train.nproc_per_node").astype("Int64").fillna(1).astype(str)
    spread = parallel != "none"
    return label.where(~spread, label + " " + parallel + "×" + nproc).astype(str)


def prepare(df: pd.DataFrame) -> pd.DataFrame:
    """Add the derived columns the views share: ``arch_label``, ``date`` (UTC)."""
    out = df.copy()
    out["arch_label"] = arch_label(out)
    ts = pd.to_datetime(col(out, "timestamp_utc"), utc=True, errors="coerce")
    out["date"] = ts.dt.date
    return out


# --- filters -------------------------------------------------------------------------------

FILTER_COLUMNS = {
    "suite": "suite",
    "arch": "arch_label",
    "device": "device_name",
    "dtype": "train.dtype",
    "block": "model.block",
    "status": "status",
}


@dataclasses.dataclass(frozen=True)
class Filters:
    """What the sidebar selects; ``None`` means everything."""

    suite: tuple[str, ...] | None = None
    arch: tuple[str, ...] | None = None
    device: tuple[str, ...] | None = None
    dtype: tuple[str, ...] | None = None
    block: tuple[str, ...] | None = None
    status: tuple[str, ...] | None = None
    dates: tuple[dt.date, dt.date] | None = None


def filter_options(df: pd.DataFrame) -> dict[str, list[str]]:
    """The values each filter can take (sorted, missing values left out)."""
    return {
        key: sorted(str(v) for v in col(df, name).dropna().unique())
        for key, name in FILTER_COLUMNS.items()
    }


def apply_filters(df: pd.DataFrame, f: Filters) -> pd.DataFrame:
    """Rows of a ``prepare``d frame that pass every filter."""
    keep = pd.Series(True, index=df.index)
    for key, name in FILTER_COLUMNS.items():
        chosen = getattr(f, key)
        if chosen is not None:
            keep &= col(df, name).astype("string").isin(list(chosen)).fillna(False).astype(bool)
    if f.dates is not None and "date" in df.columns:
        lo, hi = f.dates
        keep &= df["date"].map(lambda d: d is not None and d == d and lo <= d <= hi).astype(bool)
    return df[keep]


# --- points with error bars ----------------------------------------------------------------


def numeric(s: pd.Series) -> pd.Series:
    """``s`` as float64, anything unreadable as NaN."""
    return pd.to_numeric(s, errors="coerce").astype("float64")


def summarise(df: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """One row per (suite, config_hash) with an ok result: identity columns, then for each
    metric ``m``: ``m`` (median), ``m_lo``/``m_hi`` (range over repeats), and ``n_repeats``."""
    names = [*IDENTITY, *metrics, "n_repeats"] + [f"{m}_{s}" for m in metrics for s in ("lo", "hi")]
    ok = df[col(df, "status").astype("string").eq("ok").fillna(False).astype(bool)]
    if ok.empty:
        return pd.DataFrame(columns=names)
    ok = ok.sort_values("timestamp_utc", kind="stable") if "timestamp_utc" in ok else ok
    ok = prepare(ok) if "arch_label" not in ok.columns else ok
    rows = []
    for _, g in ok.groupby(["suite", "config_hash"], sort=True, dropna=False):
        rep = numeric(col(g, "repeat")).fillna(0)
        median_rows = g[rep == -1]
        # the latest row of each repeat index (a resumed or re-run suite has several)
        repeats = g[rep >= 0].assign(_r=rep[rep >= 0]).drop_duplicates("_r", keep="last")
        head = median_rows.iloc[-1] if len(median_rows) else g.iloc[-1]
        row = {name: head[name] if name in g.columns else pd.NA for name in IDENTITY}
        row["n_repeats"] = len(repeats)
        for m in metrics:
            values = numeric(col(repeats, m)).dropna()
            center = numeric(col(median_rows, m)).dropna()
            if len(center):
                row[m] = center.iloc[-1]
            elif len(values):
                row[m] = float(values.median())
            else:
                row[m] = np.nan
            row[f"{m}_lo"] = values.min() if len(values) else row[m]
            row[f"{m}_hi"] = values.max() if len(values) else row[m]
        rows.append(row)
    out = pd.DataFrame(rows, columns=names)
    return out.sort_values(
        ["suite", "arch_label", "model.n_layers", "case"], kind="stable", ignore_index=True
    )


# --- what the results hold ----------------------------------------------------------------


def quality_columns(df: pd.DataFrame) -> list[str]:
    """The quality columns of the schema (``Column.quality``: accuracy, perplexity and their
    intervals) that hold at least one number."""
    info = results.column_info()
    return [c for c in df.columns if c in info and info[c].quality and numeric(df[c]).notna().any()]


def conversion_column(df: pd.DataFrame) -> str | None:
    """The column counting conversion (fine-tuning) steps, when the results have one."""
    for c in df.columns:
        if _CONVERSION.search(c) and numeric(df[c]).notna().any():
            return c
    return None


def caption(df: pd.DataFrame) -> str:
    """One line naming what a table or figure shows: suites, devices, revbench versions."""

    def names(values: Iterable[object]) -> str:
        vals = sorted({str(v) for v in values if v is not None and v == v})
        return ", ".join(vals) if vals else "none"

    devices = names(
        f"{n} ({t})"
        for n, t in zip(col(df, "device_name"), col(df, "device_type"), strict=True)
        if isinstance(n, str)
    )
    return (
        f"Suite: {names(col(df, 'suite'))}; devices: {devices}; "
        f"revbench {names(col(df, 'revbench_version'))}."
    )


def rows_of(df: pd.DataFrame, points: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``df`` behind a view's points (same ``config_hash``): what a caption names."""
    return df[df["config_hash"].isin(set(points["config_hash"]))]
