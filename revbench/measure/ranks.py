"""The columns of a parallel case from its ranks' columns (rank 0 combines them)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from revbench.columns import Column


def combine_ranks(
    rows: list[dict[str, Any]], *, lowest: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Rank 0's columns, every number replaced by its maximum over the ranks (what must fit on
    one device, the slowest rank's time), or its minimum for the names in ``lowest`` (rates each
    rank computed from its own time); a flag holds when it holds on every rank."""
    out = dict(rows[0])
    for name, first in rows[0].items():
        values = [r[name] for r in rows if r.get(name) is not None]
        if isinstance(first, bool):
            out[name] = all(values)
        elif isinstance(first, int | float) and values:
            out[name] = min(values) if name in lowest else max(values)
    return out


WORLD_SIZE = Column(
    "world_size",
    pa.int32(),
    "processes",
    "processes that trained the case together (train.nproc_per_node; 1 without parallel)",
)
