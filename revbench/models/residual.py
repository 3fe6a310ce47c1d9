"""The standard residual transformer, with optional gradient checkpointing: the baselines."""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from revbench.models.config import ModelConfig
from revbench.models.output import LanguageModel


class ResidualLM(LanguageModel):
    """p_{l+1} = p_l + f(p_l); the head reads p_L.

    With ``cfg.checkpointing`` each block runs under non-reentrant checkpointing: only its input
    is kept for backward, and the block is recomputed once there (RNG state restored, so dropout
    masks match).
    """

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if self.config.checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


def build_baseline(cfg: ModelConfig) -> ResidualLM:
    return ResidualLM(cfg)
