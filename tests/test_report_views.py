"""The views of revbench.analysis (tables, figures, report sections) on the fixture rows."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from revbench import results
from revbench.analysis import depth, drift, max_batch, points, quality, runs, tradeoff
from revbench.analysis.report import sections

BASE = Path(__file__).parent / "fixtures" / "results" / "base"


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    return points.prepare(results.load(BASE))


def test_pareto_front() -> None:
    mem = pd.Series([1.0, 2.0, 3.0, 2.5])
    tps = pd.Series([10.0, 20.0, 15.0, 25.0])
    assert tradeoff.pareto_front(mem, tps).tolist() == [True, True, False, True]


def test_points_use_the_median_row_and_span_the_repeats(rows: pd.DataFrame) -> None:
    t = tradeoff.table(rows)
    assert len(t) == 7 and (t["n_repeats"] == 2).all()
    medians = rows[rows["repeat"] == -1].set_index("config_hash")["tokens_per_s"]
    assert t.set_index("config_hash")["tokens_per_s"].to_dict() == medians.to_dict()
    assert (t["tokens_per_s_lo"] <= t["tokens_per_s"]).all()
    assert (t["tokens_per_s"] <= t["tokens_per_s_hi"]).all()
    assert t["pareto"].any()


def test_filters(rows: pd.DataFrame) -> None:
    opts = points.filter_options(rows)
    assert opts["suite"] == ["fx_batch", "fx_drift", "fx_memory"]
    assert "baseline+ckpt" in opts["arch"] and opts["status"] == ["error", "ok"]
    mid = points.apply_filters(rows, points.Filters(arch=("midpoint",)))
    assert set(mid["arch_label"]) == {"midpoint"}
    day = rows["date"].iloc[0]
    assert points.apply_filters(rows, points.Filters(dates=(day, day))).shape == rows.shape
    before = day - pd.Timedelta(days=1)
    assert points.apply_filters(rows, points.Filters(dates=(before, before))).empty


def test_depth_slopes_activation_bytes(rows: pd.DataFrame) -> None:
    """Saved activations grow with depth for the baseline and stay flat for reversible models
    (activation_bytes counts tensors, so this holds on any machine)."""
    _, fits = depth.table(rows, "activation_bytes")
    slope = fits.set_index("arch_label")["slope"]
    assert slope["baseline"] > 1e5
    assert abs(slope["midpoint"]) < 1e3 and abs(slope["revnet"]) < 1e3


def test_max_batch_and_trials(rows: pd.DataFrame) -> None:
    mb = max_batch.table(rows).set_index("arch_label")
    assert mb.loc["midpoint", "max_batch_size"] >= mb.loc["baseline", "max_batch_size"]
    assert mb["limit"].tolist() == ["budget 40MiB", "budget 40MiB"]
    tr = max_batch.trials(rows)
    assert tr["fits"].any() and not tr["fits"].all()  # the search found a limit


def test_quality_view_picks_up_future_columns(rows: pd.DataFrame) -> None:
    assert points.quality_columns(rows) == []
    with_acc = rows.assign(accuracy=rows["peak_mem_bytes"].notna().astype(float))
    s, names, conv = quality.table(with_acc)
    assert names == ["accuracy"] and conv is None and len(s)
    quality.figure(s, "accuracy", "peak_mem_bytes", "peak memory (MiB)")
    assert "quality" in {sec.key for sec in sections(with_acc)}


def test_empty_frame_gives_empty_views() -> None:
    empty = points.prepare(results.arrow_schema().empty_table().to_pandas())
    assert tradeoff.table(empty).empty and drift.table(empty).empty
    assert max_batch.table(empty).empty and max_batch.trials(empty).empty
    assert depth.table(empty)[1].empty and runs.table(empty).empty
    assert points.caption(empty) == "Suite: none; devices: none; revbench none."


def test_arch_label_names_checkpointing_and_data_parallel_runs() -> None:
    df = pd.DataFrame(
        {
            "model.arch": ["baseline", "baseline", "midpoint", "midpoint"],
            "model.checkpointing": [False, True, False, False],
            "train.parallel": [None, "none", "ddp", "fsdp"],
            "train.nproc_per_node": [None, 1, 2, 8],
        }
    )
    assert list(points.arch_label(df)) == [
        "baseline",
        "baseline+ckpt",
        "midpoint ddp×2",
        "midpoint fsdp×8",
    ]
    assert list(points.arch_label(df[["model.arch"]])) == [
        "baseline",
        "baseline",
        "midpoint",
        "midpoint",
    ]


# --- the view plug-in shape ------------------------------------------------------------------


def test_every_view_has_the_plug_in_shape() -> None:
    from revbench.analysis import VIEWS

    titles = [v.TITLE for v in VIEWS]
    assert len(set(titles)) == len(titles) == 7
    for view in VIEWS:
        for name in ("table", "sections", "panel"):
            assert callable(getattr(view, name)), (view.__name__, name)
        assert callable(getattr(view, "figure", None)) or view is runs  # runs is a table


class ToyView:
    """A view defined outside the package: rows per status, as a table and a bar figure."""

    TITLE = "Toy statuses"

    @staticmethod
    def table(df: pd.DataFrame) -> pd.DataFrame:
        return df.groupby("status").size().rename("rows").reset_index()

    @staticmethod
    def figure(t: pd.DataFrame) -> object:
        import plotly.graph_objects as go

        return go.Figure(go.Bar(x=t["status"], y=t["rows"]))

    @classmethod
    def sections(cls, df: pd.DataFrame) -> list:
        from revbench.analysis.formats import Section

        t = cls.table(df)
        cells = t.assign(rows=t["rows"].astype(str))
        return [Section("toy", "Toy statuses", cells, points.caption(df), ("rows",), None)]

    @classmethod
    def panel(cls, df: pd.DataFrame, st: object) -> None:
        st.dataframe(cls.table(df), hide_index=True)  # type: ignore[attr-defined]
        st.write("toy view drawn")  # type: ignore[attr-defined]


def test_a_view_added_to_the_registry_reaches_the_report(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Registering a view (one place: ``VIEWS``) is all the report needs; the dashboard's half
    is in test_dashboard.py."""
    import revbench.analysis as analysis
    from revbench.analysis.report import build_report

    monkeypatch.setattr(analysis, "VIEWS", (*analysis.VIEWS, ToyView))
    import revbench.analysis.report as report

    monkeypatch.setattr(report, "VIEWS", analysis.VIEWS)
    df = results.load(BASE)
    assert sections(df)[-1].key == "toy"
    build_report(df, tmp_path, ("md", "latex"), with_figures=False)
    md = (tmp_path / "report.md").read_text()
    assert "## Toy statuses" in md and "| ok |" in md
    assert r"\label{tab:toy}" in (tmp_path / "tables.tex").read_text()


def test_the_planner_view_is_a_report_section_when_rows_carry_predictions() -> None:
    """The prediction view's section: measured and predicted MiB and the signed error per
    point, the |error| summary in its caption; absent when no row carries a prediction."""
    from revbench.analysis import prediction

    df = results.load(BASE)
    assert "prediction" not in {s.key for s in sections(df)}
    df["predicted_peak_bytes"] = df["peak_mem_delta_bytes"] * 1.02
    (sec,) = [s for s in sections(df) if s.key == "prediction"]
    assert set(sec.table["error"]) == {"+2.0%"}
    assert sec.caption.startswith(f"{len(sec.table)} points; |error| median 2.0%, max 2.0%.")
    assert list(sec.table.columns)[-3:] == ["measured (MiB)", "predicted (MiB)", "error"]
    assert prediction.table(df)["error"].round(6).eq(0.02).all()
