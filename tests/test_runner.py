"""End-to-end runs of tiny suites: real child processes, real parquet rows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from revbench import results
from revbench.cli import main

TINY = """
name: tiny
defaults:
  model: {vocab_size: 64, d_model: 32, n_heads: 2, max_seq_len: 16, n_layers: 2}
  data: {batch_size: 2, seq_len: 16}
  train: {device: cpu, threads: 1}
measure: {warmup: 1, steps: 2, timeout_s: 120}
matrix:
  arch: [baseline, midpoint]
metrics: [peak_memory, throughput]
"""

FAULTS = """
name: faults
defaults:
  model: {vocab_size: 64, d_model: 32, n_heads: 2, max_seq_len: 16, n_layers: 1}
  data: {batch_size: 2, seq_len: 16}
  train: {device: cpu, threads: 1}
measure: {warmup: 0, steps: 1, timeout_s: 60}
cases:
  - {name: fine}
  - {name: crashes, fault: crash}
  - {name: raises, fault: error}
  - {name: runs out of memory, fault: oom}
  - {name: hangs, fault: hang, timeout_s: 8}
metrics: [throughput]
"""


def write(tmp_path: Path, text: str, name: str = "suite.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_run_writes_rows_that_load_back_with_the_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)  # only the metric may set it
    suite = write(tmp_path, TINY)
    out = tmp_path / "res"
    assert main(["run", str(suite), "--out", str(out), "--quiet"]) == 0
    files = sorted((out / "tiny").glob("*.parquet"))
    assert len(files) == 2
    df = results.load(out)
    assert list(df.columns) == [c.name for c in results.columns()]
    assert list(df["status"]) == ["ok", "ok"]
    assert set(df["model.arch"]) == {"baseline", "midpoint"}
    for col in (
        "peak_mem_bytes",
        "activation_bytes",
        "param_bytes",
        "step_time_s_median",
        "tokens_per_s",
        "torch_version",
        "device_name",
        "hostname",
    ):
        assert df[col].notna().all(), col
    assert (df["tokens_per_s"] > 0).all()
    assert (df["step_time_s_p10"] <= df["step_time_s_median"]).all()
    assert (df["step_time_s_median"] <= df["step_time_s_p90"]).all()
    # the suffix is the MALLOC_MMAP_THRESHOLD_ the child saw (this process has none: see above)
    assert df["memory_method"].str.endswith("+mmap65536").all()
    assert str(df["timestamp_utc"].dtype) == "datetime64[us, UTC]"
    assert df["model.n_layers"].dtype == "int64" and df["data.batch_size"].dtype == "int64"
    assert df["device_type"].eq("cpu").all() and df["driver_version"].isna().all()


def test_failures_are_rows_and_the_suite_goes_on(tmp_path: Path) -> None:
    suite = write(tmp_path, FAULTS)
    out = tmp_path / "res"
    assert main(["run", str(suite), "--out", str(out), "--quiet"]) == 1
    df = results.load(out).set_index("case")
    assert df.loc["fine", "status"] == "ok" and pd.isna(df.loc["fine", "error"])
    assert df.loc["crashes", "status"] == "error"
    assert "killed by SIGABRT" in df.loc["crashes", "error"]
    assert df.loc["raises", "status"] == "error"
    assert df.loc["raises", "error"] == (
        "throughput: RuntimeError: injected fault (measure.fault: error)"
    )
    assert df.loc["runs out of memory", "status"] == "oom"
    assert "OutOfMemoryError" in df.loc["runs out of memory", "error"]
    assert df.loc["hangs", "status"] == "timeout"
    assert 8 <= df.loc["hangs", "wall_time_s"] < 30
    for case in ("crashes", "raises", "runs out of memory", "hangs"):
        assert pd.isna(df.loc[case, "step_time_s_median"])


def _runner(suite: Path, out: Path, *extra: str) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "revbench.cli",
        "run",
        str(suite),
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]
    return subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )


def test_resume_after_kill_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    text = TINY.replace(
        "arch: [baseline, midpoint]", "arch: [baseline, midpoint]\n  n_layers: [1, 2]"
    )
    suite = write(tmp_path, text.replace("[peak_memory, throughput]", "[throughput]"))
    out = tmp_path / "res"
    proc = _runner(suite, out)
    deadline = time.monotonic() + 120
    while not list((out / "tiny").glob("*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and the case process it was running
    proc.wait()
    first = results.load(out)
    assert 1 <= len(first) < 4, "the kill must land mid-suite"
    assert (first["status"] == "ok").all()

    resumed = _runner(suite, out, "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode() if resumed.stderr else ""
    df = results.load(out)
    assert len(df) == 4
    assert df["config_hash"].is_unique
    assert set(df["case"]) == {
        f"arch={a},n_layers={n}" for a in ("baseline", "midpoint") for n in (1, 2)
    }
    assert not [
        p
        for p in (out / "tiny").iterdir()
        if not p.name.endswith(".parquet") and not p.name.startswith(".")
    ]

    # Everything done: a second resume runs nothing and writes nothing.
    assert main(["run", str(suite), "--out", str(out), "--resume", "--quiet"]) == 0
    assert len(results.load(out)) == 4


def test_resume_reruns_failed_cases_only(tmp_path: Path) -> None:
    suite = write(tmp_path, FAULTS.replace("  - {name: hangs, fault: hang, timeout_s: 8}\n", ""))
    out = tmp_path / "res"
    main(["run", str(suite), "--out", str(out), "--quiet", "--only", "fine"])
    assert main(["run", str(suite), "--out", str(out), "--dry-run", "--resume"]) == 0
    before = len(results.load(out))
    assert (
        main(["run", str(suite), "--out", str(out), "--quiet", "--resume", "--only", "raises"]) == 1
    )
    df = results.load(out)
    assert len(df) == before + 1 and list(df["case"]) == ["fine", "raises"]


def test_dry_run_and_bad_suite_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "res"
    assert main(["run", str(write(tmp_path, TINY)), "--out", str(out), "--dry-run"]) == 0
    assert "arch=midpoint" in capsys.readouterr().out
    assert not out.exists()
    bad = write(tmp_path, TINY.replace("n_heads: 2", "n_heads: 3"), "bad.yaml")
    assert main(["run", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("revbench: error: ") and "divisible by n_heads" in err
    assert len(err.splitlines()) == 1
    assert not out.exists()


def test_validate_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(write(tmp_path, TINY))]) == 0
    assert "2 cases" in capsys.readouterr().out
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    for name in (
        "baseline",
        "midpoint",
        "leapfrog",
        "hamiltonian",
        "revnet",
        "peak_memory",
        "throughput",
        "tasks",
    ):
        assert name in text


def test_console_script_help_and_exit_codes(tmp_path: Path) -> None:
    for args in (["--help"], ["run", "--help"], ["validate", "--help"], ["list", "--help"]):
        r = subprocess.run([sys.executable, "-m", "revbench.cli", *args], capture_output=True)
        assert r.returncode == 0 and b"usage: revbench" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "revbench.cli", "validate", str(tmp_path / "missing.yaml")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1
