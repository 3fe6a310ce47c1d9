"""Entry point of a case process: ``python -m revbench.child CASE.json METRIC OUT.json``.

Measures one metric of one case and writes ``{"status", "error", "columns"}`` as JSON. Plain
data in, plain data out; the traceback of a failure goes to stderr, which the runner keeps.
Out-of-memory is recognised by exception type (``torch.OutOfMemoryError``, ``MemoryError``), and
by one message: torch's CPU allocator reports a refused host allocation as a RuntimeError.

A parallel case runs this on every torchrun rank. Every rank measures; when all succeed, rank 0
gathers their columns and writes the case's (the metric's ``combine``). A rank that fails
writes its own failure row, unless a row is already there, and exits non-zero at once: torchrun
then stops the other ranks, which may be waiting on it inside a collective (a failure that
desynchronises the ranks' collectives could not be gathered). The first failure is the row's,
so an out-of-memory on one rank is not masked by the broken connection its peers see next.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from revbench.errors import failure_line

# What every case process imports before anything else, and what the warm zygote
# (revbench/zygote.py) imports before it forks one: the same modules, in the same order, so that
# a forked case process and a fresh one start from the same heap history (measured: importing
# torch._dynamo, which the optimizers import lazily on construction, anywhere else shifts a
# warm process's peak against a fresh one's by up to -1.1%; imported first in both, they agree
# within +-0.7%). torch._dynamo costs 1.3-1.5 s on 2 cores; importing it starts no thread and
# does not touch CUDA.
PRELOAD = (
    "torch",
    "torch._dynamo",
    "psutil",
    "yaml",
    "revbench.suite",
    "revbench.measure.metrics",
    "revbench.measure.step",
    # the builders, which the registry names lazily (models/catalog.py)
    "revbench.models.residual",
    "revbench.models.moe",
    "revbench.models.reversible",
    "revbench.models.revffn",
)


def preload() -> None:
    """Import ``PRELOAD`` (no-ops where it is imported already, as in a forked case process)."""
    for name in PRELOAD:
        importlib.import_module(name)


def _inject(fault: str) -> None:
    import torch

    if fault == "crash":
        os.abort()
    if fault == "hang":
        while True:
            time.sleep(3600)
    if fault == "error":
        raise RuntimeError("injected fault (measure.fault: error)")
    if fault == "oom":
        raise torch.OutOfMemoryError("injected fault (measure.fault: oom)")
    if fault == "killed":
        os.kill(os.getpid(), signal.SIGKILL)


def run(case_file: Path, metric: str) -> dict[str, Any]:
    """Measure ``metric`` in this process (one rank of a parallel case: its own columns)."""
    preload()
    import torch

    from revbench.case import Case
    from revbench.measure import parallel
    from revbench.measure.device import device_info, resolve_device
    from revbench.measure.metrics import METRICS

    case = Case.from_dict(json.loads(case_file.read_text()))
    try:
        _cap_memory(case, resolve_device(case.train.device).type)
        _inject(case.measure.fault)
        if case.train.parallel != "none":
            parallel.init(case)
        columns = METRICS.get(metric).measure(case)
        columns.update(device_info(resolve_device(case.train.device)))
        return {"status": "ok", "error": None, "columns": columns}
    except (torch.OutOfMemoryError, MemoryError) as e:
        traceback.print_exc()
        return {"status": "oom", "error": _failure(e), "columns": {}}
    except Exception as e:
        traceback.print_exc()
        status = "oom" if _host_alloc_failed(e) else "error"
        return {"status": status, "error": _failure(e), "columns": {}}


# torch's CPU allocator reports a refused allocation (the OS out of memory, an RLIMIT) as a
# plain RuntimeError, so this one failure is recognised by its text.
_HOST_OOM = ("DefaultCPUAllocator: can't allocate memory", "(Cannot allocate memory)")


def _host_alloc_failed(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(m in text for m in _HOST_OOM)


def _cap_memory(case: Any, device: str) -> None:
    """Apply ``measure.memory_cap`` (else the runner's ``--memory-cap``, in the environment) to
    a CPU case process: its data segment may grow by at most that many bytes from here
    (RLIMIT_DATA, which counts the private anonymous memory tensors live in), so a runaway case
    fails with an ``oom`` row instead of taking the machine down."""
    from revbench.units import parse_bytes

    cap = case.measure.memory_cap or os.environ.get("REVBENCH_MEMORY_CAP")
    if not cap or device != "cpu":
        return
    import resource

    _load_code(case)

    used = 0
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmData:"):
                used = int(line.split()[1]) * 1024
    limit = used + parse_bytes(cap)
    hard = resource.getrlimit(resource.RLIMIT_DATA)[1]
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))


def _load_code(case: Any) -> None:
    """One training step of a miniature of the case (one layer, 2 dims per head, batch 1 x 4
    tokens), so that the modules torch imports lazily on a first step (sympy among them) are
    loaded before the memory cap applies: under the cap, an import that fails half way can
    surface as a SystemError rather than a MemoryError. Best effort; a miniature that cannot be
    built is skipped."""
    import gc

    from revbench.measure.step import build_train_step

    heads = case.model.n_heads
    small = {"n_layers": 1, "d_model": 2 * heads, "d_ff": 0, "d_ff_shared": 0}
    if case.model.a_layers is not None:
        small["a_layers"] = case.model.a_layers[:1]
    try:
        miniature = case.with_settings(**small, batch_size=1, seq_len=min(4, case.data.seq_len))
        step = build_train_step(miniature)
        step()
        del step
    except Exception:  # warming only
        pass
    gc.collect()


def _failure(exc: BaseException) -> str:
    """The error's last line, naming the rank in a parallel case."""
    rank = os.environ.get("RANK")
    return failure_line(exc) if rank is None else f"rank {rank}: {failure_line(exc)}"


def _write(result: dict[str, Any], out: Path, *, replace: bool = True) -> None:
    """Write ``out`` atomically; with ``replace`` False only when there is none yet (the first
    failing rank's row stands)."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, default=str))
    try:
        if replace:
            os.replace(tmp, out)
        else:
            os.link(tmp, out)  # atomic create-if-absent
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def run_rank(case_file: Path, metric: str, out: Path) -> int:
    """One rank of a parallel case (module docstring); returns the exit code."""
    from revbench.measure import parallel
    from revbench.measure.metrics import METRICS

    result = run(case_file, metric)
    rows = None
    if result["status"] == "ok":
        try:
            rows = parallel.gather(result["columns"])
        except Exception as e:  # a peer died between its measurement and the gather
            traceback.print_exc()
            result = {"status": "error", "error": _failure(e), "columns": {}}
    if result["status"] != "ok":
        _write(result, out, replace=False)
        return 1
    if rows is not None:  # rank 0
        combine = METRICS.get(metric).combine
        columns = combine(rows) if combine else rows[0]
        _write({"status": "ok", "error": None, "columns": columns}, out)
    parallel.shutdown()
    return 0


def main(argv: list[str]) -> int:
    from revbench.procs import die_with_parent

    die_with_parent()
    case_file, metric, out = Path(argv[0]), argv[1], Path(argv[2])
    if json.loads(case_file.read_text())["train"]["parallel"] != "none":  # under torchrun
        return run_rank(case_file, metric, out)
    _write(run(case_file, metric), out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
