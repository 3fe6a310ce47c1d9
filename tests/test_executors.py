"""Executors: the same suite through local, Ray and submitit gives the same rows; a worker
killed mid-case is recorded failed and ``--resume`` finishes it; resources reach the tasks."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import psutil
import pytest
from conftest import require_module, write_suite

from revbench import results
from revbench.cli import main
from revbench.errors import SuiteError
from revbench.executors import make_executor
from revbench.resources import Resources
from revbench.runner import RunReport, plan, run_suite
from revbench.suite import load_suite

SUITE = """
name: spread
defaults:
  model: {vocab_size: 64, d_model: 32, n_heads: 2, max_seq_len: 16, n_layers: 2}
  data: {batch_size: 2, seq_len: 16}
  train: {device: cpu, threads: 1}
measure: {warmup: 0, steps: 1, timeout_s: 120}
cases:
  - {name: base, arch: baseline}
  - {name: mid, arch: midpoint}
  - {name: broken, arch: leapfrog, fault: error}
metrics: [peak_memory]
"""


def _outcomes(df: pd.DataFrame) -> pd.DataFrame:
    """What must not depend on where a case ran: its config, status and error."""
    keep = ["case", "config_hash", "repeat", "status", "error", "metrics", "suite"]
    keep += [c for c in df.columns if c.startswith(("model.", "data.", "train.", "measure."))]
    return df[keep].sort_values("case").reset_index(drop=True)


def test_importing_revbench_imports_neither_ray_nor_submitit() -> None:
    code = (
        "import sys, revbench, revbench.cli, revbench.runner, revbench.executors\n"
        "import revbench.executors.ray, revbench.executors.slurm\n"
        "print(sorted(m for m in ('ray', 'submitit') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[object]:
    """One local Ray instance for the module's in-process Ray tests, with a custom resource the
    case runs may ask for, as a GPU type would be; executors join it and leave it running."""
    ray = require_module("ray")
    ray.init(num_cpus=2, resources={"H100": 2}, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def spread(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder holding SUITE's file; each executor's run writes its rows below it."""
    return write_suite(tmp_path_factory.mktemp("spread"), SUITE).parent


def _run(folder: Path, name: str, **kw: object) -> tuple[RunReport, pd.DataFrame]:
    report = run_suite(folder / "suite.yaml", folder / name, quiet=True, **kw)  # type: ignore[arg-type]
    return report, results.load(folder / name)


@pytest.fixture(scope="module")
def local_run(spread: Path) -> tuple[RunReport, pd.DataFrame]:
    return _run(spread, "local")


@pytest.fixture(scope="module")
def ray_run(spread: Path, ray_instance: object) -> tuple[RunReport, pd.DataFrame]:
    executor = make_executor("ray")
    try:
        return _run(spread, "ray", executor=executor, resources=Resources.parse({"H100": 1}))
    finally:
        executor.close()


@pytest.fixture(scope="module")
def slurm_run(spread: Path) -> tuple[RunReport, pd.DataFrame]:
    from revbench.executors.slurm import SlurmExecutor

    slurm = SlurmExecutor(spread / "slurm", cluster="local")  # submitit's local processes
    return _run(spread, "slurm", executor=slurm)


def _same_rows_as_local(
    run: tuple[RunReport, pd.DataFrame], local: tuple[RunReport, pd.DataFrame]
) -> None:
    (report, got), (local_report, want) = run, local
    assert sorted(want["status"]) == ["error", "ok", "ok"]
    pd.testing.assert_frame_equal(_outcomes(got), _outcomes(want))
    assert [r["case"] for r in report.rows] == [r["case"] for r in local_report.rows]  # suite order
    # Each row describes the host and device its worker measured on.
    assert (
        got["hostname"].notna().all()
        and (got["status"].eq("ok") <= got["device_type"].eq("cpu")).all()
    )
    assert got["peak_mem_bytes"].notna().sum() == 2
    assert (got.loc[got["status"] == "ok", "torch_threads"] == 1).all()  # threads: 1


@pytest.mark.slow
def test_ray_rows_match_the_local_executor(
    ray_run: tuple[RunReport, pd.DataFrame], local_run: tuple[RunReport, pd.DataFrame]
) -> None:
    _same_rows_as_local(ray_run, local_run)


@pytest.mark.slow
def test_the_ray_executor_leaves_a_running_instance_running(
    ray_run: tuple[RunReport, pd.DataFrame], ray_instance: object
) -> None:
    assert ray_instance.is_initialized()  # type: ignore[attr-defined]


@pytest.mark.slow
def test_submitit_rows_match_the_local_executor(
    slurm_run: tuple[RunReport, pd.DataFrame], local_run: tuple[RunReport, pd.DataFrame]
) -> None:
    _same_rows_as_local(slurm_run, local_run)


def _kill_ray_worker_of_first_case_process(driver_pid: int, deadline_s: float = 90) -> None:
    """Wait for a ``revbench.child`` process started under ``driver_pid`` (driver -> raylet ->
    Ray worker -> case process), then SIGKILL its parent: the Ray worker running the case."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if "revbench.child" not in (proc.info["cmdline"] or []):
                    continue
                if driver_pid not in {p.pid for p in proc.parents()}:
                    continue
                worker = proc.parent()
                assert worker is not None and "ray" in " ".join(worker.cmdline()).lower()
                worker.send_signal(signal.SIGKILL)
                return
            except psutil.Error:  # it ended meanwhile
                continue
        time.sleep(0.05)
    raise AssertionError("no case process appeared under the driver")


@pytest.mark.slow
def test_a_killed_ray_worker_fails_its_case_and_resume_finishes_it(tmp_path: Path) -> None:
    text = SUITE.replace("name: spread", "name: spread_kill").replace(
        "  - {name: broken, arch: leapfrog, fault: error}\n", ""
    )
    suite = write_suite(tmp_path, text)
    out = tmp_path / "res"
    cmd = [sys.executable, "-m", "revbench.cli", "run", str(suite), "--out", str(out)]
    driver = subprocess.Popen(
        [*cmd, "--executor", "ray", "--quiet"], stdout=subprocess.PIPE, text=True
    )
    try:
        _kill_ray_worker_of_first_case_process(driver.pid)
        stdout, _ = driver.communicate(timeout=180)
    finally:
        driver.kill()
    assert driver.returncode == 1, stdout  # some case runs failed
    df = results.load(out)
    assert sorted(df["status"]) == ["error", "ok"]
    lost = df[df["status"] == "error"].iloc[0]
    assert lost["error"].startswith("ray: ") and "died" in lost["error"].lower()
    assert pd.isna(lost["hostname"]) and pd.isna(lost["wall_time_s"])

    todo, skipped = plan(load_suite(suite), out, resume=True)
    assert [c.name for c, _ in todo] == [lost["case"]] and skipped == 1
    resumed = subprocess.run([*cmd, "--resume", "--quiet"], capture_output=True)
    assert resumed.returncode == 0, resumed.stderr
    done = results.load(out)
    assert set(done[done["status"] == "ok"]["case"]) == {"base", "mid"}


@pytest.mark.slow
def test_a_resource_no_node_has_is_refused_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ray_instance: object
) -> None:
    suite = write_suite(tmp_path, SUITE.replace("metrics:", "resources: {A100: 1}\nmetrics:"))
    out = tmp_path / "res"
    assert main(["run", str(suite), "--out", str(out), "--executor", "ray", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "asks for {'CPU': 1.0, 'A100': 1.0}" in err[0]
    assert "no node of the Ray cluster has that" in err[0]
    assert not out.exists() or not list(out.rglob("*.parquet"))


# --- resources and options: no cluster needed ------------------------------------------------


def test_resources_block_defaults_and_overrides(tmp_path: Path) -> None:
    suite = load_suite(
        write_suite(tmp_path, SUITE.replace("metrics:", "resources: {CPU: 4, A100: 1}\nmetrics:"))
    )
    case = suite.cases[0]
    assert suite.resources == Resources(4.0, None, {"A100": 1.0})
    assert suite.resources.for_case(case, gpus_available=True) == (4.0, 0.0, {"A100": 1.0})
    gpu_case = case.with_settings(device="auto", nproc_per_node=2)
    assert Resources().for_case(gpu_case, gpus_available=True) == (2.0, 2.0, {})
    assert Resources().for_case(gpu_case, gpus_available=False) == (2.0, 0.0, {})
    cli = Resources.parse({"GPU": 1, "H100": 1})
    assert suite.resources.merged(cli) == Resources(4.0, 1.0, {"A100": 1.0, "H100": 1.0})


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("{gpu: 1}", "resources: unknown resource 'gpu'; write 'GPU'"),
        ("{GPU: -1}", "resources.GPU: must be a number >= 0, got -1"),
        ("{H100: yes}", "resources.H100: must be a number >= 0, got True"),
    ],
)
def test_bad_resources_block_is_one_line(tmp_path: Path, block: str, message: str) -> None:
    path = write_suite(tmp_path, SUITE.replace("metrics:", f"resources: {block}\nmetrics:"))
    with pytest.raises(
        SuiteError, match=f"^{path}: {message}$".replace("[", r"\[").replace("{", r"\{")
    ):
        load_suite(path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--address", "auto"],
            "--address is the Ray cluster's; it needs --executor ray, not local",
        ),
        (
            ["--executor", "slurm", "--retries", "2"],
            "--retries is Ray's; it needs --executor ray, not slurm",
        ),
        (["--resources", "GPU1"], "--resources: 'GPU1' is not NAME=NUMBER (e.g. GPU=1,H100=1)"),
        (
            ["--executor", "ray", "--resources", "gpu=1"],
            "--resources: unknown resource 'gpu'; write 'GPU'",
        ),
        pytest.param(
            ["--executor", "slurm"],
            "--executor slurm: no Slurm here (srun is not on PATH); run revbench on a Slurm "
            "login node, or use --executor ray or local",
            marks=pytest.mark.skipif(shutil.which("srun") is not None, reason="Slurm is here"),
        ),
    ],
)
def test_bad_executor_options_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    out = tmp_path / "res"
    assert main(["run", str(write_suite(tmp_path, SUITE)), "--out", str(out), *args]) == 2
    assert capsys.readouterr().err.strip() == f"revbench: error: {message}"
    assert not out.exists()


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(Exception, match=r"pip install 'revbench\[ray\]'"):
        make_executor("ray")


def _is_case(proc: psutil.Process) -> bool:
    """A case process: started as ``python -m revbench.child``, or forked by the warm zygote
    (``python -m revbench.zygote``, whose command line it inherits)."""
    try:
        if "revbench.child" in proc.cmdline():
            return True
        parent = proc.parent()
        return parent is not None and "revbench.zygote" in parent.cmdline()
    except psutil.Error:  # ended meanwhile (the git call that reads the commit)
        return False


def test_sigterm_stops_the_run_and_its_case_processes(tmp_path: Path) -> None:
    suite = write_suite(
        tmp_path,
        SUITE.replace("name: spread", "name: spread_term").replace(
            "  - {name: base, arch: baseline}\n", "  - {name: base, arch: baseline, fault: hang}\n"
        ),
    )
    cmd = [sys.executable, "-m", "revbench.cli", "run", str(suite), "--out", str(tmp_path / "r")]
    driver = subprocess.Popen([*cmd, "--quiet"], stderr=subprocess.PIPE, text=True)
    end, children = time.monotonic() + 60, []
    while not children and time.monotonic() < end:  # the hanging case's process
        time.sleep(0.05)
        children = [p for p in psutil.Process(driver.pid).children(recursive=True) if _is_case(p)]
    assert children, "no case process started"
    driver.send_signal(signal.SIGTERM)
    _, err = driver.communicate(timeout=60)
    assert driver.returncode == 130
    assert "interrupted; finished case runs are saved (use --resume)" in err
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive


# --- what reaches Ray and Slurm: stand-ins that record every call ----------------------------

ONE = SUITE.replace("name: spread", "name: standin").replace(
    "  - {name: mid, arch: midpoint}\n  - {name: broken, arch: leapfrog, fault: error}\n", ""
)


class _FakeRay:
    """``ray`` as RayExecutor uses it; a task runs (in this process) when its result is got."""

    class exceptions:  # ray.exceptions.RayError
        class RayError(Exception):
            pass

    def __init__(self) -> None:
        self.options: list[dict[str, object]] = []

    def is_initialized(self) -> bool:
        return True  # joined, not owned: close() must leave it alone

    def init(self, **kw: object) -> None:
        raise AssertionError("the executor started a Ray instance although one was running")

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": 8.0, "H100": 2.0}

    def nodes(self) -> list[dict[str, object]]:
        return [{"Alive": True, "Resources": {"CPU": 8.0, "H100": 2.0}}]

    def remote(self, fn):  # type: ignore[no-untyped-def]
        ray = self

        class Task:
            def options(self, **kw: object) -> Task:
                ray.options.append(kw)
                return self

            def remote(self, arg: object) -> object:
                return lambda: fn(arg)

        return Task()

    def wait(self, refs: list, num_returns: int = 1) -> tuple[list, list]:  # type: ignore[type-arg]
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):  # type: ignore[no-untyped-def]
        return ref()

    def cancel(self, ref: object, force: bool = False) -> None:
        pass


def test_retries_and_resources_reach_the_ray_task_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    suite = write_suite(tmp_path, ONE.replace("metrics:", "resources: {CPU: 2}\nmetrics:"))
    out = tmp_path / "res"
    args = ["run", str(suite), "--out", str(out), "--executor", "ray", "--quiet"]
    assert main([*args, "--retries", "3", "--resources", "H100=1,GPU=0"]) == 0
    assert len(fake.options) == 1
    opts = fake.options[0]
    assert opts["max_retries"] == 3 and opts["retry_exceptions"] is False
    assert opts["resources"] == {"H100": 1.0}
    assert opts["num_cpus"] == 2.0 and opts["num_gpus"] == 0.0
    assert list(results.load(out)["status"]) == ["ok"]  # the task's outcome became the row


class _FakeSubmitit:
    """``submitit`` as SlurmExecutor uses it; a job runs when its result is asked for."""

    def __init__(self) -> None:
        self.executors: list[dict[str, object]] = []

    def AutoExecutor(self, folder: Path, cluster: str) -> object:
        record: dict[str, object] = {"folder": folder, "cluster": cluster}
        self.executors.append(record)

        class Job:
            job_id = "42"

            def __init__(self, fn, arg) -> None:  # type: ignore[no-untyped-def]
                self.fn, self.arg = fn, arg

            def done(self) -> bool:
                return True

            def result(self) -> object:
                return self.fn(self.arg)

            def cancel(self, check: bool = True) -> None:
                pass

        class Executor:
            def update_parameters(self, **params: object) -> None:
                record.update(params)

            def submit(self, fn, arg) -> Job:  # type: ignore[no-untyped-def]
                return Job(fn, arg)

        return Executor()


def test_slurm_parameters_from_the_suite_and_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import revbench.executors.slurm as slurm

    fake = _FakeSubmitit()
    monkeypatch.setitem(sys.modules, "submitit", fake)
    monkeypatch.setattr(slurm.shutil, "which", lambda name: f"/usr/bin/{name}")
    text = ONE.replace("timeout_s: 120", "timeout_s: 150").replace(
        "metrics:", "resources: {CPU: 3, A100: 1}\nmetrics:"
    )
    out = tmp_path / "res"
    args = ["run", str(write_suite(tmp_path, text)), "--out", str(out), "--executor", "slurm"]
    assert main([*args, "--partition", "gpu", "--resources", "H100=1,GPU=2", "--quiet"]) == 0
    (params,) = fake.executors
    assert params["cluster"] == "slurm" and params["folder"] == out / ".submitit" / "%j"
    assert params["timeout_min"] == 4  # ceil(150 s / 60) + 1
    assert params["cpus_per_task"] == 3 and params["gpus_per_node"] == 2
    assert params["nodes"] == 1 and params["tasks_per_node"] == 1
    assert params["slurm_partition"] == "gpu"
    assert params["slurm_constraint"] == "A100&H100"
    assert params["name"] == "revbench-standin"
    assert list(results.load(out)["status"]) == ["ok"]
