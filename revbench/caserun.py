"""One case run, wherever an executor placed it: every metric measured in its own case process.

``run_job`` is what every executor calls (locally, on a Ray worker, in a Slurm job): it measures
one (case, repeat) and returns its result row as a plain dict. Each metric of the case is
measured by ``python -m revbench.child`` in a process of its own (its own session, so a timeout
kills it and anything it started), forked from a warm zygote (``revbench/zygote.py``) when the
runner enables it, else started fresh; torchrun starts a parallel case's ranks. A crash, an
out-of-memory or a hang becomes a row whose ``status`` is not ok.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from revbench import results
from revbench.case import Case
from revbench.executors.base import Job, Lost
from revbench.measure.device import HOST_COLUMNS, host_info
from revbench.measure.metrics import METRICS
from revbench.models.config import scheme_readout
from revbench.procs import die_with_parent
from revbench.zygote import close_all, zygote_for

_SEVERITY = {"ok": 0, "error": 1, "oom": 2, "timeout": 3}


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def _last_line(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def child_command(case: Case, metric: str, case_file: Path, out: Path) -> list[str]:
    """The command measuring ``metric`` of ``case``: one process, or torchrun for a parallel
    case (its ranks each run the same child module; rank 0 writes ``out``)."""
    child = ["-m", "revbench.child", str(case_file), metric, str(out)]
    if case.train.parallel == "none":
        return [sys.executable, *child]
    # --standalone: a rendezvous on a free local port, so cases can share a node.
    nproc = f"--nproc-per-node={case.train.nproc_per_node}"
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", nproc, *child]


def _child_env(metric: str) -> dict[str, str]:
    """The environment of a case process measuring ``metric``."""
    # PCI bus order makes torch's device indices those of nvidia-smi and NVML.
    return {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        **os.environ,
        **METRICS.get(metric).env,
        "PYTHONUNBUFFERED": "1",
    }


def _run_child(
    case: Case, metric: str, workdir: Path, timeout_s: float
) -> tuple[str, str | None, dict[str, Any]]:
    """Measure ``metric`` of ``case`` in one fresh process; returns (status, error, columns)."""
    tag = f"{metric}-{len(list(workdir.glob('*.case.json')))}"
    case_file, out, log = (workdir / f"{tag}.{ext}" for ext in ("case.json", "json", "log"))
    case_file.write_text(json.dumps(case.to_dict()))
    env = _child_env(metric)
    cmd = child_command(case, metric, case_file, out)
    if timeout_s <= 0:
        return "timeout", f"{metric}: not started, case timeout reached", {}
    if _warm_enabled() and case.train.parallel == "none":
        code = zygote_for(env).run(cmd[3:], log, env, timeout_s)  # argv after `-m revbench.child`
        if code is None:
            return "timeout", f"{metric}: timed out (measure.timeout_s)", {}
    else:
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                cmd,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
            try:
                code = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return "timeout", f"{metric}: timed out (measure.timeout_s)", {}
            except BaseException:  # Ctrl-C or the runner being stopped: take the child with us
                os.killpg(proc.pid, signal.SIGKILL)
                raise
    if out.exists():
        res = json.loads(out.read_text())
        err = f"{metric}: {res['error']}" if res["error"] else None
        return res["status"], err, res["columns"]
    # No result: the process died (segfault, abort, the kernel's OOM killer sends SIGKILL).
    died = _torchrun_root_cause(log) if case.train.parallel != "none" else None
    if died is not None:  # torchrun exits 1 whatever killed the rank it names first
        rank, rank_code = died
        status = "oom" if rank_code == -signal.SIGKILL else "error"
        return status, f"{metric}: rank {rank} {_exit_reason(rank_code)}", {}
    status = "oom" if code == -signal.SIGKILL else "error"
    tail = _last_line(log)
    return status, f"{metric}: process {_exit_reason(code)}" + (f": {tail}" if tail else ""), {}


# Case processes are forked from a warm zygote (revbench/zygote.py) when the runner says so
# (run_suite with the local executor); Ray and Slurm workers, and --fresh-processes, start fresh.
_WARM = {"on": False}


def _warm_enabled() -> bool:
    return _WARM["on"] and os.environ.get("REVBENCH_FRESH_PROCESSES", "") in ("", "0")


@contextlib.contextmanager
def warm_processes(on: bool, cases: Iterable[Case] = ()) -> Iterator[None]:
    """Within the block (with ``on``, unless ``REVBENCH_FRESH_PROCESSES=1``), case processes
    run here are forked from warm zygotes; the zygotes that ``cases`` need start at once, side
    by side, and all of them stop when the block ends."""
    _WARM["on"] = on
    try:
        if _warm_enabled():
            forked = {m for c in cases if c.train.parallel == "none" for m in c.metrics}
            for metric in sorted(forked):
                zygote_for(_child_env(metric)).start()
        yield
    finally:
        _WARM["on"] = False
        close_all()


def _torchrun_root_cause(log: Path) -> tuple[int, int] | None:
    """(rank, exit code) of the first rank torchrun saw fail, from its failure summary."""
    text = log.read_text(errors="replace")
    if "Root Cause" not in text:
        return None
    cause = text.rpartition("Root Cause")[2]
    m = re.search(r"rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", cause, re.DOTALL)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _row(
    case: Case,
    repeat: int,
    *,
    run_id: str,
    host: dict[str, Any],
    status: str,
    error: str | None,
    columns: dict[str, Any],
    wall_time_s: float | None,
) -> dict[str, Any]:
    return {
        "schema_version": results.SCHEMA_VERSION,
        "suite": case.suite,
        "case": case.name,
        "case_index": case.index,
        "config_hash": case.config_hash,
        "repeat": repeat,
        "run_id": run_id,
        "timestamp_utc": dt.datetime.now(dt.timezone.utc),
        "wall_time_s": wall_time_s,
        "seed": case.train.seed,
        **host,
        **case.settings(),
        "metrics": ",".join(case.metrics),
        "readout": scheme_readout(case.model.arch, case.model.readout),
        **columns,
        "status": status,
        "error": error,
    }


def run_case(case: Case, repeat: int, *, run_id: str, host: dict[str, Any]) -> dict[str, Any]:
    """Measure every metric of ``case`` in fresh processes; returns the result row."""
    start = time.monotonic()
    deadline = start + case.measure.timeout_s
    status, error = "ok", None
    columns: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="revbench-case-") as tmp:
        workdir = Path(tmp)
        for metric in case.metrics:

            def one(variant: Case, child_metric: str = metric) -> tuple[str, str | None, dict]:
                return _run_child(variant, child_metric, workdir, deadline - time.monotonic())

            search = METRICS.get(metric).search
            st, err, cols = search(case, one) if search else one(case)
            columns.update(cols)
            if _SEVERITY[st] > _SEVERITY[status]:
                status, error = st, err
    wall = time.monotonic() - start
    return _row(
        case,
        repeat,
        run_id=run_id,
        host=host,
        status=status,
        error=error,
        columns=columns,
        wall_time_s=wall,
    )


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job (``executors.Job.to_dict()``) wherever an executor placed it: the case is
    measured in fresh child processes on this host, whose description goes into the row."""
    case = Case.from_dict(job["case"])
    host = {**host_info(), "suite_file": job["suite_file"]}
    return run_case(case, job["repeat"], run_id=job["run_id"], host=host)


def lost_row(job: Job, lost: Lost) -> dict[str, Any]:
    """The row of a job whose worker died before returning one: status error, the executor's
    reason, host columns empty (the host that ran it is not known for sure)."""
    host = {**dict.fromkeys(HOST_COLUMNS), "suite_file": job.suite_file}
    return _row(
        job.case,
        job.repeat,
        run_id=job.run_id,
        host=host,
        status="error",
        error=lost.error,
        columns={},
        wall_time_s=None,
    )
