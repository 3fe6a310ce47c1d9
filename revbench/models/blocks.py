"""Transformer pieces shared by every architecture, smallest first (after nanoGPT's model.py).

A comparison between residual schemes must differ in the scheme only, so every architecture
builds the same ``Block`` and reads it through three views:

    attn_branch(x) = Attn(N1(x))
    mlp_branch(x)  = MLP(N2(x))
    f(p)           = A + mlp_branch(p + A),  A = attn_branch(p)

``f`` is the whole pre-norm block without its outer skip: the standard residual block is
``p + f(p)``. ``block: gpt2`` uses LayerNorm, a GELU MLP and learned absolute positions;
``block: llama`` uses RMSNorm, a SwiGLU MLP and rotary embeddings.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from revbench.models.config import ModelConfig

# scaled_dot_product_attention(enable_gqa=...) arrived in torch 2.5.
_SDPA_GQA = tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 5)


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.block == "gpt2":
        return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
    return nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)


def apply_rotary(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate channel pairs of ``x`` (B, nh, T, hs) by position-dependent angles (RoFormer).

    Angles are computed on the fly, in float64 for float64 inputs and float32 otherwise (bf16
    angles would lose position resolution), so there are no buffers to keep in sync with the
    model's dtype.
    """
    B, nh, T, hs = x.shape
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    inv_freq = theta ** (-torch.arange(0, hs, 2, device=x.device, dtype=dtype) / hs)  # (hs/2,)
    angles = torch.outer(torch.arange(T, device=x.device, dtype=dtype), inv_freq)  # (T, hs/2)
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x.to(dtype).unflatten(-1, (hs // 2, 2)).unbind(-1)  # each (B, nh, T, hs/2)
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # (B, nh, T, hs/2, 2)
    return out.flatten(-2).to(x.dtype)  # (B, nh, T, hs)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.kv_heads  # < n_heads: grouped-query attention
        self.rotary = cfg.block == "llama"
        self.rope_theta = cfg.rope_theta
        bias = cfg.attn_bias if cfg.attn_bias != "auto" else "all" if cfg.block == "gpt2" else ""
        self.kv_dim = self.n_kv_heads * cfg.head_dim
        qkv_out = cfg.d_model + 2 * self.kv_dim  # q: n_heads heads, k and v: n_kv_heads each
        self.qkv = nn.Linear(cfg.d_model, qkv_out, bias=bias in {"qkv", "all"})
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=bias == "all")

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None) -> torch.Tensor:
        """Causal attention of ``x`` on itself, or, given ``kv`` (same shape), queries from ``x``
        and keys/values from ``kv`` (RevFFN's cross-branch attention, Liu et al.)."""
        B, T, C = x.size()
        if kv is None:
            q, k, v = self.qkv(x).split((C, self.kv_dim, self.kv_dim), dim=2)  # (B, T, C|kv_dim)
        else:  # the fused weight's row blocks: same FLOPs and parameters as the fused path
            w, b = self.qkv.weight, self.qkv.bias
            q = F.linear(x, w[:C], None if b is None else b[:C])  # (B, T, C)
            kv_out = F.linear(kv, w[C:], None if b is None else b[C:])  # (B, T, 2 kv_dim)
            k, v = kv_out.split(self.kv_dim, dim=2)
        hs = C // self.n_heads
        q = q.view(B, T, self.n_heads, hs).transpose(1, 2)  # (B, nh, T, hs)
        k, v = (t.view(B, T, self.n_kv_heads, hs).transpose(1, 2) for t in (k, v))
        # k, v: (B, nkv, T, hs)
        if self.rotary:
            q, k = apply_rotary(q, self.rope_theta), apply_rotary(k, self.rope_theta)
        gqa: dict[str, bool] = {}
        if self.n_kv_heads != self.n_heads:
            if _SDPA_GQA:  # each KV head serves n_heads / n_kv_heads consecutive query heads
                gqa = {"enable_gqa": True}
            else:  # torch < 2.5: expand, as Hugging Face's repeat_kv does
                rep = self.n_heads // self.n_kv_heads
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        # Fused kernel (flash/memory-efficient where available, a math fallback otherwise); it
        # keeps no (T, T) attention matrix for backward on the fused paths.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, **gqa)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.proj(y)


class MLP(nn.Module):
    """GPT-2 MLP: Linear -> GELU -> Linear."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.d_ff)
        self.proj = nn.Linear(cfg.d_ff, cfg.d_model)

        self.approximate = "tanh" if cfg.mlp_act == "gelu_tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate=self.approximate))


class SwiGLU(nn.Module):
    """Llama MLP: W2 (SiLU(W1 x) * W3 x), no biases (Shazeer 2020)."""

    def __init__(self, cfg: ModelConfig, d_ff: int | None = None) -> None:
        super().__init__()
        d_ff = d_ff or cfg.d_ff
        self.gate = nn.Linear(cfg.d_model, d_ff, bias=False)
        self.up = nn.Linear(cfg.d_model, d_ff, bias=False)
        self.proj = nn.Linear(d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    """One pre-norm transformer block, exposed as branches rather than as ``x + ...``.

    Dropout acts on each branch output, so a scheme that evaluates the branches in the same order
    draws the same masks whether it runs under plain autograd or is recomputed in a reversible
    backward with the RNG state restored.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.n2 = make_norm(cfg)
        self.mlp = MLP(cfg) if cfg.block == "gpt2" else SwiGLU(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def attn_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.attn(self.n1(x)))

    def mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.mlp(self.n2(x)))

    def f(self, p: torch.Tensor) -> torch.Tensor:
        a = self.attn_branch(p)
        return a + self.mlp_branch(p + a)

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        """The standard residual block p + f(p)."""
        return p + self.f(p)


class Embedding(nn.Module):
    """Token embedding, plus learned absolute positions for gpt2 (llama rotates q, k instead)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.max_seq_len = cfg.max_seq_len
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.max_seq_len, cfg.d_model) if cfg.block == "gpt2" else None
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        B, T = input_ids.size()
        assert T <= self.max_seq_len, f"sequence length {T} exceeds max_seq_len {self.max_seq_len}"
        x = self.tok(input_ids)  # (B, T, C)
        if self.pos is not None:
            x = x + self.pos(torch.arange(T, device=input_ids.device))  # (T, C) broadcast
        return self.drop(x)


def init_weights(model: nn.Module, n_layers: int) -> None:
    """GPT-2 initialisation: N(0, 0.02), output projections scaled by 1/sqrt(2 n_layers)."""
    for name, p in model.named_parameters():
        if p.dim() < 2:
            continue  # norms and biases keep their defaults (1 and 0)
        std = 0.02 / math.sqrt(2 * n_layers) if name.endswith("proj.weight") else 0.02
        nn.init.normal_(p, mean=0.0, std=std)
    for m in model.modules():
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
