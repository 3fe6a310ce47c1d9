"""The view tables behind the dashboard and the report (revbench.views), on the fixture rows."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from revbench import figures, results, views
from revbench.report import sections

BASE = Path(__file__).parent / "fixtures" / "results" / "base"


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    return views.prepare(results.load(BASE))


def test_pareto_front() -> None:
    mem = pd.Series([1.0, 2.0, 3.0, 2.5])
    tps = pd.Series([10.0, 20.0, 15.0, 25.0])
    assert views.pareto_front(mem, tps).tolist() == [True, True, False, True]


def test_points_use_the_median_row_and_span_the_repeats(rows: pd.DataFrame) -> None:
    t = views.tradeoff(rows)
    assert len(t) == 7 and (t["n_repeats"] == 2).all()
    medians = rows[rows["repeat"] == -1].set_index("config_hash")["tokens_per_s"]
    assert t.set_index("config_hash")["tokens_per_s"].to_dict() == medians.to_dict()
    assert (t["tokens_per_s_lo"] <= t["tokens_per_s"]).all()
    assert (t["tokens_per_s"] <= t["tokens_per_s_hi"]).all()
    assert t["pareto"].any()


def test_filters(rows: pd.DataFrame) -> None:
    opts = views.filter_options(rows)
    assert opts["suite"] == ["fx_batch", "fx_drift", "fx_memory"]
    assert "baseline+ckpt" in opts["arch"] and opts["status"] == ["error", "ok"]
    mid = views.apply_filters(rows, views.Filters(arch=("midpoint",)))
    assert set(mid["arch_label"]) == {"midpoint"}
    day = rows["date"].iloc[0]
    assert views.apply_filters(rows, views.Filters(dates=(day, day))).shape == rows.shape
    before = day - pd.Timedelta(days=1)
    assert views.apply_filters(rows, views.Filters(dates=(before, before))).empty


def test_depth_slopes_activation_bytes(rows: pd.DataFrame) -> None:
    """Saved activations grow with depth for the baseline and stay flat for reversible models
    (activation_bytes counts tensors, so this holds on any machine)."""
    _, fits = views.depth(rows, "activation_bytes")
    slope = fits.set_index("arch_label")["slope"]
    assert slope["baseline"] > 1e5
    assert abs(slope["midpoint"]) < 1e3 and abs(slope["revnet"]) < 1e3


def test_max_batch_and_trials(rows: pd.DataFrame) -> None:
    mb = views.max_batch(rows).set_index("arch_label")
    assert mb.loc["midpoint", "max_batch_size"] >= mb.loc["baseline", "max_batch_size"]
    assert mb["limit"].tolist() == ["budget 40MiB", "budget 40MiB"]
    tr = views.search_trials(rows)
    assert tr["fits"].any() and not tr["fits"].all()  # the search found a limit


def test_quality_view_picks_up_future_columns(rows: pd.DataFrame) -> None:
    assert views.quality_columns(rows) == []
    with_acc = rows.assign(accuracy=rows["peak_mem_bytes"].notna().astype(float))
    s, names, conv = views.quality(with_acc)
    assert names == ["accuracy"] and conv is None and len(s)
    figures.quality(s, "accuracy", "peak_mem_bytes", "peak memory (MiB)")
    assert "quality" in {sec.key for sec in sections(with_acc)}


def test_empty_frame_gives_empty_views() -> None:
    empty = views.prepare(results.arrow_schema().empty_table().to_pandas())
    assert views.tradeoff(empty).empty and views.drift(empty).empty
    assert views.max_batch(empty).empty and views.search_trials(empty).empty
    assert views.depth(empty)[1].empty and views.runs(empty).empty
    assert views.caption(empty) == "Suite: none; devices: none; revbench none."


def test_arch_label_names_checkpointing_and_data_parallel_runs() -> None:
    df = pd.DataFrame(
        {
            "model.arch": ["baseline", "baseline", "midpoint", "midpoint"],
            "model.checkpointing": [False, True, False, False],
            "train.parallel": [None, "none", "ddp", "fsdp"],
            "train.nproc_per_node": [None, 1, 2, 8],
        }
    )
    assert list(views.arch_label(df)) == [
        "baseline",
        "baseline+ckpt",
        "midpoint ddp×2",
        "midpoint fsdp×8",
    ]
    assert list(views.arch_label(df[["model.arch"]])) == [
        "baseline",
        "baseline",
        "midpoint",
        "midpoint",
    ]
