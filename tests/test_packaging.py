"""revbench as an installed package: the suites it ships, run by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from revbench.cli import main
from revbench.errors import SuiteError
from revbench.shipped import SUITES, resolve_suite, shipped_suites, summary

ROOT = Path(__file__).resolve().parent.parent


# --- shipped suites by name (in process, fast) ---------------------------------------------


def test_shipped_suites_are_package_files_named_after_their_suites() -> None:
    suites = shipped_suites()
    assert "quickstart" in suites and SUITES == ROOT / "revbench" / "suites"
    assert not (ROOT / "suites").exists(), "suites live in revbench/suites/ (package data)"
    for name, path in suites.items():
        line = summary(path)
        assert 0 < len(line) <= 72 and "\n" not in line, (name, line)


def test_resolve_suite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    quickstart = SUITES / "quickstart.yaml"
    monkeypatch.chdir(tmp_path)
    for arg in ("quickstart", "quickstart.yaml", "suites/quickstart.yaml", "./suites/quickstart"):
        assert resolve_suite(arg) == quickstart, arg
    own = tmp_path / "suites" / "quickstart.yaml"  # an existing file always wins
    own.parent.mkdir()
    own.write_text("name: mine\n")
    assert resolve_suite("suites/quickstart.yaml") == Path("suites/quickstart.yaml")
    assert resolve_suite(own) == own
    assert resolve_suite("other/nope.yaml") == Path("other/nope.yaml")  # load_suite reports it
    with pytest.raises(SuiteError) as info:
        resolve_suite("quickstrt")
    msg = str(info.value)
    assert "did you mean 'quickstart'" in msg and "max_batch_cpu" in msg and "\n" not in msg


def test_commands_take_shipped_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "quickstart", "moe"]) == 0
    out = _words(capsys.readouterr().out)
    assert "suite 'quickstart' with 12 cases" in out and "suite 'moe'" in out
    assert main(["plan", "quickstart", "--memory", "1GiB"]) == 0
    assert "quickstart: predicted peak memory" in _words(capsys.readouterr().out)
    assert main(["run", "quickstrt", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "shipped: " in err


def test_list_keeps_its_sections_and_adds_the_suites(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    heads = [ln for ln in out.splitlines() if not ln.startswith(" ")]
    assert heads == ["architectures", "metrics", "tasks", "suites (revbench run NAME)"]
    assert main(["list", "suites"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines[1:]] == list(shipped_suites())
    assert "Tiny GPT-2-style models on random tokens" in "\n".join(lines)


def _words(text: str) -> str:
    """Console output with its line wrapping undone."""
    return " ".join(text.split())
