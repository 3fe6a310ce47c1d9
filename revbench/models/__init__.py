"""The model zoo: every architecture behind one builder, ``build_model(cfg)``.

The registry (``ARCHITECTURES``, filled by ``models/catalog.py``) and ``ModelConfig`` import
without torch; ``build_model``, ``ModelOutput`` and ``reconstruction_errors`` import torch and
the builders on first use. ``revbench list`` prints the architectures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from revbench.models import catalog  # noqa: F401  (registers the shipped architectures)
from revbench.models.config import (
    ARCHITECTURES,
    Arch,
    ModelConfig,
    add_arch,
    arch_facts,
    register_arch,
)

if TYPE_CHECKING:
    from torch import nn

    from revbench.models.output import ModelOutput
    from revbench.models.reversible import reconstruction_errors


def build_model(cfg: ModelConfig) -> nn.Module:
    """A freshly initialised model of ``cfg.arch`` (float32, CPU, train mode)."""
    return ARCHITECTURES.get(cfg.arch).build(cfg)


def __getattr__(name: str) -> Any:
    if name == "ModelOutput":
        from revbench.models.output import ModelOutput

        return ModelOutput
    if name == "reconstruction_errors":
        from revbench.models.reversible import reconstruction_errors

        return reconstruction_errors
    raise AttributeError(f"module 'revbench.models' has no attribute '{name}'")


__all__ = [
    "ARCHITECTURES",
    "Arch",
    "ModelConfig",
    "ModelOutput",
    "add_arch",
    "arch_facts",
    "build_model",
    "reconstruction_errors",
    "register_arch",
]
