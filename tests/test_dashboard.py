"""The Streamlit dashboard under streamlit.testing's AppTest, on the fixture results."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import require

require("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from revbench.dashboard import APP as PACKAGED_APP  # noqa: E402
from revbench.dashboard import command  # noqa: E402

ROOT = Path(__file__).parent.parent
APP = str(PACKAGED_APP)
FIXTURES = ROOT / "tests" / "fixtures" / "results"
VIEWS = [
    "Trade-off",
    "Max batch",
    "Memory vs depth",
    "Predicted vs measured",
    "Accuracy",
    "Numerical drift",
    "Runs",
]


def run_app(monkeypatch: pytest.MonkeyPatch, results: Path) -> AppTest:
    monkeypatch.setenv("REVBENCH_RESULTS", str(results))
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at: AppTest) -> dict[str, dict]:
    """Plotly figures on the page by their key (fig_tradeoff, ...), as plotly JSON."""
    out = {}
    for el in at.get("plotly_chart"):
        key = el.proto.id.rsplit("-", 1)[-1]
        out[key] = json.loads(el.proto.spec)
    return out


def texts(at: AppTest) -> str:
    return "\n".join(e.value for kind in (at.info, at.warning, at.error, at.success) for e in kind)


@pytest.fixture(scope="module")
def fixture_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(shutil.copytree(FIXTURES, tmp_path_factory.mktemp("results") / "r"))


def test_every_view_renders(monkeypatch: pytest.MonkeyPatch, fixture_copy: Path) -> None:
    at = run_app(monkeypatch, fixture_copy)
    assert [t.label for t in at.tabs] == [*VIEWS, "Compare"]
    figs = charts(at)
    assert {
        "fig_tradeoff",
        "fig_max_batch",
        "fig_trials",
        "fig_paper_max_batch",
        "fig_depth",
        "fig_drift",
        "fig_compare",
    } <= set(figs)
    assert "Pareto front" in [t["name"] for t in figs["fig_tradeoff"]["data"]]
    assert any("MiB/layer" in t.get("name", "") for t in figs["fig_depth"]["data"])
    assert "reported by the paper" in figs["fig_paper_max_batch"]["data"][0]["name"]
    # no accuracy columns yet: the accuracy view explains instead of failing
    assert "No accuracy or perplexity" in texts(at)
    # the fixtures predate the planner's column: that view explains too
    assert "No rows carry the planner's prediction" in texts(at)
    # runs table with failures and a CSV download
    tables = [df.value for df in at.dataframe if "error" in df.value.columns]
    assert any(t["error"].astype(str).str.contains("injected fault").any() for t in tables)
    assert at.get("download_button")


def test_prediction_view_draws_predicted_against_measured(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # fixture rows of the memory suite, each given a prediction 2% above its measurement
    files = sorted((FIXTURES / "base" / "fx_memory").glob("*__r0__*.parquet"))[:3]
    for i, f in enumerate(files):
        t = pq.read_table(f)
        pred = pa.array([int(v * 1.02) for v in t["peak_mem_delta_bytes"].to_pylist()], pa.int64())
        t = t.append_column("predicted_peak_bytes", pred).replace_schema_metadata(t.schema.metadata)
        pq.write_table(t, tmp_path / f"row{i}.parquet")
    at = run_app(monkeypatch, tmp_path)
    fig = charts(at).get("fig_prediction")
    assert fig is not None
    names = [t.get("name") for t in fig["data"]]
    assert "predicted = measured" in names


def test_filters_change_what_is_shown(monkeypatch: pytest.MonkeyPatch, fixture_copy: Path) -> None:
    at = run_app(monkeypatch, fixture_copy)
    names = {t["name"] for t in charts(at)["fig_tradeoff"]["data"]}
    assert {"baseline", "midpoint", "revnet"} <= names
    at.sidebar.multiselect(key="filter_arch").set_value(["midpoint"]).run()
    names = {t["name"] for t in charts(at)["fig_tradeoff"]["data"]}
    assert names == {"midpoint", "Pareto front"}
    assert "of 45 rows selected" in at.caption[0].value
    # only failed rows: the measured views have nothing to show and say so
    at.sidebar.multiselect(key="filter_arch").set_value(at.sidebar.multiselect[1].options)
    at.sidebar.multiselect(key="filter_status").set_value(["error"]).run()
    assert not at.exception
    assert "No successful runs with both peak memory and throughput" in texts(at)
    assert "fig_tradeoff" not in charts(at)


def test_compare_view_flags_regressions(
    monkeypatch: pytest.MonkeyPatch, fixture_copy: Path
) -> None:
    at = run_app(monkeypatch, fixture_copy)
    assert at.selectbox(key="cmp_base").value == "folder base"
    assert at.selectbox(key="cmp_new").value == "folder new"
    at.number_input(key="cmp_threshold").set_value(1000.0).run()
    assert "No regression past 1000%" in texts(at)
    at.number_input(key="cmp_threshold").set_value(0.0).run()
    assert "regression(s) past 0%" in texts(at)


def test_empty_results_show_a_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    at = run_app(monkeypatch, tmp_path)
    assert "No results in" in texts(at)
    at = run_app(monkeypatch, tmp_path / "missing")
    assert "No results folder" in texts(at)


def test_checkout_entry_runs_the_packaged_app(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``streamlit run dashboard/app.py`` (the checkout's thin entry) draws the package's app."""
    assert str(PACKAGED_APP) in command("results")  # what `revbench dashboard` serves
    monkeypatch.setenv("REVBENCH_RESULTS", str(tmp_path))
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "No results in" in texts(at)


def test_corrupt_parquet_is_a_warning(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "base" / "fx_batch", tmp_path / "fx_batch")
    (tmp_path / "fx_batch" / "broken.parquet").write_bytes(b"PAR1 not really")
    at = run_app(monkeypatch, tmp_path)
    assert "broken.parquet" in "\n".join(w.value for w in at.warning)
    assert "fig_max_batch" in charts(at)
    assert "No successful runs" in texts(at)  # partial data: no memory suite here


def test_dashboard_binds_localhost_by_default() -> None:
    cmd = command("results")
    assert "--server.address=127.0.0.1" in cmd and "--server.headless=true" in cmd
    assert "--server.port=9999" in command("results", port=9999)


def test_accuracy_view_plots_quality_columns(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The view plots the schema's quality columns (accuracy, perplexity) once rows have them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from revbench import results

    df = results.load(FIXTURES / "base" / "fx_memory")
    df["accuracy"] = (df["status"] == "ok").astype(float)  # stand-in for a task's score
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata({b"revbench.schema_version": b"1"})
    pq.write_table(table, tmp_path / "with_accuracy.parquet")
    at = run_app(monkeypatch, tmp_path)
    assert "fig_quality" in charts(at)
    assert at.selectbox(key="quality_metric").value == "accuracy"


def test_a_view_added_to_the_registry_gets_a_tab(
    monkeypatch: pytest.MonkeyPatch, fixture_copy: Path
) -> None:
    """A view registered in ``revbench.analysis.VIEWS`` (test_report_views.ToyView) gets its
    tab, drawn by its own panel from the filtered rows, without touching the app."""
    from test_report_views import ToyView

    import revbench.analysis as analysis

    monkeypatch.setattr(analysis, "VIEWS", (*analysis.VIEWS, ToyView))
    at = run_app(monkeypatch, fixture_copy)
    assert [t.label for t in at.tabs] == [*VIEWS, "Toy statuses", "Compare"]
    assert "toy view drawn" in [m.value for m in at.markdown]
    assert any(list(df.value.columns) == ["status", "rows"] for df in at.dataframe)
