"""View 3, memory vs depth: a memory column against the layer count per architecture, the
least-squares bytes-per-layer line of each, the memory planner's prediction beside the points,
and Gal et al.'s Table 4 (labelled as reported)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from revbench.analysis import points, style
from revbench.analysis.formats import Section, fmt_int, fmt_number
from revbench.analysis.points import MIB
from revbench.data import REPORTED_LABEL, paper_depth

TITLE = "Memory vs depth"
METRICS = {
    "peak_mem_bytes": "peak memory",
    "peak_mem_delta_bytes": "peak above model + optimizer",
    "activation_bytes": "saved activations",
}
"""The memory columns the view can draw, with their labels."""


def table(df: pd.DataFrame, metric: str = "peak_mem_bytes") -> tuple[pd.DataFrame, pd.DataFrame]:
    """``metric`` vs depth: the points, and the least-squares line per suite, device and
    architecture (``slope`` bytes per layer, ``intercept``; only where two or more depths were
    measured). The points carry ``predicted_peak_bytes`` when the metric is the footprint."""
    extra = ["predicted_peak_bytes"] if metric == "peak_mem_delta_bytes" else []
    s = points.summarise(df, [metric, *extra]).dropna(subset=[metric, "model.n_layers"])
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


def figure(pts: pd.DataFrame, fits: pd.DataFrame, metric: str, label: str) -> go.Figure:
    """``metric`` vs depth per architecture with its fitted bytes-per-layer line, and the
    planner's prediction (open circles) where the metric is the footprint."""
    fig = go.Figure()
    slopes = {r["arch_label"]: r for _, r in fits.iterrows()}
    for arch, g in pts.groupby("arch_label", sort=True):
        name = str(arch)
        fit = slopes.get(arch)
        if fit is not None:
            name += f" ({fit['slope'] / MIB:+.2f} MiB/layer)"
        fig.add_trace(
            go.Scatter(
                x=g["model.n_layers"],
                y=g[metric] / MIB,
                mode="markers",
                name=name,
                legendgroup=str(arch),
                marker={"size": 10, "color": style.color(str(arch))},
                error_y=style.error_bars(g, metric, MIB),
                text=g["case"],
                hovertemplate="%{text}<br>%{y:.2f} MiB<extra></extra>",
            )
        )
        if metric == "peak_mem_delta_bytes" and "predicted_peak_bytes" in g:
            pred = g.dropna(subset=["predicted_peak_bytes"])
            if not pred.empty:
                fig.add_trace(
                    go.Scatter(
                        x=pred["model.n_layers"],
                        y=pred["predicted_peak_bytes"] / MIB,
                        mode="markers",
                        legendgroup=str(arch),
                        showlegend=False,
                        marker={
                            "size": 12,
                            "color": style.color(str(arch)),
                            "symbol": "circle-open",
                        },
                        text=pred["case"],
                        hovertemplate="%{text}<br>predicted %{y:.2f} MiB<extra></extra>",
                    )
                )
        if fit is not None:
            xs = sorted(g["model.n_layers"].astype(float).unique())
            xs = [xs[0], xs[-1]]
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=[(fit["intercept"] + fit["slope"] * x) / MIB for x in xs],
                    mode="lines",
                    legendgroup=str(arch),
                    showlegend=False,
                    line={"color": style.color(str(arch)), "dash": "dash", "width": 1},
                    hoverinfo="skip",
                )
            )
    return style.layout(
        fig, f"{label} vs depth (dashed: least-squares fit)", "layers", f"{label} (MiB)"
    )


def sections(df: pd.DataFrame) -> list[Section]:
    pts, fits = table(df, "peak_mem_bytes")
    out = []
    if not fits.empty:
        _, act = table(df, "activation_bytes")
        act_slope = {(r["suite"], r["arch_label"]): r["slope"] for _, r in act.iterrows()}
        cells = pd.DataFrame(
            {
                "suite": fits["suite"],
                "arch": fits["arch_label"],
                "layers": fits["depths"],
                "peak MiB/layer": fits["slope"].map(lambda v: fmt_number(v / MIB, 2)),
                "activation MiB/layer": [
                    fmt_number(act_slope.get((s, a), float("nan")) / MIB, 2)
                    for s, a in zip(fits["suite"], fits["arch_label"], strict=True)
                ],
            }
        )
        cap = points.caption(points.rows_of(df, pts))
        fig = figure(pts, fits, "peak_mem_bytes", "peak memory")
        right = ("peak MiB/layer", "activation MiB/layer")
        out.append(Section("depth", "Memory per layer (fitted)", cells, cap, right, fig))
    ref = paper_depth()
    cells = pd.DataFrame(
        {
            "layers": ref["n_layers"].map(fmt_int),
            "baseline batch": ref["baseline"].map(fmt_int),
            "midpoint batch": ref["midpoint"].map(fmt_int),
            "throughput gain": ref["throughput_gain_pct"].map(lambda v: f"+{v:g}%"),
        }
    )
    out.append(
        Section(
            "paper_depth",
            f"Depth sweep, {REPORTED_LABEL}",
            cells,
            f"{ref['source'].iloc[0]}; d_model 512; not measured by revbench.",
            tuple(cells.columns),
        )
    )
    return out


def panel(df: pd.DataFrame, st: Any) -> None:
    metric = st.radio(
        "Memory", list(METRICS), format_func=METRICS.get, horizontal=True, key="depth_metric"
    )
    pts, fits = table(df, metric)
    if pts.empty:
        st.info(f"No successful runs with `{metric}` and a layer count in this selection.")
    else:
        style.show(st, figure(pts, fits, metric, METRICS[metric]), "fig_depth")
        if fits.empty:
            st.info("Each architecture needs two or more depths for a bytes-per-layer fit.")
        else:
            st.dataframe(fits.assign(MiB_per_layer=fits["slope"] / MIB), hide_index=True)
    with st.expander(f"Gal et al., Table 4 ({REPORTED_LABEL})"):
        st.dataframe(paper_depth(), hide_index=True)
