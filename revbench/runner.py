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
import re
import secrets
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
from revbench.case import Case
from revbench.caserun import lost_row, warm_processes
from revbench.errors import OutputError, ResultsError
from revbench.executors import Executor, Job, Lost
from revbench.executors.local import LocalExecutor
from revbench.outdir import check_out_dir
from revbench.resources import Resources
from revbench.suite import Suite, load_suite, select


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
        for rep in range(case.measure.repeats):
            if (case.config_hash, rep) in done:
                skipped += 1
            else:
                todo.append((case, rep))
    return todo, skipped


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", name)[:80]


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
    check_out_dir(out, create=True)
    folder = suite_dir(out, suite)
    if folder.exists() and not folder.is_dir():
        raise ResultsError(f"{folder}: is a file; the results of suite '{suite.name}' go there")
    with _folder_lock(folder, wait=wait):
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
            warm=warm and (executor is None or executor.name == "local"),
        )


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
    warm: bool,
) -> RunReport:
    todo, skipped = plan(suite, out, resume=resume, only=only)
    run_id = f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
    jobs = [Job(case, rep, run_id, str(path)) for case, rep in todo]
    executor = executor or LocalExecutor()
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
    with (
        warm_processes(warm, (case for case, _ in todo)),
        Progress(*columns, console=console, disable=quiet) as progress,
    ):
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
            if case.measure.repeats > 1 and remaining[case.config_hash] == 0:
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
