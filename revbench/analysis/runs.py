"""View 7, runs: every row with its provenance and outcome; the report lists the failures."""

from __future__ import annotations

from typing import Any

import pandas as pd

from revbench.analysis import points
from revbench.analysis.formats import Section, fmt_int

TITLE = "Runs"
COLUMNS = (
    "timestamp_utc",
    "suite",
    "case",
    "repeat",
    "status",
    "error",
    "arch_label",
    "train.dtype",
    "device_name",
    "hostname",
    "revbench_version",
    "git_commit",
    "torch_version",
    "run_id",
    "config_hash",
    "wall_time_s",
)


def table(df: pd.DataFrame) -> pd.DataFrame:
    """Every row with its provenance and outcome, newest first."""
    df = points.prepare(df) if "arch_label" not in df.columns else df
    out = pd.DataFrame({c: points.col(df, c) for c in COLUMNS})
    return out.sort_values("timestamp_utc", ascending=False, kind="stable", ignore_index=True)


def failures(df: pd.DataFrame) -> pd.DataFrame:
    """The rows whose status is not ok: suite, case, repeat, status, error."""
    bad = df[points.col(df, "status").astype("string").ne("ok").fillna(True).astype(bool)]
    out = pd.DataFrame(
        {c: points.col(bad, c) for c in ("suite", "case", "repeat", "status", "error")}
    )
    return out.sort_values(["suite", "case", "repeat"], kind="stable", ignore_index=True)


def sections(df: pd.DataFrame) -> list[Section]:
    f = failures(df)
    if f.empty:
        return []
    cells = f.assign(repeat=f["repeat"].map(fmt_int), error=f["error"].fillna("").astype(str))
    bad = df[df["status"].astype(str) != "ok"]
    return [Section("failures", "Failed runs", cells, points.caption(bad), ("repeat",))]


def panel(df: pd.DataFrame, st: Any) -> None:
    r = table(df)
    bad = failures(df)
    st.write(f"{len(r)} rows, {len(bad)} not ok.")
    if len(bad):
        st.subheader("Failures")
        st.dataframe(bad, hide_index=True)
    st.dataframe(r, hide_index=True, key="runs_table")
    st.download_button(
        "Download CSV", r.to_csv(index=False), "revbench-runs.csv", "text/csv", key="runs_csv"
    )
