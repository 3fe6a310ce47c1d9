"""Confidence intervals for accuracy rows: Wilson for proportions, bootstrap for the rest."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch


def wilson_interval(correct: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (better than the normal
    approximation near 0 and 1 and for small ``total``; Wilson 1927)."""
    if total <= 0:
        raise ValueError("wilson_interval needs at least one trial")
    p = correct / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(
    values: Sequence[float],
    statistic: Callable[[torch.Tensor], torch.Tensor] = torch.mean,
    *,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over ``values`` (Efron 1979), with an
    explicit seed so the same values give the same interval."""
    x = torch.as_tensor(list(values), dtype=torch.float64)
    if x.numel() == 0:
        raise ValueError("bootstrap_interval needs at least one value")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, x.numel(), (resamples, x.numel()), generator=gen)
    stats = torch.stack([statistic(x[row]) for row in idx])
    alpha = (1 - level) / 2
    lo, hi = torch.quantile(stats, torch.tensor([alpha, 1 - alpha], dtype=torch.float64))
    return float(lo), float(hi)
