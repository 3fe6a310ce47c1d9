"""What a reversible stack holds: its saved final states, and its largest per-step recompute.

The reversible Function keeps only the final pair of states between forward and backward; in
backward it rebuilds one step at a time, so the backward's extra memory is bounded by the
largest single-step recompute graph. Both are measured here on the case's own model and batch
(the recompute with ``SavedTensors`` on each distinct step of the first layer).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from revbench.measure.memory import SavedTensors


def reversible_memory(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    autocast: contextlib.AbstractContextManager[Any] | None = None,
) -> tuple[int | None, int | None]:
    """(bytes the stack saves for backward, bytes saved by its largest one-step recompute);
    (None, None) for a model that is not a reversible stack of steps."""
    steps = getattr(model, "steps", None)
    if not hasattr(model, "reversible_backprop") or not steps:
        return None, None
    first = getattr(model, "n_prologue", 0) + getattr(model, "steps_per_layer", len(steps))
    params = list(model.parameters())
    largest = 0
    with autocast or contextlib.nullcontext():
        with torch.no_grad():
            x = model.embed(input_ids)
        state = (x, x)
        for scheme, block in steps[:first]:
            leaves = tuple(s.detach().requires_grad_() for s in state)
            with SavedTensors(params) as saved:
                scheme.inverse_step(leaves, block)
            largest = max(largest, saved.bytes)
            with torch.no_grad():
                state = scheme.forward_step(state, block)
    kept = sum(s.numel() * s.element_size() for s in state)
    return kept, largest
