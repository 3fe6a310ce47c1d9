"""View 6, numerical drift: how far rebuilt states and gradients move from ordinary autograd,
per architecture, dtype and depth."""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from revbench.analysis import points, style
from revbench.analysis.formats import Section, fmt_int, fmt_number, fmt_sci

TITLE = "Numerical drift"


def table(df: pd.DataFrame) -> pd.DataFrame:
    """The points with a reconstruction error or a gradient comparison."""
    metrics = ["recon_rel_err_max", "grad_cosine", "grad_rel_err"]
    s = points.summarise(df, metrics)
    s = s[s["recon_rel_err_max"].notna() | s["grad_rel_err"].notna()]
    return s.sort_values(
        ["suite", "arch_label", "train.dtype", "model.n_layers"], kind="stable", ignore_index=True
    )


def figure(d: pd.DataFrame) -> go.Figure:
    """Reconstruction error and gradient disagreement vs depth, per architecture and dtype
    (log scale: float32 sits near 1e-7, bfloat16 near 1e-2)."""
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=(
            "reconstruction: max relative error of rebuilt states",
            "gradients: relative error vs autograd",
        ),
    )
    for (arch, dtype), g in d.groupby(["arch_label", "train.dtype"], sort=True):
        g = g.sort_values("model.n_layers")
        look = {
            "mode": "lines+markers",
            "name": f"{arch} {dtype}",
            "legendgroup": f"{arch} {dtype}",
            "line": {
                "color": style.color(str(arch)),
                "dash": style.DTYPE_DASH.get(str(dtype), "solid"),
            },
            "marker": {"symbol": style.DTYPE_SYMBOL.get(str(dtype), "circle"), "size": 9},
            "text": g["case"],
        }
        for i, m in enumerate(("recon_rel_err_max", "grad_rel_err"), start=1):
            # log axes cannot show exact zeros; a float64 scheme can rebuild states exactly
            y = [v if v and v > 0 else None for v in g[m]]
            fig.add_trace(
                go.Scatter(x=g["model.n_layers"], y=y, showlegend=i == 1, **look), row=1, col=i
            )
    fig.update_yaxes(type="log", exponentformat="power")
    fig.update_xaxes(title_text="layers")
    style.layout(fig, "Numerical drift vs depth, per dtype", "layers", "relative error (log)")
    fig.update_layout(margin={"t": 90})
    fig.update_annotations(font_size=13)
    return fig


def sections(df: pd.DataFrame) -> list[Section]:
    d = table(df)
    if d.empty:
        return []
    cells = pd.DataFrame(
        {
            "suite": d["suite"],
            "arch": d["arch_label"],
            "dtype": d["train.dtype"],
            "layers": d["model.n_layers"].map(fmt_int),
            "max rebuild rel. error": d["recon_rel_err_max"].map(fmt_sci),
            "grad cosine": d["grad_cosine"].map(lambda v: fmt_number(v, 6)),
            "grad rel. error": d["grad_rel_err"].map(fmt_sci),
        }
    )
    right = ("layers", "max rebuild rel. error", "grad cosine", "grad rel. error")
    cap = points.caption(points.rows_of(df, d))
    return [Section("drift", "Numerical drift", cells, cap, right, figure(d))]


def panel(df: pd.DataFrame, st: Any) -> None:
    d = table(df)
    if d.empty:
        st.info("No reconstruction results in this selection (metric `reconstruction`).")
        return
    style.show(st, figure(d), "fig_drift")
    cols = ["suite", "arch_label", "train.dtype", "model.n_layers", "recon_rel_err_max"]
    sci = st.column_config.NumberColumn(format="%.2e")
    st.dataframe(
        d[[*cols, "grad_cosine", "grad_rel_err"]],
        hide_index=True,
        column_config={"recon_rel_err_max": sci, "grad_rel_err": sci},
    )
