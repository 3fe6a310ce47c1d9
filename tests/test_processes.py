"""Process rules: nothing outlives the runner or the dashboard, one run per results folder, a
failing disk stops the suite with every earlier row intact, a row that cannot be stored is an
error row, a real allocation failure is an ``oom`` row."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil
import pytest
from conftest import write_suite

from revbench import results
from revbench.cli import main

TINY = """
name: tiny
defaults:
  model: {vocab_size: 64, d_model: 32, n_heads: 2, max_seq_len: 16, n_layers: 1}
  data: {batch_size: 2, seq_len: 16}
  train: {device: cpu, threads: 1}
measure: {warmup: 0, steps: 1, timeout_s: 120}
matrix:
  seed: [0, 1, 2]
metrics: [throughput]
"""


def cli(*args: str, **kw: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "revbench.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        **kw,  # type: ignore[arg-type]
    )


def descendants_when(proc: subprocess.Popen[bytes], n: int, timeout_s: float = 120) -> list[int]:
    """The pids under ``proc`` once there are at least ``n`` of them."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            kids = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            kids = []
        if len(kids) >= n:
            return [k.pid for k in kids]
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        time.sleep(0.2)
    raise AssertionError(f"fewer than {n} processes under the runner after {timeout_s}s")


def alive(pids: Sequence[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def wait_gone(pids: Sequence[int], timeout_s: float = 20) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive(pids)


@pytest.fixture
def reap() -> Iterator[list[int]]:
    """Pids to SIGKILL at the end whatever happened (a failing test leaves nothing behind)."""
    pids: list[int] = []
    yield pids
    for pid in alive(pids):
        os.kill(pid, signal.SIGKILL)


def test_kill_9_of_the_runner_takes_a_ddp_case_and_its_ranks_with_it(
    tmp_path: Path, reap: list[int]
) -> None:
    suite = write_suite(
        tmp_path,
        TINY.replace("threads: 1}", "threads: 1, parallel: ddp, nproc_per_node: 2}").replace(
            "timeout_s: 120}", "timeout_s: 300, fault: hang}"
        ),
    )
    runner = cli("run", str(suite), "--out", str(tmp_path / "res"), "--quiet")
    # torchrun and its two ranks (and whatever torchrun starts besides)
    pids = descendants_when(runner, 3)
    reap.extend(pids)
    time.sleep(1.0)  # the ranks are inside the injected hang
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait()
    assert wait_gone(pids) == [], "processes survived the runner's SIGKILL"


def test_sigterm_of_the_dashboard_stops_its_streamlit_server(
    tmp_path: Path, reap: list[int]
) -> None:
    from conftest import require

    require("streamlit")
    from revbench.dashboard import free_port

    port = free_port()
    dash = cli(
        "dashboard", str(Path(results.__file__).parent / "data" / "reference"), "--port", str(port)
    )
    pids = descendants_when(dash, 1, timeout_s=60)
    reap.extend(pids)
    import urllib.request

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
                break
        except OSError:
            time.sleep(0.3)
    dash.send_signal(signal.SIGTERM)
    assert dash.wait(timeout=20) is not None
    assert wait_gone(pids) == [], "the Streamlit server outlived `revbench dashboard`"


def test_a_second_run_on_the_same_results_folder_is_refused(
    tmp_path: Path, reap: list[int]
) -> None:
    suite = write_suite(tmp_path, TINY.replace("timeout_s: 120}", "timeout_s: 300, fault: hang}"))
    out = tmp_path / "res"
    first = cli("run", str(suite), "--out", str(out), "--quiet")
    reap.extend(descendants_when(first, 1))
    reap.append(first.pid)
    second = cli("run", str(suite), "--out", str(out), "--quiet")
    assert second.wait(timeout=60) == 2
    err = second.stderr.read().decode() if second.stderr else ""
    assert "another revbench run is writing these results" in err and "--wait" in err
    assert len(err.strip().splitlines()) == 1
    first.kill()
    first.wait()
    # With the first gone the lock is free again (the OS released it with the process).
    fine = write_suite(tmp_path, TINY, "fine.yaml")
    assert main(["run", str(fine), "--out", str(out), "--quiet", "--only", "seed=0"]) == 0


def test_a_failing_disk_stops_the_suite_keeping_every_earlier_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Simulated ENOSPC on the second row: exit 3, one line, the first row intact and loadable,
    and --resume finishes the rest."""
    suite = write_suite(tmp_path, TINY)
    out = tmp_path / "res"
    real = results.write_row
    calls = {"n": 0}

    def full_disk(row: dict, path: Path) -> Path:
        calls["n"] += 1
        if calls["n"] == 2:
            # as the real writer would leave it: a half-written hidden temp file, then ENOSPC
            (path.parent / f".{path.name}.tmp").write_bytes(b"PAR1\x00")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(row, path)

    monkeypatch.setattr(results, "write_row", full_disk)
    assert main(["run", str(suite), "--out", str(out), "--quiet"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "--resume" in err[0]
    assert calls["n"] == 2, "the suite must stop at the failed write"
    first = results.load(out)
    assert len(first) == 1 and (first["status"] == "ok").all()

    monkeypatch.setattr(results, "write_row", real)
    assert main(["run", str(suite), "--out", str(out), "--quiet", "--resume"]) == 0
    df = results.load(out)
    assert len(df) == 3 and df["config_hash"].is_unique


def test_a_value_that_cannot_be_stored_makes_an_error_row_not_a_lost_one(tmp_path: Path) -> None:
    from revbench.caserun import run_job
    from revbench.executors import Job
    from revbench.runner import run_suite

    class Overflowing:
        """Runs each job for real, then returns a metric value past int64, as a broken metric
        might."""

        name = "local"

        def map(self, jobs: Sequence[Job], resources: object) -> Iterator[tuple[Job, dict]]:
            for job in jobs:
                row = run_job(job.to_dict())
                yield job, {**row, "tokens_per_step": 2**70, "not_a_column": 1}

        def close(self) -> None:
            pass

    suite = write_suite(tmp_path, TINY.replace("seed: [0, 1, 2]", "seed: [0]"))
    report = run_suite(suite, tmp_path / "res", quiet=True, executor=Overflowing())
    (row,) = report.rows
    assert row["status"] == "error"
    assert "could not store 2 value(s)" in row["error"]
    assert "not_a_column" in row["error"] and "tokens_per_step" in row["error"]
    (saved,) = results.load(tmp_path / "res").to_dict("records")
    assert saved["status"] == "error" and saved["step_time_s_median"] > 0  # the rest is kept


def test_a_real_allocation_failure_is_an_oom_row(tmp_path: Path) -> None:
    """measure.memory_cap (RLIMIT_DATA) makes the model's first allocations fail in the case
    process: torch's CPU allocator raises, the row says oom."""
    text = TINY.replace("seed: [0, 1, 2]", "seed: [0]").replace("d_model: 32", "d_model: 1024")
    # ~50 MB of parameters alone: past a 64 MiB cap once gradients and AdamW state exist
    suite = write_suite(
        tmp_path, text.replace("timeout_s: 120}", "timeout_s: 120, memory_cap: 64MiB}")
    )
    from revbench.runner import run_suite

    (row,) = run_suite(suite, tmp_path / "res", quiet=True).rows
    assert row["status"] == "oom", row["error"]
    assert "DefaultCPUAllocator: can't allocate memory" in row["error"]


def test_memory_cap_flag_reaches_the_case_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = TINY.replace("seed: [0, 1, 2]", "seed: [0]").replace("d_model: 32", "d_model: 1024")
    suite = write_suite(tmp_path, text)
    monkeypatch.delenv("REVBENCH_MEMORY_CAP", raising=False)
    out = tmp_path / "res"
    assert main(["run", str(suite), "--out", str(out), "--quiet", "--memory-cap", "64MiB"]) == 1
    assert results.load(out)["status"].tolist() == ["oom"]
    assert main(["run", str(suite), "--out", str(out), "--memory-cap", "lots"]) == 2


def test_out_is_checked_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = write_suite(tmp_path, TINY)
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out in (afile, afile / "below"):
        for extra in ((), ("--dry-run",)):
            assert main(["run", str(suite), "--out", str(out), "--quiet", *extra]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "is a file, not a folder" in err[0]
    assert afile.read_text() == "x"


def test_sigterm_of_the_runner_removes_its_case_folders_and_processes(
    tmp_path: Path, reap: list[int]
) -> None:
    suite = write_suite(tmp_path, TINY.replace("timeout_s: 120}", "timeout_s: 300, fault: hang}"))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    runner = cli(
        "run",
        str(suite),
        "--out",
        str(tmp_path / "res"),
        "--quiet",
        env={**os.environ, "TMPDIR": str(scratch)},
    )

    reap.append(runner.pid)  # a failure below must not leave the runner behind

    # the zygotes start before the case does: wait for the case's folder and its process
    # (a child of a zygote, in a session of its own)
    def case_started() -> bool:
        folders = [p for p in scratch.iterdir() if p.name.startswith("revbench-case-")]
        kids = psutil.Process(runner.pid).children(recursive=True)
        return bool(folders) and any(os.getsid(k.pid) == k.pid for k in kids)

    deadline = time.monotonic() + 120
    while not case_started():
        assert time.monotonic() < deadline and runner.poll() is None
        time.sleep(0.2)
    pids = descendants_when(runner, 1)
    reap.extend(pids)
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(timeout=30) == 130
    assert wait_gone(pids) == []
    assert not [p for p in scratch.iterdir() if p.name.startswith("revbench-case-")]


def test_a_really_full_disk_stops_the_suite_keeping_every_earlier_row(tmp_path: Path) -> None:
    """The same on a real, tiny tmpfs (root only; the simulated test above runs everywhere):
    the first row fits, the second does not."""
    disk = tmp_path / "disk"
    disk.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=80k", "tmpfs", str(disk)], capture_output=True
    )
    if made.returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        suite = write_suite(tmp_path, TINY)
        runner = cli("run", str(suite), "--out", str(disk), "--quiet")
        assert runner.wait(timeout=300) == 3
        err = runner.stderr.read().decode() if runner.stderr else ""
        assert "No space left on device" in err and len(err.strip().splitlines()) == 1, err
        df = results.load(disk)
        assert len(df) == 1 and (df["status"] == "ok").all()
        assert not [p for p in (disk / "tiny").iterdir() if p.name.endswith(".tmp")]
    finally:
        subprocess.run(["umount", str(disk)], check=False)
