"""The default executor: every job in turn, from this process (each case still measured in
fresh child processes by ``run_job``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from revbench.executors.base import Job, JobResult
from revbench.resources import Resources


class LocalExecutor:
    name = "local"

    def map(self, jobs: Sequence[Job], resources: Resources) -> Iterator[tuple[Job, JobResult]]:
        from revbench.caserun import run_job

        for job in jobs:
            yield job, run_job(job.to_dict())

    def close(self) -> None:
        pass
