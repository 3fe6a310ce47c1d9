"""What a reversible stack holds: its saved final states, and its largest per-step recompute.

The reversible Function keeps only the final pair of states between forward and backward; in
backward it rebuilds one step at a time, so the backward's extra memory is bounded by the
largest single-step recompute graph. Both are measured here on the case's own model and batch
(``SavedTensors`` around a backward step of each distinct step of the first layer: the tensors
its branch recompute saves; those its vector-Jacobian product saves live inside a backward).
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
    with autocast or contextlib.nullcontext(), torch.enable_grad():
        with torch.no_grad():
            x = model.embed(input_ids)
        state = (x, x)
        for scheme, block in steps[:first]:
            with torch.no_grad():
                out = scheme.forward_step(state, block)
            y = [t.clone() for t in out]  # the step rebuilds them in place
            g = [torch.ones_like(t) for t in out]
            trainable = [p for p in block.parameters() if p.requires_grad]
            with SavedTensors(params) as saved:  # the recompute; its backward is not counted
                scheme.backward_step(y, g, block, trainable)
            largest = max(largest, saved.bytes)
            state = out
    kept = sum(s.numel() * s.element_size() for s in state)
    return kept, largest
