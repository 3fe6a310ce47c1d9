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


@dataclass
class ModelOutput:
    logits: torch.Tensor
    """(B, T, vocab_size)"""
    loss: torch.Tensor | None = None
    """Next-token cross-entropy, CE(logits[:, :-1], labels[:, 1:]), ignore_index -100; None
    without labels."""
    aux_loss: torch.Tensor | None = None
    """Auxiliary loss to add to ``loss`` (e.g. MoE load balancing); None when there is none."""


class LMHead(nn.Module):
    """Final norm and projection to the vocabulary (weight tied to the embedding if asked)."""

    def __init__(self, cfg: ModelConfig, embedding: nn.Embedding) -> None:
        super().__init__()
        self.norm = make_norm(cfg)
        self.proj = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.proj.weight = embedding.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(x))  # (B, T, V)


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting token t+1 from position t."""
    V = logits.size(-1)
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, V).float(),  # ((B * (T-1)), V); float32 under autocast
        labels[:, 1:].reshape(-1),  # (B * (T-1),)
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

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> ModelOutput:
        h, aux_loss = self.trunk_and_aux(self.embed(input_ids))
        logits = self.head(h)  # (B, T, V)
        loss = None if labels is None else next_token_loss(logits, labels)
        return ModelOutput(logits=logits, loss=loss, aux_loss=aux_loss)
