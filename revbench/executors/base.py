"""What crosses between the runner and an executor: the job, a lost job, the executor's shape."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from revbench.case import Case
from revbench.errors import RevbenchError
from revbench.resources import Resources


@dataclasses.dataclass(frozen=True)
class Job:
    """One run of one case: what a worker receives."""

    case: Case
    repeat: int
    run_id: str
    suite_file: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "case": self.case.to_dict(),
            "repeat": self.repeat,
            "run_id": self.run_id,
            "suite_file": self.suite_file,
        }

    @property
    def label(self) -> str:
        return f"{self.case.name} r{self.repeat}"


@dataclasses.dataclass(frozen=True)
class Lost:
    """A job whose row never came back: its worker or node died, or it was cancelled."""

    error: str


JobResult = dict[str, Any] | Lost
"""What comes back from a job: its result row, or ``Lost``."""


class Executor(Protocol):
    """Runs jobs somewhere and yields ``(job, row or Lost)`` as each one finishes."""

    name: str

    def map(self, jobs: Sequence[Job], resources: Resources) -> Iterator[tuple[Job, JobResult]]:
        """Leaving the iterator early (an interrupt) cancels the jobs still in flight."""
        ...

    def close(self) -> None: ...


def missing_extra(package: str, executor: str) -> RevbenchError:
    return RevbenchError(
        f"--executor {executor} needs {package}, which is not installed; "
        f"pip install 'revbench[{executor}]'"
    )


def one_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, prefixed with its type."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
