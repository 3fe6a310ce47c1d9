"""A view's report section, and how its cells and tables are written.

A ``Section`` is what a view gives ``revbench report``: a table of already formatted cells, a
caption line and an optional figure. The cell formatters turn numbers into those cells; the
renderers write the table as markdown, LaTeX booktabs or HTML. The renderers are
hand-written rather than ``DataFrame.to_markdown``/``Styler.to_latex`` so the output depends on
nothing but the input (no tabulate or jinja2 versions in the golden files) and LaTeX special
characters are always escaped.
"""

from __future__ import annotations

import dataclasses
import html
import math
from collections.abc import Sequence

import pandas as pd

from revbench.analysis.points import MIB


@dataclasses.dataclass
class Section:
    """One table (and figure) of the report, as a view builds it."""

    key: str
    """Names the figure files (figures/<key>.png, .svg) and the LaTeX label (tab:<key>)."""
    title: str
    table: pd.DataFrame
    """Already formatted cells (strings); no columns for a figure-only section."""
    caption: str
    right: tuple[str, ...] = ()
    """Columns aligned right (numbers)."""
    figure: object | None = None
    """A plotly figure, exported to figures/<key>.png and .svg."""


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "≥": r"$\geq$",
    "±": r"$\pm$",
    "→": r"$\to$",
}


def fmt_number(v: object, digits: int = 1, *, thousands: bool = True) -> str:
    """A fixed-point number; empty for missing values."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return ""
    text = f"{float(v):,.{digits}f}" if thousands else f"{float(v):.{digits}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.,") else text  # no "-0.00"


def fmt_int(v: object) -> str:
    """A whole number; empty for missing values."""
    return "" if v is None or v is pd.NA or v != v else str(int(v))


def fmt_mib(v: object, digits: int = 1) -> str:
    """Bytes as MiB; empty for missing values."""
    return fmt_number(None if v is None or v is pd.NA or v != v else float(v) / MIB, digits)


def fmt_sci(v: object, digits: int = 2) -> str:
    """Scientific notation (drift errors span 1e-16 to 1e-1)."""
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{float(v):.{digits}e}"


def fmt_range(center: object, lo: object, hi: object, digits: int = 1, scale: float = 1) -> str:
    """``center`` with its spread over repeats, e.g. ``402.1 ± 0.3``, when the repeats differ."""
    if center is None or center is pd.NA or center != center:
        return ""
    text = fmt_number(float(center) / scale, digits)
    if lo == lo and hi == hi and lo is not None and hi is not None and hi != lo:
        half = (float(hi) - float(lo)) / 2 / scale
        text += f" ± {fmt_number(half, digits)}"
    return text


def markdown(df: pd.DataFrame, right: Sequence[str] = ()) -> str:
    """A GitHub markdown table; columns named in ``right`` are right-aligned."""

    def cell(v: object) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(cell(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---:" if c in right else "---" for c in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body]) + "\n"


def latex_escape(text: object) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def latex(df: pd.DataFrame, caption: str, label: str, right: Sequence[str] = ()) -> str:
    """A booktabs ``table`` environment (needs ``\\usepackage{booktabs}``)."""
    spec = "".join("r" if c in right else "l" for c in df.columns)
    lines = [
        r"\begin{table}[ht]",
        r"\centering",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(latex_escape(c) for c in df.columns) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(latex_escape(v) for v in row) + r" \\" for row in df.itertuples(False)]
    lines += [
        r"\bottomrule",
        r"\end{tabular}",
        rf"\caption{{{latex_escape(caption)}}}",
        rf"\label{{tab:{label}}}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def html_table(df: pd.DataFrame, right: Sequence[str] = ()) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for row in df.itertuples(index=False):
        cells = "".join(
            f'<td style="text-align:right">{html.escape(str(v))}</td>'
            if c in right
            else f"<td>{html.escape(str(v))}</td>"
            for c, v in zip(df.columns, row, strict=True)
        )
        rows.append(f"<tr>{cells}</tr>")
    return (
        f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n"
        + "\n".join(rows)
        + ("\n</tbody>\n</table>\n")
    )
