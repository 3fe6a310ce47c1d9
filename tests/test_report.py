"""revbench report on the fixture results: golden tables, figures, errors."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import require_program

from revbench import results
from revbench.analysis.report import build_report, sections, write_figures
from revbench.cli import main
from revbench.data import REPORTED_LABEL, paper_figures

FIXTURES = Path(__file__).parent / "fixtures"
BASE = FIXTURES / "results" / "base"


def chromium_or_skip() -> None:
    """Figure export needs a Chromium; in CI (which installs one) its absence fails."""
    if not os.environ.get("BROWSER_PATH"):
        require_program("chromium", "chrome", hint="apt-get install chromium (figure export)")


def test_tables_match_golden(tmp_path: Path, check_golden: Callable[[str, str], None]) -> None:
    written = build_report(results.load(BASE), tmp_path, with_figures=False)
    assert [p.name for p in written] == ["report.md", "tables.tex", "report.html"]
    for name in ("report.md", "tables.tex", "report.html"):
        check_golden(name, (tmp_path / name).read_text(encoding="utf-8"))


def test_every_view_has_a_captioned_section() -> None:
    secs = {s.key: s for s in sections(results.load(BASE))}
    expected = {"tradeoff", "max_batch", "max_batch_trials", "paper_max_batch", "depth"}
    assert expected | {"paper_depth", "drift", "failures"} <= set(secs)
    for key in ("tradeoff", "max_batch", "depth", "drift"):
        cap = secs[key].caption
        assert cap.startswith("Suite: fx_") and "devices: " in cap and "revbench 0.1.0" in cap
    # paper figures are labelled as reported, with their source, never mixed into measured rows
    assert REPORTED_LABEL in secs["paper_max_batch"].title
    assert "arXiv 2512.02056" in secs["paper_max_batch"].caption
    assert "midpoint" in set(secs["tradeoff"].table["arch"])
    assert "reported" not in " ".join(secs["tradeoff"].table["case"])


def test_paper_reference_data_has_sources() -> None:
    ref = paper_figures()
    assert ref["source"].str.contains("arXiv").all()
    t3 = ref[(ref["reference"] == "Table 3") & (ref["arch"] == "midpoint")]
    assert dict(zip(t3["gpu"], t3["value"], strict=True))["H100 80 GB"] == 257


@pytest.mark.slow
def test_figures_png_and_svg_deterministic(tmp_path: Path) -> None:
    chromium_or_skip()
    secs = [s for s in sections(results.load(BASE)) if s.key in ("tradeoff", "drift")]
    figs = {s.key: s.figure for s in secs}
    paths = write_figures(figs, tmp_path / "a")
    assert sorted(p.name for p in paths) == [
        "drift.png",
        "drift.svg",
        "tradeoff.png",
        "tradeoff.svg",
    ]
    assert (tmp_path / "a" / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Pareto front" in (tmp_path / "a" / "tradeoff.svg").read_text()
    write_figures(figs, tmp_path / "b")
    for p in paths:
        if p.suffix == ".svg":
            assert p.read_bytes() == (tmp_path / "b" / p.name).read_bytes(), p.name


def test_cli_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert (
        main(["report", str(BASE), "--out", str(tmp_path), "--format", "md", "--no-figures"]) == 0
    )
    assert capsys.readouterr().out.strip() == str(tmp_path / "report.md")


def test_cli_report_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = str(tmp_path / "out")
    assert main(["report", str(BASE), "--out", out, "--format", "pdf", "--no-figures"]) == 2
    assert main(["report", str(tmp_path), "--out", out, "--no-figures"]) == 2  # no rows
    err = capsys.readouterr().err
    assert "unknown ['pdf']" in err and "no revbench results" in err
