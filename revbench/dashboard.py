"""``revbench dashboard``: start the Streamlit app (revbench/dashboard_app.py) on a results folder.

Headless and bound to localhost unless told otherwise: the dashboard shows host names and paths,
so exposing it on a network is an explicit choice (``--host 0.0.0.0``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from revbench.errors import RevbenchError
from revbench.procs import die_with_parent

# Headless Chromium as root on a closed network (the browser test, the screenshots script):
# without the background-networking flags it keeps trying to reach Google's hosts.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
APP = Path(__file__).resolve().parent / "dashboard_app.py"
"""The Streamlit script: a module of the package, so an installed revbench serves it too."""


def command(results: str | Path, *, host: str = "127.0.0.1", port: int = 8501) -> list[str]:
    """The ``streamlit run`` command line that serves ``results``."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.headless=true",
        f"--server.address={host}",
        f"--server.port={port}",
        "--browser.gatherUsageStats=false",
        "--server.fileWatcherType=none",
        "--client.toolbarMode=viewer",
        "--",
        str(results),
    ]


def check(results: str | Path) -> Path:
    """Fail with one line when the app or its dependencies are missing."""
    if not APP.exists():
        raise RevbenchError(f"{APP}: dashboard app not found (reinstall revbench)")
    try:
        import plotly  # noqa: F401
        import streamlit  # noqa: F401
    except ImportError as e:
        raise RevbenchError(
            f"the dashboard needs {e.name}: pip install 'revbench[dashboard]'"
        ) from None
    from revbench.analysis.report import default_results

    path = default_results(results)  # nothing of one's own: the shipped reference rows
    if not path.exists():
        raise RevbenchError(f"{path}: no such results folder")
    return path.resolve()


def serve(results: str | Path = "results", *, host: str = "127.0.0.1", port: int = 8501) -> int:
    """Run the dashboard in the foreground until interrupted; returns streamlit's exit code.

    Ctrl-C reaches streamlit with this process (same process group); SIGTERM (``kill``, a
    supervisor) is passed on to it, so stopping ``revbench dashboard`` never leaves a
    streamlit server behind.
    """
    path = check(results)
    env = {**os.environ, "REVBENCH_RESULTS": str(path)}
    print(f"revbench dashboard: http://{host}:{port} serving {path} (Ctrl-C stops)", flush=True)
    # Streamlit dies with us: SIGKILL through PR_SET_PDEATHSIG, SIGTERM passed on.
    proc = subprocess.Popen(
        command(path, host=host, port=port), env=env, preexec_fn=die_with_parent
    )
    main = threading.current_thread() is threading.main_thread()  # signals: main thread only
    previous = signal.signal(signal.SIGTERM, lambda *_: proc.terminate()) if main else None
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return 130
    finally:
        if proc.poll() is None:
            stop(proc)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def free_port() -> int:
    """A TCP port on localhost that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(results: str | Path, *, port: int, log: Path | None = None) -> subprocess.Popen:
    """Start the dashboard in the background (tests, screenshots); stop it with ``stop``."""
    path = check(results)
    env = {**os.environ, "REVBENCH_RESULTS": str(path)}
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 closed with the process
    return subprocess.Popen(
        command(path, port=port),
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )


def wait_ready(port: int, proc: subprocess.Popen, timeout_s: float = 60.0) -> str:
    """Poll Streamlit's health endpoint until it answers; returns the app's URL."""
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RevbenchError(f"dashboard exited with code {proc.returncode} before serving")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return url
        except OSError:
            time.sleep(0.3)
    raise RevbenchError(f"dashboard did not answer on {url} within {timeout_s:.0f}s")


def stop(proc: subprocess.Popen) -> None:
    """Terminate the dashboard process and wait for it (killed after 10 s)."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
