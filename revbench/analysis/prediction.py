"""View 4, predicted vs measured: the memory planner (``revbench.plan``) against the measured
footprint (``peak_mem_delta_bytes``) per point, with the y = x line of a perfect planner."""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go

from revbench.analysis import points, style
from revbench.analysis.formats import Section, fmt_int, fmt_mib
from revbench.analysis.points import MIB

TITLE = "Predicted vs measured"


def table(df: pd.DataFrame) -> pd.DataFrame:
    """Per point: the measured footprint, the planner's ``predicted_peak_bytes`` and the
    relative ``error`` (predicted / measured - 1). Points without a prediction are left out."""
    s = points.summarise(df, ["peak_mem_delta_bytes", "predicted_peak_bytes"])
    s = s.dropna(subset=["peak_mem_delta_bytes", "predicted_peak_bytes"]).reset_index(drop=True)
    s["error"] = s["predicted_peak_bytes"] / s["peak_mem_delta_bytes"] - 1
    return s


def figure(t: pd.DataFrame) -> go.Figure:
    """Predicted vs measured peak per point, with the y = x line."""
    fig = go.Figure()
    for arch, g in t.groupby("arch_label", sort=True):
        fig.add_trace(
            go.Scatter(
                x=g["peak_mem_delta_bytes"] / MIB,
                y=g["predicted_peak_bytes"] / MIB,
                mode="markers",
                name=str(arch),
                marker={"size": 10, "color": style.color(str(arch))},
                text=[f"{c}: {e:+.1%}" for c, e in zip(g["case"], g["error"], strict=True)],
                hovertemplate="%{text}<br>measured %{x:.1f} MiB, predicted %{y:.1f} MiB"
                "<extra></extra>",
            )
        )
    if not t.empty:
        hi = float(max(t["peak_mem_delta_bytes"].max(), t["predicted_peak_bytes"].max())) / MIB
        fig.add_trace(
            go.Scatter(
                x=[0, hi],
                y=[0, hi],
                mode="lines",
                name="predicted = measured",
                line={"color": "#888", "dash": "dot", "width": 1},
                hoverinfo="skip",
            )
        )
    return style.layout(
        fig, "Memory planner: predicted vs measured peak", "measured (MiB)", "predicted (MiB)"
    )


def summary(t: pd.DataFrame) -> str:
    """``N points; |error| median M, max X.``"""
    err = t["error"].abs()
    return f"{len(t)} points; |error| median {err.median():.1%}, max {err.max():.1%}."


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
            "dtype": t["train.dtype"],
            "measured (MiB)": t["peak_mem_delta_bytes"].map(fmt_mib),
            "predicted (MiB)": t["predicted_peak_bytes"].map(fmt_mib),
            "error": t["error"].map(lambda v: f"{v:+.1%}"),
        }
    )
    cap = f"{summary(t)} {points.caption(points.rows_of(df, t))}"
    right = ("layers", "measured (MiB)", "predicted (MiB)", "error")
    return [
        Section("prediction", "Memory planner: predicted vs measured", cells, cap, right, figure(t))
    ]


def panel(df: pd.DataFrame, st: Any) -> None:
    t = table(df)
    if t.empty:
        st.info(
            "No rows carry the planner's prediction yet (predicted_peak_bytes, written by "
            "peak_memory since schema v2); `revbench plan SUITE` predicts without running."
        )
        return
    style.show(st, figure(t), "fig_prediction")
    st.caption(summary(t))
    st.dataframe(
        t[["case", "arch_label", "model.n_layers", "train.dtype", "device_name"]].assign(
            measured_MiB=t["peak_mem_delta_bytes"] / MIB,
            predicted_MiB=t["predicted_peak_bytes"] / MIB,
            error=t["error"],
        ),
        hide_index=True,
    )
