"""Peak memory and step time of ``moe``, ``moe`` + checkpointing and ``revffn`` at equal batch.

The RevFFN paper (Liu et al.) reports peak VRAM 65.4 GB -> 39.5 GB (0.60x) against fine-tuning
with checkpointing on Qwen1.5-MoE; this prints the same ratio for a small model on this machine.

Following docs/measurement.md: memory and time come from different child processes. Each
variant's memory is measured in a fresh child started with ``MALLOC_MMAP_THRESHOLD_=65536`` (so
freed tensors leave the resident set): the growth of the RSS high-water mark over the memory
held before one full AdamW step (``step peak``: activations, gradients, the backward's
transients), beside the bytes autograd saved for backward (``saved``, allocator-free). Step
times (forward + backward + AdamW) come from one more child, variants timed round-robin, median
over ``--steps`` after ``--warmup``. On CUDA the memory figure is ``max_memory_allocated``.

    python benchmarks/bench_moe.py --d-model 256 --layers 8 --batch 8 --seq 256
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from revbench.measure.memory import SavedTensors, read_peak_rss, read_rss, reset_peak_rss
from revbench.models import ModelConfig, build_model

VARIANTS: dict[str, dict[str, object]] = {
    "moe": {"arch": "moe"},
    "moe+ckpt": {"arch": "moe", "checkpointing": True},
    "revffn": {"arch": "revffn"},
    "revffn-exact": {"arch": "revffn", "revffn_query": "x2"},
}


def make(args: argparse.Namespace, variant: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    cfg = ModelConfig(
        block="llama",
        vocab_size=args.vocab,
        d_model=args.d_model,
        n_heads=args.n_heads,
        d_ff=args.d_ff,
        n_layers=args.layers,
        max_seq_len=args.seq,
        n_experts=args.experts,
        top_k=args.top_k,
        shared_expert=True,
        revffn_fp_iters=args.fp_iters,
        **VARIANTS[variant],  # type: ignore[arg-type]
    )
    model = build_model(cfg).to(args.device)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4)


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, ids: torch.Tensor) -> None:
    out = model(ids, labels=ids)
    (out.loss + out.aux_loss).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if ids.device.type == "cuda":
        torch.cuda.synchronize()


def child_memory(args: argparse.Namespace) -> dict[str, float]:
    model, opt = make(args, args.variant)
    ids = torch.randint(args.vocab, (args.batch, args.seq), device=args.device)
    train_step(model, opt, ids)  # optimizer state exists from here on, as in a real run
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        train_step(model, opt, ids)
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = read_rss()
        reset_peak_rss()
        train_step(model, opt, ids)
        peak = read_peak_rss() - base
    with SavedTensors(model.parameters()) as saved:
        train_step(model, opt, ids)
    params = sum(t.numel() * t.element_size() for t in model.parameters())
    return {"peak": peak, "saved": saved.bytes, "params": params}


def child_time(args: argparse.Namespace) -> dict[str, float]:
    ids = torch.randint(args.vocab, (args.batch, args.seq), device=args.device)
    runs = {v: make(args, v) for v in VARIANTS}
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for i in range(args.warmup + args.steps):
        for v, (model, opt) in runs.items():
            t0 = time.perf_counter()
            train_step(model, opt, ids)
            if i >= args.warmup:
                times[v].append(time.perf_counter() - t0)
    return {v: statistics.median(ts) for v, ts in times.items()}


def run_child(argv: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    r = subprocess.run(
        [sys.executable, __file__, *argv],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
    )
    if r.returncode:
        raise RuntimeError(f"child {argv[-2:]} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--d-ff", type=int, default=256, help="width of each expert")
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--fp-iters", type=int, default=8)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--child", choices=["memory", "time"], help=argparse.SUPPRESS)
    p.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child_memory(args) if args.child == "memory" else child_time(args)))
        return

    shared = sys.argv[1:]
    mem = {
        v: run_child(
            [*shared, "--child", "memory", "--variant", v], {"MALLOC_MMAP_THRESHOLD_": "65536"}
        )
        for v in VARIANTS
    }
    step = run_child([*shared, "--child", "time"])
    print(
        f"block=llama d_model={args.d_model} layers={args.layers} experts={args.experts} "
        f"top_k={args.top_k} (+shared) d_ff={args.d_ff} vocab={args.vocab} batch={args.batch} "
        f"seq={args.seq} fp_iters={args.fp_iters} device={args.device}; step = fwd+bwd+AdamW, "
        f"median of {args.steps} after {args.warmup} warmup; MiB = 2^20 bytes"
    )
    head = (
        f"{'variant':<14}{'params MiB':>11}{'step peak MiB':>15}{'total MiB':>11}"
        f"{'vs moe+ckpt':>13}{'saved MiB':>11}{'step s':>9}"
    )
    print(head + "\n" + "-" * len(head))
    # total: what a GPU would hold at the step's peak, the paper's figure: parameters and
    # AdamW's two moments (held before the step) plus the step's own peak (gradients included).
    total = {v: 3 * m["params"] + m["peak"] for v, m in mem.items()}
    for v, m in mem.items():
        print(
            f"{v:<14}{m['params'] / 2**20:>11.1f}{m['peak'] / 2**20:>15.1f}"
            f"{total[v] / 2**20:>11.1f}{total[v] / total['moe+ckpt']:>12.2f}x"
            f"{m['saved'] / 2**20:>11.1f}{step[v]:>9.3f}"
        )


if __name__ == "__main__":
    main()
