"""The memory planner's predicted max batch at the papers' settings, beside what they report.

Prints the two tables the README shows: GPT-2 small (12 layers, d_model 768, seq 1024, GPT-2
vocabulary) on the GPUs of Gal et al. Table 3, baseline and midpoint with the full head and
midpoint with the head in 1024-token chunks (and its reversible steps over slices of 8
sequences, ``recompute_chunk_seqs``); and the d_model 512 depth rows of their Table 4 on
an 80 GB H100. Settings as ``revbench/suites/max_batch.yaml`` (AdamW, bf16 autocast unless
float32 is named, two trial steps, 5% headroom); attention is PyTorch's fused kernel. These are
predictions, not measurements: a GPU's own search (``max_batch.yaml``) is the measured answer.

    python benchmarks/paper_predictions.py
"""

from __future__ import annotations

from typing import Any

from revbench.gpus import by_name
from revbench.plan import predict_max_batch

GPT2 = {"block": "gpt2", "vocab_size": 50257, "d_model": 768, "n_heads": 12, "n_layers": 12,
        "max_seq_len": 1024}  # fmt: skip
MEASURE = {"warmup": 2, "steps": 5, "trial_steps": 2, "headroom": 0.05}
TABLE3 = {"RTX6000": "6 -> 58", "A100-40GB": "12 -> 119", "H100-80GB": "26 -> 257"}
TABLE4 = {16: "326 -> 1550", 32: "176 -> 1374", 64: "88 -> 1076", 96: "52 -> 874"}


class _Case:
    def __init__(self, model: dict[str, Any], dtype: str = "bfloat16") -> None:
        self.model = model
        self.data = {"batch_size": 1, "seq_len": 1024}
        self.train = {"device": "cuda", "dtype": dtype, "optimizer": "adamw"}
        self.measure = dict(MEASURE)


def largest(model: dict[str, Any], gpu: str, dtype: str = "bfloat16") -> int:
    g = by_name(gpu)
    return predict_max_batch(_Case(model, dtype), g.memory_bytes, device="cuda", gpu=g)


def main() -> None:
    head = ("GPT-2 small, seq 1024", "baseline", "midpoint", "midpoint, chunked head")
    head += ("the same, 8-sequence slices",)
    head += ("Gal et al. Table 3",)
    print(f"| {' | '.join(head)} |")
    print("|---|---|---|---|---|---|")
    for gpu, paper in TABLE3.items():
        dtypes = ("float32", "bfloat16") if gpu == "H100-80GB" else ("bfloat16",)
        cells = []
        for model in (
            {**GPT2, "arch": "baseline"},
            {**GPT2, "arch": "midpoint"},
            {**GPT2, "arch": "midpoint", "head_chunk_tokens": 1024},
            {**GPT2, "arch": "midpoint", "head_chunk_tokens": 1024, "recompute_chunk_seqs": 8},
        ):
            cells.append(" / ".join(str(largest(model, gpu, dt)) for dt in dtypes))
        label = f"{by_name(gpu).memory_bytes / 2**30:.0f} GiB {gpu}, {' / '.join(dtypes)}"
        print(f"| {label} | {' | '.join(cells)} | {paper} |")
    print()
    depths = list(TABLE4)
    print(
        f"| d_model 512, 8 heads, H100 80 GB, bf16 | {' | '.join(f'{d} layers' for d in depths)} |"
    )
    print("|---|" + "---|" * len(depths))
    d512 = {"block": "gpt2", "vocab_size": 50257, "d_model": 512, "n_heads": 8,
            "max_seq_len": 1024}  # fmt: skip
    rows = [("baseline", 0, 0), ("midpoint", 0, 0), ("baseline", 1024, 0), ("midpoint", 1024, 0)]
    for arch, chunk, seqs in [*rows, ("midpoint", 1024, 8)]:
        head = "chunked head" if chunk else "full head"
        head += f", {seqs}-sequence slices" if seqs else ""
        model = {**d512, "arch": arch, "head_chunk_tokens": chunk, "recompute_chunk_seqs": seqs}
        row = [largest({**model, "n_layers": n}, "H100-80GB") for n in depths]
        print(f"| {arch}, {head} | {' | '.join(map(str, row))} |")
    print(f"| Gal et al. Table 4 (baseline -> midpoint) | {' | '.join(TABLE4.values())} |")


if __name__ == "__main__":
    main()
