"""conftest.require: a missing test dependency skips locally and fails in CI."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from _pytest.outcomes import Failed, Skipped
from conftest import require, require_module, require_program


def outcome(call: Callable[[], object]) -> tuple[str, str]:
    """(Skipped | Failed | returned, message): caught here, so this test cannot skip itself."""
    try:
        call()
    except (Failed, Skipped) as e:
        return type(e).__name__, str(e)
    return "returned", ""


def test_missing_module_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    module = lambda: require("json", "no_such_module_xyz")  # noqa: E731
    program = lambda: require_program("no_such_program_xyz", hint="install it")  # noqa: E731
    monkeypatch.delenv("CI", raising=False)
    assert outcome(module) == ("Skipped", "needs no_such_module_xyz: " + _hint())
    assert outcome(program)[0] == "Skipped"
    monkeypatch.setenv("CI", "true")
    assert outcome(module) == ("Failed", "CI: needs no_such_module_xyz: " + _hint())
    assert outcome(program) == ("Failed", "CI: needs no_such_program_xyz on PATH: install it")
    assert outcome(lambda: require("json")) == ("returned", "")  # present: nothing happens
    assert require_module("json").dumps([1]) == "[1]"


def _hint() -> str:
    from conftest import INSTALL

    return INSTALL
