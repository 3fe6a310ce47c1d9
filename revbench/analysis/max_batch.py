"""View 2, max batch: the largest batch per device or budget and architecture, every trial of
the searches, and Gal et al.'s Table 3 beside them (labelled as reported, never as measured)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go

from revbench.analysis import points, style
from revbench.analysis.formats import Section, fmt_int, fmt_number
from revbench.analysis.points import MIB
from revbench.data import REPORTED_LABEL, paper_max_batch

TITLE = "Max batch"


def budget_label(budget: object, budget_bytes: object, device: object) -> str:
    """How a max-batch search's memory limit reads: the configured budget, else the device."""
    if isinstance(budget, str) and budget:
        return f"budget {budget}"
    if budget_bytes is not None and budget_bytes == budget_bytes:
        return f"{device} ({float(budget_bytes) / 2**30:.1f} GiB)"
    return str(device)


def _latest(df: pd.DataFrame, name: str) -> pd.Series:
    """config_hash -> the latest non-missing value of ``name``."""
    sub = df[["config_hash", name]].dropna() if name in df.columns else pd.DataFrame()
    if sub.empty:
        return pd.Series(dtype="object")
    return sub.drop_duplicates("config_hash", keep="last").set_index("config_hash")[name]


def table(df: pd.DataFrame) -> pd.DataFrame:
    """One point per case with a max batch: ``limit`` (device or budget) and ``capped``
    (the search reached measure.max_size with everything fitting)."""
    metrics = ["max_batch_size", "max_batch_tokens_per_s", "budget_bytes", "search_trials"]
    s = points.summarise(df, metrics)
    s = s[s["max_batch_size"].notna()].reset_index(drop=True)
    s["limit"] = [
        budget_label(b, bb, d)
        for b, bb, d in zip(s["measure.budget"], s["budget_bytes"], s["device_name"], strict=True)
    ]
    capped = _latest(df, "search_capped")
    s["capped"] = s["config_hash"].map(capped).astype("boolean")
    return s


def trials(df: pd.DataFrame) -> pd.DataFrame:
    """The fits / does-not-fit trials: one row per trial of the latest search of a case."""
    names = ["suite", "case", "arch_label", "size", "fits", "peak_bytes", "status", "budget_bytes"]
    if "search_trial_list" not in df.columns or df.empty:
        return pd.DataFrame(columns=names)
    df = points.prepare(df) if "arch_label" not in df.columns else df
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


def figure(mb: pd.DataFrame) -> go.Figure:
    """Bars of the largest batch per device or budget and architecture (≥ when capped)."""
    fig = go.Figure()
    for arch, g in mb.groupby("arch_label", sort=True):
        capped = g["capped"].fillna(False).astype(bool)
        labels = [
            f"≥{int(v)}" if c else str(int(v))
            for v, c in zip(g["max_batch_size"], capped, strict=True)
        ]
        fig.add_trace(
            go.Bar(
                x=g["limit"],
                y=g["max_batch_size"],
                name=str(arch),
                marker_color=style.color(str(arch)),
                text=labels,
                textposition="outside",
            )
        )
    return style.layout(fig, "Max batch size", "device / budget", "max batch size", barmode="group")


def trials_figure(tr: pd.DataFrame) -> go.Figure:
    """Every trial of the searches, fits (circle) or not (cross), and the budgets."""
    fig = go.Figure()
    for (arch, fits), g in tr.groupby(["arch_label", "fits"], sort=True):
        fig.add_trace(
            go.Scatter(
                x=g["size"],
                y=g["peak_bytes"] / MIB,
                mode="markers",
                name=f"{arch}: {'fits' if fits else 'does not fit'}",
                marker={
                    "size": 10,
                    "color": style.color(str(arch)),
                    "symbol": "circle" if fits else "x",
                },
                text=g["status"],
                hovertemplate="size %{x}<br>%{y:.1f} MiB<br>%{text}<extra></extra>",
            )
        )
    for budget in sorted(tr["budget_bytes"].dropna().unique()):
        fig.add_hline(
            y=float(budget) / MIB,
            line={"dash": "dot", "color": "grey"},
            annotation_text=f"budget {float(budget) / MIB:.0f} MiB",
        )
    return style.layout(fig, "Max batch search trials", "batch size", "footprint (MiB)")


def paper_figure(ref: pd.DataFrame) -> go.Figure:
    """Gal et al. Table 3 as hatched bars, labelled as reported, never as measured."""
    fig = go.Figure()
    for arch in ("baseline", "midpoint"):
        fig.add_trace(
            go.Bar(
                x=ref["gpu"],
                y=ref[arch],
                name=f"{arch} ({REPORTED_LABEL})",
                marker={"color": style.color(arch), "pattern": {"shape": "/"}},
                text=[str(int(v)) for v in ref[arch]],
                textposition="outside",
            )
        )
    return style.layout(
        fig,
        f"Max batch size {REPORTED_LABEL} (Gal et al., Table 3; GPT-2 small)",
        "GPU",
        "max batch size",
        barmode="group",
    )


def sections(df: pd.DataFrame) -> list[Section]:
    out = []
    mb = table(df)
    if not mb.empty:
        cells = pd.DataFrame(
            {
                "device / budget": mb["limit"],
                "arch": mb["arch_label"],
                "case": mb["case"],
                "max batch": [
                    f"≥{fmt_int(v)}" if c is not pd.NA and c == c and bool(c) else fmt_int(v)
                    for v, c in zip(mb["max_batch_size"], mb["capped"], strict=True)
                ],
                "trials": mb["search_trials"].map(fmt_int),
                "tokens/s at max batch": mb["max_batch_tokens_per_s"].map(
                    lambda v: fmt_number(v, 0)
                ),
            }
        )
        right = ("max batch", "trials", "tokens/s at max batch")
        cap = points.caption(points.rows_of(df, mb))
        out.append(Section("max_batch", "Max batch size", cells, cap, right, figure(mb)))
        tr = trials(points.rows_of(df, mb))
        if not tr.empty:
            out.append(
                Section(
                    "max_batch_trials",
                    "Max batch search trials",
                    pd.DataFrame(),
                    cap,
                    figure=trials_figure(tr),
                )
            )
    ref = paper_max_batch()
    cells = pd.DataFrame(
        {
            "GPU": ref["gpu"],
            "baseline": ref["baseline"].map(fmt_int),
            "midpoint": ref["midpoint"].map(fmt_int),
            "ratio": ref["ratio"].map(lambda v: f"{v:.1f}x"),
        }
    )
    out.append(
        Section(
            "paper_max_batch",
            f"Max batch size, {REPORTED_LABEL}",
            cells,
            f"{ref['source'].iloc[0]}; not measured by revbench.",
            ("baseline", "midpoint", "ratio"),
            paper_figure(ref),
        )
    )
    return out


def panel(df: pd.DataFrame, st: Any) -> None:
    mb = table(df)
    if mb.empty:
        st.info("No max batch size results in this selection (metric `max_batch_size`).")
    else:
        style.show(st, figure(mb), "fig_max_batch")
        cols = ["limit", "arch_label", "case", "max_batch_size", "capped", "search_trials"]
        st.dataframe(mb[[*cols, "max_batch_tokens_per_s"]], hide_index=True)
        tr = trials(points.rows_of(df, mb))
        if not tr.empty:
            style.show(st, trials_figure(tr), "fig_trials")
    st.subheader(f"Gal et al., Table 3 ({REPORTED_LABEL})")
    ref = paper_max_batch()
    style.show(st, paper_figure(ref), "fig_paper_max_batch")
    st.dataframe(ref, hide_index=True)
