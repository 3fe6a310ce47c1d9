"""Memory sizes as people write them: ``24GiB``, ``80GB``, ``512MiB``."""

from __future__ import annotations

import re

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
BYTES_PATTERN = r"^\s*\d+(\.\d+)?\s*([KMGT]i?B|B)?\s*$"


def parse_bytes(text: str) -> int:
    """``"24GiB"`` -> 25769803776; decimal (GB) and binary (GiB) units, case-insensitive."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = m.group(2).upper() if m else "?"
    if not m or unit not in _UNITS:
        raise ValueError(f"not a memory size: {text!r} (use e.g. 512MiB, 24GiB, 80GB)")
    return int(float(m.group(1)) * _UNITS[unit])
