"""The one check every writer of results runs on its ``--out`` folder before it starts."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from revbench.errors import ResultsError


def check_out_dir(path: str | Path, *, create: bool) -> Path:
    """``path`` as a results folder: an existing writable folder, or one that can be made (made,
    and a file written and removed in it, when ``create``); raises ``ResultsError`` with one
    line naming the fix otherwise."""
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.is_symlink():
            raise ResultsError(f"--out {path}: {probe} is a broken link; give another folder")
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ResultsError(f"--out {path}: {probe} is a file, not a folder; give a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "folder" if probe == path else "parent folder"
        raise ResultsError(f"--out {path}: {what} {probe} is not writable; give another folder")
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as e:
            raise ResultsError(f"--out {path}: cannot write there ({e.strerror})") from None
    return path
