"""Run a suite: every case in fresh child processes, one atomic parquet row per case run.

Isolation: each metric of each case run is measured by ``python -m revbench.child`` in its own
process (its own session, so a timeout kills it and anything it started). A crash, an
out-of-memory or a hang in one case becomes a row with ``status`` != ok and the suite goes on.
``resume`` skips every (config hash, repeat) that already has an ``ok`` row in the output folder.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock
import pyarrow.parquet as pq
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from revbench import results
from revbench.errors import OutputError, ResultsError
from revbench.executors import Executor, Job, Lost
from revbench.executors.local import LocalExecutor
from revbench.measure.device import HOST_COLUMNS, host_info
from revbench.measure.metrics import METRICS
from revbench.models.config import scheme_readout
from revbench.procs import die_with_parent
from revbench.resources import Resources
from revbench.suite import Case, Suite, load_suite, select
from revbench.zygote import close_all, zygote_for

_SEVERITY = {"ok": 0, "error": 1, "oom": 2, "timeout": 3}


@dataclasses.dataclass
class RunReport:
    suite: Suite
    out_dir: Path
    rows: list[dict[str, Any]]
    skipped: int

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] != "ok"]


def suite_dir(out: str | Path, suite: Suite) -> Path:
    return Path(out) / suite.name


def plan(
    suite: Suite, out: str | Path, *, resume: bool = False, only: str | None = None
) -> tuple[list[tuple[Case, int]], int]:
    """The (case, repeat) pairs to run, and how many are skipped because they are done."""
    done: set[tuple[str, int]] = set()
    folder = suite_dir(out, suite)
    if resume and folder.exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", results.ResultsWarning)  # damaged files: re-run
            old = results.load(folder)
        ok = old[old["status"] == "ok"]
        done = set(zip(ok["config_hash"], ok["repeat"].astype(int), strict=True))
    todo, skipped = [], 0
    for case in select(suite.cases, only):
        for rep in range(case.measure["repeats"]):
            if (case.config_hash, rep) in done:
                skipped += 1
            else:
                todo.append((case, rep))
    return todo, skipped


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", name)[:80]


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
    if case.train["parallel"] == "none":
        return [sys.executable, *child]
    # --standalone: a rendezvous on a free local port, so cases can share a node.
    nproc = f"--nproc-per-node={case.train['nproc_per_node']}"
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
    if _warm_enabled() and case.train["parallel"] == "none":
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
    died = _torchrun_root_cause(log) if case.train["parallel"] != "none" else None
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
        "seed": case.train["seed"],
        **host,
        **case.settings(),
        "metrics": ",".join(case.metrics),
        "readout": scheme_readout(case.model["arch"], case.model.get("readout", "auto")),
        **columns,
        "status": status,
        "error": error,
    }


def run_case(case: Case, repeat: int, *, run_id: str, host: dict[str, Any]) -> dict[str, Any]:
    """Measure every metric of ``case`` in fresh processes; returns the result row."""
    start = time.monotonic()
    deadline = start + case.measure["timeout_s"]
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


def _write_median(folder: Path, case: Case) -> None:
    """(Re)write the median row of ``case`` from every repeat row in the folder (a resumed run
    included; the latest row of each repeat); one file per case, replaced atomically."""
    latest: dict[int, dict[str, Any]] = {}
    for f in sorted(folder.glob(f"*__{case.config_hash}__r*.parquet")):
        try:
            row = pq.read_table(f).to_pylist()[0]
        except Exception:  # a damaged file counts as a missing repeat
            continue
        if (
            row["repeat"] not in latest
            or row["timestamp_utc"] > latest[row["repeat"]]["timestamp_utc"]
        ):
            latest[row["repeat"]] = row
    median = results.median_row(list(latest.values()))
    if median is not None:
        median["timestamp_utc"] = dt.datetime.now(dt.timezone.utc)
        name = f"{_slug(case.name)}__{case.config_hash}__median.parquet"
        _save(median, folder / name)


def run_suite(
    path: str | Path,
    out: str | Path = "results",
    *,
    resume: bool = False,
    only: str | None = None,
    quiet: bool = False,
    console: Console | None = None,
    executor: Executor | None = None,
    resources: Resources | None = None,
    wait: bool = False,
    max_case_runs: int | None = None,
    warm: bool = True,
) -> RunReport:
    """Validate, expand and run a suite; every case run is appended to ``out/<suite>/``.

    ``executor`` decides where the case runs happen (default: here, one after another); rows
    are written atomically by this process as they arrive, in whatever order they finish, so
    an interrupted run loses only the case runs in flight. ``resources`` (the command line's)
    go over the suite's ``resources:`` block. The results folder is locked for the run: a
    second run on it is refused, or waits with ``wait``. With ``warm`` (the default) and the
    local executor, case processes are forked from a warm zygote (``revbench/zygote.py``);
    ``warm=False`` or ``REVBENCH_FRESH_PROCESSES=1`` starts each from scratch.
    """
    suite = load_suite(path, max_case_runs=max_case_runs)
    results.check_out_dir(out, create=True)
    folder = suite_dir(out, suite)
    if folder.exists() and not folder.is_dir():
        raise ResultsError(f"{folder}: is a file; the results of suite '{suite.name}' go there")
    with _folder_lock(folder, wait=wait):
        _WARM["on"] = warm and (executor is None or executor.name == "local")
        try:
            return _run_locked(
                suite,
                path,
                out,
                folder,
                resume,
                only,
                quiet,
                console,
                executor,
                asks=(suite.resources.merged(resources) if resources else suite.resources),
            )
        finally:
            _WARM["on"] = False
            close_all()


@contextlib.contextmanager
def _folder_lock(folder: Path, *, wait: bool) -> Iterator[None]:
    """Hold ``folder``'s lock file for the whole run: a second ``revbench run`` on the same
    results is refused (or, with ``wait``, waits), so no case is run twice at once."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(folder / ".revbench.lock", timeout=-1 if wait else 0)
        lock.acquire()
    except filelock.Timeout:
        raise ResultsError(
            f"{folder}: another revbench run is writing these results; wait for it, give "
            "another --out, or pass --wait to queue behind it"
        ) from None
    except OSError as e:
        raise OutputError(f"{folder}: cannot lock the results folder ({e.strerror})") from None
    try:
        yield
    finally:
        lock.release()


def _save(row: dict[str, Any], path: Path) -> dict[str, Any]:
    """Write ``row`` (made storable: ``results.writable_row``); a failing disk stops the suite
    with one line, every row written before intact."""
    row = results.writable_row(row)
    try:
        results.write_row(row, path)
    except OSError as e:
        raise OutputError(
            f"cannot write {path} ({e.strerror}); rows written before are kept: fix it and run "
            "again with --resume"
        ) from None
    return row


def _run_locked(
    suite: Suite,
    path: str | Path,
    out: str | Path,
    folder: Path,
    resume: bool,
    only: str | None,
    quiet: bool,
    console: Console | None,
    executor: Executor | None,
    *,
    asks: Resources,
) -> RunReport:
    todo, skipped = plan(suite, out, resume=resume, only=only)
    run_id = f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
    jobs = [Job(case, rep, run_id, str(path)) for case, rep in todo]
    executor = executor or LocalExecutor()
    if _warm_enabled():  # every zygote the run needs imports at once, beside this process
        forked = {m for c, _ in todo if c.train["parallel"] == "none" for m in c.metrics}
        for metric in sorted(forked):
            zygote_for(_child_env(metric)).start()
    # Repeats of a case still to come in this run; at zero its median row is (re)written.
    remaining = collections.Counter(case.config_hash for case, _ in todo)
    console = console or Console(stderr=True)
    rows = []
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, disable=quiet) as progress:
        where = "" if executor.name == "local" else f" on {executor.name}"
        # Case runs skipped by --resume count as done, so the bar and its estimate of the time
        # left cover the whole suite.
        done = f", {skipped} already done" if skipped else ""
        task = progress.add_task(
            f"{escape(suite.name)}{where}{done}", total=len(todo) + skipped, completed=skipped
        )
        for job, outcome in executor.map(jobs, asks):
            case = job.case
            row = lost_row(job, outcome) if isinstance(outcome, Lost) else outcome
            name = f"{_slug(case.name)}__{case.config_hash}__r{job.repeat}__{run_id}.parquet"
            row = _save(row, folder / name)
            rows.append(row)
            remaining[case.config_hash] -= 1
            if case.measure["repeats"] > 1 and remaining[case.config_hash] == 0:
                _write_median(folder, case)
            if not quiet:
                mark = "[green]ok[/]" if row["status"] == "ok" else f"[red]{row['status']}[/]"
                wall = row["wall_time_s"]
                took = f" ({wall:.1f}s)" if wall is not None else ""
                progress.console.print(f"{mark} {escape(job.label)}{took}")
            progress.advance(task)
    order = {(j.case.config_hash, j.repeat): i for i, j in enumerate(jobs)}
    rows.sort(key=lambda r: order[(r["config_hash"], r["repeat"])])
    return RunReport(suite, folder, rows, skipped)


def _mib(x: Any) -> str:
    return "" if x is None or x != x else f"{x / 2**20:,.1f}"


def _eval(row: dict[str, Any]) -> str:
    """The accuracy metric's headline: accuracy or perplexity with its 95% interval; the
    lm_eval metric's value with lm-eval's stderr."""
    v = row.get("lm_eval_value")
    if v is not None and v == v:
        se = row.get("lm_eval_stderr")
        return f"{row.get('lm_eval_task')} {v:.3f}" + (f" ± {se:.3f}" if se == se and se else "")
    for name, fmt in (("accuracy", "{:.1%}"), ("perplexity", "{:.2f}")):
        v = row.get(name)
        if v is not None and v == v:
            lo, hi = row.get(f"{name}_ci_low"), row.get(f"{name}_ci_high")
            has_ci = lo is not None and hi is not None
            ci = f" [{fmt.format(lo)}, {fmt.format(hi)}]" if has_ci else ""
            return f"{name[:3]} {fmt.format(v)}{ci}"
    return ""


def summary_table(report: RunReport) -> Table:
    table = Table(
        title=escape(
            f"{report.suite.name}: {len(report.rows)} run, {report.skipped} skipped "
            f"(done), results in {report.out_dir}"
        )
    )
    cols = ("case", "rep", "status", "train MiB", "act MiB", "step s", "tokens/s", "eval", "error")
    for col in cols:
        table.add_column(col, overflow="fold")
    for r in report.rows:
        step = r.get("step_time_s_median")
        tps = r.get("tokens_per_s")
        cells = (
            r["case"],
            str(r["repeat"]),
            r["status"],
            _mib(r.get("peak_mem_delta_bytes")),
            _mib(r.get("activation_bytes")),
            f"{step:.4f}" if step else "",
            f"{tps:,.0f}" if tps else "",
            _eval(r),
            (r["error"] or "")[:120],
        )
        table.add_row(*map(escape, cells))
    return table
