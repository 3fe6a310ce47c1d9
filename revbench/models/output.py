"""What every architecture shares around its trunk: embedding in, head and loss out.

An architecture only decides how the residual stream flows through its blocks (``trunk``); the
embedding, the final norm, the (tied) LM head and the loss are this module's, so two
architectures of one config differ in their residual scheme and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from revbench.models.blocks import Block, Embedding, init_weights, make_norm
from revbench.models.config import ModelConfig
from revbench.models.head import (
    CrossEntropy,
    chunked_head_loss,
    inplace_cross_entropy,
    liger_cross_entropy,
    next_token_targets,
)


@dataclass
class ModelOutput:
    logits: torch.Tensor | None
    """(B, T, vocab_size); None when a loss was asked of a head that never materialises the
    logits (``head_chunk_tokens`` > 0 or ``head_impl: liger``) or overwrites them with their
    gradient (``head_impl: inplace``)."""
    loss: torch.Tensor | None = None
    """Next-token cross-entropy, CE(logits[:, :-1], labels[:, 1:]) (or CE against ``targets``),
    ignore_index -100; None without labels or targets."""
    aux_loss: torch.Tensor | None = None
    """Auxiliary loss to add to ``loss`` (e.g. MoE load balancing); None when there is none."""


class LMHead(nn.Module):
    """Final norm and projection to the vocabulary (weight tied to the embedding if asked).

    ``loss`` computes the training loss the way the config asks: from the full logits, in
    chunks of ``head_chunk_tokens`` tokens without ever materialising them (``head.py``), or
    with Liger-Kernel's fused kernel (``head_impl: liger``). The model's forward and the
    ``head_peak_bytes`` measurement both go through it."""

    def __init__(self, cfg: ModelConfig, embedding: nn.Embedding) -> None:
        super().__init__()
        self.norm = make_norm(cfg)
        self.proj = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.proj.weight = embedding.weight
        self.chunk_tokens = cfg.head_chunk_tokens
        self.impl = cfg.head_impl

    @property
    def materialises_logits(self) -> bool:
        """Whether the training loss goes through the full (B, T, V) logits."""
        return self.impl == "torch" and not self.chunk_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(x))  # (B, T, V)

    def loss(
        self, x: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(logits, mean cross-entropy of ``targets``) from the final states ``x`` (B, T, C);
        ``targets`` (B, T) are aligned with the positions, -100 where none is scored. The
        logits (B, T, V) are None when the head does not materialise them."""
        if self.materialises_logits:
            logits = self(x)  # (B, T, V)
            return logits, position_loss(logits, targets)
        if self.impl == "inplace":  # the logits are the loss's gradient after the backward
            logits = self(x)
            return None, inplace_cross_entropy(logits.flatten(0, 1), targets.reshape(-1))
        hidden = self.norm(x).flatten(0, 1)  # (B*T, C)
        flat = targets.reshape(-1)  # (B*T,)
        if self.impl == "liger":
            return None, liger_cross_entropy(hidden, self.proj.weight, flat)
        chunks = CrossEntropy(flat)
        return None, chunked_head_loss(hidden, self.proj.weight, chunks, self.chunk_tokens)


def loss_dtype(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy runs in float32 at least (bf16/fp16 logits under autocast), float64 kept."""
    return logits if logits.dtype == torch.float64 else logits.float()


def position_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``targets`` (B, T) at each position (-100: not scored).

    Next-token targets come aligned (``next_token_targets``: the last position ignored), so the
    loss reads the whole (B*T, V) view of the logits rather than ``logits[:, :-1]``: that slice
    is not contiguous, so flattening it would copy the logits (and its backward would zero-fill
    another logits-sized buffer)."""
    V = logits.size(-1)
    return F.cross_entropy(
        loss_dtype(logits.reshape(-1, V)),  # (B*T, V), a view
        targets.reshape(-1),  # (B*T,)
        ignore_index=-100,
    )


class LanguageModel(nn.Module):
    """Embedding -> ``trunk`` (the architecture) -> head; subclasses implement ``trunk``.

    ``block`` builds each layer (``Block``; ``MoEBlock``, ``RevFFNBlock`` for the MoE models).
    """

    def __init__(self, cfg: ModelConfig, block: Callable[[ModelConfig], nn.Module] = Block) -> None:
        super().__init__()
        self.config = cfg
        self.embed = Embedding(cfg)
        self.blocks = nn.ModuleList(block(cfg) for _ in range(cfg.n_layers))
        self.head = LMHead(cfg, self.embed.tok)
        init_weights(self, cfg.n_layers)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) embedding -> (B, T, C) state the head reads."""
        raise NotImplementedError

    def trunk_and_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``trunk`` and the auxiliary loss it produced; MoE architectures override this."""
        return self.trunk(x), None

    def features(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """((B, T, C) normalised final states the LM head projects, auxiliary loss or None)."""
        h, aux_loss = self.trunk_and_aux(self.embed(input_ids))
        return self.head.norm(h), aux_loss

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        targets: torch.Tensor | None = None,
    ) -> ModelOutput:
        """Logits, and the loss: next-token cross-entropy of ``labels`` (B, T), or
        cross-entropy of ``targets`` (B, T) aligned with the positions (-100: not scored).
        When the head avoids the full logits (``head_chunk_tokens``, ``head_impl``) and a loss
        is asked for, ``logits`` is None."""
        h, aux_loss = self.trunk_and_aux(self.embed(input_ids))
        if labels is not None and targets is not None:
            raise ValueError("give labels (next-token) or targets (per position), not both")
        if labels is None and targets is None:
            return ModelOutput(logits=self.head(h), loss=None, aux_loss=aux_loss)
        aligned = next_token_targets(labels) if labels is not None else targets
        logits, loss = self.head.loss(h, aligned)
        return ModelOutput(logits=logits, loss=loss, aux_loss=aux_loss)
