"""Retrofitting a pretrained residual network into a reversible scheme: the paired forces.

A residual network computes x_{l+1} = x_l + f_l(x_l). Dropped into midpoint unchanged,
p_{l+1} = p_{l-1} + 2h f_l(p_l) skips from p_{l-1} to p_{l+1} with ONE block's update, so each of
the two interleaved streams gets every other block. Matching the residual network needs
p_{l+1} - p_{l-1} = x_{l+1} - x_{l-1} = f_{l-1}(x_{l-1}) + f_l(x_l), from p_l = x_l alone (the
step must stay a function of the slot it does not change, or it is not reversible). Gal et al.'s
conversion, as public readers describe it, estimates the previous state by a fixed-point step,
x_{l-1} ~ x_l - f_{l-1}(x_l), which turns the residual update into a midpoint step whose force
pairs neighbouring blocks (``ModelConfig.force``):

    pair:   g_l(p) = f_l(p) + f_{l-1}(p)                   (first order in the blocks' outputs)
    pair2:  g_l(p) = f_l(p) + f_{l-1}(p - f_{l-1}(p))      (one more fixed-point step)

with g_0 = f_0 (p_{-1} = p_0 = the embedding, so p_1 = x_1 exactly) and midpoint's
p_{l+1} = p_{l-1} + g_l(p_l) (step size 1/2). Leapfrog's velocity p_{l+1} - p_l accumulates every
force, so its pair subtracts the previous block's update instead: g_l = f_l - f_{l-1}(...),
making p_{l+1} - p_l ~ f_l(x_l). The Hamiltonian's two half-steps are a midpoint on the sequence
of half-states (x, x + Attn, x + Attn + MLP, ...) with step 1, so each branch pairs with the
branch of the half-step before it: Attn_l + MLP_{l-1} (q's update), MLP_l + Attn_l (p's).

``PairedBlock`` is that force as a block: the schemes call its ``f`` / ``attn_branch`` /
``mlp_branch`` like a ``Block``'s, and its parameters are both blocks' (the model's own: the
wrapper is not registered in the model, so the state dict and parameter count are the
baseline's). Each step still evaluates its force once on the slot it does not change, so the
reversible backward (one recompute and one VJP of the force per step) is exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from torch import Tensor, nn

from revbench.models.blocks import Block

Force = Literal["block", "pair", "pair2"]


def previous_update(branch: Callable[[Tensor], Tensor], p: Tensor, iters: int) -> Tensor:
    """``branch`` at the estimate of the state before it: y_0 = p, y_{k+1} = p - branch(y_k),
    ``iters`` times, then branch(y). The fixed-point iteration for the x with x + branch(x) = p
    (0 iterations: branch(p))."""
    y = p
    for _ in range(iters):
        y = p - branch(y)
    return branch(y)


class PairedBlock(nn.Module):
    """A layer's force for ``force: pair`` / ``pair2`` (module docstring): its own block's
    output plus ``sign`` times the previous (half-)step's update estimated at the same state.

    ``prev`` is the previous layer's block (None in layer 0). ``iters`` fixed-point steps
    (pair: 0, pair2: 1). Not registered in the model: the blocks are its children here only so
    that ``parameters()`` lists both (each once)."""

    def __init__(self, block: Block, prev: Block | None, sign: float, iters: int) -> None:
        super().__init__()
        self.block = block
        self.prev = prev
        self.sign = sign
        self.iters = iters

    def _plus(self, own: Tensor, branch: Callable[[Tensor], Tensor] | None, p: Tensor) -> Tensor:
        if branch is None:
            return own
        return own + self.sign * previous_update(branch, p, self.iters)

    def f(self, p: Tensor) -> Tensor:
        """Midpoint and leapfrog: f_l(p) + sign f_{l-1}(estimate of p_{l-1})."""
        return self._plus(self.block.f(p), self.prev.f if self.prev else None, p)

    def attn_branch(self, p: Tensor) -> Tensor:
        """Hamiltonian q-update: Attn_l(p) + sign MLP_{l-1}(...) (the half-step before it)."""
        return self._plus(self.block.attn_branch(p), self.prev.mlp_branch if self.prev else None, p)

    def mlp_branch(self, q: Tensor) -> Tensor:
        """Hamiltonian p-update: MLP_l(q) + sign Attn_l(...) (the half-step before it)."""
        return self._plus(self.block.mlp_branch(q), self.block.attn_branch, q)


def paired_forces(
    force: Force, blocks: Sequence[Block], sign: float, *, branches: bool = False
) -> list[nn.Module]:
    """Each layer's force: the block itself (``block``), or a ``PairedBlock``. With
    ``branches`` (hamiltonian) layer 0 is paired too (its MLP pairs with its own attention)."""
    if force == "block":
        return list(blocks)
    iters = {"pair": 0, "pair2": 1}[force]
    out: list[nn.Module] = []
    for i, block in enumerate(blocks):
        prev = blocks[i - 1] if i else None
        out.append(
            block if prev is None and not branches else PairedBlock(block, prev, sign, iters)
        )
    return out


def is_paired(block: object) -> bool:
    """Whether a step's block is a ``PairedBlock`` (several blocks' parameters)."""
    return isinstance(block, PairedBlock)


def members(block: nn.Module) -> list[nn.Module]:
    """The model blocks a step's block evaluates: itself, or a PairedBlock's two."""
    if isinstance(block, PairedBlock):
        return [b for b in (block.block, block.prev) if b is not None]
    return [block]


# --- the retrofit initialisations of ``revbench convert --init`` ------------------------------

Init = Literal["auto", "naive", "mean", "pair", "pair2", "damped"]

BEST_INIT: dict[str, str] = {"midpoint": "damped", "hamiltonian": "damped", "leapfrog": "naive"}
"""``init: auto``: the start closest to the original measured on SmolLM2-135M (README's
conversion table); naive for the other architectures."""


def resolve_init(arch: str, init: str) -> str:
    """``init``, with auto resolved for ``arch`` (``BEST_INIT``)."""
    return BEST_INIT.get(arch, "naive") if init == "auto" else init


INITS: dict[str, str] = {
    "naive": "every pretrained block dropped into the scheme unchanged (step size 1, the "
    "architecture's readout)",
    "mean": "midpoint p_{l+1} = p_{l-1} + 2 f_l(p_l), head reads (p_{L-1} + p_L)/2, whose "
    "recurrence is m_{l+1} = m_l + f_l(p_l): the residual update of the pair's mean; "
    "hamiltonian: both half-steps at scale 2, mean readout",
    "pair": "midpoint p_{l+1} = p_{l-1} + f_l(p_l) + f_{l-1}(p_l) (leapfrog: - f_{l-1}; "
    "hamiltonian: each branch plus the one before it), last slot read",
    "pair2": "as pair with f_{l-1}(p - f_{l-1}(p)): one more fixed-point step",
    "damped": "generalised midpoint p_{l+1} = a p_{l-1} + (1-a) p_l + f_l(p_l) with a small "
    "(init_a), the residual network at a = 0; hamiltonian: the same on its half-steps "
    "(ham_carry); last slot read",
}
"""Each ``--init`` in one line (``retrofit_settings`` gives its model settings)."""


def retrofit_settings(arch: str, init: str, a: float) -> dict[str, object]:
    """The ``ModelConfig`` settings of ``init`` for ``arch`` (``INITS``; ``a``: damped's
    coefficient). Raises ``ConfigError`` for a pair that does not exist."""
    from revbench.errors import ConfigError

    table: dict[str, dict[str, dict[str, object]]] = {
        "naive": {},
        "mean": {
            "midpoint": {"readout": "mean", "step_size": 1.0},
            "hamiltonian": {"step_size": 2.0, "readout": "mean"},
        },
        "pair": {
            "midpoint": {"force": "pair", "step_size": 0.5},
            "leapfrog": {"force": "pair"},
            "hamiltonian": {"force": "pair", "readout": "last"},
        },
        "pair2": {
            "midpoint": {"force": "pair2", "step_size": 0.5},
            "leapfrog": {"force": "pair2"},
            "hamiltonian": {"force": "pair2", "readout": "last"},
        },
        "damped": {
            "midpoint": {"a": a, "step_size": 1.0},
            "hamiltonian": {
                "ham_a": a,
                "ham_b": a,
                "ham_carry": True,
                "step_size": 1.0,
                "readout": "last",
            },
        },
    }
    init = resolve_init(arch, init)
    if init not in table:
        raise ConfigError(f"init '{init}' is unknown; choose one of {', '.join(table)}")
    if init == "naive":
        return {}
    if arch not in table[init]:
        why = (
            " (leapfrog's coefficients are fixed: the damped leapfrog is midpoint with a < 0)"
            if (arch, init) == ("leapfrog", "damped")
            else ""
        )
        raise ConfigError(
            f"init {init} exists for {', '.join(table[init])}, not arch {arch}{why}; use init naive"
        )
    return dict(table[init][arch])
