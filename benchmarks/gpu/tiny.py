"""Shrink a GPU suite to tiny shapes so that run.sh --tiny runs the kit end to end on a CPU.

``python benchmarks/gpu/tiny.py SRC.yaml DST.yaml --device cpu`` keeps the suite's settings
that are not shapes and its metrics, replaces every shape (width, heads, vocabulary, experts,
sequence, batch, budget, search range) by a tiny one, and keeps the first case of each kind of
model in ``KEEP`` (a residual, a reversible, an MoE and a RevFFN model), since on a CPU the kit
checks the wiring, not the figures (the doctor runs every architecture). Depths map to small
values (16 -> 2, 32 -> 3) and case names follow. The suite is renamed ``<name>_tiny`` so that
its rows never pass for GPU rows.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import yaml

SHAPES: dict[str, Any] = {
    "vocab_size": 128,
    "d_model": 32,
    "n_heads": 2,
    "max_seq_len": 32,
    "seq_len": 32,
    "batch_size": 2,
    "n_experts": 4,
    "top_k": 2,
    "d_ff": 64,
    "d_ff_shared": 64,
}
MEASURE: dict[str, Any] = {"warmup": 1, "steps": 2, "timeout_s": 120}
SEARCH: dict[str, Any] = {"budget": "256MiB", "min_size": 2, "max_size": 4}
"""A max-batch search of two trials (2, then 4) under a budget the tiny models never reach."""


KEEP = ("baseline", "midpoint", "moe", "revffn")
"""Architectures whose first case the tiny suite keeps (every case if none of them is there)."""


def tiny_layers(n: int) -> int:
    """16 -> 2, 32 -> 3, 12 -> 1, 4 -> 1: small, and distinct where the suite's depths are."""
    return 1 + n // 16


def shrink_settings(settings: dict[str, Any]) -> dict[str, Any]:
    out = dict(settings)
    for key, value in settings.items():
        if key in SHAPES:
            out[key] = SHAPES[key]
        elif key == "n_layers":
            out[key] = tiny_layers(int(value))
        elif key == "n_kv_heads" and value:
            out[key] = 1
        elif key == "name":
            out[key] = re.sub(
                r"n_layers=(\d+)", lambda m: f"n_layers={tiny_layers(int(m[1]))}", str(value)
            )
    return out


def shrink(suite: dict[str, Any], device: str) -> dict[str, Any]:
    """The tiny copy of a suite mapping (as yaml.safe_load reads it)."""
    out = dict(suite)
    out["name"] = f"{suite['name']}_tiny"
    defaults = {s: shrink_settings(v) for s, v in suite.get("defaults", {}).items()}
    defaults.setdefault("train", {})["device"] = device
    if defaults["train"].get("dtype") == "bfloat16":
        # Autocast bf16 runs on CPU too, but oneDNN's bf16 kernels are slow; float32 keeps the
        # kit's CPU run short. The GPU run keeps bf16.
        defaults["train"]["dtype"] = "float32"
    out["defaults"] = defaults
    measure = {**suite.get("measure", {}), **MEASURE}
    if "budget" in measure or "max_size" in measure:
        measure.update(SEARCH)
    out["measure"] = measure
    if "matrix" in suite:
        out["matrix"] = {
            k: sorted({tiny_layers(v) for v in vs}) if k == "n_layers" else vs
            for k, vs in suite["matrix"].items()
        }
    if "cases" in suite:
        seen, cases = set(), []
        for case in suite["cases"]:
            arch = case.get("arch")
            if arch in KEEP and arch not in seen and not case.get("checkpointing"):
                seen.add(arch)
                cases.append(shrink_settings(case))
        out["cases"] = cases or [shrink_settings(c) for c in suite["cases"]]
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    args = p.parse_args(argv)
    suite = yaml.safe_load(args.src.read_text())
    args.dst.write_text(yaml.safe_dump(shrink(suite, args.device), sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
