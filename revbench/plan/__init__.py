"""Memory planner: a case's peak memory and max batch, predicted before it runs.

``predict(case)`` returns a ``MemoryPlan``: parameters, gradients and optimizer state counted
from the config (``params.py``), the tensors saved for backward op by op (``saved.py``), and
the step's peak from a replay of its allocations and frees (``replay.py``: forward, the head,
the backward block by block or reversible step by step, the optimizer step), each tensor
charged what the device's allocator takes for it (``Dims.charge``). ``predict_max_batch``
searches the largest batch whose predicted peak fits a memory size; ``revbench plan SUITE``
prints both for every case, for the GPUs of ``revbench.gpus`` or a given memory. Nothing is
built: a plan of a GPT-2-small case takes milliseconds.

What the plan does not see: the runtime itself (the CUDA context, CPU libraries; the measured
``peak_mem_delta_bytes`` starts after them, as does the plan), kernel workspaces PyTorch does
not allocate as tensors (cuBLAS's, ~8-32 MiB per stream on CUDA), and imbalanced MoE routing
(the plan takes it as balanced: it only moves the one expert being backpropagated).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from revbench.gpus import Gpu
from revbench.plan.dims import Dims, dims_of
from revbench.plan.params import charged, grad_bytes, optimizer_bytes, param_bytes
from revbench.plan.replay import replay_step
from revbench.plan.saved import Term, activations, total


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Predicted bytes of one training step of a case (per device in a parallel case)."""

    param_bytes: int
    grad_bytes: int
    optimizer_state_bytes: int
    activation_bytes: int
    """Tensors saved for backward (the ``activation_bytes`` column's definition)."""
    activation_terms: tuple[Term, ...]
    """``activation_bytes`` by part (block by block, head, kept state)."""
    backward_transient_bytes: int
    """The peak during the backward minus the memory in use when it starts."""
    peak_bytes: int
    """Predicted peak of the step above the runtime: ``peak_mem_delta_bytes``'s definition."""
    peak_at: str
    """Where in the step the predicted peak falls (phase: tensor being made)."""
    batch_size: int
    seq_len: int


def predict_dims(D: Dims) -> MemoryPlan:
    """The plan of a case given as ``Dims``."""
    if D.cfg.force != "block":
        raise NotImplementedError(
            f"the planner models one block per reversible step; force {D.cfg.force} "
            "evaluates two (no prediction)"
        )
    state = charged(D, "optimizer")
    tl = replay_step(D, base=charged(D, "params") + (state if D.warm_optimizer else 0))
    terms = tuple(activations(D))
    peak = tl.peak
    return MemoryPlan(
        param_bytes=param_bytes(D),
        grad_bytes=grad_bytes(D),
        optimizer_state_bytes=optimizer_bytes(D),
        activation_bytes=total(list(terms)),
        activation_terms=terms,
        backward_transient_bytes=tl.peak - tl.marks.get("backward", tl.peak),
        peak_bytes=peak,
        peak_at=tl.where,
        batch_size=D.B,
        seq_len=D.T,
    )


def predict(case: Any, *, device: str | None = None, gpu: Gpu | None = None) -> MemoryPlan:
    """The plan of a ``Case`` (``suite.Case``: its model, data and train sections);
    ``device`` plans for another device than the case's (``cuda`` for a GPU); ``gpu`` names
    the card (its compute capability sizes cuBLAS's workspace, its multiprocessors the reductions'
    buffers; else the current one)."""
    sec = _sections(case)
    if device is not None:
        sec["train"]["device"] = device
    return predict_dims(dims_of(sec["model"], sec["data"], sec["train"], sec["measure"], gpu=gpu))


def _sections(case: Any) -> dict[str, dict[str, Any]]:
    """A ``Case``'s sections as plain dicts (or an object holding them as dicts already, as a
    result row read back does)."""
    if hasattr(case, "sections"):
        return case.sections()
    return {s: dict(getattr(case, s)) for s in ("model", "data", "train", "measure")}


def predict_max_batch(
    case: Any,
    memory_bytes: int,
    *,
    device: str | None = None,
    gpu: Gpu | None = None,
    headroom: float | None = None,
    cap: int = 1 << 20,
) -> int:
    """The largest batch whose predicted peak fits ``memory_bytes`` less ``headroom`` (the
    case's ``measure.headroom`` when None); 0 when not even batch 1 fits. ``gpu`` as in
    ``predict``."""
    sec = _sections(case)
    measure = sec["measure"]
    headroom = measure.get("headroom", 0.05) if headroom is None else headroom
    limit = memory_bytes * (1 - headroom)
    if device is not None:
        sec["train"]["device"] = device
    trial = {"warmup": 0, "steps": measure.get("trial_steps", 1)}
    D = dims_of(sec["model"], sec["data"], sec["train"], trial, gpu=gpu)

    def fits(b: int) -> bool:
        return predict_dims(D.with_batch(b)).peak_bytes <= limit

    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= cap and fits(hi):
        lo, hi = hi, hi * 2
    if hi > cap:
        return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


__all__ = ["MemoryPlan", "predict", "predict_dims", "predict_max_batch"]
