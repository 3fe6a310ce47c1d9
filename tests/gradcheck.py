"""Reversible-vs-autograd gradient comparison shared by the model tests.

One model runs twice on the same weights and batch: ``reversible_backprop`` True (the custom
Function) and False (the same math under ordinary autograd). The loss includes the MoE
auxiliary loss when the model has one.
"""

from __future__ import annotations

from typing import Any

import torch


def loss_and_grads(
    model: torch.nn.Module, ids: torch.Tensor, reversible: bool, seed: int = 0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.reversible_backprop = reversible
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # same dropout masks in both runs
    out = model(ids, labels=ids)
    loss = out.loss if out.aux_loss is None else out.loss + out.aux_loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| (0 when both vanish)."""
    den = torch.linalg.vector_norm(b)
    num = torch.linalg.vector_norm(a - b)
    return float(num / den) if den > 0 else float(num)


def grad_error(model: torch.nn.Module, ids: torch.Tensor) -> tuple[float, float]:
    """(loss relative error, max over parameters of the relative gradient error)."""
    loss_r, grads_r = loss_and_grads(model, ids, reversible=True)
    loss_p, grads_p = loss_and_grads(model, ids, reversible=False)
    assert grads_r.keys() == grads_p.keys()
    return rel(loss_r, loss_p), max(rel(grads_r[n], grads_p[n]) for n in grads_p)


def reversible_node(t: torch.Tensor) -> Any:
    """The (one) reversible Function node in ``t``'s autograd graph: its ``ctx``."""
    seen, stack = set(), [t.grad_fn]
    while stack:
        n = stack.pop()
        if n is None or n in seen:
            continue
        seen.add(n)
        stack.extend(f for f, _ in n.next_functions)
    (rev,) = [n for n in seen if type(n).__name__ == "ReversibleFunctionBackward"]
    return rev
