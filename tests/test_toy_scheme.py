"""Registering a scheme is enough to have it tested: a scheme defined outside the package
(``toy_scheme.py``) gets the contract tests' gradient, reconstruction, memory-structure and
FLOP checks without any test file naming it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def contract(*plugin: str) -> tuple[int, str]:
    """How many contract tests of ``toy_reflect`` pass in a fresh pytest, and its output."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            *plugin,
            str(HERE / "test_contract.py"),
            "-k",
            "toy_reflect",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=HERE.parent,
        timeout=600,
    )
    text = out.stdout + out.stderr
    m = re.search(r"(\d+) passed", text)
    assert "failed" not in text and "error" not in text.lower(), text
    return (int(m.group(1)) if m else 0), text


@pytest.mark.slow
def test_a_registered_scheme_is_covered_by_the_contract_tests() -> None:
    passed, text = contract("-p", "toy_scheme")
    # gradients (float64 and bf16 autocast), reconstruction, saved bytes over depth, FLOPs
    assert passed == 5, text
    none, text = contract()
    assert none == 0 and "deselected" in text, text
