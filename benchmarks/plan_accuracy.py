"""How close the memory planner is to what was measured: an error table per suite.

For each shipped suite (or the ones named), every case's predicted peak beside the measured
``peak_mem_delta_bytes`` of its rows under RESULTS (rows written since schema v2 carry the
planner's ``predicted_peak_bytes``; older rows are re-predicted from their settings), and for
max-batch rows the predicted largest batch beside the one found. Suites with no rows under
RESULTS are listed with their predictions only. ``--run`` first runs the CPU-sized suites'
peak-memory cases (quickstart, depth_sweep, moe, parallel and their bf16 variants) into
RESULTS, which takes about 20 minutes on 2 cores.

    python benchmarks/plan_accuracy.py results/plan --run
    python benchmarks/plan_accuracy.py revbench/data/reference/nvidia-h100-80gb-hbm3 --repredict

``--repredict`` ignores the predictions stored in the rows and asks the planner as it is now
(for rows from a GPU, with that GPU's compute capability from revbench's GPU table), for peaks
and for the largest batch of max-batch rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from revbench import results
from revbench.gpus import by_device_name
from revbench.models.config import ModelConfig
from revbench.plan import predict, predict_max_batch
from revbench.runner import run_suite
from revbench.units import parse_bytes

SUITES = Path(__file__).resolve().parent.parent / "revbench" / "suites"
CPU_SUITES = ("quickstart", "depth_sweep", "moe", "parallel")


class _Case:
    """A case rebuilt from a results row's ``section.field`` columns."""

    def __init__(self, row: pd.Series) -> None:
        for section in ("model", "data", "train", "measure"):
            values: dict[str, Any] = {}
            for key, value in row.items():
                if str(key).startswith(section + ".") and not _missing(value):
                    name = str(key).split(".", 1)[1]
                    values[name] = _plain(value)
            setattr(self, section, values)


def _missing(v: Any) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
        return v  # pydantic's strict ints need ints: the caller fixes the known ones
    return v


_INTS = {
    "vocab_size",
    "d_model",
    "n_layers",
    "n_heads",
    "d_ff",
    "max_seq_len",
    "n_kv_heads",
    "n_experts",
    "top_k",
    "d_ff_shared",
    "revffn_fp_iters",
    "head_chunk_tokens",
    "batch_size",
    "seq_len",
    "nproc_per_node",
    "threads",
    "seed",
    "warmup",
    "steps",
    "trial_steps",
    "eval_examples",
    "train_steps",
    "distill_steps",
    "repeats",
    "min_size",
    "max_size",
} | {  # and every integer field of the model's configuration (a_seed, ...)
    f.name
    for f in dataclasses.fields(ModelConfig)
    if str(f.type).startswith(("int", "Annotated[int"))
}


def _case(row: pd.Series) -> _Case:
    c = _Case(row)
    for section in ("model", "data", "train", "measure"):
        d = getattr(c, section)
        for k in list(d):
            if k in _INTS and isinstance(d[k], float):
                d[k] = int(d[k])
    return c


def _cpu_variants(out: Path) -> list[Path]:
    """Peak-memory-only copies of the CPU-sized suites, float32 and bf16."""
    made = []
    for name in CPU_SUITES:
        spec = yaml.safe_load((SUITES / f"{name}.yaml").read_text())
        spec["metrics"] = ["peak_memory"]
        # DDP reaches its steady footprint at the third step: it rebuilds its gradient buckets
        # in the second, and from then on they exist before each step starts (per-step peaks of
        # parallel.yaml's DDP baseline, MiB: 78.6, 91.8, 98.4, 98.5, 99.0), which the planner
        # predicts; the other suites are steady from the second step.
        steps = 2 if name == "parallel" else 1
        spec.setdefault("measure", {}).update(steps=steps, warmup=1)
        for dtype in ("float32", "bfloat16"):
            s = dict(spec, name=f"{name}_{dtype}")
            s["defaults"] = {k: dict(v) for k, v in spec["defaults"].items()}
            s["defaults"].setdefault("train", {})["dtype"] = dtype
            path = out / f"{name}_{dtype}.yaml"
            path.write_text(yaml.safe_dump(s, sort_keys=False))
            made.append(path)
    return made


def _gpu(r: pd.Series) -> Any:
    return by_device_name(r.get("device_name")) if r.get("device_type") == "cuda" else None


def table(rows: pd.DataFrame, repredict: bool = False) -> pd.DataFrame:
    out = []
    for _, r in rows.iterrows():
        measured = r.get("peak_mem_delta_bytes")
        if _missing(measured):
            continue
        predicted = None if repredict else r.get("predicted_peak_bytes")
        if _missing(predicted):
            try:
                device = r.get("device_type") or None
                predicted = predict(_case(r), device=device, gpu=_gpu(r)).peak_bytes
            except Exception as e:  # a row the planner cannot plan
                print(f"  {r['suite']} {r['case']}: no prediction ({e})")
                continue
        out.append(
            {
                "suite": r["suite"],
                "case": r["case"],
                "dtype": r.get("train.dtype"),
                "device": r.get("device_name"),
                "measured MiB": measured / 2**20,
                "predicted MiB": predicted / 2**20,
                "error %": 100 * (predicted / measured - 1),
            }
        )
    return pd.DataFrame(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--run", action="store_true", help="run the CPU-sized suites first")
    ap.add_argument(
        "--repredict", action="store_true", help="ask the planner now, not the rows' predictions"
    )
    args = ap.parse_args()
    if args.run:
        with tempfile.TemporaryDirectory() as tmp:
            for suite in _cpu_variants(Path(tmp)):
                print(f"running {suite.stem} ...", flush=True)
                run_suite(suite, args.results, resume=True, quiet=True)
    df = results.load(args.results) if args.results.exists() else pd.DataFrame()
    df = df[df["status"] == "ok"] if len(df) else df
    t = table(df, args.repredict)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_rows", 500)
    if not t.empty:
        print(t.round(2).to_string(index=False))
        for suite, g in t.groupby("suite"):
            e = g["error %"].abs()
            print(
                f"{suite:24s} {len(g):3d} cases  |error| median {e.median():5.2f}%  "
                f"max {e.max():5.2f}%"
            )
    if len(df) and "predicted_max_batch_size" in df:
        mb = df.dropna(subset=["max_batch_size", "predicted_max_batch_size"]).copy()
        if len(mb) and args.repredict:
            mb["predicted_max_batch_size"] = [
                predict_max_batch(
                    _case(r),
                    parse_bytes(r["measure.budget"]),
                    device=r.get("device_type"),
                    gpu=_gpu(r),
                )
                for _, r in mb.iterrows()
            ]
        if len(mb):
            print("\nmax batch: predicted vs found")
            print(
                mb[
                    ["suite", "case", "predicted_max_batch_size", "max_batch_size", "search_trials"]
                ].to_string(index=False)
            )


if __name__ == "__main__":
    main()
