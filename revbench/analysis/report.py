"""``revbench report RESULTS --out DIR``: every view's tables and figures, for papers.

Writes, for the formats asked for: ``report.md`` (markdown tables, figure links), ``tables.tex``
(LaTeX booktabs tables, ``\\usepackage{booktabs}``), ``report.html`` (tables and SVG figures), and
``figures/<view>.png`` / ``.svg`` (plotly, exported by kaleido through a Chromium; Debian's
``chromium`` package is enough). The sections are the views' own (``VIEWS``, in order); every
table and figure carries a caption line naming the suites, devices and revbench versions of its
rows. Output is deterministic: the same results give byte-identical tables and SVGs (plotly's
random SVG ids are replaced by counters).
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from revbench import results
from revbench.analysis import VIEWS, points
from revbench.analysis.formats import Section, html_table, latex, markdown
from revbench.errors import RevbenchError

FORMATS = ("md", "latex", "html")
DEFAULT_RESULTS = Path("results")
REFERENCE = Path(__file__).resolve().parent.parent / "data" / "reference"
"""Measured rows shipped with the checkout, one folder per GPU (the GPU validation kit's,
benchmarks/gpu/); shown when no results are named and ``results`` holds none of its own."""


def sections(df: pd.DataFrame) -> list[Section]:
    """Every table and figure of the report: each view's sections, in the views' order."""
    df = points.prepare(df)
    return [s for view in VIEWS for s in view.sections(df)]


# --- writers -------------------------------------------------------------------------------


def _markdown(secs: Sequence[Section], figs: bool, note: str | None = None) -> str:
    parts = ["# revbench report", ""] + ([f"*{note}*", ""] if note else [])
    for s in secs:
        parts += [f"## {s.title}", ""]
        if len(s.table.columns):
            parts += [markdown(s.table, s.right)]
        if figs and s.figure is not None:
            parts += [f"![{s.title}](figures/{s.key}.png)", ""]
        parts += [f"*{s.caption}*", ""]
    return "\n".join(parts).rstrip("\n") + "\n"


def _latex(secs: Sequence[Section]) -> str:
    parts = ["% revbench report tables; needs \\usepackage{booktabs}", ""]
    for s in secs:
        if len(s.table.columns):
            parts.append(latex(s.table, f"{s.title}. {s.caption}", s.key, s.right))
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
            parts.append(html_table(s.table, s.right))
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
