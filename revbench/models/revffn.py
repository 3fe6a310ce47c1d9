"""RevFFN (Liu, Yang, Cai, Wang 2025): a pretrained MoE decoder layer made reversible.

The hidden state H (width d) is split into halves X1, X2 (width d/2). Adapters lift a half to
width d (U1, U2, U3) and project back (P1, P2), so attention and the MoE FFN keep the pretrained
width and weights (``revffn_adapters: pair``: one U and one P shared by every use, the paper's
"pair of lightweight projection adapters"):

    Y1 = X1 + P1(Attn(q: N1(U1(X1)), k, v: N1(U2(X2))))       cross-branch attention
    Y2 = X2 + P2(MoE(N2(U3(Y1))))

Inverse: X2 = Y2 - P2(MoE(N2(U3(Y1)))) exactly; X1 solves X1 = Y1 - P1(Attn(U1(X1), U2(X2))),
found by fixed-point iteration from X1 = Y1 (``revffn_fp_iters``, ``revffn_fp_tol``). The
rebuilt X1 is approximate, so in this mode the GRADIENTS ARE APPROXIMATE: exact for the rebuilt
inputs, which differ from the forward's by the fixed-point error (``fixed_point_residuals``).
``revffn_query: x2`` takes the queries from U1(X2) instead: an additive coupling, inverted
exactly, same parameters, to measure the fixed-point mode against.

Each layer is two steps of the one reversible Function (``reversible.py``), after a prologue
step that splits the stream. The gradient pass evaluates each branch once, as every scheme
does; the fixed-point iterations are extra attention evaluations under ``no_grad`` (counted in
``measure/flops.py``). The MoE load-balancing losses ride in a third slot of the state, A += aux
per layer, so their gradient reaches the router through the same recompute.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from revbench.models.blocks import MLP, CausalSelfAttention, SwiGLU, make_norm
from revbench.models.config import ModelConfig
from revbench.models.moe import MoE
from revbench.models.reversible import ReversibleLM, Step, _RngState
from revbench.models.schemes import Grads, Recompute, Scheme, State, axpy


class RevFFNBlock(nn.Module):
    """A decoder layer's attention and FFN (MoE, or dense when n_experts is 0) with adapters."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, h = cfg.d_model, cfg.d_model // 2
        self.query_from = cfg.revffn_query
        self.fp_iters, self.fp_tol = cfg.revffn_fp_iters, cfg.revffn_fp_tol
        self.n1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.n2 = make_norm(cfg)
        self.ffn: nn.Module
        if cfg.n_experts:
            self.ffn = MoE(cfg)
        else:
            self.ffn = MLP(cfg) if cfg.block == "gpt2" else SwiGLU(cfg)
        # The adapters: U1, U2, U3 (half to full width) and P1, P2 (back), five matrices or,
        # with revffn_adapters: pair, one lift and one projection shared by every use. Each is
        # registered once under its own name; the plain tuples below only route the uses.
        if cfg.revffn_adapters == "five":
            self.q_up = nn.Linear(h, d, bias=False)  # U1
            self.kv_up = nn.Linear(h, d, bias=False)  # U2
            self.attn_out_proj = nn.Linear(d, h, bias=False)  # P1 ("proj": scaled init)
            self.ffn_up = nn.Linear(h, d, bias=False)  # U3
            self.ffn_out_proj = nn.Linear(d, h, bias=False)  # P2
            lifts = (self.q_up, self.kv_up, self.ffn_up)
            projections = (self.attn_out_proj, self.ffn_out_proj)
        else:
            self.lift = nn.Linear(h, d, bias=False)  # U = U1 = U2 = U3
            self.down_proj = nn.Linear(d, h, bias=False)  # P = P1 = P2 ("proj": scaled init)
            lifts = (self.lift,) * 3
            projections = (self.down_proj,) * 2
        self.lifts: tuple[nn.Linear, ...] = lifts  # U1, U2, U3 (tuples are not registered)
        self.projections: tuple[nn.Linear, ...] = projections  # P1, P2
        self.drop = nn.Dropout(cfg.dropout)
        self.fixed_point_residual: Tensor | None = None
        """||X1_k - X1_{k-1}|| / ||X1_k|| of the last fixed-point inverse (a 0-dim tensor)."""

    def attn_branch(self, x1: Tensor, x2: Tensor) -> Tensor:
        """P1(Attn(N1(U1(x1 or x2)), N1(U2(x2)))), (B, T, d/2)."""
        q_in = x1 if self.query_from == "x1" else x2
        u1, u2, _ = self.lifts
        a = self.attn(self.n1(u1(q_in)), kv=self.n1(u2(x2)))  # (B, T, d)
        return self.drop(self.projections[0](a))

    def ffn_branch(self, y1: Tensor) -> tuple[Tensor, Tensor | None]:
        """(P2(FFN(N2(U3(y1)))) of width d/2, the MoE load-balancing loss or None)."""
        z = self.n2(self.lifts[2](y1))  # (B, T, d)
        out, aux = self.ffn(z) if isinstance(self.ffn, MoE) else (self.ffn(z), None)
        return self.drop(self.projections[1](out)), aux


@dataclass(frozen=True)
class Split(Scheme):
    """Prologue: (H, H) -> (X1, X2[, A = 0]), the stream in halves (and the aux-loss slot).

    Inverse: H = [X1, X2] for both input slots (the trunk passes the embedding in both).
    Adjoint: g_H = [g_X1, g_X2] to the first slot, none to the second, so the embedding's
    gradient is counted once."""

    aux: bool
    forward_slices = False  # it only splits the state: nothing to slice

    def forward_step(self, x: State, block: RevFFNBlock) -> State:  # type: ignore[override]
        # Inside the Function's no_grad forward, halves must not be views of its input that
        # still require grad (module hooks, e.g. FlopCounterMode's, would hang grad hooks on them).
        h = x[0] if torch.is_grad_enabled() else x[0].detach()
        x1, x2 = h.chunk(2, dim=-1)  # (B, T, d/2) each
        return (x1, x2, h.new_zeros(())) if self.aux else (x1, x2)

    @torch.no_grad()
    def inverse_step(self, y: State, block: RevFFNBlock) -> State:  # type: ignore[override]
        h = torch.cat(y[:2], dim=-1)
        return h, h

    def backward_step(  # type: ignore[override]
        self,
        y: list[Tensor],
        g: Grads,
        block: RevFFNBlock,
        params: Sequence[Tensor],
        rebuild: bool = True,
    ) -> Grads:
        h = torch.cat(y[:2], dim=-1)
        y[:] = [h, h]
        half = (*h.shape[:-1], h.shape[-1] // 2)
        g_h = None
        if any(t is not None for t in g[:2]):
            g_h = torch.cat([h.new_zeros(half) if t is None else t for t in g[:2]], dim=-1)
        g[:] = [g_h, None]
        return [None] * len(params)


@dataclass(frozen=True)
class AttnCoupling(Scheme):
    """Y1 = X1 + P1(Attn(U1(X1), U2(X2))); X2 (and A) carried.

    Inverse, ``revffn_query: x2``: X1 = Y1 - P1(Attn(U1(X2), U2(X2))), exact. ``x1``: fixed
    point X1 <- Y1 - P1(Attn(U1(X1), U2(X2))) from X1 = Y1 under no_grad (extra attention
    evaluations), then the one recompute with grad at the rebuilt X1, whose VJP is the step's
    (exact at the rebuilt X1, approximate for the true one).
    Adjoint, B(X1, X2) the branch: g_X1 = g_Y1 (+ J_B,X1^T g_Y1 in x1 mode),
    g_X2 <- g_X2 + J_B,X2^T g_Y1.
    """

    def forward_step(self, x: State, block: RevFFNBlock) -> State:  # type: ignore[override]
        x1, x2, *rest = x
        return (x1 + block.attn_branch(x1, x2), x2, *rest)

    @torch.no_grad()
    def inverse_step(self, y: State, block: RevFFNBlock) -> State:  # type: ignore[override]
        y1, x2, *rest = y
        if block.query_from == "x2":
            x1 = y1 - block.attn_branch(x2, x2)
        else:
            rng = _RngState(y1) if block.training and block.drop.p > 0 else None
            x1 = _fixed_point(block, y1, x2, rng)
        return (x1, x2, *rest)

    def backward_step(  # type: ignore[override]
        self,
        y: list[Tensor],
        g: Grads,
        block: RevFFNBlock,
        params: Sequence[Tensor],
        rebuild: bool = True,
    ) -> Grads:
        if block.query_from == "x2":
            r = Recompute(lambda x2: block.attn_branch(x2, x2), y[1])  # on the unchanged X2
            with torch.no_grad():
                y[0].sub_(r.value)  # X1, in Y1's memory
            r.release()
            (j2,), grads = r.vjp([g[0]], params)
        else:
            # With dropout, every attention evaluation must draw the forward's mask: restore
            # the RNG state the Function restored for this step before each of them.
            rng = _RngState(y[0]) if block.training and block.drop.p > 0 else None
            y[0] = _fixed_point(block, y[0].detach(), y[1].detach(), rng)
            with rng.restored() if rng else contextlib.nullcontext():
                r = Recompute(block.attn_branch, y[0], y[1])  # the one recompute, at rebuilt X1
            r.release()  # X1 came from the fixed point: the branch's value is not needed
            (j1, j2), grads = r.vjp([g[0]], params)
            g[0] = axpy(g[0], j1)
            del j1
        g[1] = axpy(g[1], j2) if g[1] is not None else j2
        return grads


@torch.no_grad()
def _fixed_point(block: RevFFNBlock, y1: Tensor, x2: Tensor, rng: _RngState | None) -> Tensor:
    """X1 <- Y1 - P1(Attn(U1(X1), U2(X2))) from X1 = Y1; records the last relative change."""
    x1 = y1
    residual = y1.new_zeros(())
    for _ in range(block.fp_iters):
        with rng.restored() if rng else contextlib.nullcontext():
            new = y1 - block.attn_branch(x1, x2)
        residual = torch.linalg.vector_norm(new - x1) / torch.linalg.vector_norm(new)
        x1 = new
        if block.fp_tol and float(residual) <= block.fp_tol:  # a host sync per iteration
            break
    block.fixed_point_residual = residual
    return x1


@dataclass(frozen=True)
class FFNCoupling(Scheme):
    """Y2 = X2 + P2(MoE(N2(U3(Y1)))), A += aux; Y1 carried. Inverse X2 = Y2 - P2(...), exact.
    Adjoint: g_X2 = g_Y2, g_A unchanged, g_Y1 <- g_Y1 + J_B^T g_Y2 + J_aux^T g_A."""

    def forward_step(self, x: State, block: RevFFNBlock) -> State:  # type: ignore[override]
        y1, x2, *rest = x
        b, aux = block.ffn_branch(y1)
        if not rest:
            return y1, x2 + b
        return (y1, x2 + b, rest[0] + aux)

    @torch.no_grad()
    def inverse_step(self, y: State, block: RevFFNBlock) -> State:  # type: ignore[override]
        y1, y2, *rest = y
        b, aux = block.ffn_branch(y1)
        return (y1, y2 - b, *(rest[0] - aux for _ in rest))

    def backward_step(  # type: ignore[override]
        self,
        y: list[Tensor],
        g: Grads,
        block: RevFFNBlock,
        params: Sequence[Tensor],
        rebuild: bool = True,
    ) -> Grads:
        r = Recompute(block.ffn_branch, y[0])  # the one recompute, on the unchanged Y1
        with torch.no_grad():
            y[1].sub_(r.value)  # X2, in Y2's memory
            if len(y) > 2:
                y[2] = y[2] - r.outputs[1].detach()  # type: ignore[union-attr]
        r.release()
        (j1,), grads = r.vjp([g[1], g[2] if len(g) > 2 else None], params)
        g[0] = axpy(g[0], j1) if g[0] is not None else j1
        return grads


def _layer(i: int, block: RevFFNBlock) -> list[Step]:
    return [(AttnCoupling(), block), (FFNCoupling(), block)]  # type: ignore[list-item]


def _concat(state: State) -> Tensor:
    return torch.cat(state[:2], dim=-1)  # (B, T, d)


class RevFFNLM(ReversibleLM):
    """Reversible RevFFN stack; ``aux_loss`` = aux_loss_weight * the layers' mean MoE loss."""

    def __init__(self, cfg: ModelConfig) -> None:
        aux = cfg.n_experts > 0
        super().__init__(
            cfg,
            _layer,
            _concat,
            lambda b: [(Split(aux), b)],
            block=RevFFNBlock,  # type: ignore[list-item]
        )

    def trunk_and_aux(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        state = self.run_stack(x)
        if len(state) == 2:
            return self.readout(state), None
        return self.readout(state), self.config.aux_loss_weight * state[2] / self.config.n_layers

    def fixed_point_residuals(self) -> list[float | None]:
        """Per layer, the relative change of the last fixed-point iterate of the most recent
        inverse (backward or ``reconstruction_errors``); None where none ran."""
        return [
            None if b.fixed_point_residual is None else float(b.fixed_point_residual)
            for b in self.blocks
        ]


def build_revffn(cfg: ModelConfig) -> RevFFNLM:
    return RevFFNLM(cfg)


ADAPTERS = ("q_up", "kv_up", "attn_out_proj", "ffn_up", "ffn_out_proj", "lift", "down_proj")
"""RevFFN's own parameters in each block (U1, U2, P1, U3, P2; or the pair U, P); the rest is the
pretrained layer."""


def is_adapter(name: str) -> bool:
    """Whether the parameter ``name`` (``blocks.3.q_up.weight``) belongs to an adapter."""
    parts = name.split(".")
    return len(parts) > 2 and parts[0] == "blocks" and parts[2] in ADAPTERS


def from_residual(
    state_dict: dict[str, Tensor], model: nn.Module
) -> tuple[dict[str, Tensor], set[str]]:
    """A residual model's state dict (``baseline`` or ``moe``, e.g. a Hugging Face checkpoint's)
    in ``model``'s RevFFN names, and the names it lacks: each layer's dense MLP or MoE becomes
    the block's ``ffn`` (attention and norms keep their names); the adapters are new and keep
    the model's initialisation, to be trained (the paper trains them first, the pretrained
    weights frozen, then everything)."""
    renamed = {
        re.sub(r"^(blocks\.\d+\.)(?:mlp|moe)\.", r"\1ffn.", k): v for k, v in state_dict.items()
    }
    new = {n for n, _ in model.named_parameters() if is_adapter(n)}
    return renamed, new
