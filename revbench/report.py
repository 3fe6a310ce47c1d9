"""``revbench report RESULTS --out DIR``: tables and figures of the main views for papers.

Writes, for the formats asked for: ``report.md`` (markdown tables, figure links), ``tables.tex``
(LaTeX booktabs tables, ``\\usepackage{booktabs}``), ``report.html`` (tables and SVG figures), and
``figures/<view>.png`` / ``.svg`` (plotly, exported by kaleido through a Chromium; Debian's
``chromium`` package is enough). Every table and figure carries a caption line naming the
suites, devices and revbench versions of its rows. Output is deterministic: the same results
give byte-identical tables and SVGs (plotly's random SVG ids are replaced by counters).
"""

from __future__ import annotations

import dataclasses
import html
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from revbench import figures, results, tables, views
from revbench.data import REPORTED_LABEL, paper_depth, paper_max_batch
from revbench.errors import RevbenchError

FORMATS = ("md", "latex", "html")
DEFAULT_RESULTS = Path("results")
REFERENCE = Path(__file__).resolve().parent / "data" / "reference"
"""Measured rows shipped with the checkout, one folder per GPU (the GPU validation kit's,
benchmarks/gpu/); shown when no results are named and ``results`` holds none of its own."""


@dataclasses.dataclass
class Section:
    key: str
    title: str
    table: pd.DataFrame
    """Already formatted cells (strings)."""
    caption: str
    right: tuple[str, ...] = ()
    figure: object | None = None
    """A plotly figure, exported to figures/<key>.png and .svg."""


def _mib(v: object) -> str:
    return tables.fmt_number(None if v is None or v != v else float(v) / views.MIB, 1)


def _rows_of(df: pd.DataFrame, t: pd.DataFrame) -> pd.DataFrame:
    return df[df["config_hash"].isin(set(t["config_hash"]))]


def _int(v: object) -> str:
    return "" if v is None or v is pd.NA or v != v else str(int(v))


def _tradeoff(df: pd.DataFrame) -> list[Section]:
    t = views.tradeoff(df)
    if t.empty:
        return []
    table = pd.DataFrame(
        {
            "suite": t["suite"],
            "case": t["case"],
            "arch": t["arch_label"],
            "layers": t["model.n_layers"].map(_int),
            "peak memory (MiB)": [
                tables.fmt_range(c, lo, hi, 1, views.MIB)
                for c, lo, hi in zip(
                    t["peak_mem_bytes"], t["peak_mem_bytes_lo"], t["peak_mem_bytes_hi"], strict=True
                )
            ],
            "tokens/s": [
                tables.fmt_range(c, lo, hi, 0)
                for c, lo, hi in zip(
                    t["tokens_per_s"], t["tokens_per_s_lo"], t["tokens_per_s_hi"], strict=True
                )
            ],
            "repeats": t["n_repeats"].map(_int),
            "Pareto": t["pareto"].map({True: "yes", False: ""}),
        }
    )
    right = ("layers", "peak memory (MiB)", "tokens/s", "repeats")
    cap = views.caption(_rows_of(df, t))
    return [Section("tradeoff", "Memory vs throughput", table, cap, right, figures.tradeoff(t))]


def _max_batch(df: pd.DataFrame) -> list[Section]:
    out = []
    mb = views.max_batch(df)
    if not mb.empty:
        table = pd.DataFrame(
            {
                "device / budget": mb["limit"],
                "arch": mb["arch_label"],
                "case": mb["case"],
                "max batch": [
                    f"≥{_int(v)}" if c is not pd.NA and c == c and bool(c) else _int(v)
                    for v, c in zip(mb["max_batch_size"], mb["capped"], strict=True)
                ],
                "trials": mb["search_trials"].map(_int),
                "tokens/s at max batch": mb["max_batch_tokens_per_s"].map(
                    lambda v: tables.fmt_number(v, 0)
                ),
            }
        )
        right = ("max batch", "trials", "tokens/s at max batch")
        cap = views.caption(_rows_of(df, mb))
        out.append(Section("max_batch", "Max batch size", table, cap, right, figures.max_batch(mb)))
        tr = views.search_trials(_rows_of(df, mb))
        if not tr.empty:
            out[-1:] += [
                Section(
                    "max_batch_trials",
                    "Max batch search trials",
                    pd.DataFrame(),
                    cap,
                    figure=figures.trials(tr),
                )
            ]
    ref = paper_max_batch()
    table = pd.DataFrame(
        {
            "GPU": ref["gpu"],
            "baseline": ref["baseline"].map(_int),
            "midpoint": ref["midpoint"].map(_int),
            "ratio": ref["ratio"].map(lambda v: f"{v:.1f}x"),
        }
    )
    cap = f"{ref['source'].iloc[0]}; not measured by revbench."
    out.append(
        Section(
            "paper_max_batch",
            f"Max batch size, {REPORTED_LABEL}",
            table,
            cap,
            ("baseline", "midpoint", "ratio"),
            figures.paper_max_batch(ref),
        )
    )
    return out


def _depth(df: pd.DataFrame) -> list[Section]:
    points, fits = views.depth(df, "peak_mem_bytes")
    out = []
    if not fits.empty:
        _, act = views.depth(df, "activation_bytes")
        act_slope = {(r["suite"], r["arch_label"]): r["slope"] for _, r in act.iterrows()}
        table = pd.DataFrame(
            {
                "suite": fits["suite"],
                "arch": fits["arch_label"],
                "layers": fits["depths"],
                "peak MiB/layer": fits["slope"].map(lambda v: tables.fmt_number(v / views.MIB, 2)),
                "activation MiB/layer": [
                    tables.fmt_number(act_slope.get((s, a), float("nan")) / views.MIB, 2)
                    for s, a in zip(fits["suite"], fits["arch_label"], strict=True)
                ],
            }
        )
        cap = views.caption(_rows_of(df, points))
        fig = figures.depth(points, fits, "peak_mem_bytes", "peak memory")
        right = ("peak MiB/layer", "activation MiB/layer")
        out.append(Section("depth", "Memory per layer (fitted)", table, cap, right, fig))
    ref = paper_depth()
    table = pd.DataFrame(
        {
            "layers": ref["n_layers"].map(_int),
            "baseline batch": ref["baseline"].map(_int),
            "midpoint batch": ref["midpoint"].map(_int),
            "throughput gain": ref["throughput_gain_pct"].map(lambda v: f"+{v:g}%"),
        }
    )
    out.append(
        Section(
            "paper_depth",
            f"Depth sweep, {REPORTED_LABEL}",
            table,
            f"{ref['source'].iloc[0]}; d_model 512; not measured by revbench.",
            tuple(table.columns),
        )
    )
    return out


def _quality(df: pd.DataFrame) -> list[Section]:
    s, names, conv = views.quality(df)
    if not names:
        return []
    table = pd.DataFrame({"suite": s["suite"], "case": s["case"], "arch": s["arch_label"]})
    for n in names:
        table[n] = s[n].map(lambda v: tables.fmt_number(v, 4, thousands=False))
    table["peak memory (MiB)"] = s["peak_mem_bytes"].map(_mib)
    fig = figures.quality(s, names[0], "peak_mem_bytes", "peak memory (MiB)")
    cap = views.caption(_rows_of(df, s))
    return [
        Section("quality", "Accuracy vs memory", table, cap, (*names, "peak memory (MiB)"), fig)
    ]


def _drift(df: pd.DataFrame) -> list[Section]:
    d = views.drift(df)
    if d.empty:
        return []
    table = pd.DataFrame(
        {
            "suite": d["suite"],
            "arch": d["arch_label"],
            "dtype": d["train.dtype"],
            "layers": d["model.n_layers"].map(_int),
            "max rebuild rel. error": d["recon_rel_err_max"].map(tables.fmt_sci),
            "grad cosine": d["grad_cosine"].map(lambda v: tables.fmt_number(v, 6)),
            "grad rel. error": d["grad_rel_err"].map(tables.fmt_sci),
        }
    )
    right = ("layers", "max rebuild rel. error", "grad cosine", "grad rel. error")
    cap = views.caption(_rows_of(df, d))
    return [Section("drift", "Numerical drift", table, cap, right, figures.drift(d))]


def _failures(df: pd.DataFrame) -> list[Section]:
    f = views.failures(df)
    if f.empty:
        return []
    table = f.assign(repeat=f["repeat"].map(_int), error=f["error"].fillna("").astype(str))
    bad = df[df["status"].astype(str) != "ok"]
    return [Section("failures", "Failed runs", table, views.caption(bad), ("repeat",))]


BUILDERS: tuple[Callable[[pd.DataFrame], list[Section]], ...] = (
    _tradeoff,
    _max_batch,
    _depth,
    _quality,
    _drift,
    _failures,
)


def sections(df: pd.DataFrame) -> list[Section]:
    """Every table and figure of the report, in order."""
    df = views.prepare(df)
    return [s for build in BUILDERS for s in build(df)]


# --- writers -------------------------------------------------------------------------------


def _markdown(secs: Sequence[Section], figs: bool, note: str | None = None) -> str:
    parts = ["# revbench report", ""] + ([f"*{note}*", ""] if note else [])
    for s in secs:
        parts += [f"## {s.title}", ""]
        if len(s.table.columns):
            parts += [tables.markdown(s.table, s.right)]
        if figs and s.figure is not None:
            parts += [f"![{s.title}](figures/{s.key}.png)", ""]
        parts += [f"*{s.caption}*", ""]
    return "\n".join(parts).rstrip("\n") + "\n"


def _latex(secs: Sequence[Section]) -> str:
    parts = ["% revbench report tables; needs \\usepackage{booktabs}", ""]
    for s in secs:
        if len(s.table.columns):
            parts.append(tables.latex(s.table, f"{s.title}. {s.caption}", s.key, s.right))
    return "\n".join(parts)


def _html(secs: Sequence[Section], figs: bool, note: str | None = None) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8"><title>revbench report</title>',
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
        "table{border-collapse:collapse}td,th{border-bottom:1px solid #ccc;padding:2px 8px}"
        ".caption{font-style:italic;color:#555}</style></head><body>",
        "<h1>revbench report</h1>",
    ]
    if note:
        parts.append(f'<p class="caption">{html.escape(note)}</p>')
    for s in secs:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        if len(s.table.columns):
            parts.append(tables.html_table(s.table, s.right))
        if figs and s.figure is not None:
            parts.append(f'<img src="figures/{s.key}.svg" alt="{html.escape(s.title)}">')
        parts.append(f'<p class="caption">{html.escape(s.caption)}</p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _stable_svg(path: Path) -> None:
    """Replace plotly's per-render random figure id (``defs-<uid>``, ``clip<uid>...``,
    ``legend<uid>``) with a constant, so the same figure gives the same bytes."""
    text = path.read_text(encoding="utf-8")
    m = re.search(r'id="defs-([0-9a-z]+)"', text)
    if m:
        text = text.replace(m.group(1), "revbench")
    path.write_text(text, encoding="utf-8")


def write_figures(figs: dict[str, Any], folder: Path) -> list[Path]:
    """Export each figure as PNG and SVG through kaleido (one Chromium for all of them)."""
    import plotly.io as pio

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{k}.{ext}" for k in figs for ext in ("png", "svg")]
    for fig in figs.values():
        for i, trace in enumerate(fig.data):  # plotly.js draws random trace ids otherwise
            trace.uid = f"trace{i}"
    objs = [f for f in figs.values() for _ in ("png", "svg")]
    try:
        pio.write_images(objs, paths, width=900, height=500, scale=1)
    except Exception as e:  # kaleido raises its own types when no Chromium can be started
        raise RevbenchError(
            f"figure export failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else e}"
            "); install Chromium (apt-get install chromium, or set BROWSER_PATH) or use "
            "--no-figures"
        ) from None
    for p in paths:
        if p.suffix == ".svg":
            _stable_svg(p)
    return paths


def build_report(
    df: pd.DataFrame,
    out: str | Path,
    formats: Sequence[str] = FORMATS,
    *,
    with_figures: bool = True,
    note: str | None = None,
) -> list[Path]:
    """Write the report of ``df`` (rows from ``results.load``) into ``out``; returns the files.
    ``note``: a line under the title (which rows these are, e.g. ``reference_note``)."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise RevbenchError(f"--format: unknown {unknown}; choose from {', '.join(FORMATS)}")
    if df.empty:
        raise RevbenchError("no revbench results to report")
    secs = sections(df)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    writers = {
        "md": ("report.md", lambda: _markdown(secs, with_figures, note)),
        "latex": ("tables.tex", lambda: _latex(secs)),
        "html": ("report.html", lambda: _html(secs, with_figures, note)),
    }
    for fmt in formats:
        name, render = writers[fmt]
        (folder / name).write_text(render(), encoding="utf-8")
        written.append(folder / name)
    if with_figures:
        figs = {s.key: s.figure for s in secs if s.figure is not None}
        written += write_figures(figs, folder / "figures")
    return written


def report(
    path: str | Path | None,
    out: str | Path,
    formats: str = "md,latex,html",
    *,
    with_figures: bool = True,
) -> list[Path]:
    """``revbench report``: load the results under ``path`` (None: ``default_results``) and
    write the report into ``out``."""
    fmts = [f.strip() for f in formats.split(",") if f.strip()]
    folder = default_results(path)
    df = results.load(folder)
    note = reference_note(df) if folder == REFERENCE and not df.empty else None
    return build_report(df, out, fmts, with_figures=with_figures, note=note)


def _has_rows(folder: Path, outside: Path | None = None) -> bool:
    """Whether ``folder`` holds a parquet file (not under ``outside``)."""
    if not folder.is_dir():
        return False
    for p in folder.rglob("*.parquet"):
        if not p.name.startswith(".") and (outside is None or outside not in p.resolve().parents):
            return True
    return False


def default_results(path: str | Path | None = None) -> Path:
    """The rows to show: ``path`` when one is named; when none is (None, or the default
    ``results``), ``results`` if it holds rows of its own, else the reference rows shipped with
    the checkout (``REFERENCE``) if there are any, else ``results`` (which may not exist)."""
    if path is not None and Path(path) != DEFAULT_RESULTS:
        return Path(path)
    if _has_rows(DEFAULT_RESULTS, outside=REFERENCE.resolve()) or not _has_rows(REFERENCE):
        return DEFAULT_RESULTS
    return REFERENCE


def reference_note(df: pd.DataFrame) -> str:
    """One line saying that these are the shipped reference rows, and for each GPU when and at
    which commit they were measured (the provenance columns ``device_name``,
    ``timestamp_utc``, ``git_commit``)."""
    parts = []
    for name, g in df.groupby(df["device_name"].fillna("unknown device"), sort=True):
        days = sorted({str(d) for d in pd.to_datetime(g["timestamp_utc"], utc=True).dt.date})
        when = days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}"
        commits = sorted({str(c)[:12] for c in g["git_commit"].dropna()})
        parts.append(f"{name}, {when}, commit {', '.join(commits) or 'unknown'}")
    return (
        "Reference rows shipped with revbench (revbench/data/reference, measured with the GPU "
        f"validation kit): {'; '.join(parts)}."
    )
