"""How every figure looks: one colour per architecture, one dash and marker per dtype, one layout.

Fixed per architecture so that a figure in a paper and the same view in the dashboard agree.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go

ARCH_COLORS = {
    "baseline": "#1f77b4",
    "baseline+ckpt": "#17becf",
    "midpoint": "#d62728",
    "leapfrog": "#ff7f0e",
    "hamiltonian": "#2ca02c",
    "revnet": "#9467bd",
    "revffn": "#8c564b",
}
_EXTRA = ("#e377c2", "#7f7f7f", "#bcbd22", "#aec7e8", "#ffbb78")
DTYPE_DASH = {"float32": "solid", "float64": "dot", "bfloat16": "dash", "float16": "dashdot"}
DTYPE_SYMBOL = {"float32": "circle", "float64": "diamond", "bfloat16": "square", "float16": "x"}


def color(arch: str) -> str:
    """An architecture label's colour (a label outside the table gets a stable spare one)."""
    if arch in ARCH_COLORS:
        return ARCH_COLORS[arch]
    return _EXTRA[sum(map(ord, arch)) % len(_EXTRA)]  # stable across runs, unlike hash()


def layout(fig: go.Figure, title: str, x: str, y: str, **kw: object) -> go.Figure:
    """The shared layout: white template, titles, margins; ``kw`` overrides any of it."""
    settings: dict[str, object] = {
        "title": title,
        "xaxis_title": x,
        "yaxis_title": y,
        "template": "plotly_white",
        "height": 460,
        "margin": {"l": 70, "r": 20, "t": 60, "b": 60},
        "legend_title_text": "",
    }
    fig.update_layout(**{**settings, **kw})
    return fig


def error_bars(t: pd.DataFrame, m: str, scale: float = 1.0) -> dict[str, object]:
    """Asymmetric error bars from a points table's ``m_lo`` / ``m_hi`` (the repeats' range)."""
    return {
        "type": "data",
        "symmetric": False,
        "array": ((t[f"{m}_hi"] - t[m]) / scale).tolist(),
        "arrayminus": ((t[m] - t[f"{m}_lo"]) / scale).tolist(),
        "thickness": 1,
    }


def show(st: Any, fig: go.Figure, key: str) -> None:
    """Draw ``fig`` on a dashboard page (``st``: the streamlit module) under ``key``."""
    st.plotly_chart(fig, key=key, config={"displaylogo": False})
