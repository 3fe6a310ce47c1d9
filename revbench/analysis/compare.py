"""The compare view: two result sets case by case (``revbench compare BASE NEW`` and the
dashboard's Compare tab), e.g. main vs a PR.

Cases are matched by ``config_hash`` (the resolved configuration, so a renamed case still
matches and a changed setting never does). Each side's value is the point the views use: the
median row over repeats when there is one. A metric regresses when it moves the wrong way by
more than the threshold: memory up, throughput or max batch down, accuracy down (perplexity up).
A case that was ok in BASE and failed in NEW is a regression too: a PR that breaks a case should
not pass silently; so do cases of BASE missing from NEW, and two sets that share no case (the
comparison fails instead of saying "no regression" about nothing).
"""

from __future__ import annotations

import dataclasses
import html
import re
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from revbench import results
from revbench.analysis import points, style
from revbench.analysis.formats import fmt_number, markdown
from revbench.analysis.points import MIB
from revbench.errors import RevbenchError

TITLE = "Compare"


@dataclasses.dataclass(frozen=True)
class Compared:
    """A column compared, and how it is shown; which way is better is the column's own fact
    (``Column.better`` in the results schema)."""

    column: str
    label: str
    scale: float = 1.0
    digits: int = 1

    @property
    def higher_is_better(self) -> bool:
        return results.column_info()[self.column].better == "higher"


COMPARED: tuple[Compared, ...] = (
    Compared("peak_mem_bytes", "peak memory (MiB)", MIB),
    Compared("activation_bytes", "activations (MiB)", MIB, 2),
    Compared("tokens_per_s", "throughput (tokens/s)", 1.0, 0),
    Compared("max_batch_size", "max batch size", 1.0, 0),
    Compared("max_batch_tokens_per_s", "tokens/s at max batch", 1.0, 0),
)


def _quality_metrics(*frames: pd.DataFrame) -> list[Compared]:
    names = sorted({c for f in frames for c in points.quality_columns(f)})
    return [Compared(n, n, 1.0, 4) for n in names]


def parse_threshold(text: str | float) -> float:
    """``"5%"``, ``"5"`` or ``5`` -> 0.05."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%?\s*", str(text))
    if not m:
        raise RevbenchError(f"--max-regression: expected a percentage such as 5%, got {text!r}")
    return float(m.group(1)) / 100


@dataclasses.dataclass
class Comparison:
    """Per-case deltas: one row per (case, metric) measured on both sides, plus status rows."""

    table: pd.DataFrame
    """suite, case, config_hash, metric, base, new, change (fraction), regressed, digits."""
    only_base: list[str]
    only_new: list[str]
    threshold: float
    matched: int
    """Cases present on both sides (failed ones included)."""
    base_name: str = "BASE"
    new_name: str = "NEW"

    @property
    def regressions(self) -> pd.DataFrame:
        return self.table[self.table["regressed"]]

    @property
    def failed(self) -> bool:
        """A regression, a case of BASE missing from NEW, or nothing compared at all: each
        fails the comparison (``revbench compare`` exits 1)."""
        return bool(len(self.regressions) or self.only_base or not self.matched)

    def markdown(self) -> str:
        """The PR comment: a header line, the verdict, the delta table, unmatched cases."""
        n_reg = len(self.regressions)
        lines = [
            f"### revbench compare: {self.base_name} vs {self.new_name}",
            "",
            f"{self.matched} cases matched by config hash; threshold {self.threshold:.1%} "
            "(memory up, throughput, max batch or accuracy down).",
            "",
            f"**{n_reg} regression{'s' if n_reg != 1 else ''}.**"
            if n_reg
            else f"No regression past {self.threshold:.1%} in the matched cases."
            if self.matched
            else "**No case in common: nothing was compared.**",
            "",
        ]
        if self.only_base:
            k = len(self.only_base)
            lines += [f"**{k} case{'s' if k != 1 else ''} of BASE missing from NEW.**", ""]
        if len(self.table):
            shown = pd.DataFrame(
                {
                    "suite": [_text(v) for v in self.table["suite"]],
                    "case": [_text(v) for v in self.table["case"]],
                    "metric": self.table["metric"],
                    "BASE": [
                        _fmt(v, d)
                        for v, d in zip(self.table["base"], self.table["digits"], strict=True)
                    ],
                    "NEW": [
                        _fmt(v, d)
                        for v, d in zip(self.table["new"], self.table["digits"], strict=True)
                    ],
                    "change": [
                        "" if c != c else f"{c:+.1%}" for c in self.table["change"].astype(float)
                    ],
                    "": ["**regression**" if r else "" for r in self.table["regressed"]],
                }
            )
            lines.append(markdown(shown, right=("BASE", "NEW", "change")))
        for side, cases in (("BASE", self.only_base), ("NEW", self.only_new)):
            if cases:
                lines.append(f"Only in {side}: {', '.join(map(_text, cases))}.\n")
        return "\n".join(lines).rstrip("\n") + "\n"


def _text(v: object) -> str:
    """A name from the results as markdown text: HTML escaped (the table goes into PR
    comments), line breaks flattened (``markdown`` escapes the pipes)."""
    return html.escape(str(v)).replace("\n", " ").replace("\r", " ")


def _fmt(v: object, digits: int) -> str:
    if isinstance(v, str):
        return _text(v)
    return fmt_number(v, digits)


def _statuses(df: pd.DataFrame) -> dict[str, str]:
    """config_hash -> ok when any row of it succeeded, else the latest failure's status."""
    out: dict[str, str] = {}
    for h, g in df.groupby("config_hash", sort=True):
        st = g["status"].astype(str)
        out[str(h)] = "ok" if (st == "ok").any() else st.iloc[-1]
    return out


def compare(
    base: pd.DataFrame,
    new: pd.DataFrame,
    max_regression: float = 0.05,
    *,
    names: tuple[str, str] = ("BASE", "NEW"),
) -> Comparison:
    """Match the cases of two result frames by config hash and compute every metric's change."""
    metrics = [*COMPARED, *_quality_metrics(base, new)]
    cols = [m.column for m in metrics]
    b, n = points.summarise(base, cols), points.summarise(new, cols)
    b_status, n_status = _statuses(base), _statuses(new)
    names_of = {
        **dict(zip(base["config_hash"].astype(str), base["case"].astype(str), strict=True)),
        **dict(zip(new["config_hash"].astype(str), new["case"].astype(str), strict=True)),
    }
    suites = {
        **dict(zip(base["config_hash"].astype(str), base["suite"].astype(str), strict=True)),
        **dict(zip(new["config_hash"].astype(str), new["suite"].astype(str), strict=True)),
    }
    b_idx = b.set_index("config_hash")
    n_idx = n.set_index("config_hash")
    rows = []
    for h in sorted(set(b_status) & set(n_status), key=lambda h: (suites[h], names_of[h], h)):
        ident = {"suite": suites[h], "case": names_of[h], "config_hash": h}
        if b_status[h] != n_status[h]:
            rows.append(
                {
                    **ident,
                    "metric": "status",
                    "base": b_status[h],
                    "new": n_status[h],
                    "change": float("nan"),
                    "regressed": b_status[h] == "ok",
                    "digits": 0,
                }
            )
        if h not in b_idx.index or h not in n_idx.index:
            continue
        for m in metrics:
            bv, nv = b_idx.at[h, m.column], n_idx.at[h, m.column]
            if pd.isna(bv) or pd.isna(nv):
                continue
            bv, nv = float(bv) / m.scale, float(nv) / m.scale
            change = (nv - bv) / abs(bv) if bv else (0.0 if nv == bv else float("inf"))
            worse = -change if m.higher_is_better else change
            rows.append(
                {
                    **ident,
                    "metric": m.label,
                    "base": bv,
                    "new": nv,
                    "change": change,
                    "regressed": worse > max_regression,
                    "digits": m.digits,
                }
            )
    table = pd.DataFrame(
        rows,
        columns=[
            *("suite", "case", "config_hash", "metric", "base", "new", "change", "regressed"),
            "digits",
        ],
    )
    table["regressed"] = table["regressed"].astype(bool)
    only_base = sorted(names_of[h] for h in set(b_status) - set(n_status))
    only_new = sorted(names_of[h] for h in set(n_status) - set(b_status))
    matched = len(set(b_status) & set(n_status))
    return Comparison(table, only_base, only_new, max_regression, matched, *names)


def compare_paths(
    base: str | Path, new: str | Path, max_regression: str | float = "5%"
) -> Comparison:
    """``compare`` on two results files or folders (``results.load`` reads each)."""
    frames = []
    for p in (base, new):
        df = results.load(p)
        if df.empty:
            raise RevbenchError(f"{p}: no revbench results found")
        frames.append(df)
    return compare(*frames, parse_threshold(max_regression), names=(str(base), str(new)))


def figure(cmp: pd.DataFrame) -> go.Figure:
    """Per-case change of each metric, in percent, regressions in red."""
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
    return style.layout(
        fig,
        "Change NEW vs BASE (red: a regression past the threshold)",
        "change (%)",
        "",
        height=height,
        yaxis={"autorange": "reversed"},
        margin={"l": 330, "r": 20, "t": 60, "b": 60},
    )


def panel(sets: dict[str, pd.DataFrame], filters: points.Filters, st: Any) -> None:
    """The dashboard's Compare tab: pick BASE and NEW among ``sets`` (named result frames: the
    folders and runs of the results folder) and a threshold; the same ``filters`` apply to
    both sides."""
    if len(sets) < 2:
        st.info("Comparing needs two result sets: two sub-folders or two runs.")
        return
    names = list(sets)
    c1, c2, c3 = st.columns([2, 2, 1])
    base = c1.selectbox("BASE", names, index=0, key="cmp_base")
    new = c2.selectbox("NEW", names, index=1, key="cmp_new")
    pct = c3.number_input("Max regression %", 0.0, 1000.0, 5.0, 1.0, key="cmp_threshold")
    sides = [points.apply_filters(points.prepare(sets[n]), filters) for n in (base, new)]
    cmp = compare(*sides, pct / 100, names=(base, new))
    if cmp.table.empty:
        st.info("No case of BASE matches a case of NEW (cases match by config hash).")
        return
    n = len(cmp.regressions)
    (st.error if n else st.success)(
        f"{n} regression(s) past {pct:g}%" if n else f"No regression past {pct:g}%."
    )
    style.show(st, figure(cmp.table), "fig_compare")
    with st.expander("Markdown for a PR comment"):
        st.code(cmp.markdown(), language="markdown")
    st.dataframe(cmp.table.drop(columns=["digits"]), hide_index=True)
