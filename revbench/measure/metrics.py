"""The metric registry: what each metric measures, the columns it fills, how its process starts.

A metric runs in its own child process (the runner decides that; see runner.py), because memory
and time must not be measured in one process: on CPU the memory process forces large
allocations onto mmap so freed tensors leave the high-water mark (MEASUREMENT-NOTES.md), which
slows the step by ~50% and would spoil a timing.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from revbench.registry import Registry
from revbench.results import Column

if TYPE_CHECKING:
    from revbench.suite import Case

# glibc returns allocations >= 64 KiB to the OS on free, so VmHWM tracks live tensor memory.
MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


@dataclasses.dataclass(frozen=True)
class Metric:
    columns: tuple[Column, ...]
    measure: Callable[[Case], dict[str, Any]]
    """Runs inside the case's child process; returns values for ``columns``."""
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    """Extra environment of the child process (read at process start, e.g. by glibc)."""


METRICS: Registry[Metric] = Registry("metric")


# --- peak_memory ---------------------------------------------------------------------------

_MEM_COLUMNS = (
    Column(
        "peak_mem_bytes",
        pa.int64(),
        "bytes",
        "CPU: process high-water mark (VmHWM) over the measured steps; "
        "CUDA: torch.cuda.max_memory_allocated",
    ),
    Column(
        "peak_mem_delta_bytes",
        pa.int64(),
        "bytes",
        "peak minus the memory in use once model and optimizer were built",
    ),
    Column(
        "peak_mem_reserved_bytes",
        pa.int64(),
        "bytes",
        "CUDA only: torch.cuda.max_memory_reserved (allocator cache included)",
    ),
    Column("param_bytes", pa.int64(), "bytes", "model parameters"),
    Column("grad_bytes", pa.int64(), "bytes", "gradients of the trainable parameters"),
    Column("optimizer_state_bytes", pa.int64(), "bytes", "optimizer state after the steps"),
    Column(
        "activation_bytes",
        pa.int64(),
        "bytes",
        "tensors saved for backward in one step (storages de-duplicated, parameters "
        "excluded, custom autograd Functions included)",
    ),
    Column(
        "memory_method",
        pa.string(),
        "",
        "vmhwm+mmap65536 | ru_maxrss+mmap65536 | cuda_max_allocated",
    ),
)


def measure_peak_memory(case: Case) -> dict[str, Any]:
    import torch

    from revbench.measure.memory import SavedTensors, read_peak_rss, read_rss, reset_peak_rss
    from revbench.measure.step import build_train_step

    step = build_train_step(case)
    cuda = step.device.type == "cuda"
    if cuda:
        step.synchronize()
        torch.cuda.reset_peak_memory_stats(step.device)
        base = torch.cuda.memory_allocated(step.device)
        method = "cuda_max_allocated"
    else:
        method = ("vmhwm" if reset_peak_rss() else "ru_maxrss") + "+mmap65536"
        base = read_rss()

    with SavedTensors(step.model.parameters()) as saved:
        step.forward_backward()
    step.optimizer.step()
    step.optimizer.zero_grad(set_to_none=True)
    for _ in range(case.measure["warmup"] + case.measure["steps"] - 1):
        step()
    step.synchronize()

    if cuda:
        peak = torch.cuda.max_memory_allocated(step.device)
        reserved: int | None = torch.cuda.max_memory_reserved(step.device)
    else:
        peak, reserved = read_peak_rss(), None
    return {
        "peak_mem_bytes": peak,
        "peak_mem_delta_bytes": peak - base,
        "peak_mem_reserved_bytes": reserved,
        "param_bytes": step.param_bytes(),
        "grad_bytes": step.grad_bytes(),
        "optimizer_state_bytes": step.optimizer_state_bytes(),
        "activation_bytes": saved.bytes,
        "memory_method": method,
    }


METRICS.add(
    "peak_memory",
    Metric(_MEM_COLUMNS, measure_peak_memory, env=MMAP_ENV),
    "peak memory of full training steps, with parameter/gradient/optimizer/activation bytes",
)


# --- throughput ----------------------------------------------------------------------------

_TIME_COLUMNS = (
    Column("step_time_s_median", pa.float64(), "s", "median time of a full training step"),
    Column("step_time_s_p10", pa.float64(), "s", "10th percentile step time"),
    Column("step_time_s_p90", pa.float64(), "s", "90th percentile step time"),
    Column("tokens_per_s", pa.float64(), "tokens/s", "batch tokens / median step time"),
    Column("samples_per_s", pa.float64(), "samples/s", "batch size / median step time"),
    Column("timed_steps", pa.int32(), "", "number of timed steps after warmup"),
)


def _percentile(sorted_xs: list[float], q: float) -> float:
    """Linear-interpolated percentile of an already sorted list (numpy's default method)."""
    pos = (len(sorted_xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def measure_throughput(case: Case) -> dict[str, Any]:
    from revbench.measure.step import build_train_step

    step = build_train_step(case)
    for _ in range(case.measure["warmup"]):
        step()
    times = []
    for _ in range(case.measure["steps"]):
        step.synchronize()
        t0 = time.perf_counter()
        step()
        step.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    median = statistics.median(times)
    return {
        "step_time_s_median": median,
        "step_time_s_p10": _percentile(times, 0.10),
        "step_time_s_p90": _percentile(times, 0.90),
        "tokens_per_s": step.tokens / median,
        "samples_per_s": step.input_ids.shape[0] / median,
        "timed_steps": len(times),
    }


METRICS.add(
    "throughput",
    Metric(_TIME_COLUMNS, measure_throughput),
    "median/p10/p90 time of a full training step after warmup; tokens/s and samples/s",
)
