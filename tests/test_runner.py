"""End-to-end runs of tiny suites: real child processes, real parquet rows."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from conftest import write_suite

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

# One live run of these cases serves every failure test below (``faults``): each kind of
# failure is a row and the suite goes on. The case processes are forked by the warm zygote
# (the default), so this is also how a warm case process that crashes or hangs is recorded.
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
  - {name: killed, fault: killed}
  - {name: hangs, fault: hang, timeout_s: HANG_S}
metrics: [throughput]
"""
HANG_S = 3  # any case still running after its timeout is a timeout row, hung or merely slow


def test_run_writes_rows_that_load_back_with_the_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)  # only the metric may set it
    suite = write_suite(tmp_path, TINY)
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


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The FAULTS suite run once through the command line: its folder, exit code and rows."""
    folder = tmp_path_factory.mktemp("faults")
    suite = write_suite(folder, FAULTS.replace("HANG_S", str(HANG_S)))
    out = folder / "res"
    code = main(["run", str(suite), "--out", str(out), "--quiet"])
    return SimpleNamespace(suite=suite, out=out, code=code, rows=results.load(out))


def row(faults: SimpleNamespace, case: str) -> pd.Series:
    (i,) = faults.rows.index[faults.rows["case"] == case]
    return faults.rows.loc[i]


def test_failures_are_rows_and_the_suite_goes_on(faults: SimpleNamespace) -> None:
    assert faults.code == 1  # some case runs failed
    assert list(faults.rows["case"]) == [
        "fine",
        "crashes",
        "raises",
        "runs out of memory",
        "killed",
        "hangs",
    ]
    fine = row(faults, "fine")
    assert fine["status"] == "ok" and pd.isna(fine["error"]) and fine["step_time_s_median"] > 0
    for case in ("crashes", "raises", "runs out of memory", "killed", "hangs"):
        assert pd.isna(row(faults, case)["step_time_s_median"]), case


def test_a_crash_is_an_error_row_naming_the_signal(faults: SimpleNamespace) -> None:
    crashes = row(faults, "crashes")
    assert crashes["status"] == "error" and "killed by SIGABRT" in crashes["error"]


def test_an_exception_is_an_error_row_with_its_last_line(faults: SimpleNamespace) -> None:
    raises = row(faults, "raises")
    assert raises["status"] == "error"
    assert raises["error"] == "throughput: RuntimeError: injected fault (measure.fault: error)"


def test_out_of_memory_and_a_sigkill_are_oom_rows(faults: SimpleNamespace) -> None:
    oom = row(faults, "runs out of memory")
    assert oom["status"] == "oom" and "OutOfMemoryError" in oom["error"]
    assert row(faults, "killed")["status"] == "oom"  # as the kernel's OOM killer would


def test_a_hang_is_a_timeout_row_after_its_timeout(faults: SimpleNamespace) -> None:
    hangs = row(faults, "hangs")
    assert hangs["status"] == "timeout"
    assert HANG_S <= hangs["wall_time_s"] < HANG_S + 22


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
    suite = write_suite(tmp_path, text.replace("[peak_memory, throughput]", "[throughput]"))
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


def test_resume_reruns_failed_cases_only(
    faults: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "res"
    shutil.copytree(faults.out, out)  # the shared run's rows: one ok, five failed
    before = list(faults.rows["case"])
    run = ["run", str(faults.suite), "--out", str(out)]
    assert main([*run, "--dry-run", "--resume"]) == 0
    planned = " ".join(capsys.readouterr().out.split())  # the table's title may wrap
    assert "5 case runs planned, 1 already done" in planned
    assert main([*run, "--quiet", "--resume", "--only", "fine"]) == 0  # done: nothing runs
    assert len(results.load(out)) == len(before)
    assert main([*run, "--quiet", "--resume", "--only", "raises"]) == 1
    df = results.load(out)
    assert list(df["case"]) == [*before, "raises"]


def test_dry_run_and_bad_suite_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "res"
    assert main(["run", str(write_suite(tmp_path, TINY)), "--out", str(out), "--dry-run"]) == 0
    assert "arch=midpoint" in capsys.readouterr().out
    assert not out.exists()
    bad = write_suite(tmp_path, TINY.replace("n_heads: 2", "n_heads: 3"), "bad.yaml")
    assert main(["run", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("revbench: error: ") and "divisible by n_heads" in err
    assert len(err.splitlines()) == 1
    assert not out.exists()


def test_validate_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(write_suite(tmp_path, TINY))]) == 0
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
