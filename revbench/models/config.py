"""ModelConfig: every knob of every architecture, validated where it is built.

A pydantic dataclass, so ``ModelConfig(n_layers=0)`` fails in Python exactly as a suite with
``n_layers: 0`` fails in YAML, with the same message. Derived values are filled in
``__post_init__``; impossible combinations raise there, naming the fields involved.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass

from revbench.registry import Registry

# name -> builder ``(ModelConfig) -> nn.Module``; filled by the architecture modules.
ARCHITECTURES: Registry[Any] = Registry("architecture")


def is_reversible(arch: str) -> bool:
    """Whether ``arch`` is registered as reversible (its builder carries ``reversible``)."""
    return arch in ARCHITECTURES and getattr(ARCHITECTURES.get(arch), "reversible", False)


PosInt = Annotated[int, Field(ge=1)]


@dataclass(config=ConfigDict(extra="forbid", strict=True))
class ModelConfig:
    """Configuration of one model; field groups below, defaults chosen for CPU-sized tests."""

    # --- which model ---
    arch: str = "baseline"
    """Registry name of the residual scheme (``revbench list`` shows them)."""
    block: Literal["gpt2", "llama"] = "gpt2"
    """gpt2: LayerNorm, GELU MLP, learned positions. llama: RMSNorm, SwiGLU MLP, rotary."""

    # --- shape ---
    vocab_size: Annotated[int, Field(ge=2)] = 256
    d_model: PosInt = 64
    n_layers: PosInt = 4
    n_heads: PosInt = 4
    d_ff: Annotated[int, Field(ge=0)] = 0
    """MLP hidden width; 0 means 4 * d_model for gpt2 and the 8/3 * d_model rule (rounded up to
    a multiple of 8) for llama."""
    max_seq_len: PosInt = 128
    tie_embeddings: bool = True
    norm_eps: Annotated[float, Field(gt=0)] = 1e-5
    rope_theta: Annotated[float, Field(gt=0)] = 10000.0

    # --- LM head ---
    head_chunk_tokens: Annotated[int, Field(ge=0)] = 0
    """Compute the training loss's LM head in chunks of this many tokens (``models/head.py``):
    the full (tokens, vocab) logits are never materialised, each chunk's logits are recomputed
    in backward. 0: the full logits (what the papers' models do). The loss is the same."""
    head_impl: Literal["torch", "liger"] = "torch"
    """torch: revbench's own head (full or chunked, any device). liger: Liger-Kernel's fused
    linear cross-entropy (CUDA only, ``pip install liger-kernel``; never materialises logits)."""

    # --- training behaviour ---
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    checkpointing: bool = False
    """Wrap each block of a residual (non-reversible) model in non-reentrant checkpointing.
    Reversible architectures reject it: they already keep no per-layer activations."""

    # --- reversible schemes (Gal et al.) ---
    step_size: Annotated[float, Field(gt=0)] = 1.0
    """h in the midpoint / leapfrog updates."""
    a: float | None = None
    """Generalised midpoint coefficient: p_{l+1} = a p_{l-1} + (1-a) p_l + h f(p_l).
    None selects the plain midpoint p_{l+1} = p_{l-1} + 2h f(p_l). The inverse divides by a,
    so |a| < 1 amplifies reconstruction error by 1/|a| per layer."""
    init_state: Literal["embedding", "euler"] = "embedding"
    """How two-state schemes get (p_{-1}, p_0): both the embedding, or p_0 = p_{-1} + h f(p_{-1})
    (one Euler step)."""

    # --- pretrained-model compatibility (issue 6: loading GPT-2, Llama, Qwen2 checkpoints) ---
    n_kv_heads: Annotated[int, Field(ge=0)] = 0
    """Key/value heads (grouped-query attention, Ainslie et al. 2023; SmolLM2-135M: 9 heads,
    3 KV heads). 0 means n_heads (plain multi-head attention); must divide n_heads."""
    attn_bias: Literal["auto", "none", "qkv", "all"] = "auto"
    """Biases of the attention projections. auto: all for gpt2, none for llama; qkv: on the
    q, k, v projections only (Qwen2)."""
    mlp_act: Literal["gelu", "gelu_tanh"] = "gelu"
    """Activation of the gpt2 MLP: exact GELU, or its tanh approximation (GPT-2's gelu_new)."""

    # --- mixture of experts (RevFFN, Liu et al.) ---
    n_experts: Annotated[int, Field(ge=0)] = 0
    """Routed SwiGLU experts of the MoE FFN (Mixtral / Qwen-MoE style); each has width d_ff.
    0: dense FFN. ``moe`` needs >= top_k; ``revffn`` with 0 wraps the dense MLP."""
    top_k: PosInt = 2
    """Experts per token, weighted by their router softmax probabilities."""
    norm_topk_prob: bool = True
    """Renormalise the top_k probabilities to sum to 1 (Mixtral); false keeps the raw softmax
    probabilities (Qwen1.5-MoE-A2.7B, Hugging Face's ``norm_topk_prob``)."""
    shared_expert: bool = False
    """Add an always-on SwiGLU expert with a sigmoid gate (Qwen-MoE)."""
    d_ff_shared: Annotated[int, Field(ge=0)] = 0
    """Width of the shared expert; 0 means d_ff (Qwen1.5-MoE-A2.7B: 5632, experts 1408)."""
    aux_loss_weight: Annotated[float, Field(ge=0)] = 0.01
    """Weight of the load-balancing loss n_experts * sum_e f_e P_e (Switch Transformer;
    averaged over layers), returned as ``ModelOutput.aux_loss``."""
    revffn_query: Literal["x1", "x2"] = "x1"
    """RevFFN attention queries: from X1 (the paper's cross-branch attention; X1 is rebuilt by
    fixed-point iteration) or from X2 like keys and values (an exact additive coupling)."""
    revffn_fp_iters: PosInt = 8
    """Most fixed-point iterations (attention evaluations) to rebuild X1 (revffn_query: x1)."""
    revffn_fp_tol: Annotated[float, Field(ge=0)] = 0.0
    """Stop the fixed-point iteration once ||X1_k - X1_{k-1}|| / ||X1_k|| <= tol; 0 always
    runs revffn_fp_iters."""

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES and len(ARCHITECTURES):
            ARCHITECTURES.get(self.arch)  # raises with the known names and a hint
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if self.block == "llama" and (self.d_model // self.n_heads) % 2:
            raise ValueError(
                f"block 'llama' needs an even head size for rotary embeddings; "
                f"d_model/n_heads = {self.d_model // self.n_heads}"
            )
        builder = ARCHITECTURES.get(self.arch) if self.arch in ARCHITECTURES else None
        if self.checkpointing and is_reversible(self.arch):
            raise ValueError(
                f"checkpointing applies to residual models; arch '{self.arch}' is reversible and "
                "already keeps no per-layer activations (set checkpointing: false)"
            )
        if self.n_heads % self.kv_heads:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads})"
            )
        if self.a is not None and self.a == 0:
            raise ValueError("a must be non-zero: the midpoint inverse divides by a")
        if self.d_ff == 0:
            if self.block == "gpt2":
                self.d_ff = 4 * self.d_model
            else:
                self.d_ff = -(-(8 * self.d_model // 3) // 8) * 8
        # mixture of experts and RevFFN
        if getattr(builder, "needs_experts", False) and not self.n_experts:
            raise ValueError(f"arch '{self.arch}' needs n_experts >= 1 (n_experts: 0 is dense)")
        if self.d_ff_shared and not self.shared_expert:
            raise ValueError("d_ff_shared sets the shared expert's width; set shared_expert: true")
        if self.n_experts and self.top_k > self.n_experts:
            raise ValueError(f"top_k ({self.top_k}) must not exceed n_experts ({self.n_experts})")
        if self.arch == "revffn" and self.d_model % 2:
            raise ValueError(
                f"revffn splits the hidden state in halves; d_model ({self.d_model}) must be even"
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads: ``n_kv_heads``, or ``n_heads`` when that is 0."""
        return self.n_kv_heads or self.n_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
