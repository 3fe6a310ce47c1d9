"""Bounds on what a suite may ask for, checked before anything is expanded, run or written.

Every number a suite gives lands in a typed parquet column (int64, float64) and drives loops,
allocations and timeouts, so each setting has a range that says what it can mean: no int that
overflows its column, no ``inf`` or ``nan`` anywhere (a learning rate, a step size or a timeout of
``inf`` means nothing), no 10^9 repeats. The suite file itself is bounded too (size, YAML nesting
and alias expansion; ``safe_yaml``), and so is the number of case runs a suite expands to
(``MAX_CASE_RUNS``, raised with the suite's ``max_case_runs:`` or ``--max-case-runs``).

The ranges are generous: each is far beyond what fits on any device today, and exists only so
that a typo or a hostile file fails in milliseconds with a message naming the field.
"""

from __future__ import annotations

import math
import os
from typing import Any

MAX_SUITE_BYTES = 1 << 20
"""Largest suite file read (1 MiB; the shipped suites are under 4 KiB)."""
MAX_YAML_DEPTH = 32
"""Deepest YAML nesting accepted (a suite needs 4)."""
MAX_YAML_NODES = 100_000
"""Most YAML nodes after alias expansion (an alias "bomb" of 9 levels of 9 aliases is 10^9)."""
MAX_CASE_RUNS = 10_000
"""Most case runs (matrix points and explicit cases, times repeats) a suite may expand to."""
MAX_NAME_CHARS = 200
"""Longest suite or case name."""
MAX_QUOTE_CHARS = 60
"""Longest value quoted in an error message."""

INT64_MAX = (1 << 63) - 1
_INT_DEFAULT = (1 << 31) - 1  # any integer setting not listed below

# setting -> (lowest, highest) accepted; the lowest bounds repeat the pydantic ones so that the
# message names both ends.
RANGES: dict[str, tuple[float, float]] = {
    # model
    "vocab_size": (2, 1 << 24),
    "d_model": (1, 1 << 18),
    "n_layers": (1, 10_000),
    "n_heads": (1, 1 << 14),
    "n_kv_heads": (0, 1 << 14),
    "d_ff": (0, 1 << 20),
    "d_ff_shared": (0, 1 << 20),
    "max_seq_len": (1, 1 << 24),
    "head_chunk_tokens": (0, 1 << 30),
    "n_experts": (0, 4096),
    "top_k": (1, 4096),
    "revffn_fp_iters": (1, 10_000),
    "step_size": (0, 1e6),
    "a": (-1e6, 1e6),
    "norm_eps": (0, 1.0),
    "rope_theta": (0, 1e12),
    "aux_loss_weight": (0, 1e6),
    "revffn_fp_tol": (0, 1e6),
    # data
    "batch_size": (1, 1 << 24),
    "seq_len": (2, 1 << 24),
    "eval_examples": (1, 10_000_000),
    # train
    "lr": (0, 1e3),
    "seed": (0, INT64_MAX),
    "threads": (0, 4096),
    "train_steps": (0, 10_000_000),
    "distill_steps": (0, 10_000_000),
    "lm_weight": (0, 1e6),
    "nproc_per_node": (1, 4096),
    # measure
    "warmup": (0, 1_000_000),
    "steps": (1, 1_000_000),
    "repeats": (1, 1000),
    "unstable_spread": (0, 1e6),
    "timeout_s": (0, 30 * 86400.0),
    "trial_steps": (1, 10_000),
    "min_size": (1, 1 << 24),
    "max_size": (1, 1 << 24),
}


def quote(value: Any, limit: int = MAX_QUOTE_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters: an error never prints an unbounded value."""
    text = repr(value) if not isinstance(value, (dict, list)) else _short_repr(value, limit)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _short_repr(value: Any, limit: int) -> str:
    # repr() of a huge (or alias-shared) container would walk all of it first.
    if isinstance(value, dict):
        items = list(value.items())[:4]
        inner = ", ".join(f"{quote(k, 20)}: {quote(v, 20)}" for k, v in items)
        more = ", ..." if len(value) > 4 else ""
        return "{" + inner + more + "}"
    items = value[:4]
    inner = ", ".join(quote(v, 20) for v in items)
    return "[" + inner + (", ..." if len(value) > 4 else "") + "]"


def check_number(key: str, value: Any) -> str | None:
    """Why ``value`` is out of range for setting ``key`` (a sentence), or None when it is fine.
    Applies to every int and float, also inside lists."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (list, tuple)):
        for v in value:
            why = check_number(key, v)
            if why:
                return why
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {quote(value)}"
    if not isinstance(value, (int, float)):
        return None
    low, high = RANGES.get(key, (-_INT_DEFAULT, _INT_DEFAULT))
    if value > high:
        return f"must be at most {_fmt(high)}, got {quote(value)}"
    if value < low:
        return f"must be at least {_fmt(low)}, got {quote(value)}"
    return None


def _fmt(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"


def max_processes(device: str) -> int:
    """How many case processes this machine can run side by side for ``nproc_per_node``:
    one per GPU on cuda, one per CPU core on cpu (``auto``: cuda when there is one)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if device == "cpu":
        return cores or 1
    try:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken CUDA install: no GPUs to offer
        gpus = 0
    if device == "cuda":
        return gpus
    return gpus or cores or 1
