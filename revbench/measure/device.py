"""Host and device description for the provenance columns of a result row."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

import revbench


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """Commit of the revbench source tree (``+dirty`` when it has local changes), if in git."""
    root = Path(revbench.__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "revbench"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def host_info() -> dict[str, Any]:
    """Columns that describe the machine and software; cheap (torch is not imported)."""
    return {
        "revbench_version": revbench.__version__,
        "git_commit": git_commit(),
        "python_version": platform.python_version(),
        "torch_version": _version("torch"),
        "transformers_version": _version("transformers"),
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "ram_bytes": psutil.virtual_memory().total,
    }


def device_info(device: Any) -> dict[str, Any]:
    """Columns describing the torch device a case ran on (GPU columns null on CPU)."""
    import torch

    if device.type != "cuda":
        return {
            "device_type": "cpu",
            "device_name": cpu_model(),
            "device_memory_bytes": psutil.virtual_memory().total,
            "driver_version": None,
            "cuda_version": None,
        }
    props = torch.cuda.get_device_properties(device)
    return {
        "device_type": "cuda",
        "device_name": props.name,
        "device_memory_bytes": int(props.total_memory),
        "driver_version": _nvml_driver(),
        "cuda_version": torch.version.cuda,
    }


def _nvml_driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            v = pynvml.nvmlSystemGetDriverVersion()
            return v.decode() if isinstance(v, bytes) else str(v)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # NVML missing or no driver: the column stays null
        return None


if __name__ == "__main__":  # pragma: no cover - manual check
    print(host_info(), file=sys.stdout)
