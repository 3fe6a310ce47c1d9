"""A case: one fully resolved configuration, what a case process receives."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from revbench.settings import HASHED_IF_SET, SECTIONS, UNHASHED


@dataclasses.dataclass(frozen=True)
class Case:
    """One fully resolved configuration: plain data, what a case process receives."""

    suite: str
    name: str
    index: int
    model: dict[str, Any]
    data: dict[str, Any]
    train: dict[str, Any]
    measure: dict[str, Any]
    metrics: tuple[str, ...]

    @property
    def config_hash(self) -> str:
        """Hash of everything that changes what is measured (not timeout or repeat count)."""
        body = {
            s: {
                k: v
                for k, v in getattr(self, s).items()
                if k not in UNHASHED and not (k in HASHED_IF_SET and v == HASHED_IF_SET[k])
            }
            for s in SECTIONS
        }
        body["metrics"] = sorted(self.metrics)
        blob = json.dumps(body, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def settings(self) -> dict[str, Any]:
        """Flat ``section.field -> value`` mapping (the config columns of a result row)."""
        return {f"{s}.{k}": v for s in SECTIONS for k, v in getattr(self, s).items()}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Case:
        return cls(**{**d, "metrics": tuple(d["metrics"])})
