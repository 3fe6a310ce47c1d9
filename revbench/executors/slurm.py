"""Slurm executor through submitit: one Slurm job per case run.

Each job asks for the case's CPUs and GPUs (``Resources.for_case``; on Slurm ``device: auto``
asks for no GPU unless the suite's ``resources:`` says ``GPU``), a time limit a minute above
``measure.timeout_s``, and the suite's custom resources as Slurm constraints
(``{H100: 1}`` -> ``--constraint=H100``). Its pickled call of ``revbench.caserun.run_job`` and
logs live under ``<out>/.submitit/``. ``cluster="local"`` runs the same jobs as local processes
(submitit's LocalExecutor), which is how it is tested without a cluster.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from revbench.errors import RevbenchError
from revbench.executors.base import Job, JobResult, Lost, missing_extra, one_line
from revbench.resources import Resources

_POLL_S = 1.0


class SlurmExecutor:
    name = "slurm"

    def __init__(
        self,
        workdir: Path,
        *,
        partition: str | None = None,
        cluster: str = "slurm",
    ) -> None:
        try:
            import submitit
        except ImportError:
            raise missing_extra("submitit", "slurm") from None
        if cluster == "slurm" and shutil.which("srun") is None:
            raise RevbenchError(
                "--executor slurm: no Slurm here (srun is not on PATH); run revbench on a Slurm "
                "login node, or use --executor ray or local"
            )
        self._submitit = submitit
        self.folder = Path(workdir) / ".submitit" / "%j"
        self.partition = partition
        self.cluster = cluster

    def _executor(self, job: Job, resources: Resources) -> Any:
        cpus, gpus, custom = resources.for_case(job.case, gpus_available=False)
        ex = self._submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
        params: dict[str, Any] = {
            "name": f"revbench-{job.case.suite}",
            "timeout_min": math.ceil(job.case.measure.timeout_s / 60) + 1,
            "cpus_per_task": max(1, math.ceil(cpus)),
            "gpus_per_node": math.ceil(gpus),
            "nodes": 1,
            "tasks_per_node": 1,
        }
        if self.cluster == "slurm":
            if self.partition:
                params["slurm_partition"] = self.partition
            if custom:
                params["slurm_constraint"] = "&".join(sorted(custom))
        ex.update_parameters(**params)
        return ex

    def map(self, jobs: Sequence[Job], resources: Resources) -> Iterator[tuple[Job, JobResult]]:
        from revbench.caserun import run_job

        pending: list[tuple[Any, Job]] = []
        try:
            for job in jobs:
                pending.append((self._executor(job, resources).submit(run_job, job.to_dict()), job))
        except Exception as e:  # sbatch refused one (a bad partition, a limit): take all back
            for sjob, _ in pending:
                sjob.cancel(check=False)
            raise RevbenchError(f"slurm: submitting failed: {one_line(e)}") from None
        try:
            while pending:
                still = []
                for sjob, job in pending:
                    if not sjob.done():
                        still.append((sjob, job))
                        continue
                    try:
                        outcome: JobResult = sjob.result()
                    except Exception as e:  # submitit's FailedJobError, UncompletedJobError, ...
                        outcome = Lost(f"slurm job {sjob.job_id}: {one_line(e)}")
                    yield job, outcome
                pending = still
                if pending:
                    time.sleep(_POLL_S)
        finally:
            for sjob, _ in pending:
                sjob.cancel(check=False)

    def close(self) -> None:
        pass
