"""The suites shipped inside the package (``revbench/suites/*.yaml``) and how commands find them.

``revbench run quickstart``, ``revbench validate quickstart`` and ``revbench plan quickstart``
all go through ``resolve_suite``: an existing file is used as given; otherwise a shipped suite's
name (``quickstart``, ``quickstart.yaml``, or ``suites/quickstart.yaml``, where the suites lived
in a checkout before they moved into the package) is that shipped suite. The suites are package
data, so they are there for an installed wheel as much as for a checkout.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from revbench.errors import SuiteError
from revbench.registry import did_you_mean

SUITES = Path(__file__).resolve().parent / "suites"
"""Where the shipped suites live; each file's stem is its suite's ``name``."""


def shipped_suites() -> dict[str, Path]:
    """Every shipped suite's file by name, in name order."""
    return {p.stem: p for p in sorted(SUITES.glob("*.yaml"))}


def resolve_suite(arg: str | Path) -> Path:
    """The suite file a command-line argument names.

    An existing file is itself. Otherwise a bare name, a ``NAME.yaml`` or a ``suites/NAME.yaml``
    that names a shipped suite is that suite's file; any other bare name is an error (one line
    listing the shipped names); any other path is returned as given, for ``load_suite`` to
    report that it cannot read it.
    """
    path = Path(arg)
    if path.is_file():
        return path
    shipped = shipped_suites()
    name = path.name.removesuffix(".yaml")
    if path.parent in (Path("."), Path("suites")) and name in shipped:
        return shipped[name]
    if path.parent == Path(".") and not path.suffix:
        raise SuiteError(
            f"{arg}: no such suite file, nor a shipped suite{did_you_mean(name, list(shipped))}; "
            f"shipped: {', '.join(shipped)}"
        )
    return path


def summary(path: Path, width: int = 72) -> str:
    """A suite's description cut to one line: parentheses dropped, up to the first colon,
    semicolon or full stop, at most ``width`` characters."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    text = " ".join(str(raw.get("description") or "").split()) if isinstance(raw, dict) else ""
    while True:  # innermost parentheses first, so nested ones go too
        shorter = re.sub(r"\s*\([^()]*\)", "", text)
        if shorter == text:
            break
        text = shorter
    text = re.split(r"[:;]|\.(?:\s|$)", text, maxsplit=1)[0].strip()
    if len(text) > width:
        text = text[: width - 1].rsplit(" ", 1)[0].rstrip(",") + "…"
    return text
