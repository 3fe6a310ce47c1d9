"""Entry point of a case process: ``python -m revbench.child CASE.json METRIC OUT.json``.

Measures one metric of one case and writes ``{"status", "error", "columns"}`` as JSON. Plain
data in, plain data out; the traceback of a failure goes to stderr, which the runner keeps.
Out-of-memory is recognised by exception type, never by message text.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the runner dies, so a killed runner leaves no
    orphan measuring in the background."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


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


def _last_line(exc: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def run(case_file: Path, metric: str) -> dict[str, Any]:
    import torch

    from revbench.measure.device import device_info
    from revbench.measure.metrics import METRICS
    from revbench.measure.step import resolve_device
    from revbench.suite import Case

    case = Case.from_dict(json.loads(case_file.read_text()))
    try:
        _inject(case.measure["fault"])
        columns = METRICS.get(metric).measure(case)
        columns.update(device_info(resolve_device(case.train["device"])))
        return {"status": "ok", "error": None, "columns": columns}
    except torch.OutOfMemoryError as e:
        traceback.print_exc()
        return {"status": "oom", "error": _last_line(e), "columns": {}}
    except Exception as e:
        traceback.print_exc()
        return {"status": "error", "error": _last_line(e), "columns": {}}


def main(argv: list[str]) -> int:
    _die_with_parent()
    case_file, metric, out = Path(argv[0]), argv[1], Path(argv[2])
    result = run(case_file, metric)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, default=str))
    os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
