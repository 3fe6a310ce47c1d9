"""The README's promises: .ci/run runs exactly its test command; its suite example is real."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_ci_runs_the_readme_test_command() -> None:
    ci = [
        ln
        for ln in (ROOT / ".ci" / "run").read_text().splitlines()
        if ln.strip() and not ln.startswith(("#", "set ", "cd ", "export "))
    ]
    command = ci[-1]
    assert "pytest" in command
    assert command in (ROOT / "README.md").read_text()


def test_results_folder_is_kept_empty_in_git() -> None:
    ignore = (ROOT / ".gitignore").read_text().splitlines()
    assert "/results/*" in ignore and "!/results/README.md" in ignore


def test_readme_suite_example_is_the_shipped_quickstart() -> None:
    import yaml

    readme = (ROOT / "README.md").read_text()
    start = readme.index("```yaml\nname: quickstart") + len("```yaml\n")
    example = yaml.safe_load(readme[start : readme.index("```", start)])
    shipped = yaml.safe_load((ROOT / "revbench" / "suites" / "quickstart.yaml").read_text())
    example.pop("description"), shipped.pop("description")
    assert example == shipped, "README's suite example drifted from revbench/suites/quickstart.yaml"


def test_cited_notes_are_in_the_project() -> None:
    """Code and docs cite docs/measurement.md, never notes that live outside the repository."""
    assert (ROOT / "docs" / "measurement.md").is_file()
    outside = "MEASUREMENT" + "-NOTES"  # the development notes' name, not spelled out here
    cited = 0
    for pattern in ("README.md", "revbench/**/*.py", "tests/*.py", "benchmarks/**/*.py"):
        for path in ROOT.glob(pattern):
            text = path.read_text(encoding="utf-8")
            assert outside not in text, f"{path} cites notes outside the project"
            cited += "docs/measurement.md" in text
    assert cited >= 4
