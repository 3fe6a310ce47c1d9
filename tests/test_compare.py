"""revbench compare on the fixture results (tests/fixtures/make_fixtures.py measured them)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from revbench import results
from revbench.analysis.compare import compare, compare_paths, parse_threshold
from revbench.cli import main
from revbench.errors import RevbenchError

FIXTURES = Path(__file__).parent / "fixtures"
BASE, NEW = FIXTURES / "results" / "base", FIXTURES / "results" / "new"


def test_markdown_matches_golden(check_golden: Callable[[str, str], None]) -> None:
    # relative names so the golden file does not depend on where the checkout lives
    cwd = os.getcwd()
    os.chdir(FIXTURES)
    try:
        text = compare_paths("results/base", "results/new").markdown()
    finally:
        os.chdir(cwd)
    check_golden("compare.md", text)


@pytest.mark.parametrize(
    ("new", "threshold", "code", "regressed"),
    [
        (BASE, "5%", 0, False),  # identical sets never regress
        (NEW, "0%", 1, True),  # a re-measurement is worse somewhere by more than nothing
        # No metric past 1000%, but 14 cases of BASE are missing from NEW: still a failure.
        (NEW, "1000%", 1, False),
    ],
    ids=["same", "any-worsening", "loose-but-cases-missing"],
)
def test_exit_codes(
    new: Path, threshold: str, code: int, regressed: bool, capsys: pytest.CaptureFixture
) -> None:
    assert main(["compare", str(BASE), str(new), "--max-regression", threshold]) == code
    captured = capsys.readouterr()
    out = captured.out
    assert out.startswith("### revbench compare")
    assert ("**regression**" in out) == regressed
    assert ("cases of BASE missing from NEW" in out) == (new == NEW)
    if new == NEW:
        assert "14 case(s) of BASE missing from NEW" in captured.err


def test_disjoint_sets_fail_instead_of_passing() -> None:
    from revbench import results
    from revbench.analysis.compare import compare

    base = results.load(BASE)
    other = base.assign(config_hash=base["config_hash"] + "x")
    result = compare(base, other)
    assert result.matched == 0 and result.failed
    assert "No case in common" in result.markdown()
    assert not compare(base, base).failed


def test_names_are_escaped_for_pr_comments() -> None:
    from revbench import results
    from revbench.analysis.compare import compare

    base = results.load(BASE)
    first = base["config_hash"] == base["config_hash"].iloc[0]
    base = base.assign(case=base["case"].where(~first, "<script>x</script>|y"))
    text = compare(base, base, 0.0).markdown()
    assert "<script>" not in text and "&lt;script&gt;x&lt;/script&gt;\\|y" in text


def test_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["compare", str(BASE), str(tmp_path / "missing")]) == 2
    assert main(["compare", str(BASE), str(NEW), "--max-regression", "lots"]) == 2
    assert main(["compare", str(BASE), str(tmp_path)]) == 2  # empty folder
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(e.startswith("revbench: error: ") for e in err)


def test_directions_of_regression() -> None:
    """Memory up, throughput down and a newly failing case regress; improvements do not."""
    base = results.load(BASE)
    base = base[base["suite"] == "fx_memory"]
    worse = base.copy()
    worse["tokens_per_s"] *= 0.9
    worse["peak_mem_bytes"] = (worse["peak_mem_bytes"] * 1.1).round().astype("Int64")
    reg = compare(base, worse, 0.05).regressions
    assert set(reg["metric"]) == {"throughput (tokens/s)", "peak memory (MiB)"}
    better = base.copy()
    better["tokens_per_s"] *= 1.5
    better["peak_mem_bytes"] = (better["peak_mem_bytes"] * 0.5).round().astype("Int64")
    assert compare(base, better, 0.05).regressions.empty
    broken = base.copy()
    first = broken["config_hash"] == broken.loc[broken["status"] == "ok", "config_hash"].iloc[0]
    broken.loc[first, "status"] = "error"
    reg = compare(base, broken, 0.05).regressions
    assert list(reg["metric"]) == ["status"] and list(reg["new"]) == ["error"]


def test_cases_match_by_config_hash_not_name() -> None:
    base = results.load(BASE)
    renamed = base.assign(case="renamed " + base["case"])
    cmp = compare(base, renamed, 0.05)
    assert cmp.matched == base["config_hash"].nunique()
    assert not cmp.only_base and not cmp.only_new


@pytest.mark.parametrize(("text", "value"), [("5%", 0.05), ("5", 0.05), (" 2.5 % ", 0.025)])
def test_parse_threshold(text: str, value: float) -> None:
    assert parse_threshold(text) == pytest.approx(value)


def test_parse_threshold_rejects_garbage() -> None:
    with pytest.raises(RevbenchError, match="percentage"):
        parse_threshold("-5%")


def _batch_rows(**values: float) -> object:
    """The fixture's fx_batch rows (ok, max batch and its throughput measured), with the
    quality metrics set to ``values`` on every row."""
    base = results.load(BASE)
    base = base[(base["suite"] == "fx_batch") & (base["status"] == "ok")].copy()
    assert len(base) and base["max_batch_size"].notna().all()
    for col, v in values.items():
        base[col] = v
    return base


def _regressed(base: object, new: object, threshold: float = 0.05) -> set[str]:
    return set(compare(base, new, threshold).regressions["metric"])  # type: ignore[arg-type]


def test_max_batch_accuracy_and_perplexity_regress_in_their_directions() -> None:
    base = _batch_rows(accuracy=0.80, perplexity=20.0)
    smaller = base.assign(max_batch_size=(base["max_batch_size"] * 0.5).round().astype("Int64"))
    assert _regressed(base, smaller) == {"max batch size"}
    slower = base.assign(max_batch_tokens_per_s=base["max_batch_tokens_per_s"] * 0.8)
    assert _regressed(base, slower) == {"tokens/s at max batch"}
    assert _regressed(base, base.assign(accuracy=0.70)) == {"accuracy"}
    assert _regressed(base, base.assign(perplexity=25.0)) == {"perplexity"}
    # the other way round is an improvement for each of them
    better = base.assign(
        max_batch_size=base["max_batch_size"] * 2,
        max_batch_tokens_per_s=base["max_batch_tokens_per_s"] * 1.5,
        accuracy=0.9,
        perplexity=10.0,
    )
    assert _regressed(base, better) == set()


@pytest.mark.parametrize(
    ("column", "higher_is_better", "label"),
    [
        ("max_batch_size", True, "max batch size"),
        ("accuracy", True, "accuracy"),
        ("perplexity", False, "perplexity"),
        ("peak_mem_bytes", False, "peak memory (MiB)"),
        ("tokens_per_s", True, "throughput (tokens/s)"),
    ],
)
def test_values_just_either_side_of_the_threshold(
    column: str, higher_is_better: bool, label: str
) -> None:
    # base 1000: with a 10% threshold, 10.1% worse regresses, 9.9% worse and exactly 10% do not
    base = _batch_rows(accuracy=0.5, perplexity=20.0).assign(
        **{column: 1000.0, "peak_mem_bytes": 1000.0, "tokens_per_s": 1000.0}
    )
    sign = -1 if higher_is_better else 1
    for worse_by, regresses in ((99.0, False), (100.0, False), (101.0, True)):
        new = base.assign(**{column: 1000.0 + sign * worse_by})
        assert (label in _regressed(base, new, 0.10)) == regresses, (column, worse_by)
    # a large improvement never regresses
    assert label not in _regressed(base, base.assign(**{column: 1000.0 - sign * 200.0}), 0.1)
