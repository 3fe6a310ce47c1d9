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
        if self.checkpointing and getattr(builder, "reversible", False):
            raise ValueError(
                f"checkpointing applies to residual models; arch '{self.arch}' is reversible and "
                "already keeps no per-layer activations (set checkpointing: false)"
            )
        if self.a is not None and self.a == 0:
            raise ValueError("a must be non-zero: the midpoint inverse divides by a")
        if self.d_ff == 0:
            if self.block == "gpt2":
                self.d_ff = 4 * self.d_model
            else:
                self.d_ff = -(-(8 * self.d_model // 3) // 8) * 8

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
