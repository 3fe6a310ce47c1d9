"""A results column: name, arrow type, unit, description, and which way is better.

The leaf every part of revbench that declares or reads columns imports: the metrics declare
theirs here, the results store builds its schema from them, and ``compare`` and the views read
``better`` to know whether a rise is a gain or a loss.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import pyarrow as pa

Better = Literal["higher", "lower"]


@dataclasses.dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    unit: str
    description: str
    better: Better | None = None
    """Which direction is an improvement (``compare`` flags a move the other way as a
    regression); None for a column that is neither (a setting, a count, provenance)."""
    quality: bool = False
    """A downstream-quality figure (accuracy, perplexity): the quality view and ``compare``
    show it beside memory and speed."""


STATUSES = ("ok", "oom", "error", "timeout")
