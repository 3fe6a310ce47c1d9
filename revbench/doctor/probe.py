"""The memory check's child process: known allocations against the project's peak measurement.

``python -m revbench.doctor.probe DEVICE BYTES[,BYTES...]`` prints one JSON line. It runs in a
fresh process for the reasons the ``peak_memory`` metric does: a clean allocator, and on CPU
the glibc setting ``MALLOC_MMAP_THRESHOLD_=65536``, which must be in the environment when the
process starts (``run_probe`` puts it there).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any


def probe_memory(device_name: str, sizes: Sequence[int]) -> dict[str, Any]:
    """Allocate float32 tensors of ``sizes`` bytes, all alive at once inside a measured step,
    and report the peak the project's method measures.

    CPU: resident high-water mark (VmHWM, reset through /proc/self/clear_refs) minus the RSS
    before. CUDA: ``max_memory_allocated`` minus the allocated bytes before, with the reserved
    peak and NVML's view of the process beside it.
    """
    import torch

    from revbench.measure.memory import read_peak_rss, read_rss, reset_peak_rss

    device = torch.device(device_name)
    if device.type == "cuda":
        from revbench.measure.device import nvml_process_memory

        torch.ones(1, device=device)  # context and allocator up before the baseline
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        held = [torch.ones(n // 4, device=device) for n in sizes]
        torch.cuda.synchronize(device)
        out: dict[str, Any] = {
            "method": "cuda_max_allocated",
            "before": before,
            "peak": torch.cuda.max_memory_allocated(device),
            "reserved": torch.cuda.max_memory_reserved(device),
            "nvml": nvml_process_memory(device),
        }
    else:
        # Page in the fill kernel's code and start the thread pool on an equal-sized tensor
        # first: that memory is the runtime's, not the step's (its pages go back on free).
        warm = torch.ones(max(sizes) // 4)
        del warm
        method = ("vmhwm" if reset_peak_rss() else "ru_maxrss") + "+mmap65536"
        before = read_rss()
        reset_peak_rss()
        held = [torch.ones(n // 4) for n in sizes]
        out = {
            "method": method,
            "before": before,
            "peak": read_peak_rss(),
            "mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
        }
    out["allocated"] = sum(t.numel() * t.element_size() for t in held)
    return out


def run_probe(device: Any, sizes: Sequence[int], timeout_s: float = 120) -> dict[str, Any]:
    """Run ``probe_memory`` in a fresh process with the ``peak_memory`` metric's environment."""
    from revbench.measure.metrics import MMAP_ENV

    env = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", **os.environ, **MMAP_ENV, "PYTHONUNBUFFERED": "1"}
    arg = ",".join(str(s) for s in sizes)
    cmd = [sys.executable, "-m", "revbench.doctor.probe", str(device), arg]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"memory probe exited with code {proc.returncode}: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m revbench.doctor.probe DEVICE BYTES[,BYTES]", file=sys.stderr)
        return 2
    print(json.dumps(probe_memory(argv[0], [int(s) for s in argv[1].split(",")])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
