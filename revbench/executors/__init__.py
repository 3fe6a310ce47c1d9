"""Where case runs execute: the executors, and what a case run asks of a cluster.

The runner (``runner.py``) plans the (case, repeat) jobs, and writes every row itself; an
executor only decides where each job's ``revbench.caserun.run_job`` call happens and hands the
rows back as they finish, in any order:

* ``local`` (default): one job after another, from this process; no server.
* ``ray``: one Ray task per job, on a local Ray instance or a cluster (``--address``).
* ``slurm``: one Slurm job per job through submitit.

Wherever it runs, ``run_job`` measures its case in fresh child processes exactly as the local
executor does, and records the host it ran on. A job crosses to its worker as plain data
(``Job.to_dict``) and its row comes back as a plain dict; a job whose worker died comes back as
``Lost``, which the runner records as a failed row (``--resume`` runs it again). Ray and
submitit are imported only when their executor is made, so ``import revbench`` never pulls
them in.
"""

from __future__ import annotations

from pathlib import Path

from revbench.errors import ConfigError
from revbench.executors.base import Executor, Job, JobResult, Lost, missing_extra, one_line
from revbench.registry import did_you_mean

__all__ = [
    "EXECUTOR_NAMES",
    "Executor",
    "Job",
    "JobResult",
    "Lost",
    "make_executor",
    "missing_extra",
    "one_line",
]

EXECUTOR_NAMES = ("local", "ray", "slurm")


def make_executor(
    name: str,
    *,
    address: str | None = None,
    retries: int = 0,
    workdir: str | Path = ".",
    partition: str | None = None,
) -> Executor:
    """The executor called ``name``; ``address`` is the Ray cluster and ``retries`` how often
    Ray retries a job whose worker died (``ray``); ``partition`` the Slurm partition and
    ``workdir`` the folder of submitit's files (``slurm``)."""
    if name not in EXECUTOR_NAMES:
        raise ConfigError(
            f"unknown executor '{name}'{did_you_mean(name, EXECUTOR_NAMES)}; "
            f"known: {', '.join(EXECUTOR_NAMES)}"
        )
    if address is not None and name != "ray":
        raise ConfigError(f"--address is the Ray cluster's; it needs --executor ray, not {name}")
    if partition is not None and name != "slurm":
        raise ConfigError(f"--partition is Slurm's; it needs --executor slurm, not {name}")
    if retries and name != "ray":
        raise ConfigError(f"--retries is Ray's; it needs --executor ray, not {name}")
    if name == "local":
        from revbench.executors.local import LocalExecutor

        return LocalExecutor()
    if name == "ray":
        from revbench.executors.ray import RayExecutor

        return RayExecutor(address=address, retries=retries)
    from revbench.executors.slurm import SlurmExecutor

    return SlurmExecutor(Path(workdir), partition=partition)
