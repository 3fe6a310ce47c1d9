"""Host and device description for the provenance columns of a result row."""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
import warnings
from collections.abc import Iterator
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
    """Commit of the revbench source tree (``+dirty`` when it has local changes), if in git.

    Only a checkout's own commit: an installed revbench whose site-packages happens to sit
    inside some other repository (a project's ``.venv``) has none.
    """
    root = Path(revbench.__file__).resolve().parent.parent
    try:
        top, head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.splitlines()
        if Path(top).resolve() != root:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "revbench"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return head + ("+dirty" if dirty else "")


HOST_COLUMNS = (
    "revbench_version",
    "git_commit",
    "python_version",
    "torch_version",
    "transformers_version",
    "hostname",
    "cpu_model",
    "cpu_count",
    "ram_bytes",
)


def host_info() -> dict[str, Any]:
    """The ``HOST_COLUMNS``: the machine and software; cheap (torch is not imported)."""
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


GPU_COLUMNS = ("compute_capability", "gpu_sm_clock_mhz", "gpu_power_limit_w", "gpu_other_processes")


def device_info(device: Any) -> dict[str, Any]:
    """Columns describing the torch device a case ran on (GPU columns null on CPU)."""
    import torch

    threads = {"torch_threads": torch.get_num_threads()}
    if device.type != "cuda":
        return {
            **threads,
            "device_type": "cpu",
            "device_name": cpu_model(),
            "device_memory_bytes": psutil.virtual_memory().total,
            "driver_version": None,
            "cuda_version": None,
            **dict.fromkeys(GPU_COLUMNS),
        }
    props = torch.cuda.get_device_properties(device)
    info = {
        **threads,
        "device_type": "cuda",
        "device_name": props.name,
        "device_memory_bytes": int(props.total_memory),
        "driver_version": None,
        "cuda_version": torch.version.cuda,
        **dict.fromkeys(GPU_COLUMNS),
        "compute_capability": f"{props.major}.{props.minor}",
    }
    with nvml_handle(device) as (nvml, handle):
        if handle is not None:
            info["driver_version"] = _text(nvml.nvmlSystemGetDriverVersion())
            info["gpu_sm_clock_mhz"] = nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_SM)
            info["gpu_power_limit_w"] = nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000
            others = [
                p for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle) if p.pid != os.getpid()
            ]
            info["gpu_other_processes"] = len(others)
            if others:
                warnings.warn(
                    f"GPU {props.name} is shared with {len(others)} other process(es): "
                    "memory and speed figures may be disturbed",
                    stacklevel=2,
                )
    return info


def nvml_process_memory(device: Any) -> int | None:
    """Device memory NVML attributes to this process (driver view: context + allocator cache)."""
    with nvml_handle(device) as (nvml, handle):
        if handle is None:
            return None
        for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if p.pid == os.getpid():
                return int(p.usedGpuMemory) if p.usedGpuMemory is not None else None
    return None


@contextlib.contextmanager
def nvml_handle(device: Any) -> Iterator[tuple[Any, Any]]:
    """(pynvml, handle) of the torch device, found by PCI bus id so that NVML and torch agree
    whatever CUDA_DEVICE_ORDER and CUDA_VISIBLE_DEVICES say; (None, None) without NVML."""
    import torch

    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no NVML library or no driver: GPU columns stay null
        yield None, None
        return
    try:
        props = torch.cuda.get_device_properties(device)
        bus = f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
        try:
            handle = pynvml.nvmlDeviceGetHandleByPciBusId(bus)
        except pynvml.NVMLError:
            handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
        yield pynvml, handle
    finally:
        pynvml.nvmlShutdown()


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


if __name__ == "__main__":  # pragma: no cover - manual check
    print(host_info(), file=sys.stdout)
