"""A case: one fully resolved configuration, what a case process receives.

A ``Case`` holds each section as its validated, typed object (``ModelConfig``,
``DataSettings``, ``TrainSettings``, ``MeasureSettings``) from the suite to the measurement
(``case.train.dtype``). Plain dicts appear only where a case crosses a process boundary
(``to_dict`` / ``from_dict``: the JSON a case process reads, a Ray or Slurm job) and in the
result row (``settings``). ``with_settings`` makes a variant (a max-batch
trial's batch size), validated like the original.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from revbench.models.config import ModelConfig
from revbench.settings import (
    FIELDS,
    HASHED_IF_SET,
    SECTIONS,
    UNHASHED,
    DataSettings,
    MeasureSettings,
    TrainSettings,
)


def plain(section: Any) -> dict[str, Any]:
    """A section object as plain data (what the config hash, the row and the JSON hold)."""
    if dataclasses.is_dataclass(section):
        return dataclasses.asdict(section)  # type: ignore[arg-type]
    return section.model_dump()


@dataclasses.dataclass(frozen=True)
class Case:
    """One fully resolved configuration: its typed sections and its metrics."""

    suite: str
    name: str
    index: int
    model: ModelConfig
    data: DataSettings
    train: TrainSettings
    measure: MeasureSettings
    metrics: tuple[str, ...]

    def sections(self) -> dict[str, dict[str, Any]]:
        """``{"model": {...}, "data": {...}, ...}``: every section as plain data."""
        return {s: plain(getattr(self, s)) for s in SECTIONS}

    @property
    def config_hash(self) -> str:
        """Hash of everything that changes what is measured (not timeout or repeat count)."""
        return config_hash(self.sections(), self.metrics)

    def settings(self) -> dict[str, Any]:
        """Flat ``section.field -> value`` mapping (the config columns of a result row)."""
        return {f"{s}.{k}": v for s, values in self.sections().items() for k, v in values.items()}

    def with_settings(self, **values: Any) -> Case:
        """This case with some settings changed, named bare as in a suite (``batch_size=64``),
        each section revalidated."""
        sections = self.sections()
        for key, value in values.items():
            sections[FIELDS[key][0]][key] = value
        return dataclasses.replace(self, **_typed(sections))

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "name": self.name,
            "index": self.index,
            **self.sections(),
            "metrics": list(self.metrics),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Case:
        return cls(
            suite=d["suite"],
            name=d["name"],
            index=d["index"],
            metrics=tuple(d["metrics"]),
            **_typed({s: d[s] for s in SECTIONS}),
        )


def config_hash(sections: dict[str, dict[str, Any]], metrics: tuple[str, ...]) -> str:
    """The hash of a case's plain sections and metrics: settings in ``UNHASHED`` and those in
    ``HASHED_IF_SET`` at their default left out (so rows written before a setting existed keep
    matching their cases on ``--resume``)."""
    body: dict[str, Any] = {
        s: {
            k: v
            for k, v in values.items()
            if k not in UNHASHED and not (k in HASHED_IF_SET and v == HASHED_IF_SET[k])
        }
        for s, values in sections.items()
    }
    body["metrics"] = sorted(metrics)
    blob = json.dumps(body, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _typed(sections: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {s: SECTIONS[s](**values) for s, values in sections.items()}
