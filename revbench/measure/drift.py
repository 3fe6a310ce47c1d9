"""Numerical drift of reversible models at the case's dtype (metric ``reconstruction``).

Two questions, both on the case's own weights and batch:
1. how far the states rebuilt by running the scheme backwards drift from the states of the
   forward (relative error per layer; float32 / bf16 / fp16 autocast);
2. how far the gradients of reversible backprop drift from ordinary autograd
   (``reversible_backprop = False``): global cosine and relative error, and the worst parameter.
Non-reversible architectures get null columns (nothing to rebuild).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa

from revbench.columns import Column

if TYPE_CHECKING:
    import torch

    from revbench.case import Case
    from revbench.measure.step import TrainStep

COLUMNS = (
    Column(
        "recon_rel_err_max",
        pa.float64(),
        "",
        "largest relative error ||rebuilt - true|| / ||true|| over the rebuilt states",
    ),
    Column(
        "recon_rel_err_per_layer",
        pa.list_(pa.float64()),
        "",
        "relative error of every rebuilt state, in the order reconstruction_errors returns",
    ),
    Column(
        "grad_cosine",
        pa.float64(),
        "",
        "cosine between all reversible and all autograd gradients (flattened)",
    ),
    Column("grad_cosine_min", pa.float64(), "", "smallest per-parameter gradient cosine"),
    Column(
        "grad_rel_err",
        pa.float64(),
        "",
        "||g_rev - g_ref|| / ||g_ref|| over all parameters",
        better="lower",
    ),
    Column(
        "grad_rel_err_max", pa.float64(), "", "largest per-parameter relative error", better="lower"
    ),
)


def _grads(step: TrainStep, seed: int) -> list[torch.Tensor]:
    import torch

    step.optimizer.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # same dropout masks in both runs
    step.forward_backward()
    return [
        p.grad.detach().double().flatten()
        if p.grad is not None
        else torch.zeros(p.numel(), dtype=torch.float64)
        for p in step.model.parameters()
        if p.requires_grad
    ]


def measure_reconstruction(case: Case) -> dict[str, Any]:
    import torch

    from revbench.measure.step import build_train_step
    from revbench.models import reconstruction_errors

    step = build_train_step(case)
    model = step.model
    if not hasattr(model, "reversible_backprop"):
        return {c.name: None for c in COLUMNS}
    with torch.no_grad(), step.autocast():
        errors = [float(e) for e in reconstruction_errors(model, step.input_ids)]
    seed = case.train.seed
    model.reversible_backprop = True
    rev = _grads(step, seed)
    model.reversible_backprop = False
    ref = _grads(step, seed)
    model.reversible_backprop = True

    def cos(a: torch.Tensor, b: torch.Tensor) -> float:
        denom = a.norm() * b.norm()
        return float(a @ b / denom) if denom > 0 else float(torch.equal(a, b))

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        n = b.norm()
        return float((a - b).norm() / n) if n > 0 else float((a - b).norm())

    g_rev, g_ref = torch.cat(rev), torch.cat(ref)
    return {
        "recon_rel_err_max": max(errors) if errors else None,
        "recon_rel_err_per_layer": errors,
        "grad_cosine": cos(g_rev, g_ref),
        "grad_cosine_min": min(cos(a, b) for a, b in zip(rev, ref, strict=True)),
        "grad_rel_err": rel(g_rev, g_ref),
        "grad_rel_err_max": max(rel(a, b) for a, b in zip(rev, ref, strict=True)),
    }
