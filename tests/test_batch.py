"""Max batch size search: exactness and trial count on planted limits, real trials in children."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from revbench import results
from revbench.cli import main
from revbench.measure.batch import Trial, parse_bytes, search_max


def planted(limit: int, calls: list[int]):
    def try_size(size: int) -> Trial:
        calls.append(size)
        return Trial(size, size <= limit, size * 10, "ok")

    return try_size


@pytest.mark.parametrize("limit", [1, 2, 3, 5, 8, 37, 64, 100, 255, 1000])
def test_search_finds_a_planted_limit_exactly_with_the_minimum_trials(limit: int) -> None:
    calls: list[int] = []
    res = search_max(planted(limit, calls), start=1, cap=4096)
    assert res.best == limit and not res.capped
    assert len(calls) == len(set(calls)), "no size is tried twice"
    k = int(math.log2(limit))  # 2^k <= limit < 2^(k+1)
    # doubling costs k+2 trials (1..2^(k+1)), bisection of (2^k, 2^(k+1)) costs k
    assert len(calls) == (k + 2) + k
    assert [t.size for t in res.trials] == calls


def test_search_cap_and_nothing_fits() -> None:
    calls: list[int] = []
    res = search_max(planted(10_000, calls), start=1, cap=100)
    assert res.best == 100 and res.capped and calls == [1, 2, 4, 8, 16, 32, 64, 100]
    res = search_max(planted(0, []), start=1, cap=100)
    assert res.best is None and len(res.trials) == 1 and not res.trials[0].fits


def test_parse_bytes() -> None:
    assert parse_bytes("24GiB") == 24 * 2**30
    assert parse_bytes("80GB") == 80 * 10**9
    assert parse_bytes("1.5 MiB") == int(1.5 * 2**20)
    with pytest.raises(ValueError, match="not a memory size"):
        parse_bytes("lots")


SUITE = """
name: mb
defaults:
  model: {vocab_size: 256, d_model: 32, n_heads: 2, max_seq_len: 32, n_layers: 1}
  data: {batch_size: 2, seq_len: 32}
  train: {device: cpu, threads: 1}
measure: {budget: 4GiB, timeout_s: 300, max_size: 4}
metrics: [max_batch_size]
"""


def test_real_trials_in_child_processes_and_forced_oom_is_a_trial(tmp_path: Path) -> None:
    suite = tmp_path / "s.yaml"
    suite.write_text(
        textwrap.dedent(SUITE) + "cases:\n  - {name: fine}\n  - {name: oom, fault: oom}\n"
    )
    assert main(["run", str(suite), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    df = results.load(tmp_path / "r").set_index("case")
    fine = df.loc["fine"]
    assert fine["max_batch_size"] == 4 and fine["search_capped"]
    # the planner predicts that everything up to the cap fits: one trial, at the cap
    assert fine["predicted_max_batch_size"] == 4
    assert [t["size"] for t in fine["search_trial_list"]] == [4]
    assert all(t["peak_bytes"] > 0 and t["fits"] for t in fine["search_trial_list"])
    assert fine["budget_bytes"] == 4 * 2**30 and fine["device_type"] == "cpu"
    oom = df.loc["oom"]
    # every trial runs out of memory: from the predicted size down to the smallest
    assert oom["status"] == "ok" and [t["size"] for t in oom["search_trial_list"]] == [4, 2, 1]
    assert list(oom["search_trial_list"][-1].values()) == [1, False, None, "oom"]
    assert pd.isna(oom["max_batch_size"])
