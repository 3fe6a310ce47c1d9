"""Shared test helpers."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "fixtures" / "golden"


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
