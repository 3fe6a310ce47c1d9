"""How much of a suite's wall time is measurement, and how much is harness (issue 19's targets).

Three figures, each the median of ``--repeats`` runs on this machine:

1. **Quickstart end to end**: ``revbench run quickstart`` as a user runs it (warm case
   processes forked from the zygote), and with ``--fresh-processes`` for comparison.
2. **Orchestration overhead** on quickstart: suite wall time minus the work, over the wall
   time. The work is what the case processes do after their imports: every case's metrics run
   in an already-warm process (``revbench.child.run``: model builds, warm-up, measured steps),
   timed. That process is started with the metric's own environment, as its zygote is: a
   memory metric's low ``MALLOC_MMAP_THRESHOLD_`` (read by glibc once, at process start)
   makes every large tensor a fresh mapping, which slows the measured steps themselves
   (midpoint at 8 layers: 1.37 s against 0.82 s); that is the measurement's price, not the
   harness's.
3. **Overhead of a max-batch trial**: a small ``max_batch_size`` search (each trial a case
   process) through the runner, after a warm-up case whose trials pay for starting the
   zygotes; per trial, the case's wall time minus the trials' in-process time (each trial size
   of the search rerun in a warm process with the metric's environment), divided by the
   number of trials.

    python benchmarks/harness_overhead.py               # 3 repeats, prints a markdown table
    python benchmarks/harness_overhead.py --repeats 1 --no-fresh

Run it on a quiet machine (the load average is printed): every figure is a whole-process
timing and moves with what else runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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


def _metric_env(metric: str) -> dict[str, str]:
    """The environment a case process measuring ``metric`` starts with (its allocator setting:
    glibc reads ``MALLOC_MMAP_THRESHOLD_`` once, at process start)."""
    from revbench.measure.metrics import METRICS

    return {**os.environ, **METRICS.get(metric).env}


def _in_process(job: str, metric: str, *args: str) -> Any:
    """Run ``job`` (``work`` or ``trials``) for ``metric`` in a fresh process started with the
    metric's environment and return what it prints: the work a case process does runs there
    under the same allocator setting, timed only after that process is warm."""
    cmd = [sys.executable, __file__, f"--{job}", metric, *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=_metric_env(metric))
    return json.loads(out.stdout.strip().splitlines()[-1])


def _work_here(suite_path: str, metric: str) -> float:
    """Seconds the case processes measuring ``metric`` spend working, run in this process."""
    from revbench.child import run
    from revbench.suite import load_suite

    cases = [c for c in load_suite(suite_path).cases if metric in c.metrics]
    _freeze()
    total = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        case_file = Path(tmp) / "case.json"
        for i, case in enumerate(cases):
            case_file.write_text(json.dumps(case.to_dict()))
            if i == 0:  # warm this process once (lazy imports, allocator)
                run(case_file, metric)
            t = time.perf_counter()
            out = run(case_file, metric)
            total += time.perf_counter() - t
            if out["status"] != "ok":
                raise SystemExit(f"{case.name} {metric}: {out['error']}")
    return total


def _work_seconds(suite_path: str) -> float:
    """Seconds the case processes' work takes: per metric, in one warm process that has the
    metric's allocator environment (a memory metric's low mmap threshold slows its own steps;
    that is measurement, not harness)."""
    from revbench.suite import load_suite

    metrics = sorted({m for c in load_suite(suite_path).cases for m in c.metrics})
    return sum(_in_process("work", m, suite_path) for m in metrics)


def _trials_here(suite_path: str, folders: list[str]) -> dict[str, list[float]]:
    """Per case of the trial suite (not the warm-up), per run folder: the seconds its trials'
    sizes take to measure in this warm process."""
    from revbench.measure.batch import measure_trial
    from revbench.results import load
    from revbench.suite import load_suite

    cases = {c.name: c for c in load_suite(suite_path).cases if c.name != "warm-up"}
    sizes: dict[str, list[list[int]]] = {name: [] for name in cases}
    for folder in folders:
        df = load(Path(folder))
        for name in cases:
            row = df[df.case == name].iloc[0]
            sizes[name].append([int(t["size"]) for t in row.search_trial_list])
    _freeze()
    measure_trial(cases["baseline"])  # warm
    inside: dict[str, list[float]] = {name: [] for name in cases}
    for name, case in cases.items():
        for run_sizes in sizes[name]:
            t = time.perf_counter()
            for size in run_sizes:
                measure_trial(case.with_settings(batch_size=size))
            inside[name].append(time.perf_counter() - t)
    return inside


def _freeze() -> None:
    """As the zygote does before it forks: what is imported so far out of the collector's sight
    (pandas and pyarrow, here), so that the timed work's collections do not walk it."""
    gc.collect()
    gc.freeze()


def _trial_overhead(repeats: int) -> list[tuple[str, int, float, float]]:
    """(case, trials, case wall s, overhead per trial s) of the median run, per case: the case's
    wall time minus its trials' work (timed in a warm process with the metric's allocator
    environment, as for quickstart's work), over the number of trials. The warm-up case's
    trials pay for starting the zygotes."""
    from revbench.results import load

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        suite = Path(tmp) / "trial_overhead.yaml"
        suite.write_text(TRIAL_SUITE)
        folders = [str(Path(tmp) / f"out{r}") for r in range(repeats)]
        for folder in folders:
            subprocess.run(
                [sys.executable, "-m", "revbench.cli", "run", str(suite), "--out", folder],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        inside = _in_process("trials", "max_batch_size", str(suite), *folders)
        runs = [load(Path(f)) for f in folders]
        for name, seconds in inside.items():
            per = []
            for df, work in zip(runs, seconds, strict=True):
                row = df[df.case == name].iloc[0]
                per.append((len(row.search_trial_list), float(row.wall_time_s), work))
            n, wall, work = sorted(per, key=lambda x: x[1])[len(per) // 2]
            out.append((name, n, wall, (wall - work) / n))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-fresh", action="store_true", help="skip the --fresh-processes runs")
    ap.add_argument("--work", metavar="METRIC", help=argparse.SUPPRESS)  # the child jobs
    ap.add_argument("--trials", metavar="METRIC", help=argparse.SUPPRESS)
    ap.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.work:
        print(json.dumps(_work_here(args.paths[0], args.work)))
        return
    if args.trials:
        print(json.dumps(_trials_here(args.paths[0], args.paths[1:])))
        return
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
