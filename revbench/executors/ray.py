"""Ray executor: one Ray task per job, so a Ray cluster spreads a suite over its nodes.

Each task asks for the job's resources (``Resources.for_case``: CPUs, GPUs, custom resources
such as a GPU type), runs ``revbench.caserun.run_job`` on whichever worker Ray picks, and returns
the row as plain data; the driver writes it. Without an address a local Ray instance is started
(dashboard off) and shut down at the end; with one, the driver joins that cluster, whose nodes
must have revbench installed. A task whose worker dies is retried ``retries`` times, then comes
back ``Lost``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

from revbench.errors import RevbenchError
from revbench.executors.base import Job, JobResult, Lost, missing_extra, one_line
from revbench.resources import CPU, GPU, Resources


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None = None, retries: int = 0) -> None:
        try:
            import ray
        except ImportError:
            raise missing_extra("Ray", "ray") from None
        self._ray = ray
        self.retries = retries
        self._owns_instance = not ray.is_initialized()
        if self._owns_instance:
            try:
                ray.init(
                    address=address,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                )
            except (ConnectionError, ValueError, RuntimeError) as e:
                where = f"Ray cluster at {address}" if address else "a local Ray instance"
                raise RevbenchError(f"cannot start or reach {where}: {one_line(e)}") from None

    def _check_feasible(self, asks: dict[str, float], job: Job) -> None:
        """Ray waits forever for a task no node can hold; say so up front instead."""
        nodes = [n["Resources"] for n in self._ray.nodes() if n.get("Alive")]
        if any(all(node.get(k, 0.0) >= v for k, v in asks.items()) for node in nodes):
            return
        have = "; ".join(
            ", ".join(f"{k}={v:g}" for k, v in sorted(n.items()) if not k.startswith("node:"))
            for n in nodes
        )
        raise RevbenchError(
            f"case '{job.case.name}' asks for {asks} but no node of the Ray cluster has that "
            f"(nodes: {have}); change the suite's resources: (or --resources), or start nodes "
            f"with ray start --resources"
        )

    def map(self, jobs: Sequence[Job], resources: Resources) -> Iterator[tuple[Job, JobResult]]:
        from revbench.caserun import run_job

        ray = self._ray
        gpus_available = ray.cluster_resources().get(GPU, 0) > 0
        task = ray.remote(run_job)
        asks = [resources.for_case(j.case, gpus_available=gpus_available) for j in jobs]
        for job, (cpus, gpus, custom) in zip(jobs, asks, strict=True):  # all, before any runs
            need = {CPU: cpus, GPU: gpus, **custom}
            self._check_feasible({k: v for k, v in need.items() if v}, job)
        pending: dict[Any, Job] = {}
        for job, (cpus, gpus, custom) in zip(jobs, asks, strict=True):
            ref = task.options(
                num_cpus=cpus,
                num_gpus=gpus,
                resources=custom or None,
                max_retries=self.retries,
                retry_exceptions=False,
                name=f"revbench {job.label}",
            ).remote(job.to_dict())
            pending[ref] = job
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    job = pending.pop(ref)
                    try:
                        outcome: JobResult = ray.get(ref)
                    except ray.exceptions.RayError as e:
                        outcome = Lost(f"ray: {one_line(e)}")
                    yield job, outcome
        finally:
            for ref in pending:  # interrupted: stop what is still queued or running
                ray.cancel(ref, force=True)

    def close(self) -> None:
        if self._owns_instance and self._ray.is_initialized():
            self._ray.shutdown()
