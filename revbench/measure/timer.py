"""Timing of repeated calls: warmup, then every call timed between device synchronisations.

One loop shared by the ``throughput`` metric and ``revbench doctor``'s timing check, so the
doctor checks the very code that times training steps. CUDA work is asynchronous: a host clock
read right after a launch measures the launch, not the work, so each timed call starts and ends
with ``torch.cuda.synchronize`` (or, with ``cuda_events``, is bracketed by CUDA events read
after one final synchronisation, which leaves the host free to queue the next call).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def percentile(sorted_xs: list[float] | tuple[float, ...], q: float) -> float:
    """Linear-interpolated percentile of an already sorted sequence (numpy's default method)."""
    pos = (len(sorted_xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def synchronize(device: torch.device | str | None) -> None:
    """Wait for the device's queued work (a no-op on CPU, whose kernels run synchronously)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclasses.dataclass(frozen=True)
class Timings:
    """Seconds of each timed call, sorted ascending."""

    times: tuple[float, ...]
    method: str
    """``host+sync`` (perf_counter between synchronisations) or ``cuda_events``."""

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def p10(self) -> float:
        return percentile(self.times, 0.10)

    @property
    def p90(self) -> float:
        return percentile(self.times, 0.90)

    @property
    def total(self) -> float:
        return sum(self.times)


def time_calls(
    fn: Callable[[], Any],
    steps: int,
    *,
    warmup: int = 0,
    device: torch.device | str | None = None,
    cuda_events: bool = False,
) -> Timings:
    """Call ``fn`` ``warmup`` times untimed, then ``steps`` times, timing each call.

    ``device``: where ``fn`` queues work; on CUDA each timed call is bracketed by
    synchronisations (``host+sync``), or with ``cuda_events`` by CUDA events on the current
    stream, read after a single synchronisation at the end (device time between the events;
    host gaps between calls count when the host is slower than the device).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    for _ in range(warmup):
        fn()
    events = cuda_events and device is not None and torch.device(device).type == "cuda"
    if events:
        synchronize(device)
        pairs = []
        for _ in range(steps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            pairs.append((start, end))
        synchronize(device)
        times = [s.elapsed_time(e) / 1e3 for s, e in pairs]  # elapsed_time is in ms
        return Timings(tuple(sorted(times)), "cuda_events")
    times = []
    for _ in range(steps):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return Timings(tuple(sorted(times)), "host+sync")
