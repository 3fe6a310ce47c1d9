"""The ``throughput`` metric: the time of a full training step after warmup, and the rates and
FLOP utilisation it gives (measure/flops.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa

from revbench.columns import Column
from revbench.measure.ranks import WORLD_SIZE, combine_ranks

if TYPE_CHECKING:
    from revbench.case import Case

COLUMNS = (
    Column(
        "step_time_s_median",
        pa.float64(),
        "s",
        "median time of a full training step",
        better="lower",
    ),
    Column("step_time_s_p10", pa.float64(), "s", "10th percentile step time"),
    Column("step_time_s_p90", pa.float64(), "s", "90th percentile step time"),
    Column(
        "tokens_per_s",
        pa.float64(),
        "tokens/s",
        "tokens of one step (all ranks together) / median step time (parallel cases: the "
        "slowest rank's, as every step time column)",
        better="higher",
    ),
    Column(
        "samples_per_s",
        pa.float64(),
        "samples/s",
        "sequences of one step (all ranks together) / median step time",
        better="higher",
    ),
    Column("timed_steps", pa.int32(), "", "number of timed steps after warmup"),
    Column(
        "model_flops_per_step",
        pa.int64(),
        "FLOP",
        "analytic forward + backward FLOPs of one step, all ranks together (measure/flops.py)",
    ),
    Column(
        "hardware_flops_per_step",
        pa.int64(),
        "FLOP",
        "model FLOPs + the forward recomputed by checkpointed/reversible models",
    ),
    Column(
        "model_tflops_per_s",
        pa.float64(),
        "TFLOP/s",
        "model FLOPs / median step time",
        better="higher",
    ),
    Column(
        "peak_tflops",
        pa.float64(),
        "TFLOP/s",
        "peak dense rate of the GPU for the dtype (null on CPU or an unknown GPU)",
    ),
    Column(
        "mfu",
        pa.float64(),
        "",
        "model FLOP utilisation (model FLOPs/s over peak, times world_size in parallel cases)",
        better="higher",
    ),
    Column("hfu", pa.float64(), "", "hardware FLOP utilisation (with recompute)", better="higher"),
    WORLD_SIZE,
)


def measure_throughput(case: Case) -> dict[str, Any]:
    from revbench.measure.device import device_info
    from revbench.measure.flops import training_step_flops, utilisation
    from revbench.measure.step import build_train_step
    from revbench.measure.timer import time_calls

    step = build_train_step(case)
    timings = time_calls(step, case.measure.steps, warmup=case.measure.warmup, device=step.device)
    median = timings.median
    cfg = step.model.config
    seq = step.input_ids.shape[1]
    dev = device_info(step.device)
    util = utilisation(
        training_step_flops(cfg, step.samples, seq),
        median,
        dev["device_type"],
        dev["device_name"],
        case.train.dtype,
    )
    for name in ("mfu", "hfu"):  # the FLOPs are all ranks'; so is the peak they are held to
        if util[name] is not None:
            util[name] /= step.world_size
    return {
        **util,
        "step_time_s_median": median,
        "step_time_s_p10": timings.p10,
        "step_time_s_p90": timings.p90,
        "tokens_per_s": step.tokens / median,
        "samples_per_s": step.samples / median,
        "timed_steps": len(timings.times),
        "world_size": step.world_size,
    }


# Each rank divides the step's global tokens and FLOPs by its own step time, so the slowest
# rank's rate is the case's (every step waits for it in the gradient reduction).
_RATES = frozenset(("tokens_per_s", "samples_per_s", "model_tflops_per_s", "mfu", "hfu"))


def combine(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A parallel case's columns from its ranks': every rate the slowest rank's."""
    return combine_ranks(rows, lowest=_RATES)
