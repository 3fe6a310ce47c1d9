"""How much of a suite's wall time is measurement, and how much is harness (issue 19's targets).

Three figures, each the median of ``--repeats`` runs on this machine:

1. **Quickstart end to end**: ``revbench run quickstart`` as a user runs it (warm case
   processes forked from the zygote), and with ``--fresh-processes`` for comparison.
2. **Orchestration overhead** on quickstart: suite wall time minus the work, over the wall
   time. The work is what the case processes do after their imports: every case's metrics run
   in one already-warm process here (``revbench.child.run``: model builds, warm-up, measured
   steps), timed.
3. **Overhead of a max-batch trial**: a small ``max_batch_size`` search (each trial a case
   process) through the runner, after a warm-up case whose trials pay for starting the
   zygotes; per trial, the case's wall time minus the trials' in-process time (each trial size
   of the search rerun in this warm process), divided by the number of trials.

    python benchmarks/harness_overhead.py               # 3 repeats, prints a markdown table
    python benchmarks/harness_overhead.py --repeats 1 --no-fresh

Run it on a quiet machine (the load average is printed): every figure is a whole-process
timing and moves with what else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRIAL_SUITE = """
name: trial_overhead
defaults:
  model: {block: gpt2, vocab_size: 512, d_model: 128, n_heads: 4, n_layers: 4, max_seq_len: 128}
  data: {batch_size: 1, seq_len: 128}
  train: {device: cpu, dtype: float32, optimizer: adamw, lr: 1.0e-4, seed: 0, threads: 2}
measure: {trial_steps: 1, budget: 160MiB, headroom: 0.0, max_size: 512, timeout_s: 300}
cases:
  - {name: warm-up, arch: baseline, n_layers: 2}
  - {name: baseline, arch: baseline}
  - {name: midpoint, arch: midpoint}
metrics: [max_batch_size]
"""


def _run(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def _work_seconds(suite_path: str) -> float:
    """Seconds the case processes' work takes, run in this (warm) process."""
    from revbench.child import run
    from revbench.suite import load_suite

    cases = load_suite(suite_path).cases
    total = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        case_file = Path(tmp) / "case.json"
        for i, case in enumerate(cases):
            case_file.write_text(json.dumps(case.to_dict()))
            for metric in case.metrics:
                if i == 0:  # warm this process once (lazy imports, allocator)
                    run(case_file, metric)
                t = time.perf_counter()
                out = run(case_file, metric)
                total += time.perf_counter() - t
                if out["status"] != "ok":
                    raise SystemExit(f"{case.name} {metric}: {out['error']}")
    return total


def _trial_overhead(repeats: int) -> list[tuple[str, int, float, float]]:
    """(case, trials, case wall s, overhead per trial s) of the median run, per case."""
    from revbench.measure.batch import measure_trial
    from revbench.results import load
    from revbench.suite import load_suite

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        suite = Path(tmp) / "trial_overhead.yaml"
        suite.write_text(TRIAL_SUITE)
        runs = []
        for r in range(repeats):
            folder = Path(tmp) / f"out{r}"
            subprocess.run(
                [sys.executable, "-m", "revbench.cli", "run", str(suite), "--out", str(folder)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            runs.append(load(folder))
        cases = {c.name: c for c in load_suite(suite).cases}
        measure_trial(cases["baseline"])  # warm
        for name, case in cases.items():
            if name == "warm-up":  # its trials pay for starting the zygotes
                continue
            per = []
            for df in runs:
                row = df[df.case == name].iloc[0]
                trials = list(row.search_trial_list)
                inside = 0.0
                for trial in trials:
                    variant = case.with_settings(batch_size=int(trial["size"]))
                    t = time.perf_counter()
                    measure_trial(variant)
                    inside += time.perf_counter() - t
                per.append((len(trials), float(row.wall_time_s), inside))
            n, wall, inside = sorted(per, key=lambda x: x[1])[len(per) // 2]
            out.append((name, n, wall, (wall - inside) / n))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-fresh", action="store_true", help="skip the --fresh-processes runs")
    args = ap.parse_args()
    from revbench.shipped import resolve_suite

    quick = str(resolve_suite("quickstart"))
    load0 = os.getloadavg()[0]
    revbench = [sys.executable, "-m", "revbench.cli", "run", "quickstart"]
    walls: dict[str, list[float]] = {"warm": [], "fresh": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            walls["warm"].append(_run([*revbench, "--out", f"{tmp}/w{r}"]))
            if not args.no_fresh:
                walls["fresh"].append(
                    _run([*revbench, "--out", f"{tmp}/f{r}", "--fresh-processes"])
                )
    work = statistics.median(_work_seconds(quick) for _ in range(args.repeats))
    trials = _trial_overhead(args.repeats)
    load1 = os.getloadavg()[0]

    warm = statistics.median(walls["warm"])
    print(f"machine: {os.cpu_count()} cores, load average {load0:.1f} before, {load1:.1f} after")
    print(f"repeats: {args.repeats} (median)\n")
    print("| figure | value | target |")
    print("|---|---|---|")
    print(
        f"| quickstart, warm processes | {warm:.1f} s "
        f"({', '.join(f'{w:.1f}' for w in walls['warm'])}) | < 35 s |"
    )
    if walls["fresh"]:
        fresh = statistics.median(walls["fresh"])
        print(
            f"| quickstart, --fresh-processes | {fresh:.1f} s "
            f"({', '.join(f'{w:.1f}' for w in walls['fresh'])}) | - |"
        )
    print(f"| quickstart work (in-process) | {work:.1f} s | - |")
    print(f"| orchestration overhead, warm | {100 * (warm - work) / warm:.0f}% | < 30% |")
    for name, n, wall, over in trials:
        print(
            f"| max-batch trial overhead ({name}, {n} trials, case {wall:.1f} s) "
            f"| {over:.2f} s | < 1.5 s |"
        )


if __name__ == "__main__":
    main()
