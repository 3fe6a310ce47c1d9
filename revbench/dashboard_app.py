"""revbench dashboard: browse results, compare result sets.

A Streamlit script shipped inside the package, so an installed revbench has it. Start it with
``revbench dashboard [RESULTS_DIR]`` (or ``streamlit run`` on this file, or on the checkout's
``dashboard/app.py``, with ``-- RESULTS_DIR``); the folder comes from ``REVBENCH_RESULTS``, else
the first script argument, else ``results``. This file only composes: loading, the sidebar's
filters and one tab per view of ``revbench.analysis.VIEWS`` (each view draws its own panel from
the filtered rows), then the Compare tab.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import warnings
from pathlib import Path

import pandas as pd
import streamlit as st

from revbench import results
from revbench.analysis import VIEWS, compare
from revbench.analysis.points import Filters, apply_filters, caption, filter_options, prepare
from revbench.analysis.report import REFERENCE, default_results, reference_note

RUN_HINT = "Run a suite first, e.g. `revbench run quickstart`."


def results_dir() -> Path:
    if os.environ.get("REVBENCH_RESULTS"):
        return Path(os.environ["REVBENCH_RESULTS"])
    return Path(sys.argv[1]) if len(sys.argv) > 1 else default_results()


@st.cache_data(show_spinner="Loading results…")
def load(path: str) -> tuple[pd.DataFrame, list[str]]:
    """Every row under ``path`` and the warnings about files that were skipped."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", results.ResultsWarning)
        df = results.load(path)
    return df, [str(w.message) for w in caught if issubclass(w.category, results.ResultsWarning)]


@st.cache_data(show_spinner=False)
def result_sets(path: str) -> dict[str, pd.DataFrame]:
    """Candidate sides of a comparison: each sub-folder (e.g. main/ and pr-123/) and each run."""
    sets: dict[str, pd.DataFrame] = {}
    root = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", results.ResultsWarning)  # already reported once
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            df = results.load(sub)
            if not df.empty:
                sets[f"folder {sub.name}"] = df
        df = results.load(root)
    for run_id, g in df.groupby("run_id", sort=True):
        sets[f"run {run_id}"] = g
    return sets


# --- sidebar ---------------------------------------------------------------------------------


def sidebar(df: pd.DataFrame) -> Filters:
    st.sidebar.header("Filters")
    options = filter_options(df)
    labels = {
        "suite": "Suite",
        "arch": "Architecture",
        "device": "Device / GPU model",
        "dtype": "dtype",
        "block": "Block style",
        "status": "Status",
    }
    chosen: dict[str, tuple[str, ...] | None] = {}
    for key, label in labels.items():
        opts = options[key]
        picked = st.sidebar.multiselect(label, opts, default=opts, key=f"filter_{key}")
        # everything picked = no filter, so rows missing the column (failed runs) stay
        chosen[key] = None if set(picked) == set(opts) else tuple(picked)
    dates = sorted(d for d in df["date"].dropna().unique())
    span = None
    if dates:
        picked = st.sidebar.date_input(
            "Date range (UTC)",
            value=(dates[0], dates[-1]),
            min_value=dates[0],
            max_value=dates[-1],
            key="filter_dates",
        )
        if isinstance(picked, dt.date):
            picked = (picked, picked)
        if len(picked) == 2 and (picked[0], picked[1]) != (dates[0], dates[-1]):
            span = (picked[0], picked[1])
    return Filters(**chosen, dates=span)


def main() -> None:
    st.set_page_config(page_title="revbench", layout="wide")
    path = results_dir()
    st.title("revbench results")
    if st.sidebar.button("Reload results", key="reload"):
        st.cache_data.clear()
    if not path.exists():
        st.info(f"No results folder at `{path}`. {RUN_HINT}")
        return
    df, skipped = load(str(path))
    for msg in skipped:
        st.warning(msg)
    if df.empty:
        st.info(f"No results in `{path}` yet. {RUN_HINT}")
        return
    if path.resolve() == REFERENCE:
        st.info(reference_note(df))
    df = prepare(df)
    filters = sidebar(df)
    sel = apply_filters(df, filters)
    st.caption(f"`{path}`: {len(sel)} of {len(df)} rows selected. {caption(sel)}")
    tabs = st.tabs([view.TITLE for view in VIEWS] + [compare.TITLE])
    for tab, view in zip(tabs, VIEWS, strict=False):
        with tab:
            if sel.empty:
                st.info("No rows match the filters.")
            else:
                view.panel(sel, st)
    with tabs[-1]:
        compare.panel(result_sets(str(path)), filters, st)


if __name__ == "__main__":  # Streamlit runs the script as __main__; importing it draws nothing
    main()
