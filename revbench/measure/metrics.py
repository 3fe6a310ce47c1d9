"""The metric registry: what each metric measures, the columns it fills, how its process starts.

A metric runs in its own child process (the runner decides that; see caserun.py), because memory
and time must not be measured in one process: on CPU the memory process forces large
allocations onto mmap so freed tensors leave the high-water mark (docs/measurement.md), which
slows the step by ~50% and would spoil a timing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from revbench.columns import Column
from revbench.measure import batch, drift, peak, throughput
from revbench.measure.ranks import WORLD_SIZE, combine_ranks
from revbench.registry import Registry

if TYPE_CHECKING:
    from revbench.case import Case
    from revbench.settings import DataSettings

# The environment of every memory-measuring case process (docs/measurement.md):
# - glibc returns allocations >= 64 KiB to the OS on free, so VmHWM tracks live tensor memory;
# - oneDNN (bf16/fp16 matmuls on CPU) and ideep, PyTorch's layer over it, each cache compiled
#   kernels per matrix shape, about 0.8 MiB a shape, kept for the life of the process: 300
#   shapes of one bf16 linear grew the resident set by 498 MiB, 1.8 MiB with both caches held
#   to one entry. A step's memory would otherwise depend on how many shapes the process has
#   seen (MoE experts see new token counts every step). Timing processes keep the caches.
MMAP_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "65536",
    "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1",
    "LRU_CACHE_CAPACITY": "1",
}


Outcome = tuple[str, "str | None", dict[str, Any]]
"""(status, error, columns) of one child process."""
RunChild = Callable[..., Outcome]


@dataclasses.dataclass(frozen=True)
class Metric:
    columns: tuple[Column, ...]
    measure: Callable[[Case], dict[str, Any]]
    """Runs inside the case's child process; returns values for ``columns``."""
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    """Extra environment of the child process (read at process start, e.g. by glibc)."""
    search: Callable[[Case, RunChild], Outcome] | None = None
    """For metrics made of many trials: runs in the parent and calls ``run(variant)`` to measure
    one variant of the case in a fresh child (``measure`` is then the trial), or
    ``run(variant, other_metric)`` to measure another metric of it."""
    distributed: bool = False
    """Supports ``parallel`` cases: ``measure`` then runs on every torchrun rank, and rank 0
    turns the ranks' columns into the case's with ``combine``."""
    combine: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None
    """Distributed metrics: the case's columns from every rank's (in rank order)."""
    check: Callable[[DataSettings], None] | None = None
    """Suite-time check of a case's resolved ``data`` section; raises a one-line ConfigError
    naming the setting."""


METRICS: Registry[Metric] = Registry("metric")


# --- peak_memory ---------------------------------------------------------------------------

METRICS.add(
    "peak_memory",
    Metric(
        peak.COLUMNS,
        peak.measure_peak_memory,
        env=MMAP_ENV,
        distributed=True,
        combine=peak.combine,
    ),
    "peak memory of full training steps, with parameter/gradient/optimizer/activation bytes",
)


# --- throughput ----------------------------------------------------------------------------

METRICS.add(
    "throughput",
    Metric(
        throughput.COLUMNS,
        throughput.measure_throughput,
        distributed=True,
        combine=throughput.combine,
    ),
    "median/p10/p90 time of a full training step after warmup; tokens/s and samples/s",
)


# --- max_batch_size ------------------------------------------------------------------------


def _measure_trial(case: Case) -> dict[str, Any]:
    from revbench.measure import parallel

    return {**batch.measure_trial(case), "world_size": parallel.ranks().world_size}


# A parallel trial fits when it fits on every rank; its footprint is the largest rank's.
_TRIAL_COLUMNS = (*batch.COLUMNS, WORLD_SIZE)

METRICS.add(
    "max_batch_size",
    Metric(
        _TRIAL_COLUMNS,
        _measure_trial,
        env=MMAP_ENV,
        search=batch.search,
        distributed=True,
        combine=combine_ranks,
    ),
    "largest batch (or seq_len) whose full training steps fit the memory budget; "
    "one fresh process per trial",
)


# --- reconstruction ------------------------------------------------------------------------

METRICS.add(
    "reconstruction",
    Metric(drift.COLUMNS, drift.measure_reconstruction),
    "reversible models: rebuilt-state error per layer and gradient agreement with autograd "
    "at the case's dtype",
)


# --- throughput_at_max_batch ---------------------------------------------------------------

_AT_MAX_COLUMNS = (
    Column(
        "max_batch_step_time_s_median",
        pa.float64(),
        "s",
        "median step time at the model's own max batch size",
        better="lower",
    ),
    Column(
        "max_batch_tokens_per_s",
        pa.float64(),
        "tokens/s",
        "throughput at the model's own max batch size (the papers' comparison)",
        better="higher",
    ),
    Column(
        "max_batch_samples_per_s",
        pa.float64(),
        "samples/s",
        "samples/s at the model's own max batch size",
        better="higher",
    ),
)


def _throughput_at_max_batch(case: Case, run: RunChild) -> Outcome:
    status, error, cols = batch.search(case, run)
    best = cols.get("max_batch_size")
    if status != "ok" or not best:
        return status, error, cols
    variant = case.with_settings(batch_size=best)
    status, error, timing = run(variant, "throughput")
    cols["max_batch_step_time_s_median"] = timing.get("step_time_s_median")
    cols["max_batch_tokens_per_s"] = timing.get("tokens_per_s")
    cols["max_batch_samples_per_s"] = timing.get("samples_per_s")
    return status, error, cols


METRICS.add(
    "throughput_at_max_batch",
    Metric(
        (*_TRIAL_COLUMNS, *_AT_MAX_COLUMNS),
        _measure_trial,
        env=MMAP_ENV,
        search=_throughput_at_max_batch,
        distributed=True,
        combine=combine_ranks,
    ),
    "max batch search, then throughput at that batch (each model at its own largest batch)",
)


# --- accuracy --------------------------------------------------------------------------------


def _measure_accuracy(case: Case) -> dict[str, Any]:
    from revbench.tasks.metric import measure_accuracy

    return measure_accuracy(case)


def _accuracy_columns() -> tuple[Column, ...]:
    from revbench.tasks.metric import COLUMNS

    return COLUMNS


METRICS.add(
    "accuracy",
    Metric(_accuracy_columns(), _measure_accuracy),
    "data.task trained for train_steps (from scratch, pretrained or converted), then held-out "
    "accuracy or perplexity with a 95% interval",
)


# --- lm_eval ---------------------------------------------------------------------------------


def _measure_lm_eval(case: Case) -> dict[str, Any]:
    from revbench.tasks.harness import measure_lm_eval

    return measure_lm_eval(case)


def _check_lm_eval(data: DataSettings) -> None:
    from revbench.tasks.harness import check_settings

    check_settings(data)


def _lm_eval_columns() -> tuple[Column, ...]:
    from revbench.tasks.harness import COLUMNS

    return COLUMNS


METRICS.add(
    "lm_eval",
    Metric(_lm_eval_columns(), _measure_lm_eval, check=_check_lm_eval),
    "data.lm_eval_task scored by lm-evaluation-harness on the case's model (pretrained or "
    "converted, no training): data.lm_eval_metric with lm-eval's stderr, every metric as JSON",
)
