"""The peak_memory metric: peak memory of full training steps, and what it is made of.

CPU: the process's high-water mark (VmHWM) in a child started with ``MMAP_ENV`` (metrics.py),
from a warmed runtime; CUDA: ``max_memory_allocated`` (plus reserved and NVML's view). Beside
the peak: parameter, gradient, optimizer-state and saved-activation bytes, what the backward
adds, and for reversible models what the stack keeps and its largest one-step recompute. In a
parallel case every rank measures and ``combine`` keeps the largest rank's bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa

from revbench.columns import Column
from revbench.measure.ranks import WORLD_SIZE, combine_ranks

if TYPE_CHECKING:
    from revbench.case import Case

COLUMNS = (
    Column(
        "peak_mem_bytes",
        pa.int64(),
        "bytes",
        "CPU: process high-water mark (VmHWM) over the measured steps; "
        "CUDA: torch.cuda.max_memory_allocated",
        better="lower",
    ),
    Column(
        "peak_mem_delta_bytes",
        pa.int64(),
        "bytes",
        "peak minus runtime_mem_bytes: what training the model takes (parameters, gradients, "
        "optimizer state, activations, transients); comparable across CPU and CUDA",
        better="lower",
    ),
    Column(
        "runtime_mem_bytes",
        pa.int64(),
        "bytes",
        "memory in use before the model was built (CPU: the torch runtime's RSS; CUDA: 0 "
        "allocated)",
    ),
    Column(
        "peak_mem_reserved_bytes",
        pa.int64(),
        "bytes",
        "CUDA only: torch.cuda.max_memory_reserved (allocator cache included)",
    ),
    Column(
        "nvml_process_mem_bytes",
        pa.int64(),
        "bytes",
        "CUDA only: device memory NVML attributes to the case process (context included)",
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
        better="lower",
    ),
    Column(
        "backward_transient_bytes",
        pa.int64(),
        "bytes",
        "peak during a backward minus the memory in use when it started (the recompute of a "
        "reversible block, gradients, temporaries)",
    ),
    Column(
        "reversible_stack_bytes",
        pa.int64(),
        "bytes",
        "reversible models: what the stack keeps for backward (its final pair of states)",
    ),
    Column(
        "recompute_step_bytes",
        pa.int64(),
        "bytes",
        "reversible models: tensors saved by the largest one-step recompute in backward",
    ),
    Column(
        "head_peak_bytes",
        pa.int64(),
        "bytes",
        "what the LM head and its loss alone add at their peak in one forward + backward on "
        "final states of the case's shape (logits and their gradients, the head's weight "
        "gradient and the states' gradient), measured after the step; null under FSDP2",
    ),
    Column(
        "head_peak_fraction",
        pa.float64(),
        "",
        "head_peak_bytes / peak_mem_delta_bytes: how much of the step's peak the head alone "
        "reaches (full logits: most of a reversible model's; chunked: little)",
    ),
    Column(
        "predicted_peak_bytes",
        pa.int64(),
        "bytes",
        "the memory planner's prediction of peak_mem_delta_bytes from the configuration alone "
        "(revbench.plan); null where it cannot plan the case",
    ),
    Column(
        "memory_method",
        pa.string(),
        "",
        "vmhwm+mmap65536 | ru_maxrss+mmap65536 | cuda_max_allocated",
    ),
    WORLD_SIZE,
    Column(
        "peak_mem_rank_sum_bytes",
        pa.int64(),
        "bytes",
        "parallel cases: peak_mem_bytes summed over the ranks (peak_mem_bytes and every other "
        "byte column is the maximum over the ranks: what must fit on one device)",
    ),
    Column(
        "peak_mem_per_rank_bytes",
        pa.list_(pa.int64()),
        "bytes",
        "peak_mem_bytes of each rank, in rank order",
    ),
)


def measure_peak_memory(case: Case) -> dict[str, Any]:
    import torch

    from revbench.measure import parallel
    from revbench.measure.device import nvml_process_memory, resolve_device
    from revbench.measure.memory import PeakMemory, read_rss
    from revbench.measure.stack import reversible_memory
    from revbench.measure.step import build_train_step, warm_runtime

    cuda = resolve_device(case.train.device).type == "cuda"
    if not cuda:
        warm_runtime(case)
    runtime = 0 if cuda else read_rss()  # the warmed torch runtime, before the model exists
    step = build_train_step(case)
    mem = PeakMemory(step.device, step.synchronize)  # this rank's device, once it is known
    reset, peak, method = mem.reset, mem.peak, mem.method
    reset()
    with _activations(step.model) as saved:
        loss = step.loss()
        saved.include_kept(loss)
        loss.backward()
        del loss
    step.optimizer.step()
    step.optimizer.zero_grad(set_to_none=True)
    for _ in range(case.measure.warmup + case.measure.steps - 1):
        step()
    step_peak = peak()
    reserved = torch.cuda.max_memory_reserved(step.device) if cuda else None
    nvml = nvml_process_memory(step.device) if cuda else None

    # One more step, with the high-water mark restarted between forward and backward: what the
    # backward adds on top of the saved activations (reversible: the block being recomputed).
    loss = step.loss()
    before_backward = reset()
    loss.backward()
    backward_transient = peak() - before_backward if mem.resettable else None
    step.optimizer.zero_grad(set_to_none=True)
    with parallel.whole_parameters(step.model):  # FSDP2: the recompute needs whole weights
        stack, recompute = reversible_memory(step.model, step.input_ids, step.autocast())
    head = None if parallel.sharded(step.model) else _head_peak(step, reset, peak)
    return {
        "predicted_peak_bytes": _predicted(case, step.device.type),
        "head_peak_bytes": head,
        "head_peak_fraction": None if head is None else head / max(step_peak - runtime, 1),
        "world_size": step.world_size,
        "reversible_stack_bytes": stack,
        "recompute_step_bytes": recompute,
        "peak_mem_bytes": step_peak,
        "peak_mem_delta_bytes": step_peak - runtime,
        "runtime_mem_bytes": runtime,
        "peak_mem_reserved_bytes": reserved,
        "nvml_process_mem_bytes": nvml,
        "param_bytes": step.param_bytes(),
        "grad_bytes": step.grad_bytes(),
        "optimizer_state_bytes": step.optimizer_state_bytes(),
        "activation_bytes": saved.bytes,
        "backward_transient_bytes": backward_transient,
        "memory_method": method,
    }


def _predicted(case: Case, device: str) -> int | None:
    """The planner's peak for the case on the device it ran on (None if it cannot plan it)."""
    try:
        from revbench.plan import predict

        return predict(case, device=device).peak_bytes
    except Exception:  # a configuration the planner does not model: no prediction
        return None


def _head_peak(step: Any, reset: Any, peak: Any) -> int:
    """Peak bytes of the head alone: its loss and backward on random final states of the
    case's shape, the way the model computes its training loss (full, chunked or Liger)."""
    import torch

    from revbench.models.head import next_token_targets

    model, ids = step.model, step.input_ids
    dtype = next(model.parameters()).dtype
    gen = torch.Generator(device=ids.device).manual_seed(0)
    h = torch.randn(
        (*ids.shape, model.config.d_model), device=ids.device, dtype=dtype, generator=gen
    ).requires_grad_()
    before = reset()
    with step.autocast():
        loss = model.head.loss(h, next_token_targets(ids))[1]  # the logits go with the tuple
    loss.backward()
    grown = peak() - before
    step.optimizer.zero_grad(set_to_none=True)
    return grown


def _activations(model: Any) -> Any:
    """``SavedTensors`` of one step, parameters excluded, including the whole (all-gathered)
    parameters FSDP2 lends the blocks: they are allocated per forward, so their storages are
    looked up when a tensor is saved rather than once."""
    from revbench.measure.memory import SavedTensors

    sharded = any(hasattr(p, "to_local") for p in model.parameters())  # DTensor: FSDP2
    return SavedTensors(model.parameters(), exclude_now=model.parameters if sharded else None)


def combine(rows: list[dict[str, Any]]) -> dict[str, Any]:
    peaks = [r["peak_mem_bytes"] for r in rows]
    return {
        **combine_ranks(rows),
        "peak_mem_rank_sum_bytes": sum(peaks),
        "peak_mem_per_rank_bytes": peaks,
    }
