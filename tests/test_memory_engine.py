"""What the reversible backward keeps alive, counted tensor by tensor (issue 14).

The maths needs, between two steps of the backward, the current state and its gradient: two
slots each, ``2 x 2 x S`` for S = one (B, T, C) slot. Within a step it needs one branch's
recompute graph and its vector-Jacobian product, nothing more: the branch output can go once the
previous state is rebuilt (in place of the next one), and no ``y_hat`` is built.

A recording wrapper around every step of the model counts the live bytes (``LiveBytes``) at
each step's entry and the most a step adds on top. The entry must hold the states and their
gradients only (a copy of the final states kept by ``save_for_backward``, the engine's own
reference to the incoming gradient or a zeros tensor for a missing one would each add S), and a
step may add no more than an independent reference (the branch recomputed and backpropagated by
plain autograd in this file, with its output's S freed as the engine frees it) allows.

The blocks' and head's parameters are frozen so that parameter gradients, which grow with the
steps and are the same in any implementation, do not enter the counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch
from gradcheck import reversible_node
from livebytes import LiveBytes

from revbench.models import ARCHITECTURES, ModelConfig, build_model
from revbench.models.config import is_reversible
from revbench.models.schemes import AdditiveCoupling, Leapfrog, Midpoint, Scheme

REVERSIBLE = [a for a in ARCHITECTURES.names() if is_reversible(a)]
SHAPE = {"vocab_size": 64, "d_model": 32, "n_heads": 2, "max_seq_len": 32, "n_layers": 3}
B, T = 4, 32
S = B * T * SHAPE["d_model"] * 4  # one float32 slot


class Recorder(Scheme):
    """Runs ``inner`` and records (entry bytes, most bytes added) of each backward step."""

    def __init__(self, inner: Scheme, tracker: LiveBytes, log: list[dict[str, Any]]) -> None:
        self.inner, self.tracker, self.log = inner, tracker, log

    def forward_step(self, x: Any, block: Any) -> Any:
        return self.inner.forward_step(x, block)

    def inverse_step(self, y: Any, block: Any) -> Any:
        return self.inner.inverse_step(y, block)

    def backward_step(
        self, y: list, g: list, block: Any, params: Sequence[torch.Tensor], **kw: Any
    ) -> list:
        entry = self.tracker.reset_peak()
        shapes = [tuple(t.shape) for t in y]
        out = self.inner.backward_step(y, g, block, params, **kw)
        self.log.append(
            {
                "scheme": self.inner,
                "block": block,
                "entry": entry,
                "added": self.tracker.peak - entry,
                "shapes": shapes,
            }
        )
        return out


def frozen_model(arch: str, **overrides: Any) -> torch.nn.Module:
    extra = {"n_experts": 4, "top_k": 2} if arch == "revffn" else {}
    torch.manual_seed(0)
    cfg = ModelConfig(**{**SHAPE, **extra, "arch": arch, "tie_embeddings": False, **overrides})
    model = build_model(cfg)
    model.blocks.requires_grad_(False)
    model.head.requires_grad_(False)
    return model


def reference_added(scheme: Scheme, block: Any, slots: list[torch.Tensor]) -> int:
    """Most bytes a plain-autograd recompute + VJP of ``scheme``'s branch adds, less its output
    (released by the engine before the VJP)."""
    if isinstance(scheme, (Midpoint, Leapfrog)):
        fn, src = block.f, slots[0]
    elif isinstance(scheme, AdditiveCoupling):
        fn, src = getattr(block, scheme.branch), slots[1 - scheme.target]
    else:
        raise TypeError(scheme)
    grad = torch.ones_like(src)  # the step's incoming gradient exists before the step
    with LiveBytes() as lb:
        leaf = src.detach().requires_grad_()
        out = fn(leaf)
        (jg,) = torch.autograd.grad(out, leaf, grad)
        del jg
        return lb.peak - out.untyped_storage().nbytes()


CASES = [(a, {}) for a in REVERSIBLE] + [
    ("midpoint", {"init_state": "euler"}),
    ("midpoint", {"a": 0.5}),
    ("midpoint", {"a_layers": [0.6, -1.3, 1.2]}),
    ("hamiltonian", {"ham_a": 2.0, "ham_b": 0.7}),
    ("revffn", {"revffn_query": "x2"}),
]


@pytest.mark.parametrize(("arch", "over"), CASES, ids=[f"{a}{o or ''}" for a, o in CASES])
def test_backward_keeps_states_and_gradients_only(arch: str, over: dict[str, Any]) -> None:
    model = frozen_model(arch, **over)
    ids = torch.randint(SHAPE["vocab_size"], (B, T), generator=torch.Generator().manual_seed(1))
    log: list[dict[str, Any]] = []
    with LiveBytes() as tracker:
        model.steps = [(Recorder(s, tracker, log), b) for s, b in model.steps]
        loss = model(ids, labels=ids).loss
        final = sum(s.untyped_storage().nbytes() for s in reversible_node(loss).final)
        loss.backward()
    assert len(log) == len(model.steps)
    eps = S // 4  # scalars, index tensors: far below one slot
    for i, rec in enumerate(log):
        # states + their gradients: nothing else survives from one step to the next
        assert rec["entry"] <= 2 * final + eps, (i, rec["entry"] / S)


STEP_CASES = [(a, {}) for a in REVERSIBLE if a != "revffn"] + [
    ("midpoint", {"a_layers": [0.6, -1.3, 1.2]}),
    ("leapfrog", {"init_state": "euler"}),
    ("hamiltonian", {"ham_a": 2.0, "ham_b": 0.7}),
]


@pytest.mark.parametrize(("arch", "over"), STEP_CASES, ids=[f"{a}{o or ''}" for a, o in STEP_CASES])
def test_a_step_adds_no_more_than_its_branch_recompute(arch: str, over: dict[str, Any]) -> None:
    model = frozen_model(arch, **over)
    ids = torch.randint(SHAPE["vocab_size"], (B, T), generator=torch.Generator().manual_seed(1))
    log: list[dict[str, Any]] = []
    with LiveBytes() as tracker:
        model.steps = [(Recorder(s, tracker, log), b) for s, b in model.steps]
        model(ids, labels=ids).loss.backward()
    slot = torch.randn(B, T, SHAPE["d_model"])
    for rec in log:
        ref = reference_added(rec["scheme"], rec["block"], [slot, slot])
        assert rec["added"] <= ref + S // 4, (
            type(rec["scheme"]).__name__,
            rec["added"] / S,
            ref / S,
        )
