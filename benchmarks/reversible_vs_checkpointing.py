"""Every reversible scheme's training footprint against the checkpointed baseline, by depth.

The reversible backward keeps the current state and its gradient and one branch's recompute;
checkpointing keeps every block's input and one block's recompute. Below batch x seq ~ 12 x
d_model a layer's gradients outweigh a block input, so both peak in the last block's backward
and tie; above it checkpointing's kept inputs set its peak and the reversible models win by the
inputs it keeps. This prints peak_mem_delta_bytes (fresh processes, CPU, float32) at 4-32
layers and two batch sizes, each scheme's ratio to checkpointing, and whether the target holds:
ratio <= 1 above the crossover, <= 1.03 below it. About 10 minutes on 2 CPU cores.

    python benchmarks/reversible_vs_checkpointing.py [--out results/bench_ckpt]
"""

from __future__ import annotations

import argparse
import tempfile
import textwrap
from pathlib import Path

import pandas as pd

from revbench import results
from revbench.models import ARCHITECTURES
from revbench.models.config import is_reversible
from revbench.runner import run_suite

D_MODEL = 128
SUITE = """
name: reversible_vs_checkpointing
defaults:
  model: {{block: gpt2, vocab_size: 512, d_model: {d}, n_heads: 4, max_seq_len: 128}}
  data: {{batch_size: 8, seq_len: 128}}
  train: {{device: cpu, dtype: float32, optimizer: adamw, seed: 0, threads: 1}}
measure: {{warmup: 1, steps: 1, timeout_s: 600}}
matrix:
  arch: [{archs}]
  n_layers: [4, 8, 16, 32]
  batch_size: [8, 32]
cases:
{ckpt}
metrics: [peak_memory]
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    archs = [a for a in ARCHITECTURES.names() if is_reversible(a) and a != "revffn"]
    ckpt = "\n".join(
        f"  - {{name: ckpt-{n}-b{b}, arch: baseline, checkpointing: true, n_layers: {n}, "
        f"batch_size: {b}}}"
        for n in (4, 8, 16, 32)
        for b in (8, 32)
    )
    with tempfile.TemporaryDirectory() as tmp:
        suite = Path(tmp) / "suite.yaml"
        suite.write_text(
            textwrap.dedent(SUITE.format(d=D_MODEL, archs=", ".join(archs), ckpt=ckpt))
        )
        out = args.out or Path(tmp) / "results"
        run_suite(suite, out, resume=True, quiet=True)
        df = results.load(out)
    df = df[df["status"] == "ok"].copy()
    df["label"] = df["model.arch"].where(~df["model.checkpointing"], "baseline+ckpt")
    df["MiB"] = df["peak_mem_delta_bytes"] / 2**20
    t = df.pivot_table(index=["data.batch_size", "model.n_layers"], columns="label", values="MiB")
    ratios = t[archs].div(t["baseline+ckpt"], axis=0)
    pd.set_option("display.width", 200)
    print("footprint (MiB)\n", t.round(2).to_string())
    print("\nratio to baseline+ckpt\n", ratios.round(3).to_string())
    for (batch, _), row in ratios.iterrows():
        above = batch * 128 > 12 * D_MODEL
        bound = 1.0 if above else 1.03
        worst = row.max()
        verdict = "ok" if worst <= bound else "MISSED"
        print(
            f"batch {batch:3d} x 128 ({'above' if above else 'below'} the crossover): worst "
            f"ratio {worst:.3f} <= {bound}: {verdict}"
        )


if __name__ == "__main__":
    main()
