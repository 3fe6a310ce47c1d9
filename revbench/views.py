"""Results rows -> the tables behind every view (dashboard, report, compare).

Pure pandas, no plotting: ``figures.py`` turns these tables into plotly figures, ``report.py``
into markdown/LaTeX, ``dashboard_app.py`` into a page. Columns are read defensively (the schema
grows; older files lack newer columns), so every function accepts any frame ``results.load``
returns, an empty one included.

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
# Columns whose name marks a quality metric (a later issue adds accuracy tasks).
_QUALITY = re.compile(r"^(eval_.+|.*accuracy.*|.*perplexity.*)$")
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


def _numeric(s: pd.Series) -> pd.Series:
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
        rep = _numeric(col(g, "repeat")).fillna(0)
        median_rows = g[rep == -1]
        # the latest row of each repeat index (a resumed or re-run suite has several)
        repeats = g[rep >= 0].assign(_r=rep[rep >= 0]).drop_duplicates("_r", keep="last")
        head = median_rows.iloc[-1] if len(median_rows) else g.iloc[-1]
        row = {name: head[name] if name in g.columns else pd.NA for name in IDENTITY}
        row["n_repeats"] = len(repeats)
        for m in metrics:
            values = _numeric(col(repeats, m)).dropna()
            center = _numeric(col(median_rows, m)).dropna()
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


def pareto_front(x: pd.Series, y: pd.Series) -> pd.Series:
    """True for the points no other point beats on both axes: lower ``x`` (memory) and higher
    ``y`` (throughput)."""
    front = pd.Series(False, index=x.index)
    best = -np.inf
    order = pd.DataFrame({"x": x, "y": y}).dropna().sort_values(["x", "y"], ascending=[True, False])
    for idx, r in order.iterrows():
        if r["y"] > best:
            front[idx] = True
            best = r["y"]
    return front


# --- view tables ---------------------------------------------------------------------------


def tradeoff(df: pd.DataFrame) -> pd.DataFrame:
    """View 1: peak memory vs throughput, one point per case, with the Pareto front marked."""
    s = summarise(df, ["peak_mem_bytes", "tokens_per_s"])
    s = s.dropna(subset=["peak_mem_bytes", "tokens_per_s"]).reset_index(drop=True)
    s["pareto"] = pareto_front(s["peak_mem_bytes"], s["tokens_per_s"])
    return s


def budget_label(budget: object, budget_bytes: object, device: object) -> str:
    """How a max-batch search's memory limit reads: the configured budget, else the device."""
    if isinstance(budget, str) and budget:
        return f"budget {budget}"
    if budget_bytes is not None and budget_bytes == budget_bytes:
        return f"{device} ({float(budget_bytes) / 2**30:.1f} GiB)"
    return str(device)


def max_batch(df: pd.DataFrame) -> pd.DataFrame:
    """View 2: the largest batch per device or budget and architecture."""
    metrics = ["max_batch_size", "max_batch_tokens_per_s", "budget_bytes", "search_trials"]
    s = summarise(df, metrics)
    s = s[s["max_batch_size"].notna()].reset_index(drop=True)
    s["limit"] = [
        budget_label(b, bb, d)
        for b, bb, d in zip(s["measure.budget"], s["budget_bytes"], s["device_name"], strict=True)
    ]
    capped = _latest(df, "search_capped")
    s["capped"] = s["config_hash"].map(capped).astype("boolean")
    return s


def _latest(df: pd.DataFrame, name: str) -> pd.Series:
    """config_hash -> the latest non-missing value of ``name``."""
    sub = df[["config_hash", name]].dropna() if name in df.columns else pd.DataFrame()
    if sub.empty:
        return pd.Series(dtype="object")
    return sub.drop_duplicates("config_hash", keep="last").set_index("config_hash")[name]


def search_trials(df: pd.DataFrame) -> pd.DataFrame:
    """View 2's fits / does-not-fit trials: one row per trial of the latest search of a case."""
    names = ["suite", "case", "arch_label", "size", "fits", "peak_bytes", "status", "budget_bytes"]
    if "search_trial_list" not in df.columns or df.empty:
        return pd.DataFrame(columns=names)
    df = prepare(df) if "arch_label" not in df.columns else df
    rows = []
    has = df[df["search_trial_list"].map(lambda v: v is not None and len(v) > 0)]
    for _, r in has.drop_duplicates("config_hash", keep="last").iterrows():
        for t in r["search_trial_list"]:
            rows.append(
                {
                    "suite": r["suite"],
                    "case": r["case"],
                    "arch_label": r["arch_label"],
                    **{k: t.get(k) for k in ("size", "fits", "peak_bytes", "status")},
                    "budget_bytes": r.get("budget_bytes"),
                }
            )
    return pd.DataFrame(rows, columns=names)


def depth(df: pd.DataFrame, metric: str = "peak_mem_bytes") -> tuple[pd.DataFrame, pd.DataFrame]:
    """View 3: ``metric`` vs depth per architecture, and the least-squares line of each
    (``slope`` bytes per layer, ``intercept``; only where two or more depths were measured)."""
    extra = ["predicted_peak_bytes"] if metric == "peak_mem_delta_bytes" else []
    s = summarise(df, [metric, *extra]).dropna(subset=[metric, "model.n_layers"])
    s = s.reset_index(drop=True)
    fits = []
    for (suite, device, arch), g in s.groupby(
        ["suite", "device_name", "arch_label"], sort=True, dropna=False
    ):
        x = g["model.n_layers"].astype(float).to_numpy()
        if len(np.unique(x)) < 2:
            continue
        slope, intercept = np.polyfit(x, g[metric].to_numpy(float), 1)
        fits.append(
            {
                "suite": suite,
                "device_name": device,
                "arch_label": arch,
                "depths": ",".join(str(int(v)) for v in sorted(np.unique(x))),
                "slope": float(slope),
                "intercept": float(intercept),
            }
        )
    cols = ["suite", "device_name", "arch_label", "depths", "slope", "intercept"]
    return s, pd.DataFrame(fits, columns=cols)


def prediction(df: pd.DataFrame) -> pd.DataFrame:
    """The memory planner against the measurement: per point, the measured footprint
    (``peak_mem_delta_bytes``), the planner's ``predicted_peak_bytes`` and the relative error
    (predicted / measured - 1). Points without a prediction are left out."""
    s = summarise(df, ["peak_mem_delta_bytes", "predicted_peak_bytes"])
    s = s.dropna(subset=["peak_mem_delta_bytes", "predicted_peak_bytes"]).reset_index(drop=True)
    s["error"] = s["predicted_peak_bytes"] / s["peak_mem_delta_bytes"] - 1
    return s


def quality_columns(df: pd.DataFrame) -> list[str]:
    """Accuracy / perplexity / ``eval_*`` columns that hold at least one number."""
    return [
        c
        for c in df.columns
        if _QUALITY.match(c) and c != "search_trial_list" and _numeric(df[c]).notna().any()
    ]


def conversion_column(df: pd.DataFrame) -> str | None:
    """The column counting conversion (fine-tuning) steps, when the results have one."""
    for c in df.columns:
        if _CONVERSION.search(c) and _numeric(df[c]).notna().any():
            return c
    return None


def quality(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str], str | None]:
    """View 4: quality metrics vs peak memory (and conversion steps when present)."""
    names = quality_columns(df)
    conv = conversion_column(df)
    metrics = [*names, "peak_mem_bytes"] + ([conv] if conv else [])
    s = summarise(df, metrics) if names else pd.DataFrame()
    return s, names, conv


def drift(df: pd.DataFrame) -> pd.DataFrame:
    """View 5: reconstruction error and gradient agreement per architecture, dtype and depth."""
    metrics = ["recon_rel_err_max", "grad_cosine", "grad_rel_err"]
    s = summarise(df, metrics)
    s = s[s["recon_rel_err_max"].notna() | s["grad_rel_err"].notna()]
    return s.sort_values(
        ["suite", "arch_label", "train.dtype", "model.n_layers"], kind="stable", ignore_index=True
    )


RUNS_COLUMNS = (
    "timestamp_utc",
    "suite",
    "case",
    "repeat",
    "status",
    "error",
    "arch_label",
    "train.dtype",
    "device_name",
    "hostname",
    "revbench_version",
    "git_commit",
    "torch_version",
    "run_id",
    "config_hash",
    "wall_time_s",
)


def runs(df: pd.DataFrame) -> pd.DataFrame:
    """View 6: every row with its provenance and outcome, newest first."""
    df = prepare(df) if "arch_label" not in df.columns else df
    out = pd.DataFrame({c: col(df, c) for c in RUNS_COLUMNS})
    return out.sort_values("timestamp_utc", ascending=False, kind="stable", ignore_index=True)


def failures(df: pd.DataFrame) -> pd.DataFrame:
    """The rows whose status is not ok: suite, case, repeat, status, error."""
    bad = df[col(df, "status").astype("string").ne("ok").fillna(True).astype(bool)]
    out = pd.DataFrame({c: col(bad, c) for c in ("suite", "case", "repeat", "status", "error")})
    return out.sort_values(["suite", "case", "repeat"], kind="stable", ignore_index=True)


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
