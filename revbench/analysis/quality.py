"""View 5, accuracy: each quality column (accuracy, perplexity and their intervals) against peak
memory, and against conversion steps where the results count them; RevFFN's headline numbers
beside them (labelled as reported)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go

from revbench.analysis import points, style
from revbench.analysis.formats import Section, fmt_mib, fmt_number
from revbench.analysis.points import MIB
from revbench.data import REPORTED_LABEL, paper_figures

TITLE = "Accuracy"


def table(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str], str | None]:
    """The points with their quality columns and peak memory, the quality columns present,
    and the conversion-steps column when there is one."""
    names = points.quality_columns(df)
    conv = points.conversion_column(df)
    metrics = [*names, "peak_mem_bytes"] + ([conv] if conv else [])
    s = points.summarise(df, metrics) if names else pd.DataFrame()
    return s, names, conv


def figure(s: pd.DataFrame, metric: str, x: str, x_label: str) -> go.Figure:
    """A quality metric against memory (bytes, drawn in MiB) or steps."""
    fig = go.Figure()
    scale = MIB if x.endswith("_bytes") else 1.0
    for arch, g in s.dropna(subset=[metric, x]).groupby("arch_label", sort=True):
        fig.add_trace(
            go.Scatter(
                x=g[x] / scale,
                y=g[metric],
                mode="markers",
                name=str(arch),
                marker={"size": 11, "color": style.color(str(arch))},
                error_y=style.error_bars(g, metric),
                text=g["case"],
            )
        )
    return style.layout(fig, f"{metric} vs {x_label}", x_label, metric)


def sections(df: pd.DataFrame) -> list[Section]:
    s, names, _ = table(df)
    if not names:
        return []
    cells = pd.DataFrame({"suite": s["suite"], "case": s["case"], "arch": s["arch_label"]})
    for n in names:
        cells[n] = s[n].map(lambda v: fmt_number(v, 4, thousands=False))
    cells["peak memory (MiB)"] = s["peak_mem_bytes"].map(fmt_mib)
    fig = figure(s, names[0], "peak_mem_bytes", "peak memory (MiB)")
    cap = points.caption(points.rows_of(df, s))
    right = (*names, "peak memory (MiB)")
    return [Section("quality", "Accuracy vs memory", cells, cap, right, fig)]


def panel(df: pd.DataFrame, st: Any) -> None:
    s, names, conv = table(df)
    if not names:
        st.info(
            "No accuracy or perplexity in these results yet: the view plots columns named "
            "`accuracy` or `perplexity` once accuracy tasks write them."
        )
    else:
        metric = st.selectbox("Quality metric", names, key="quality_metric")
        style.show(st, figure(s, metric, "peak_mem_bytes", "peak memory (MiB)"), "fig_quality")
        if conv:
            style.show(st, figure(s, metric, conv, conv), "fig_quality_conv")
    ref = paper_figures()
    st.caption(f"RevFFN headline numbers ({REPORTED_LABEL}, not measured):")
    st.dataframe(ref[ref["reference"] == "main results"], hide_index=True)
