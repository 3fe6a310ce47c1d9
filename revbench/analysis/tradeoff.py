"""View 1, the trade-off: peak memory against throughput per case, Pareto front marked."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from revbench.analysis import points, style
from revbench.analysis.formats import Section, fmt_int, fmt_range
from revbench.analysis.points import MIB

TITLE = "Trade-off"


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


def table(df: pd.DataFrame) -> pd.DataFrame:
    """The points with both peak memory and throughput, and ``pareto`` per point."""
    s = points.summarise(df, ["peak_mem_bytes", "tokens_per_s"])
    s = s.dropna(subset=["peak_mem_bytes", "tokens_per_s"]).reset_index(drop=True)
    s["pareto"] = pareto_front(s["peak_mem_bytes"], s["tokens_per_s"])
    return s


def figure(t: pd.DataFrame) -> go.Figure:
    """Peak memory vs throughput, error bars over repeats, Pareto front outlined and drawn."""
    fig = go.Figure()
    for arch, g in t.groupby("arch_label", sort=True):
        fig.add_trace(
            go.Scatter(
                x=g["peak_mem_bytes"] / MIB,
                y=g["tokens_per_s"],
                mode="markers",
                name=str(arch),
                marker={
                    "size": 11,
                    "color": style.color(str(arch)),
                    "line": {"width": [2 if p else 0 for p in g["pareto"]], "color": "black"},
                },
                error_x=style.error_bars(g, "peak_mem_bytes", MIB),
                error_y=style.error_bars(g, "tokens_per_s"),
                text=g["case"],
                hovertemplate="%{text}<br>%{x:.1f} MiB<br>%{y:,.0f} tokens/s<extra></extra>",
            )
        )
    front = t[t["pareto"]].sort_values("peak_mem_bytes")
    fig.add_trace(
        go.Scatter(
            x=front["peak_mem_bytes"] / MIB,
            y=front["tokens_per_s"],
            mode="lines",
            name="Pareto front",
            line={"color": "black", "dash": "dash", "width": 1, "shape": "hv"},
            hoverinfo="skip",
        )
    )
    return style.layout(
        fig,
        "Memory vs throughput (outlined: on the Pareto front)",
        "peak memory (MiB)",
        "throughput (tokens/s)",
    )


def sections(df: pd.DataFrame) -> list[Section]:
    t = table(df)
    if t.empty:
        return []
    cells = pd.DataFrame(
        {
            "suite": t["suite"],
            "case": t["case"],
            "arch": t["arch_label"],
            "layers": t["model.n_layers"].map(fmt_int),
            "peak memory (MiB)": [
                fmt_range(c, lo, hi, 1, MIB)
                for c, lo, hi in zip(
                    t["peak_mem_bytes"], t["peak_mem_bytes_lo"], t["peak_mem_bytes_hi"], strict=True
                )
            ],
            "tokens/s": [
                fmt_range(c, lo, hi, 0)
                for c, lo, hi in zip(
                    t["tokens_per_s"], t["tokens_per_s_lo"], t["tokens_per_s_hi"], strict=True
                )
            ],
            "repeats": t["n_repeats"].map(fmt_int),
            "Pareto": t["pareto"].map({True: "yes", False: ""}),
        }
    )
    right = ("layers", "peak memory (MiB)", "tokens/s", "repeats")
    cap = points.caption(points.rows_of(df, t))
    return [Section("tradeoff", "Memory vs throughput", cells, cap, right, figure(t))]


def panel(df: pd.DataFrame, st: Any) -> None:
    t = table(df)
    if t.empty:
        st.info("No successful runs with both peak memory and throughput in this selection.")
        return
    style.show(st, figure(t), "fig_tradeoff")
    st.caption("Error bars span the repeats (min to max); outlined points are Pareto-optimal.")
    cols = ["suite", "case", "arch_label", "model.n_layers", "peak_mem_bytes", "tokens_per_s"]
    st.dataframe(
        t[[*cols, "n_repeats", "pareto"]].assign(peak_mem_bytes=t["peak_mem_bytes"] / MIB),
        hide_index=True,
        column_config={"peak_mem_bytes": st.column_config.NumberColumn("peak MiB", format="%.1f")},
    )
