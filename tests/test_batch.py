"""Max batch size search: exactness and trial count on planted limits, real trials in children."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from conftest import write_suite

from revbench import results
from revbench.cli import main
from revbench.measure.batch import Trial, predicted_largest, search_guided, search_max
from revbench.units import parse_bytes


def planted(limit: int, calls: list[int]):
    def try_size(size: int) -> Trial:
        calls.append(size)
        return Trial(size, size <= limit, size * 10, "ok")

    return try_size


@pytest.mark.parametrize("limit", [1, 2, 3, 5, 8, 37, 64, 100, 255, 1000])
def test_search_finds_a_planted_limit_exactly_with_the_minimum_trials(limit: int) -> None:
    calls: list[int] = []
    res = search_max(planted(limit, calls), start=1, cap=4096)
    assert res.best == limit and res.capped is False  # the row's search_capped: never null
    assert type(res.best) is int and all(type(size) is int for size in calls)  # batch sizes
    assert len(calls) == len(set(calls)), "no size is tried twice"
    k = int(math.log2(limit))  # 2^k <= limit < 2^(k+1)
    # doubling costs k+2 trials (1..2^(k+1)), bisection of (2^k, 2^(k+1)) costs k
    assert len(calls) == (k + 2) + k
    assert [t.size for t in res.trials] == calls


def test_search_cap_and_nothing_fits() -> None:
    calls: list[int] = []
    res = search_max(planted(10_000, calls), start=1, cap=100)
    assert res.best == 100 and res.capped is True and calls == [1, 2, 4, 8, 16, 32, 64, 100]
    assert [t.size for t in res.trials] == calls
    res = search_max(planted(0, []), start=1, cap=100)
    assert res.best is None and len(res.trials) == 1 and not res.trials[0].fits
    assert res.capped is False


# --- the guided search and the planner's largest size, against brute force -------------------

PER_SAMPLE = 100  # bytes a planted case takes per sample


def planted_budget(limit: int, calls: list[int], footprint: bool) -> tuple[object, int]:
    """A case that fits exactly up to ``limit`` samples under the budget it returns (half a
    sample above ``limit``'s footprint). A size that does not fit reports its footprint (a CPU
    trial over budget) or none (``footprint`` False: an out-of-memory error)."""

    def try_size(size: int) -> Trial:
        calls.append(size)
        fits = size <= limit
        peak = PER_SAMPLE * size if fits or footprint else None
        return Trial(size, fits, peak, "ok" if fits else "oom")

    return try_size, PER_SAMPLE * limit + PER_SAMPLE // 2


@pytest.mark.parametrize("footprint", [True, False], ids=["footprints", "oom"])
@pytest.mark.parametrize("error", [0.5, 0.9, 1.0, 1.1, 2.0])
@pytest.mark.parametrize("start", [1, 3])
def test_guided_search_finds_every_planted_limit(start: int, error: float, footprint: bool) -> None:
    """Every limit from below ``start`` to past the cap, with the planner off by ``error``:
    the search reports the largest fitting size (None below start, the cap and ``capped`` at or
    past it), tries each size once, only whole sizes within [start, cap], and stays short: 2
    trials with an exact prediction and footprints, 4 within 10%, 2 log2(cap) + 2 at worst."""
    cap = 100
    for limit in range(start - 1, cap + 3):
        calls: list[int] = []
        try_size, budget = planted_budget(limit, calls, footprint)
        res = search_guided(
            try_size, lambda b: int(PER_SAMPLE * b * error), budget, start=start, cap=cap
        )
        want = min(limit, cap) if limit >= start else None
        where = (limit, calls)
        assert res.best == want and res.capped is (limit >= cap), where
        assert type(res.best) in (int, type(None)), where
        assert [t.size for t in res.trials] == calls and len(set(calls)) == len(calls), where
        assert all(type(b) is int and start <= b <= cap for b in calls), where
        if footprint and error == 1.0:
            assert len(calls) <= 2, where
        elif footprint and abs(error - 1) <= 0.1:
            assert len(calls) <= 4, where
        assert len(calls) <= 2 * math.ceil(math.log2(cap)) + 2, where


def test_guided_search_bisects_the_bracket_after_an_out_of_memory_overshoot() -> None:
    """The planner's linear footprint under-predicts a superlinear one: each correction from a
    fitting trial overshoots into an out-of-memory trial (no footprint), and the search then
    bisects between the largest known fit and the smallest known failure. Every trial lies
    strictly inside that bracket (no size retried, none outside), the answer is exact, and the
    trials stay logarithmic."""
    cap = 1000

    def truth(b: int) -> int:
        return 1000 + 10 * b + b * b

    for limit in range(1, 400, 7):
        calls: list[int] = []

        def try_size(b: int, budget: int = truth(limit), calls: list[int] = calls) -> Trial:
            calls.append(b)
            fits = truth(b) <= budget
            return Trial(b, fits, truth(b) if fits else None, "ok" if fits else "oom")

        res = search_guided(try_size, lambda b: 1000 + 10 * b, truth(limit), start=1, cap=cap)
        assert res.best == limit and res.capped is False, (limit, calls)
        lo, hi = 0, cap + 1
        for t in res.trials:
            assert lo < t.size < hi, (limit, calls)
            lo, hi = (t.size, hi) if t.fits else (lo, t.size)
        assert hi - lo == 1 and len(calls) <= 2 * math.ceil(math.log2(cap)) + 2, (limit, calls)


@pytest.mark.parametrize("scale", [1.0, 1.5, 0.25])
@pytest.mark.parametrize(("start", "cap"), [(1, 64), (1, 100), (5, 100)])
def test_predicted_largest_is_the_largest_size_under_the_limit(
    start: int, cap: int, scale: float
) -> None:
    """Against a scan of every size, at limits on, just under and just over a size's
    prediction: the largest size in [start, cap] whose prediction times ``scale`` is within the
    limit (equal counts), ``start - 1`` when none is."""

    def peak(b: int) -> int:
        return 40 + 8 * b

    for limit in sorted({peak(b) * scale + d for b in range(cap + 3) for d in (-1, 0, 1)}):
        fit = [b for b in range(start, cap + 1) if peak(b) * scale <= limit]
        got = predicted_largest(peak, limit, start=start, cap=cap, scale=scale)
        assert got == (max(fit) if fit else start - 1), limit
        assert type(got) is int


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
    cases = "cases:\n  - {name: fine}\n  - {name: oom, fault: oom}\n"
    suite = write_suite(tmp_path, textwrap.dedent(SUITE) + cases)
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


# --- a budget that falls between two sizes (real trials, CPU high-water mark) --------------

PROBE = """
name: {name}
defaults:
  model: {{vocab_size: 256, d_model: 128, n_heads: 4, max_seq_len: 256, n_layers: 4}}
  data: {{batch_size: 2, seq_len: 256}}
  train: {{device: cpu, threads: 1}}
measure: {{budget: {budget}, headroom: 0.05, timeout_s: 300, warmup: 0, steps: 1}}
cases:
{cases}
metrics: [throughput_at_max_batch]
"""


def _run(tmp_path: Path, name: str, budget: str, cases: str) -> pd.DataFrame:
    text = textwrap.dedent(PROBE).format(name=name, budget=budget, cases=cases)
    suite = write_suite(tmp_path, text, f"{name}.yaml")
    assert main(["run", str(suite), "--out", str(tmp_path / name), "--quiet"]) == 0
    return results.load(tmp_path / name).set_index("case")


@pytest.mark.slow
def test_a_budget_between_two_sizes_reports_the_lower_one(tmp_path: Path) -> None:
    # 1. the footprint at batch 2 and 3, and at sequence length 128 and 192 (batch 2): a
    #    search capped there under a large budget runs one trial, at the cap
    probe = _run(
        tmp_path,
        "probe",
        "8GiB",
        "  - {name: b2, max_size: 2}\n  - {name: b3, max_size: 3}\n"
        "  - {name: s128, search: seq_len, max_size: 128}\n"
        "  - {name: s192, search: seq_len, max_size: 192}",
    )
    peak = {c: probe.loc[c, "search_trial_list"][-1]["peak_bytes"] for c in probe.index}
    assert peak["b3"] > peak["b2"] and peak["s192"] > peak["s128"], peak
    # 2. budgets whose usable part (less the 5% headroom) lies halfway between
    batch_budget = int((peak["b2"] + peak["b3"]) / 2 / 0.95)
    seq_budget = int((peak["s128"] + peak["s192"]) / 2 / 0.95)
    df = _run(
        tmp_path,
        "between",
        "8GiB",
        f"  - {{name: batch, max_size: 16, budget: {batch_budget}B}}\n"
        f"  - {{name: seq, search: seq_len, max_size: 256, budget: {seq_budget}B}}",
    )
    row = df.loc["batch"]
    trials = {t["size"]: t for t in row["search_trial_list"]}
    assert row["max_batch_size"] == 2 and not row["search_capped"], trials
    assert trials[2]["fits"] and not trials[3]["fits"]  # the answer is bracketed by trials
    assert row["budget_bytes"] == batch_budget
    # throughput_at_max_batch then times the case at that batch
    assert row["max_batch_tokens_per_s"] > 0 and row["max_batch_step_time_s_median"] > 0
    assert row["max_batch_samples_per_s"] == pytest.approx(
        row["max_batch_tokens_per_s"] / 256, rel=1e-9
    )
    seq = df.loc["seq"]
    seq_trials = {t["size"]: t for t in seq["search_trial_list"]}
    best = seq["max_seq_len"]
    assert 128 <= best < 192, seq_trials
    assert seq_trials[best]["fits"] and not seq_trials[best + 1]["fits"]
    limit = seq_budget * 0.95
    for t in seq["search_trial_list"]:  # a trial fits exactly when its footprint is in budget
        assert t["fits"] == (t["peak_bytes"] <= limit), t
    assert pd.isna(seq["max_batch_tokens_per_s"])  # a sequence search has no batch to time


def test_repeats_median_row_unstable_flag_and_reconstruction_through_the_runner(
    tmp_path: Path,
) -> None:
    suite = write_suite(
        tmp_path,
        """
        name: rep
        defaults:
          model: {vocab_size: 64, d_model: 32, n_heads: 2, max_seq_len: 16, n_layers: 3,
                  arch: midpoint}
          data: {batch_size: 2, seq_len: 16}
          train: {device: cpu, threads: 1, dtype: float64}
        measure: {warmup: 0, steps: 2, repeats: 3, unstable_spread: 1.0e-9, timeout_s: 120}
        cases:
          - {name: mid}
        metrics: [throughput, reconstruction]
        """,
        "rep.yaml",
    )
    assert main(["run", str(suite), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    df = results.load(tmp_path / "r").set_index("repeat").sort_index()
    assert list(df.index) == [-1, 0, 1, 2]
    reps, med = df.loc[[0, 1, 2]], df.loc[-1]
    times = reps["step_time_s_median"]
    assert med["step_time_s_median"] == times.median()
    assert med["repeats_in_median"] == 3
    spread = (times.max() - times.min()) / times.median()
    assert med["step_time_spread"] == pytest.approx(spread) and spread > 1e-9
    assert med["unstable"]  # any spread exceeds 1e-9
    assert reps["unstable"].isna().all()  # only the median row carries the flag
    # reconstruction: float64 midpoint rebuilds its states and gradients to rounding error
    for _, r in df.iterrows():
        assert r["status"] == "ok" and r["grad_rel_err"] < 1e-10, r["grad_rel_err"]


def test_cuda_budget_caps_an_indexed_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """``train.device: cuda`` resolves to a bare ``cuda`` device, which
    ``set_per_process_memory_fraction`` refuses (every trial of the first H100 run failed with
    'Expected a torch.device with a specified index'): the cap goes to the current device's
    index, or to the index the device names. Checked here with torch's own index check."""
    import torch
    from torch.cuda._utils import _get_device_index

    from revbench.measure.batch import cap_allocator

    calls: list[tuple[float, int]] = []

    class Props:
        total_memory = 80 * 2**30

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: Props)
    monkeypatch.setattr(
        torch.cuda,
        "set_per_process_memory_fraction",
        lambda fraction, device: calls.append((fraction, _get_device_index(device))),
    )
    with pytest.raises(ValueError, match="specified index"):
        _get_device_index(torch.device("cuda"))  # what the old call handed it
    cap_allocator(8 * 2**30, torch.device("cuda"))
    cap_allocator(100 * 2**30, torch.device("cuda", 1))
    assert calls == [(0.1, 0), (1.0, 1)]
