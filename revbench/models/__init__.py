"""The model zoo: every architecture behind one builder, ``build_model(cfg)``.

Importing this package registers the architectures (``residual``, ``reversible``, ``moe``,
``revffn``) in ``ARCHITECTURES``; ``revbench list`` prints them.
"""

from __future__ import annotations

from torch import nn

from revbench.models import moe, residual, reversible, revffn  # noqa: F401  (registers them)
from revbench.models.config import ARCHITECTURES, Arch, ModelConfig, arch_facts, register_arch
from revbench.models.output import ModelOutput
from revbench.models.reversible import reconstruction_errors


def build_model(cfg: ModelConfig) -> nn.Module:
    """A freshly initialised model of ``cfg.arch`` (float32, CPU, train mode)."""
    return ARCHITECTURES.get(cfg.arch).build(cfg)


__all__ = [
    "ARCHITECTURES",
    "Arch",
    "ModelConfig",
    "ModelOutput",
    "arch_facts",
    "build_model",
    "reconstruction_errors",
    "register_arch",
]
