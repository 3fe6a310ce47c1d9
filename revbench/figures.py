"""View tables (``views.py``) -> plotly figures, shared by the dashboard and ``revbench report``.

Each function takes the table its view builds and returns a ``plotly.graph_objects.Figure``;
none reads files or Streamlit state. Colours are fixed per architecture so a figure in a paper
and the same view in the dashboard agree.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from revbench.data import REPORTED_LABEL
from revbench.views import MIB

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
    if arch in ARCH_COLORS:
        return ARCH_COLORS[arch]
    return _EXTRA[sum(map(ord, arch)) % len(_EXTRA)]  # stable across runs, unlike hash()


def _layout(fig: go.Figure, title: str, x: str, y: str, **kw: object) -> go.Figure:
    layout: dict[str, object] = {
        "title": title,
        "xaxis_title": x,
        "yaxis_title": y,
        "template": "plotly_white",
        "height": 460,
        "margin": {"l": 70, "r": 20, "t": 60, "b": 60},
        "legend_title_text": "",
    }
    fig.update_layout(**{**layout, **kw})
    return fig


def _errors(t: pd.DataFrame, m: str, scale: float = 1.0) -> dict[str, object]:
    return {
        "type": "data",
        "symmetric": False,
        "array": ((t[f"{m}_hi"] - t[m]) / scale).tolist(),
        "arrayminus": ((t[m] - t[f"{m}_lo"]) / scale).tolist(),
        "thickness": 1,
    }


def tradeoff(t: pd.DataFrame) -> go.Figure:
    """View 1: peak memory vs throughput, error bars over repeats, Pareto front marked."""
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
                    "color": color(str(arch)),
                    "line": {"width": [2 if p else 0 for p in g["pareto"]], "color": "black"},
                },
                error_x=_errors(g, "peak_mem_bytes", MIB),
                error_y=_errors(g, "tokens_per_s"),
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
    return _layout(
        fig,
        "Memory vs throughput (outlined: on the Pareto front)",
        "peak memory (MiB)",
        "throughput (tokens/s)",
    )


def max_batch(mb: pd.DataFrame) -> go.Figure:
    """View 2: largest batch per device or budget and architecture (>= when the search hit
    measure.max_size with everything fitting)."""
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
                marker_color=color(str(arch)),
                text=labels,
                textposition="outside",
            )
        )
    return _layout(fig, "Max batch size", "device / budget", "max batch size", barmode="group")


def paper_max_batch(ref: pd.DataFrame) -> go.Figure:
    """Gal et al. Table 3 as bars, labelled as reported, never as measured."""
    fig = go.Figure()
    for arch in ("baseline", "midpoint"):
        fig.add_trace(
            go.Bar(
                x=ref["gpu"],
                y=ref[arch],
                name=f"{arch} ({REPORTED_LABEL})",
                marker={"color": color(arch), "pattern": {"shape": "/"}},
                text=[str(int(v)) for v in ref[arch]],
                textposition="outside",
            )
        )
    return _layout(
        fig,
        f"Max batch size {REPORTED_LABEL} (Gal et al., Table 3; GPT-2 small)",
        "GPU",
        "max batch size",
        barmode="group",
    )


def trials(tr: pd.DataFrame) -> go.Figure:
    """View 2: every trial of the searches, fits (circle) or not (cross), and the budgets."""
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
                    "color": color(str(arch)),
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
    return _layout(fig, "Max batch search trials", "batch size", "footprint (MiB)")


def prediction(t: pd.DataFrame) -> go.Figure:
    """Predicted vs measured peak per point, with the y = x line (a perfect planner)."""
    fig = go.Figure()
    for arch, g in t.groupby("arch_label", sort=True):
        fig.add_trace(
            go.Scatter(
                x=g["peak_mem_delta_bytes"] / MIB,
                y=g["predicted_peak_bytes"] / MIB,
                mode="markers",
                name=str(arch),
                marker={"size": 10, "color": color(str(arch))},
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
    return _layout(
        fig, "Memory planner: predicted vs measured peak", "measured (MiB)", "predicted (MiB)"
    )


def depth(points: pd.DataFrame, fits: pd.DataFrame, metric: str, label: str) -> go.Figure:
    """View 3: ``metric`` vs depth per architecture with its fitted bytes-per-layer line, and
    the memory planner's prediction beside the points where the metric is the footprint."""
    fig = go.Figure()
    slopes = {r["arch_label"]: r for _, r in fits.iterrows()}
    for arch, g in points.groupby("arch_label", sort=True):
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
                marker={"size": 10, "color": color(str(arch))},
                error_y=_errors(g, metric, MIB),
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
                        marker={"size": 12, "color": color(str(arch)), "symbol": "circle-open"},
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
                    line={"color": color(str(arch)), "dash": "dash", "width": 1},
                    hoverinfo="skip",
                )
            )
    return _layout(fig, f"{label} vs depth (dashed: least-squares fit)", "layers", f"{label} (MiB)")


def quality(s: pd.DataFrame, metric: str, x: str, x_label: str) -> go.Figure:
    """View 4: a quality metric (accuracy, perplexity) against memory or steps."""
    fig = go.Figure()
    scale = MIB if x.endswith("_bytes") else 1.0
    for arch, g in s.dropna(subset=[metric, x]).groupby("arch_label", sort=True):
        fig.add_trace(
            go.Scatter(
                x=g[x] / scale,
                y=g[metric],
                mode="markers",
                name=str(arch),
                marker={"size": 11, "color": color(str(arch))},
                error_y=_errors(g, metric),
                text=g["case"],
            )
        )
    return _layout(fig, f"{metric} vs {x_label}", x_label, metric)


def drift(d: pd.DataFrame) -> go.Figure:
    """View 5: reconstruction error and gradient disagreement vs depth, per architecture and
    dtype (log scale: float32 sits near 1e-7, bfloat16 near 1e-2)."""
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
        style = {
            "mode": "lines+markers",
            "name": f"{arch} {dtype}",
            "legendgroup": f"{arch} {dtype}",
            "line": {"color": color(str(arch)), "dash": DTYPE_DASH.get(str(dtype), "solid")},
            "marker": {"symbol": DTYPE_SYMBOL.get(str(dtype), "circle"), "size": 9},
            "text": g["case"],
        }
        for i, m in enumerate(("recon_rel_err_max", "grad_rel_err"), start=1):
            # log axes cannot show exact zeros; a float64 scheme can rebuild states exactly
            y = [v if v and v > 0 else None for v in g[m]]
            fig.add_trace(
                go.Scatter(x=g["model.n_layers"], y=y, showlegend=i == 1, **style), row=1, col=i
            )
    fig.update_yaxes(type="log", exponentformat="power")
    fig.update_xaxes(title_text="layers")
    _layout(fig, "Numerical drift vs depth, per dtype", "layers", "relative error (log)")
    fig.update_layout(margin={"t": 90})
    fig.update_annotations(font_size=13)
    return fig


def compare(cmp: pd.DataFrame) -> go.Figure:
    """View 7: per-case change of each metric, in percent, regressions in red."""
    have = cmp.dropna(subset=["change"])
    have = have[have["change"].abs() != float("inf")]
    fig = go.Figure(
        go.Bar(
            x=have["change"] * 100,
            y=[f"{c} · {m}" for c, m in zip(have["case"], have["metric"], strict=True)],
            orientation="h",
            marker_color=["#d62728" if r else "#7f7f7f" for r in have["regressed"]],
            text=[f"{v * 100:+.1f}%" for v in have["change"]],
            textposition="auto",
            showlegend=False,
        )
    )
    height = max(320, min(1400, 100 + 26 * len(have)))
    return _layout(
        fig,
        "Change NEW vs BASE (red: a regression past the threshold)",
        "change (%)",
        "",
        height=height,
        yaxis={"autorange": "reversed"},
        margin={"l": 330, "r": 20, "t": 60, "b": 60},
    )
