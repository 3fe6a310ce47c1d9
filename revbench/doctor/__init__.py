"""``revbench doctor``: check, on this machine's device, that revbench measures what it says.

Every figure revbench reports rests on a few mechanisms that can silently break on a new
machine, driver or torch: the memory high-water mark (VmHWM on CPU, the caching allocator's
peak on CUDA), the budget emulation of the max-batch search, the step timer's synchronisation,
the reversible backward's exactness, NVML naming the GPU torch uses. The doctor exercises each
one against a known answer, on the device asked for, and runs a mini suite through the normal
runner, so a user (or the GPU validation kit, benchmarks/gpu/) learns in minutes whether the
numbers can be trusted there.

Groups of checks (``--only`` picks some; ``checks.py``):

* ``env``: versions, the device, and on CUDA whether NVML names the device torch uses (looked up
  by PCI bus id, so ``CUDA_DEVICE_ORDER`` cannot swap them);
* ``memory``: tensors of known sizes allocated inside a measured step, the measured peak equal
  to their sum within the allocator's rounding (CPU: VmHWM in a child process started with
  ``MALLOC_MMAP_THRESHOLD_=65536``, as the ``peak_memory`` metric does; ``probe.py``); on CUDA
  the scratch buffer a bias gradient's column sum borrows equals the memory planner's port of
  PyTorch's reduction launch configuration, to the byte, on this card; the max-batch budget
  emulation refuses a trial just above a budget and accepts it just below;
* ``timing``: a large matmul in the device's training dtype timed with the project's timer
  (``measure/timer.py``), its FLOP rate against the GPU table's peak (``measure/flops.py``;
  outside 30-105% fails), the timer against a host clock around synchronised work (a missing
  synchronisation shows as a timer far faster than the clock), and CUDA events against both;
* ``exactness``: float64 gradients of every reversible architecture (RevFFN in its exact mode,
  ``revffn_query: x2``) equal ordinary autograd on the same weights (relative error < 1e-10);
  float32 / bf16 reconstruction drift is printed;
* ``suite``: every architecture at two depths (one with ``--quick`` on CPU) through
  ``runner.run_suite``: every row must be ``ok``, and with two depths the reversible models'
  saved activations must stay flat while the baseline's grow.

Each check becomes a results row (suite ``doctor``, its figures in the schema's own columns,
``status`` ok or error, the failure in ``error``) under ``OUT/doctor/``, written as soon as the
check ends; the mini suite's rows go to ``OUT/doctor_mini/``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
import secrets
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from revbench.doctor.base import GROUPS, STATUSES, Check, Context, Sizes, resolve_device
from revbench.errors import RevbenchError, failure_line

__all__ = ["GROUPS", "Check", "DoctorReport", "checks_table", "parse_only", "run_doctor"]


@dataclasses.dataclass
class DoctorReport:
    device: str
    device_name: str
    out_dir: Path
    run_id: str
    checks: list[Check]
    written: list[Path]
    """Row files, one per check that was not skipped."""

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]


def parse_only(text: str | None) -> tuple[str, ...]:
    """``--only memory,timing`` -> the groups, in run order; one-line error on a bad name."""
    if not text:
        return GROUPS
    picked = [g.strip() for g in text.split(",") if g.strip()]
    bad = [g for g in picked if g not in GROUPS]
    if bad or not picked:
        raise RevbenchError(
            f"--only: unknown check group {', '.join(bad) or repr(text)}; "
            f"choose from {', '.join(GROUPS)}"
        )
    return tuple(g for g in GROUPS if g in picked)


def run_doctor(
    device: str = "auto",
    out: str | Path = "results",
    *,
    quick: bool = False,
    only: Sequence[str] = GROUPS,
    console: Console | None = None,
) -> DoctorReport:
    """Run the check groups ``only`` on ``device``; write one results row per check under
    ``out/doctor/`` (the mini suite's under ``out/doctor_mini/``) and return every outcome.

    A check that raises is a failed check (its error's last line), never a traceback on the
    way out: the doctor is meant to tell what is broken on a machine, so it must get to the end.
    """
    from revbench.doctor.checks import CHECKS
    from revbench.measure.device import device_info, host_info

    dev = resolve_device(device)
    console = console or Console(stderr=True)
    sizes = Sizes.for_device(dev.type, quick)
    run_id = f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
    host = {**host_info(), "suite_file": None}
    checks: list[Check] = []
    written: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="revbench-doctor-") as tmp:
        ctx = Context(Path(out), Path(tmp), run_id, host, device_info(dev), console)
        for group in only:
            t0 = time.perf_counter()
            try:
                for check in CHECKS[group](dev, sizes, ctx):
                    _finish(check, len(checks), ctx, checks, written)
                    t0 = time.perf_counter()
            except Exception as e:  # a broken check is a failed check; the rest still run
                traceback.print_exc(file=sys.stderr)
                seconds = time.perf_counter() - t0
                check = Check(group, "did not complete", "fail", detail=failure_line(e))
                check.seconds = seconds
                _finish(check, len(checks), ctx, checks, written)
    name = ctx.device_columns["device_name"]
    return DoctorReport(str(dev), name, Path(out), run_id, checks, written)


def _finish(
    check: Check, index: int, ctx: Context, checks: list[Check], written: list[Path]
) -> None:
    """Print the check's line and write its row now, so a run stopped later keeps it."""
    _report(ctx.console, check)
    checks.append(check)
    if check.status != "skip":
        written.append(_write(check, index, ctx))


_STYLE = {"pass": "green", "fail": "bold red", "info": "cyan", "skip": "dim"}


def _report(console: Console, check: Check) -> None:
    """One progress line per finished check (a stopped run still shows how far it got)."""
    tag = f"[{_STYLE[check.status]}]{check.status.upper():4}[/]"
    text = f"{check.label}: {check.measured or check.detail} ({check.seconds:.1f}s)"
    console.print(f"{tag} {text}", highlight=False, soft_wrap=True)


def _failure(check: Check) -> str:
    parts = (check.measured, f"expected {check.expected}" if check.expected else "", check.detail)
    return "; ".join(p for p in parts if p) or "failed"


def _write(check: Check, index: int, ctx: Context) -> Path:
    """The check as a results row (suite ``doctor``), written atomically by results.write_row."""
    from revbench import results

    key = json.dumps([check.group, check.name, check.config], sort_keys=True, default=str)
    config_hash = hashlib.sha256(key.encode()).hexdigest()[:16]
    row = {
        "schema_version": results.SCHEMA_VERSION,
        "suite": "doctor",
        "case": check.label,
        "case_index": index,
        "config_hash": config_hash,
        "repeat": 0,
        "run_id": ctx.run_id,
        "timestamp_utc": dt.datetime.now(dt.timezone.utc),
        "wall_time_s": check.seconds,
        "seed": 0,
        **ctx.host,
        **ctx.device_columns,
        **check.config,
        "metrics": "doctor",
        **check.columns,
        "status": "error" if check.status == "fail" else "ok",
        "error": _failure(check) if check.status == "fail" else None,
    }
    slug = re.sub(r"[^A-Za-z0-9_.=+-]+", "_", check.label)[:80]
    name = f"{slug}__{config_hash}__r0__{ctx.run_id}.parquet"
    return results.write_row(row, ctx.out_dir / "doctor" / name)


def checks_table(report: DoctorReport) -> Table:
    """The pass/fail table ``revbench doctor`` prints."""
    counts = {s: sum(c.status == s for c in report.checks) for s in STATUSES}
    table = Table(
        title=f"revbench doctor on {report.device_name} ({report.device}): "
        f"{counts['pass']} pass, {counts['fail']} fail, {counts['info']} info, "
        f"{counts['skip']} skipped; rows in {report.out_dir / 'doctor'}"
    )
    for col in ("check", "result", "measured", "expected", "detail"):
        table.add_column(col, overflow="fold")
    for c in report.checks:
        style = _STYLE[c.status]
        table.add_row(c.label, f"[{style}]{c.status.upper()}[/]", c.measured, c.expected, c.detail)
    return table
