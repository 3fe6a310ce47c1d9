"""Reversible schemes: small classes, each one update of a two-slot state and its inverse.

A state is a pair of (B, T, C) tensors. Each scheme evaluates exactly ONE branch of a block per
step, and ``inverse_step`` only ever evaluates that branch on a slot the step did not change, so
the reversible backward (``reversible.py``) recomputes each branch once and uses that single
result both to rebuild the previous state and to backpropagate.

Contract of ``inverse_step(y, block) -> (x, y_hat)``, called with grad enabled and with ``y``
detached from the outer graph and requiring grad:

* ``x`` is the rebuilt input of ``forward_step``: new leaves (detached arithmetic, then
  ``requires_grad_``), or an element of ``y`` reused as is where the step carried it unchanged;
* ``y_hat`` equals ``y`` in value and is expressed from ``x`` and the one branch evaluation, so
  ``torch.autograd.grad(y_hat, x + params, grad_y)`` is the step's vector-Jacobian product.

The residual stream keeps its own dtype (float32 under autocast): a branch output in bf16 is
promoted when it is added to the stream, in the forward as in the rebuild.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from revbench.models.blocks import Block

State = tuple[Tensor, Tensor]


def _leaf(t: Tensor) -> Tensor:
    return t.detach().requires_grad_()


class Scheme:
    """One reversible step: ``forward_step`` and its ``inverse_step`` (contract above)."""

    def forward_step(self, x: State, block: Block) -> State:
        raise NotImplementedError

    def inverse_step(self, y: State, block: Block) -> tuple[State, State]:
        raise NotImplementedError


@dataclass(frozen=True)
class Midpoint(Scheme):
    """Midpoint (leapfrog-in-time) step, state (p_{l-1}, p_l) -> (p_l, p_{l+1}).

    Plain (``a`` None), Gal et al. Eq. 2.4:
        p_{l+1} = p_{l-1} + 2h f(p_l)            inverse  p_{l-1} = p_{l+1} - 2h f(p_l)
    Generalised:
        p_{l+1} = a p_{l-1} + (1-a) p_l + h f(p_l)
        inverse  p_{l-1} = (p_{l+1} - (1-a) p_l - h f(p_l)) / a
    The inverse divides by ``a``: with |a| < 1 every layer amplifies the rounding error of the
    rebuilt state by 1/|a|, so reconstruction error grows like |a|^-L with depth.
    """

    h: float = 1.0
    a: float | None = None

    def _combine(self, prev: Tensor, cur: Tensor, fc: Tensor) -> Tensor:
        if self.a is None:
            return prev + (2 * self.h) * fc
        return self.a * prev + (1 - self.a) * cur + self.h * fc

    def forward_step(self, x: State, block: Block) -> State:
        prev, cur = x
        return cur, self._combine(prev, cur, block.f(cur))

    def inverse_step(self, y: State, block: Block) -> tuple[State, State]:
        cur, nxt = y
        fc = block.f(cur)  # the one recompute, on the known p_l
        with torch.no_grad():
            if self.a is None:
                prev = nxt - (2 * self.h) * fc
            else:
                prev = (nxt - (1 - self.a) * cur - self.h * fc) / self.a
        prev = _leaf(prev)
        return (prev, cur), (cur, self._combine(prev, cur, fc))


@dataclass(frozen=True)
class Leapfrog(Scheme):
    """Leapfrog (Verlet) step, state (p_{l-1}, p_l) -> (p_l, p_{l+1}) (Gal et al.):

        p_{l+1} = 2 p_l - p_{l-1} + h^2 f(p_l)    inverse  p_{l-1} = 2 p_l - p_{l+1} + h^2 f(p_l)

    No division in the inverse, but the two-step recurrence lets rounding errors of the rebuilt
    states accumulate with depth (measured: ~50x midpoint's at 24 layers in float32).
    """

    h: float = 1.0

    def _combine(self, prev: Tensor, cur: Tensor, fc: Tensor) -> Tensor:
        return 2 * cur - prev + (self.h * self.h) * fc

    def forward_step(self, x: State, block: Block) -> State:
        prev, cur = x
        return cur, self._combine(prev, cur, block.f(cur))

    def inverse_step(self, y: State, block: Block) -> tuple[State, State]:
        cur, nxt = y
        fc = block.f(cur)  # the one recompute, on the known p_l
        with torch.no_grad():
            prev = 2 * cur - nxt + (self.h * self.h) * fc
        prev = _leaf(prev)
        return (prev, cur), (cur, self._combine(prev, cur, fc))


Branch = Literal["attn_branch", "mlp_branch", "f"]


@dataclass(frozen=True)
class AdditiveCoupling(Scheme):
    """Additive coupling: one slot moves by a branch of the other, which stays put.

        y_t = x_t + scale * B(x_o),  y_o = x_o        inverse  x_t = y_t - scale * B(y_o)

    (t = ``target``, o = the other slot, B = ``branch`` of the block.) Two of these make a layer:
    RevNet (Gomez et al. 2017) Y1 = X1 + Attn(N1(X2)), Y2 = X2 + MLP(N2(Y1)); the Hamiltonian
    scheme (Gal et al. Eqs. 2.8-2.9) q_l = q_{l-1} + Attn(N1(p_{l-1})),
    p_l = p_{l-1} + MLP(N2(q_l)) with (q, p) in the slots. Splitting the layer into its two
    half-steps is what lets the backward evaluate each branch once: a whole-layer inverse would
    have to evaluate MLP on Y1 before Y1's dependence on X1 is known.
    """

    target: int
    branch: Branch
    scale: float = 1.0

    def _update(self, x_t: Tensor, b: Tensor) -> Tensor:
        return x_t + b if self.scale == 1.0 else x_t + self.scale * b

    def forward_step(self, x: State, block: Block) -> State:
        x_t, x_o = x[self.target], x[1 - self.target]
        y_t = self._update(x_t, getattr(block, self.branch)(x_o))
        return (y_t, x_o) if self.target == 0 else (x_o, y_t)

    def inverse_step(self, y: State, block: Block) -> tuple[State, State]:
        y_t, y_o = y[self.target], y[1 - self.target]
        b = getattr(block, self.branch)(y_o)  # the one recompute, on the unchanged slot
        with torch.no_grad():
            x_t = y_t - b if self.scale == 1.0 else y_t - self.scale * b
        x_t = _leaf(x_t)
        y_hat_t = self._update(x_t, b)
        if self.target == 0:
            return (x_t, y_o), (y_hat_t, y_o)
        return (y_o, x_t), (y_o, y_hat_t)
