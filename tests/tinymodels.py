"""Tiny seeded models and token batches shared by the model tests, and what one training step
of such a model costs (``step_flops``, ``saved_bytes``).

``make_model`` seeds torch with 0 before building, so a test gets the same weights every run;
``token_batch`` draws from its own seeded generator, so it leaves torch's global RNG alone. A file
whose tests need another shape passes its own (usually ``{**TINY, ...}``) as ``shape``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from revbench.measure.flops import register_cpu_attention_formulas
from revbench.measure.memory import SavedTensors
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


def step_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The training loss of ``model`` on ``ids`` (labels = ids), the MoE auxiliary loss added."""
    out = model(ids, labels=ids)
    return out.loss if out.aux_loss is None else out.loss + out.aux_loss


def step_flops(model: nn.Module, ids: torch.Tensor) -> tuple[int, int]:
    """(forward, backward) FLOPs ``FlopCounterMode`` counts for one step of ``model`` on ``ids``;
    the backward's count includes a reversible model's recompute."""
    register_cpu_attention_formulas()
    with FlopCounterMode(display=False) as fwd:
        loss = step_loss(model, ids)
    with FlopCounterMode(display=False) as bwd:
        loss.backward()
    return fwd.get_total_flops(), bwd.get_total_flops()


def saved_bytes(model: nn.Module, ids: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward of one step of ``model`` on ``ids``
    (``SavedTensors``: the parameters not counted)."""
    with SavedTensors(model.parameters()) as saved:
        step_loss(model, ids).backward()
    return saved.bytes
