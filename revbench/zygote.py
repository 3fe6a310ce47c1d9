"""Warm case processes: a zygote with torch and revbench imported forks every case process.

Starting ``python -m revbench.child`` costs about 3 s on 2 cores, nearly all of it importing
torch; a case measures for a fraction of that. The zygote is one ``python -m revbench.zygote``
process per runner (and per allocator environment, below) that imports torch and the measuring
code once and then, for each request, ``fork``s a case process that runs exactly what
``python -m revbench.child`` would. Isolation is unchanged: each case still gets a fresh address
space of its own, its own session (a timeout kills its process group), and a log file for its
output; it dies with its parent, which dies with the runner.

What the fork cannot give keeps the fresh-process path (``caserun._run_child``): torchrun cases
(their ranks are torchrun's children), Ray and Slurm workers (they run ``run_job`` elsewhere), and
anything run with ``--fresh-processes`` or ``REVBENCH_FRESH_PROCESSES=1``.

Measurements are the same, by construction of the baseline: a memory metric resets the kernel's
high-water mark and takes its baseline in the case process after a warm-up step
(``measure.step.warm_runtime``), so pages the case shares with the zygote (torch's code and
data, mapped before the fork) are in the baseline and never charged to the model; tests compare
both paths row by row (tests/test_zygote.py). glibc reads ``MALLOC_MMAP_THRESHOLD_`` once, when
malloc starts, so each distinct metric environment gets its own zygote started with it. CUDA is
never initialised in the zygote (importing torch does not; a fork after CUDA initialisation
would be broken). Nor does the zygote ever run a tensor op: one warm-up step in the zygote, to
hand its built kernels to every fork, left the forked case process hanging (the OpenMP thread
team of the parent does not survive a fork). The cold start of each case process (thread pools,
kernels built per shape, heap growth) is the price of its fresh address space. Neither does the
preload list grow lightly: preloading five more small revbench modules moved baseline's warm
peak +1.9% against a fresh process (test_zygote's 1% bound), so ``child.PRELOAD`` is what it is
for the heap history it gives, not for speed.

Protocol (one request at a time, JSON lines): the runner writes ``{"argv", "log", "cwd", "env"}``;
the zygote answers ``{"pid"}`` once the case process exists and ``{"pid", "status"}`` when it
ends (``status`` as ``subprocess.Popen.returncode``: the exit code, or minus the signal).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from revbench.child import preload
from revbench.procs import die_with_parent


def _case_process(req: dict[str, Any]) -> None:
    """In the forked child: become a case process and never return."""
    code = 1
    try:
        os.setsid()
        fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from revbench import child

        code = child.main(req["argv"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve() -> None:
    """The zygote's loop: import, then fork one case process per request on stdin."""
    die_with_parent()
    preload()
    # Everything imported so far lives as long as the zygote: move it out of the collector's
    # sight, so that a case process's collections neither walk it (0.2 s each) nor write to
    # its pages (which would copy them, page by page, into the case process).
    gc.collect()
    gc.freeze()
    out = sys.stdout
    print(json.dumps({"ready": os.getpid()}), file=out, flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _case_process(req)
        print(json.dumps({"pid": pid}), file=out, flush=True)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        print(json.dumps({"pid": pid, "status": code}), file=out, flush=True)


class Zygote:
    """The runner's handle on one zygote process (started on first use)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.ready = False
        self.lock = threading.Lock()

    def start(self) -> None:
        """Start the zygote's process without waiting for its imports (``run`` waits), so that
        several zygotes, and the runner, import at the same time."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "revbench.zygote"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=self.env,
                text=True,
                preexec_fn=die_with_parent,
            )
            self.ready = False

    def _start(self) -> subprocess.Popen[str]:
        self.start()
        assert self.proc is not None
        if not self.ready:
            self._read()  # {"ready": pid}: the imports are done
            self.ready = True
        return self.proc

    def _read(self, timeout_s: float | None = None) -> dict[str, Any] | None:
        assert self.proc is not None and self.proc.stdout is not None
        if timeout_s is not None:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, timeout_s))
            if not ready:
                return None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the warm process server died")
        return json.loads(line)

    def run(self, argv: list[str], log: Path, env: dict[str, str], timeout_s: float) -> int | None:
        """Run a case process; its exit status, or None when it ran past ``timeout_s`` (it is
        killed with its process group before this returns)."""
        with self.lock:
            proc = self._start()
            assert proc.stdin is not None
            req = {"argv": argv, "log": str(log), "cwd": os.getcwd(), "env": env}
            proc.stdin.write(json.dumps(req) + "\n")
            proc.stdin.flush()
            pid = self._read()["pid"]  # type: ignore[index]
            deadline = time.monotonic() + timeout_s
            try:
                done = self._read(deadline - time.monotonic())
            except BaseException:  # Ctrl-C, SIGTERM: take the case process with us
                _kill(pid)
                self.close()
                raise
            if done is not None:
                return int(done["status"])
            _kill(pid)
            self._read()
            return None

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def _kill(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:  # not yet its own group leader, or already gone
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


_ZYGOTES: dict[tuple[tuple[str, str], ...], Zygote] = {}


def zygote_for(env: dict[str, str]) -> Zygote:
    """The zygote for the allocator settings in ``env`` (started on first use)."""
    # Only glibc's settings need a zygote of their own: oneDNN's and ideep's cache capacities
    # (metrics.MMAP_ENV) are read at their first matmul, from the case process's environment.
    key = tuple(sorted((k, v) for k, v in env.items() if k.startswith("MALLOC_")))
    if key not in _ZYGOTES:
        _ZYGOTES[key] = Zygote(env)
    return _ZYGOTES[key]


def close_all() -> None:
    for z in _ZYGOTES.values():
        z.close()
    _ZYGOTES.clear()


if __name__ == "__main__":
    serve()
