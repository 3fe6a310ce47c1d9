"""Tiny seeded models and token batches shared by the model tests.

``make_model`` seeds torch with 0 before building, so a test gets the same weights every run;
``token_batch`` draws from its own seeded generator, so it leaves torch's global RNG alone. A file
whose tests need another shape passes its own (usually ``{**TINY, ...}``) as ``shape``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from revbench.models import ModelConfig, build_model

TINY: dict[str, Any] = {"vocab_size": 32, "d_model": 16, "n_heads": 2, "max_seq_len": 16}


def make_model(
    arch: str, dtype: torch.dtype = torch.float32, shape: Mapping[str, Any] = TINY, **overrides: Any
) -> nn.Module:
    """``arch`` built at ``shape`` with ``overrides`` after ``torch.manual_seed(0)``, cast to
    ``dtype``."""
    torch.manual_seed(0)
    return build_model(ModelConfig(**{**shape, "arch": arch, **overrides})).to(dtype)


def token_batch(
    vocab: int = TINY["vocab_size"], B: int = 2, T: int = 12, seed: int = 1
) -> torch.Tensor:
    """A ``(B, T)`` batch of token ids below ``vocab`` from a generator seeded with ``seed``."""
    return torch.randint(vocab, (B, T), generator=torch.Generator().manual_seed(seed))
