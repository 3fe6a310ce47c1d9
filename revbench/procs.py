"""Process hygiene shared by everything that starts a process: nothing outlives its parent."""

from __future__ import annotations

import ctypes
import signal


def die_with_parent() -> None:
    """Ask Linux to SIGKILL the calling process when its parent dies (PR_SET_PDEATHSIG).

    Called by a case process for itself, and as ``preexec_fn`` in a forked child before it execs
    (torchrun, Streamlit), so a runner or dashboard killed with SIGKILL leaves no orphan
    measuring or serving in the background. A no-op where prctl is missing (not Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
