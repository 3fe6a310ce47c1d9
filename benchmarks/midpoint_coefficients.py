"""Reconstruction drift of the generalised midpoint p_{l+1} = a_l p_{l-1} + (1-a_l) p_l + h f(p_l)
by coefficient, depth and dtype.

The inverse divides by a_l, so rounding errors of the rebuilt states grow by about 1/|a_l| per
layer walked back when |a_l| < 1. This prints, per dtype (float64; float32; bfloat16 autocast
with a float32 stream, as the ``reconstruction`` metric runs them), the largest relative error
||rebuilt - true|| / ||true|| of a state rebuilt by running the scheme backwards (the metric's
``recon_rel_err_max``) at 4-32 layers, for plain midpoint, a fixed a (the same in every layer)
and a per-layer draw (``a_draw``; median and max over seeds 0-4), with leapfrog for reference.
Untrained weights (GPT-2 initialisation; ``--weight-scale`` multiplies the blocks' weights to
mimic grown ones), d_model 64, batch 4 x 64 tokens, one process. About 2 minutes on 2 CPU cores.

    python benchmarks/midpoint_coefficients.py [--weight-scale 1.0] [--seeds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import platform
import statistics
from typing import Any

import torch

from revbench.models import ModelConfig, build_model, reconstruction_errors

SHAPE = {"vocab_size": 256, "d_model": 64, "n_heads": 4, "max_seq_len": 64, "block": "gpt2"}
DEPTHS = (4, 8, 16, 32)
DTYPES = ("float64", "float32", "bfloat16")
FIXED: list[tuple[str, str, dict[str, Any]]] = [
    ("plain midpoint (a unset)", "midpoint", {}),
    ("a = 1", "midpoint", {"a": 1.0}),
    ("a = -1", "midpoint", {"a": -1.0}),
    ("a = 1.5", "midpoint", {"a": 1.5}),
    ("a = 0.9", "midpoint", {"a": 0.9}),
    ("a = 0.75", "midpoint", {"a": 0.75}),
    ("a = 0.5", "midpoint", {"a": 0.5}),
    ("leapfrog", "leapfrog", {}),
]
DRAWS: list[tuple[str, dict[str, Any]]] = [
    ("a_draw: pm1_uniform", {"a_draw": "pm1_uniform"}),
    ("a_draw: one_uniform", {"a_draw": "one_uniform"}),
]


def drift(arch: str, over: dict[str, Any], n_layers: int, dtype: str, scale: float) -> float:
    """recon_rel_err_max of one model on one batch."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(**SHAPE, arch=arch, n_layers=n_layers, **over))
    if scale != 1.0:
        with torch.no_grad():
            for p in model.blocks.parameters():
                if p.dim() >= 2:
                    p.mul_(scale)
    if dtype == "float64":
        model = model.to(torch.float64)
    ids = torch.randint(SHAPE["vocab_size"], (4, 64), generator=torch.Generator().manual_seed(1))
    cast = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if dtype == "bfloat16"
        else contextlib.nullcontext()
    )
    with torch.no_grad(), cast:
        return max(reconstruction_errors(model, ids))


def table(dtype: str, scale: float, seeds: int) -> str:
    head = "| midpoint a | " + " | ".join(f"{n} layers" for n in DEPTHS) + " |"
    lines = [head, "|---|" + "---|" * len(DEPTHS)]
    for label, arch, over in FIXED:
        cells = [f"{drift(arch, over, n, dtype, scale):.1e}" for n in DEPTHS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for label, over in DRAWS:
        cells = []
        for n in DEPTHS:
            errs = [drift("midpoint", {**over, "a_seed": s}, n, dtype, scale) for s in range(seeds)]
            cells.append(f"{statistics.median(errs):.1e} ({max(errs):.1e})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpu_model() -> str:
    """The CPU's model name (Linux), else the machine type."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weight-scale", type=float, default=1.0)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    print(
        f"recon_rel_err_max, {cpu_model()}, torch "
        f"{torch.__version__}, {when}; h = 1, d_model {SHAPE['d_model']}, batch 4 x 64, "
        f"weights x {args.weight_scale}; a_draw (a_width 0.5): median (max) of "
        f"{args.seeds} seeds"
    )
    for dtype in DTYPES:
        print(f"\n{dtype}\n")
        print(table(dtype, args.weight_scale, args.seeds))


if __name__ == "__main__":
    main()
