"""Max batch size (or sequence length) under a memory budget.

The search starts where the memory planner (``revbench.plan``) predicts the largest size and
corrects itself from each trial's measured footprint (``search_guided``: 2-4 trials when the
prediction is within a few percent); where the planner cannot plan a case, exponential growth
from 1, then binary search between the last size that fit and the first that did not
(``search_max``). Each trial is a fresh child process (the runner starts it; no allocator state
leaks between trials) running ``measure.trial_steps`` full training steps. A trial fails on
``torch.OutOfMemoryError`` (by type), on a process killed for memory, or on CPU when its
measured footprint exceeds the budget less the headroom.

Budget emulation: on CUDA ``torch.cuda.set_per_process_memory_fraction`` caps the allocator at
``budget * (1 - headroom)``. On CPU the footprint is the process high-water mark (VmHWM) minus
the resident memory before the model was built (the torch runtime, the analogue of a CUDA
context), i.e. parameters + gradients + optimizer state + activations + transients.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import pyarrow as pa

from revbench.columns import Column
from revbench.units import parse_bytes

if TYPE_CHECKING:
    from revbench.case import Case
    from revbench.measure.metrics import Outcome


class Trial(NamedTuple):
    size: int
    fits: bool
    peak_bytes: int | None
    status: str


@dataclasses.dataclass(frozen=True)
class SearchResult:
    best: int | None
    """Largest size that fit; None when even ``start`` did not."""
    trials: tuple[Trial, ...]
    capped: bool
    """The search stopped at ``cap`` with everything fitting."""


def predicted_largest(
    predicted_peak: Callable[[int], int],
    limit: int,
    *,
    start: int = 1,
    cap: int = 4096,
    scale: float = 1.0,
) -> int:
    """Largest size in [start, cap] whose predicted footprint (times ``scale``) fits ``limit``;
    ``start - 1`` when none does. The footprint grows with the size, so doubling then
    bisection finds it in a few dozen evaluations of the planner."""
    if predicted_peak(start) * scale > limit:
        return start - 1
    a = start  # fits
    while a < cap and predicted_peak(min(2 * a, cap)) * scale <= limit:
        a = min(2 * a, cap)
    if a >= cap:
        return cap
    b = min(2 * a, cap)  # does not fit
    while b - a > 1:
        mid = (a + b) // 2
        a, b = (mid, b) if predicted_peak(mid) * scale <= limit else (a, mid)
    return a


def search_guided(
    try_size: Callable[[int], Trial],
    predicted_peak: Callable[[int], int],
    limit: int,
    *,
    start: int = 1,
    cap: int = 4096,
) -> SearchResult:
    """Largest size in [start, cap] that fits, starting from the memory planner's prediction.

    ``predicted_peak(size)`` is the planner's footprint at a size and ``limit`` the bytes a
    trial may take. The first trial is at the predicted largest size; each trial's measured
    footprint then corrects the prediction (footprint measured / predicted at that size), so
    the next trial is where the corrected model crosses the limit, kept strictly between the
    largest size known to fit and the smallest known not to. A trial with no footprint (an
    out-of-memory error) only moves a bound, and the next trial bisects. With a prediction
    within a few percent this takes 2-4 trials: the predicted size, the size just above, and
    at most two corrections.
    """
    trials: list[Trial] = []
    lo: int | None = None  # largest known to fit
    hi: int | None = None  # smallest known not to

    def largest_under(scale: float) -> int:
        return predicted_largest(predicted_peak, limit, start=start, cap=cap, scale=scale)

    size = min(max(largest_under(1.0), start), cap)
    while True:
        t = try_size(size)
        trials.append(t)
        if t.fits:
            lo = size
        else:
            hi = size
        if lo is not None and lo >= cap:
            return SearchResult(lo, tuple(trials), capped=True)
        if hi is not None and hi <= start:
            return SearchResult(None, tuple(trials), capped=False)
        if lo is not None and hi is not None and hi - lo <= 1:
            return SearchResult(lo, tuple(trials), capped=False)
        low = lo if lo is not None else start - 1  # sizes in (low, high) are unknown
        high = hi if hi is not None else cap + 1
        guess = None
        if t.peak_bytes and predicted_peak(size) > 0:
            guess = largest_under(t.peak_bytes / predicted_peak(size))
        if guess is None:  # no footprint to learn from: bisect, or step out of the bracket
            guess = (
                (low + high) // 2
                if lo is not None and hi is not None
                else (size * 2 if t.fits else size // 2)
            )
        # A fitting guess tells us nothing new unless it is above the known fit, and the
        # size just above it decides the answer: try that when the guess sits at a bound.
        if t.fits and guess <= size:
            guess = size + 1
        size = min(max(guess, low + 1), high - 1)


def search_max(
    try_size: Callable[[int], Trial], *, start: int = 1, cap: int = 4096
) -> SearchResult:
    """Largest size in [start, cap] for which ``try_size`` fits, assuming fitting is monotone.

    Trials: doubling until the first failure (or the cap), then bisection of the gap, so a limit
    L with 2^k <= L < 2^(k+1) (from start=1) costs k + 2 + k trials and no size is tried twice.
    """
    trials: list[Trial] = []

    def attempt(size: int) -> bool:
        t = try_size(size)
        trials.append(t)
        return t.fits

    lo, hi = None, None  # lo fits, hi does not
    size = start
    while True:
        if attempt(size):
            lo = size
            if size >= cap:
                return SearchResult(lo, tuple(trials), capped=True)
            size = min(size * 2, cap)
        else:
            hi = size
            break
    if lo is None:
        return SearchResult(None, tuple(trials), capped=False)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if attempt(mid):
            lo = mid
        else:
            hi = mid
    return SearchResult(lo, tuple(trials), capped=False)


TRIAL_TYPE = pa.list_(
    pa.struct(
        [
            ("size", pa.int64()),
            ("fits", pa.bool_()),
            ("peak_bytes", pa.int64()),
            ("status", pa.string()),
        ]
    )
)
COLUMNS = (
    Column(
        "max_batch_size",
        pa.int64(),
        "samples",
        "largest batch that fits the budget (search: batch_size; per rank in a parallel case, "
        "fitting on every rank); null when none fits",
        better="higher",
    ),
    Column(
        "max_seq_len",
        pa.int64(),
        "tokens",
        "largest sequence length that fits (search: seq_len)",
        better="higher",
    ),
    Column(
        "budget_bytes",
        pa.int64(),
        "bytes",
        "memory budget of the search (device memory when no budget is set)",
    ),
    Column("search_trials", pa.int32(), "", "number of trials the search ran"),
    Column(
        "predicted_max_batch_size",
        pa.int64(),
        "samples",
        "the memory planner's largest batch under the same budget (revbench.plan), where the "
        "search started; null when the planner could not plan the case",
    ),
    Column(
        "predicted_max_seq_len",
        pa.int64(),
        "tokens",
        "the planner's largest sequence length (search: seq_len)",
    ),
    Column("search_capped", pa.bool_(), "", "every size up to measure.max_size fit"),
    Column(
        "search_trial_list",
        TRIAL_TYPE,
        "",
        "every trial: size, fits, peak_bytes (footprint), status",
    ),
)


def measure_trial(case: Case) -> dict[str, Any]:
    """Child side: run ``trial_steps`` full steps at the case's size; report the footprint."""

    from revbench.measure.device import resolve_device
    from revbench.measure.memory import PeakMemory
    from revbench.measure.step import build_train_step, warm_runtime

    m = case.measure
    device = resolve_device(case.train.device)
    budget = _budget(case, device)
    limit = int(budget * (1 - m.headroom))
    if device.type == "cuda":
        cap_allocator(limit, device)
    else:
        warm_runtime(case)
    # from the warmed runtime (CPU) or an empty allocator (CUDA, a fresh process): the footprint
    with PeakMemory(device) as mem:
        step = build_train_step(case)
        for _ in range(m.trial_steps):
            step()
        step.synchronize()
    peak = mem.grown
    return {"trial_peak_bytes": peak, "trial_fits": peak <= limit, "budget_bytes": budget}


def cap_allocator(limit: int, device: Any) -> None:
    """CUDA: cap the caching allocator of ``device`` at ``limit`` bytes.

    ``set_per_process_memory_fraction`` wants an indexed device (``cuda:0`` or 0); a bare
    ``cuda``, which ``train.device: cuda`` resolves to, is the current device.
    """
    import torch

    index = device.index if device.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, limit / total), index)


def _budget(case: Case, device: Any) -> int:
    if case.measure.budget:
        return parse_bytes(case.measure.budget)
    if device.type == "cuda":
        import torch

        return int(torch.cuda.get_device_properties(device).total_memory)
    import psutil

    return int(psutil.virtual_memory().available)


def search(case: Case, run_trial: Callable[[Case], Outcome]) -> Outcome:
    """Parent side: drive the search, one child process per trial (``run_trial``)."""
    axis = case.measure.search
    budget: list[int] = []
    seen: list[dict[str, Any]] = []
    failures: list[tuple[str, str | None]] = []

    def try_size(size: int) -> Trial:
        variant = case.with_settings(**{axis: size})
        status, error, cols = run_trial(variant)
        if "budget_bytes" in cols:
            budget.append(cols["budget_bytes"])
            seen.append(cols)
        if status == "timeout":
            raise _Timeout(error)
        if status not in ("ok", "oom"):
            failures.append((status, error))
        fits = status == "ok" and bool(cols.get("trial_fits"))
        return Trial(size, fits, cols.get("trial_peak_bytes"), status)

    cap = case.measure.max_size
    if axis == "seq_len":
        cap = min(cap, case.model.max_seq_len)
    start = case.measure.min_size
    planner = _planner(case, axis)
    predicted: int | None = None
    try:
        if planner is None:
            res = search_max(try_size, start=start, cap=cap)
        else:
            first: tuple[Trial, ...] = ()
            if not case.measure.budget:  # the child knows the device's memory: ask it
                first = (try_size(start),)
            if first and not first[0].fits:
                res = SearchResult(None, first, capped=False)
            elif first and not budget:
                res = search_max(try_size, start=start, cap=cap)
                res = dataclasses.replace(res, trials=first + res.trials)
            else:
                limit = int(
                    (budget[0] if budget else parse_bytes(case.measure.budget))
                    * (1 - case.measure.headroom)
                )
                predicted = predicted_largest(planner, limit, start=start, cap=cap)
                res = search_guided(try_size, planner, limit, start=start, cap=cap)
                res = dataclasses.replace(res, trials=first + res.trials)
    except _Timeout as e:
        return "timeout", str(e.args[0]), {}
    last = {k: v for k, v in seen[-1].items() if not k.startswith("trial_")} if seen else {}
    cols = {
        **last,
        "max_batch_size" if axis == "batch_size" else "max_seq_len": res.best,
        "budget_bytes": budget[0] if budget else None,
        "search_trials": len(res.trials),
        "predicted_max_batch_size" if axis == "batch_size" else "predicted_max_seq_len": predicted,
        "search_capped": res.capped,
        "search_trial_list": [t._asdict() for t in res.trials],
    }
    if failures:  # a trial crashed for a reason other than memory: the figure is not trustworthy
        return failures[0][0], failures[0][1], cols
    return "ok", None, cols


def _planner(case: Case, axis: str) -> Callable[[int], int] | None:
    """The memory planner's footprint at each size of ``axis``, or None where it cannot
    plan the case (the search then doubles and bisects without it)."""
    try:
        from revbench.plan import predict_dims
        from revbench.plan.dims import dims_of

        # a trial measures its first trial_steps steps from a fresh process
        steps = {"warmup": 0, "steps": case.measure.trial_steps}
        sec = case.sections()
        D = dims_of(sec["model"], sec["data"], sec["train"], steps)
        predict_dims(D)
    except Exception:  # a configuration the planner does not model: search without it
        return None
    if axis == "seq_len":
        return lambda size: predict_dims(D.with_seq(size)).peak_bytes
    return lambda size: predict_dims(D.with_batch(size)).peak_bytes


class _Timeout(Exception):
    pass
