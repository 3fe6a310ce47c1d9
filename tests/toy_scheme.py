"""A reversible scheme that revbench does not ship, registered from outside the package: the
reflection step p_{l+1} = -p_{l-1} + h f(p_l) (inverse p_{l-1} = h f(p_l) - p_{l+1}).

Used as a pytest plugin (``-p toy_scheme``): it registers ``toy_reflect`` before the tests are
collected, so the registry-wide contract tests (``test_contract.py``) cover it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from revbench.models.config import ModelConfig, register_arch
from revbench.models.reversible import ReversibleLM, _last
from revbench.models.schemes import TwoStep

NAME = "toy_reflect"


@dataclass(frozen=True)
class Reflect(TwoStep):
    h: float = 1.0

    @property
    def coefficients(self) -> tuple[float, float, float]:
        return -1.0, 0.0, self.h


def build_toy(cfg: ModelConfig) -> ReversibleLM:
    scheme = Reflect(cfg.step_size)
    return ReversibleLM(cfg, lambda i, b: [(scheme, b)], _last)


def register() -> None:
    register_arch(NAME, "p_{l+1} = -p_{l-1} + h f(p_l) (a test's own scheme)", reversible=True)(
        build_toy
    )


def pytest_configure(config: Any) -> None:
    register()
