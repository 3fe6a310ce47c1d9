"""Step time of each reversible architecture and of checkpointed baseline, relative to baseline.

Forward + backward (no optimizer) at equal batch, on CPU by default. Architectures are timed
round-robin within each depth, so a noisy neighbour slows all of them alike, and each figure is
the median over ``--steps`` timed steps after ``--warmup``. Full recomputation costs at least one
extra forward (~1/3 of a step), so ~4/3 of baseline is the floor for every row but baseline.

    python benchmarks/bench_models.py --d-model 128 --batch 8 --seq 128 --layers 4 8 16

``midpoint/slice`` runs midpoint with ``recompute_chunk_seqs: --slice`` and ``*/inpl`` with
``head_impl: inplace``: what the memory options cost in time.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from revbench.models import ModelConfig, build_model

VARIANTS: dict[str, dict[str, object]] = {
    "baseline": {"arch": "baseline"},
    "baseline+ckpt": {"arch": "baseline", "checkpointing": True},
    "midpoint": {"arch": "midpoint"},
    "leapfrog": {"arch": "leapfrog"},
    "hamiltonian": {"arch": "hamiltonian"},
    "revnet": {"arch": "revnet"},
    # the memory options: the reversible steps over slices of --slice sequences, the in-place head
    "midpoint/slice": {"arch": "midpoint", "recompute_chunk_seqs": 2},
    "baseline/inpl": {"arch": "baseline", "head_impl": "inplace"},
    "midpoint/inpl": {"arch": "midpoint", "head_impl": "inplace"},
}


def make_step(args: argparse.Namespace, n_layers: int, **model: object) -> Callable[[], None]:
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=args.vocab,
        d_model=args.d_model,
        n_heads=args.n_heads,
        n_layers=n_layers,
        max_seq_len=args.seq,
        block=args.block,
        **model,  # type: ignore[arg-type]
    )
    net = build_model(cfg).to(args.device)
    ids = torch.randint(args.vocab, (args.batch, args.seq), device=args.device)

    def step() -> None:
        net.zero_grad(set_to_none=True)
        net(ids, labels=ids).loss.backward()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    return step


def time_depth(args: argparse.Namespace, n_layers: int) -> dict[str, float]:
    steps = {name: make_step(args, n_layers, **kw) for name, kw in VARIANTS.items()}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(args.warmup + args.steps):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--block", choices=["gpt2", "llama"], default="gpt2")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--slice", type=int, default=2, help="midpoint/slice: sequences per slice")
    args = p.parse_args()
    VARIANTS["midpoint/slice"]["recompute_chunk_seqs"] = args.slice
    if args.threads:
        torch.set_num_threads(args.threads)

    print(
        f"block={args.block} d_model={args.d_model} n_heads={args.n_heads} vocab={args.vocab} "
        f"batch={args.batch} seq={args.seq} device={args.device} threads={torch.get_num_threads()} "
        f"median of {args.steps} fwd+bwd steps after {args.warmup} warmup"
    )
    results = {n: time_depth(args, n) for n in args.layers}
    head = f"{'arch':<14}" + "".join(f"{f'L={n}':>16}" for n in args.layers)
    print(head + "\n" + "-" * len(head))
    for name in VARIANTS:
        cells = []
        for n in args.layers:
            t, base = results[n][name], results[n]["baseline"]
            cells.append(f"{t * 1e3:7.1f}ms {t / base:5.2f}x")
        print(f"{name:<14}" + "".join(f"{c:>16}" for c in cells))


if __name__ == "__main__":
    main()
