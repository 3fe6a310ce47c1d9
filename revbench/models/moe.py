"""Routed mixture of experts (Mixtral / Qwen-MoE style) and the ``moe`` residual architecture.

    p      = router(x)  softmax over n_experts             (N, E)
    w, e   = top_k(p), w / sum(w)                          renormalised (Mixtral; optional)
    y      = sum_j w_j Expert_{e_j}(x)  [+ sigmoid(g x) Shared(x)]   (Qwen-MoE shared expert)
    aux    = n_experts * sum_e f_e P_e                     load balancing (Switch Transformer)

with f_e the fraction of tokens that route to expert e (a token counts once per expert among its
top k, so sum_e f_e = k, as in Hugging Face's ``load_balancing_loss_func``; perfectly balanced
routing gives aux = k) and P_e the mean router probability of e. Only P_e carries gradient.

Dispatch groups the (token, choice) slots by expert with one stable sort, gathers each expert's
tokens into one contiguous batch, runs every expert once on its batch and gathers the results
back into slot order: a loop over experts, none over tokens. Everything is deterministic (sorts
and gathers, no atomics), so a checkpointed or reversible recompute routes exactly as the forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from revbench.models.blocks import CausalSelfAttention, SwiGLU, make_norm
from revbench.models.config import ModelConfig
from revbench.models.output import LanguageModel


class MoE(nn.Module):
    """Top-k routed SwiGLU experts, optional gated shared expert; ``forward`` -> (y, aux)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_experts, self.top_k = cfg.n_experts, cfg.top_k
        self.norm_topk_prob = cfg.norm_topk_prob
        self.router = nn.Linear(cfg.d_model, cfg.n_experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(cfg) for _ in range(cfg.n_experts))
        self.shared = SwiGLU(cfg, cfg.d_ff_shared) if cfg.shared_expert else None
        self.shared_gate = nn.Linear(cfg.d_model, 1, bias=False) if cfg.shared_expert else None

    def route(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(probs (N, E), top-k weights (N, k), top-k experts (N, k)) of ``h``; the weights
        renormalised to sum to 1 unless ``norm_topk_prob`` is off."""
        logits = self.router(h)  # (N, E)
        # Routing in at least float32 (Mixtral does the softmax in float32 under bf16).
        probs = F.softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))
        weights, experts = probs.topk(self.top_k, dim=-1)  # (N, k) each
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return probs, weights, experts

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        B, T, C = x.size()
        h = x.reshape(B * T, C)  # (N, C)
        probs, weights, experts = self.route(h)
        slot_expert = experts.flatten()  # (N k,) slot n*k + j: token n's j-th choice
        order = slot_expert.argsort(stable=True)  # slots grouped by expert
        counts = torch.bincount(slot_expert, minlength=self.n_experts)  # (E,)
        tokens_in = h.index_select(0, order // self.top_k)  # (N k, C) gathered, expert-major
        out = torch.cat(
            [
                e(chunk)
                for e, chunk in zip(self.experts, tokens_in.split(counts.tolist()), strict=True)
            ]
        )  # (N k, C) expert-major
        out = out.index_select(0, order.argsort())  # (N k, C) back in slot order
        y = (out.view(B * T, self.top_k, C) * weights.unsqueeze(-1).to(out.dtype)).sum(1)  # (N, C)
        if self.shared is not None:
            y = y + torch.sigmoid(self.shared_gate(h)) * self.shared(h)
        f = counts.to(probs.dtype) / (B * T)  # (E,) routed fraction, sums to k
        aux = self.n_experts * (f * probs.mean(0)).sum()
        return y.view(B, T, C), aux


class MoEBlock(nn.Module):
    """Pre-norm block with an MoE FFN: p + A, then + MoE(N2(p + A)); returns (out, aux)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.n2 = make_norm(cfg)
        self.moe = MoE(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, p: Tensor) -> tuple[Tensor, Tensor]:
        p = p + self.drop(self.attn(self.n1(p)))
        y, aux = self.moe(self.n2(p))
        return p + self.drop(y), aux


class MoELM(LanguageModel):
    """Standard residual decoder with MoE FFNs; ``checkpointing`` as for ``baseline``.

    ``aux_loss`` = aux_loss_weight * the layers' mean load-balancing loss.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg, MoEBlock)

    def trunk(self, x: Tensor) -> Tensor:
        return self.trunk_and_aux(x)[0]

    def trunk_and_aux(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        auxes = []
        for block in self.blocks:
            if self.config.checkpointing and torch.is_grad_enabled():
                x, aux = checkpoint(block, x, use_reentrant=False)
            else:
                x, aux = block(x)
            auxes.append(aux)
        return x, self.config.aux_loss_weight * torch.stack(auxes).mean()


def build_moe(cfg: ModelConfig) -> MoELM:
    return MoELM(cfg)
