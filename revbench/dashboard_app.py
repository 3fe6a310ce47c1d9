"""revbench dashboard: browse results, compare result sets.

A Streamlit script shipped inside the package, so an installed revbench has it. Start it with
``revbench dashboard [RESULTS_DIR]`` (or ``streamlit run`` on this file, or on the checkout's
``dashboard/app.py``, with ``-- RESULTS_DIR``); the folder comes from ``REVBENCH_RESULTS``, else
the first script argument, else ``results``. This file only composes: the tables come from
``revbench.views``, the figures from ``revbench.figures``, the deltas from ``revbench.compare``;
each view below is a function of the filtered rows.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import warnings
from pathlib import Path

import pandas as pd
import streamlit as st

from revbench import compare, figures, results, views
from revbench.data import REPORTED_LABEL, paper_depth, paper_figures, paper_max_batch
from revbench.report import REFERENCE, default_results, reference_note

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


def show(fig: object, key: str) -> None:
    st.plotly_chart(fig, key=key, config={"displaylogo": False})


# --- sidebar ---------------------------------------------------------------------------------


def sidebar(df: pd.DataFrame) -> views.Filters:
    st.sidebar.header("Filters")
    options = views.filter_options(df)
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
    return views.Filters(**chosen, dates=span)


# --- views -----------------------------------------------------------------------------------


def view_tradeoff(df: pd.DataFrame) -> None:
    t = views.tradeoff(df)
    if t.empty:
        st.info("No successful runs with both peak memory and throughput in this selection.")
        return
    show(figures.tradeoff(t), "fig_tradeoff")
    st.caption("Error bars span the repeats (min to max); outlined points are Pareto-optimal.")
    cols = ["suite", "case", "arch_label", "model.n_layers", "peak_mem_bytes", "tokens_per_s"]
    st.dataframe(
        t[[*cols, "n_repeats", "pareto"]].assign(peak_mem_bytes=t["peak_mem_bytes"] / views.MIB),
        hide_index=True,
        column_config={"peak_mem_bytes": st.column_config.NumberColumn("peak MiB", format="%.1f")},
    )


def view_max_batch(df: pd.DataFrame) -> None:
    mb = views.max_batch(df)
    if mb.empty:
        st.info("No max batch size results in this selection (metric `max_batch_size`).")
    else:
        show(figures.max_batch(mb), "fig_max_batch")
        cols = ["limit", "arch_label", "case", "max_batch_size", "capped", "search_trials"]
        st.dataframe(mb[[*cols, "max_batch_tokens_per_s"]], hide_index=True)
        tr = views.search_trials(df[df["config_hash"].isin(set(mb["config_hash"]))])
        if not tr.empty:
            show(figures.trials(tr), "fig_trials")
    st.subheader(f"Gal et al., Table 3 ({REPORTED_LABEL})")
    ref = paper_max_batch()
    show(figures.paper_max_batch(ref), "fig_paper_max_batch")
    st.dataframe(ref, hide_index=True)


DEPTH_METRICS = {
    "peak_mem_bytes": "peak memory",
    "peak_mem_delta_bytes": "peak above model + optimizer",
    "activation_bytes": "saved activations",
}


def view_depth(df: pd.DataFrame) -> None:
    metric = st.radio(
        "Memory",
        list(DEPTH_METRICS),
        format_func=DEPTH_METRICS.get,
        horizontal=True,
        key="depth_metric",
    )
    points, fits = views.depth(df, metric)
    if points.empty:
        st.info(f"No successful runs with `{metric}` and a layer count in this selection.")
    else:
        show(figures.depth(points, fits, metric, DEPTH_METRICS[metric]), "fig_depth")
        if fits.empty:
            st.info("Each architecture needs two or more depths for a bytes-per-layer fit.")
        else:
            st.dataframe(fits.assign(MiB_per_layer=fits["slope"] / views.MIB), hide_index=True)
    with st.expander(f"Gal et al., Table 4 ({REPORTED_LABEL})"):
        st.dataframe(paper_depth(), hide_index=True)


def view_prediction(df: pd.DataFrame) -> None:
    t = views.prediction(df)
    if t.empty:
        st.info(
            "No rows carry the planner's prediction yet (predicted_peak_bytes, written by "
            "peak_memory since schema v2); `revbench plan SUITE` predicts without running."
        )
        return
    show(figures.prediction(t), "fig_prediction")
    err = t["error"].abs()
    st.caption(f"{len(t)} points; |error| median {err.median():.1%}, max {err.max():.1%}.")
    st.dataframe(
        t[["case", "arch_label", "model.n_layers", "train.dtype", "device_name"]].assign(
            measured_MiB=t["peak_mem_delta_bytes"] / views.MIB,
            predicted_MiB=t["predicted_peak_bytes"] / views.MIB,
            error=t["error"],
        ),
        hide_index=True,
    )


def view_quality(df: pd.DataFrame) -> None:
    s, names, conv = views.quality(df)
    if not names:
        st.info(
            "No accuracy or perplexity in these results yet: the view plots columns named "
            "`eval_*`, `accuracy` or `perplexity` once accuracy tasks write them."
        )
    else:
        metric = st.selectbox("Quality metric", names, key="quality_metric")
        show(figures.quality(s, metric, "peak_mem_bytes", "peak memory (MiB)"), "fig_quality")
        if conv:
            show(figures.quality(s, metric, conv, conv), "fig_quality_conv")
    ref = paper_figures()
    st.caption(f"RevFFN headline numbers ({REPORTED_LABEL}, not measured):")
    st.dataframe(ref[ref["reference"] == "main results"], hide_index=True)


def view_drift(df: pd.DataFrame) -> None:
    d = views.drift(df)
    if d.empty:
        st.info("No reconstruction results in this selection (metric `reconstruction`).")
        return
    show(figures.drift(d), "fig_drift")
    cols = ["suite", "arch_label", "train.dtype", "model.n_layers", "recon_rel_err_max"]
    sci = st.column_config.NumberColumn(format="%.2e")
    st.dataframe(
        d[[*cols, "grad_cosine", "grad_rel_err"]],
        hide_index=True,
        column_config={"recon_rel_err_max": sci, "grad_rel_err": sci},
    )


def view_runs(df: pd.DataFrame) -> None:
    r = views.runs(df)
    bad = r[r["status"].astype(str) != "ok"]
    st.write(f"{len(r)} rows, {len(bad)} not ok.")
    if len(bad):
        st.subheader("Failures")
        st.dataframe(bad[["suite", "case", "repeat", "status", "error"]], hide_index=True)
    st.dataframe(r, hide_index=True, key="runs_table")
    st.download_button(
        "Download CSV", r.to_csv(index=False), "revbench-runs.csv", "text/csv", key="runs_csv"
    )


def view_compare(path: Path, f: views.Filters) -> None:
    sets = result_sets(str(path))
    if len(sets) < 2:
        st.info("Comparing needs two result sets: two sub-folders or two runs.")
        return
    names = list(sets)
    c1, c2, c3 = st.columns([2, 2, 1])
    base = c1.selectbox("BASE", names, index=0, key="cmp_base")
    new = c2.selectbox("NEW", names, index=1, key="cmp_new")
    pct = c3.number_input("Max regression %", 0.0, 1000.0, 5.0, 1.0, key="cmp_threshold")
    sides = [views.apply_filters(views.prepare(sets[n]), f) for n in (base, new)]
    cmp = compare.compare(*sides, pct / 100, names=(base, new))
    if cmp.table.empty:
        st.info("No case of BASE matches a case of NEW (cases match by config hash).")
        return
    n = len(cmp.regressions)
    (st.error if n else st.success)(
        f"{n} regression(s) past {pct:g}%" if n else f"No regression past {pct:g}%."
    )
    show(figures.compare(cmp.table), "fig_compare")
    with st.expander("Markdown for a PR comment"):
        st.code(cmp.markdown(), language="markdown")
    st.dataframe(cmp.table.drop(columns=["digits"]), hide_index=True)


VIEWS = (
    ("Trade-off", view_tradeoff),
    ("Max batch", view_max_batch),
    ("Memory vs depth", view_depth),
    ("Predicted vs measured", view_prediction),
    ("Accuracy", view_quality),
    ("Numerical drift", view_drift),
    ("Runs", view_runs),
)


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
    df = views.prepare(df)
    filters = sidebar(df)
    sel = views.apply_filters(df, filters)
    st.caption(f"`{path}`: {len(sel)} of {len(df)} rows selected. {views.caption(sel)}")
    tabs = st.tabs([name for name, _ in VIEWS] + ["Compare"])
    for tab, (_, view) in zip(tabs, VIEWS, strict=False):
        with tab:
            if sel.empty:
                st.info("No rows match the filters.")
            else:
                view(sel)
    with tabs[-1]:
        view_compare(path, filters)


if __name__ == "__main__":  # Streamlit runs the script as __main__; importing it draws nothing
    main()
