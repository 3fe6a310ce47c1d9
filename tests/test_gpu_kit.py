"""The GPU validation kit (benchmarks/gpu/) on CPU: its wheel list covers revbench's runtime
requirements, its suites validate, its tiny variants are tiny, and run.sh runs end to end with
--device cpu --tiny, leaving few enough files for the device tool to bring back."""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

from revbench import results
from revbench.suite import load_suite

ROOT = Path(__file__).parent.parent
KIT_DIR = ROOT / "benchmarks" / "gpu"
GPU_SUITE = ROOT / "revbench" / "suites" / "gpu_validation.yaml"
_spec = importlib.util.spec_from_file_location("gpu_kit", KIT_DIR / "kit.py")
kit = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(kit)  # type: ignore[union-attr]


def test_every_runtime_requirement_is_on_the_gpu_machine_or_carried() -> None:
    from packaging.requirements import Requirement

    there, carried = kit.machine_packages(), kit.wanted_wheels()
    assert {"torch", "pandas", "pyarrow", "rich", "psutil", "nvidia-ml-py"} <= there
    assert "pydantic" not in there  # the reason the kit exists
    for text in kit.runtime_requirements():
        name = kit.normalize(Requirement(text).name)
        assert name in there or name in carried, f"{text}: add it to benchmarks/gpu/wheels.txt"
    # pydantic's own requirements are carried together with it
    assert {"pydantic", "pydantic-core", "annotated-types", "typing-inspection"} <= set(carried)
    assert "liger-kernel" in carried
    assert all(v and v[0].isdigit() for v in carried.values()), "pin every wheel (==VERSION)"


def _fake_wheel(folder: Path, name: str, version: str, requires: list[str]) -> Path:
    path = folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires) + "\nlong description\n"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name.replace('-', '_')}-{version}.dist-info/METADATA", meta)
    return path


def test_check_wheels_finds_what_is_missing(tmp_path: Path) -> None:
    wanted = kit.wanted_wheels()
    requires = {
        "pydantic": [
            f"pydantic-core=={wanted['pydantic-core']}",
            "annotated-types>=0.6.0",
            "typing-extensions>=4.14.1",
            "typing-inspection>=0.4.2",
            "email-validator>=2.0.0; extra == 'email'",
        ],
        "liger-kernel": ["torch>=2.1.2", "triton>=2.3.1", "cuda-tile>=1.5; extra == 'cutile'"],
    }
    for name, version in wanted.items():
        _fake_wheel(tmp_path, name, version, requires.get(name, []))
    assert kit.check_wheels(tmp_path) == []

    (tmp_path / f"typing_inspection-{wanted['typing-inspection']}-py3-none-any.whl").unlink()
    _fake_wheel(tmp_path, "annotated-types", "0.1.0", [])  # a second, stale version
    _fake_wheel(tmp_path, "stray", "1.0", ["no-such-package>=1; python_version >= '3.8'"])
    problems = "\n".join(kit.check_wheels(tmp_path))
    assert "typing-inspection" in problems and "missing" in problems
    assert "annotated-types: 2 versions" in problems
    assert "stray: in" in problems and "no-such-package" in problems


def test_prepared_wheel_folder_is_complete() -> None:
    """Where prepare.sh has run (a developer's checkout), its folder is ready to carry."""
    folder = ROOT / ".whl"
    if not any(folder.glob("*.whl")):
        pytest.skip("no .whl folder: run bash benchmarks/gpu/prepare.sh to check real wheels")
    assert kit.check_wheels(folder) == []


def test_kit_suites_validate_and_shrink(tmp_path: Path) -> None:
    gpu = load_suite(GPU_SUITE)
    batch = load_suite(KIT_DIR / "max_batch_budget.yaml")
    for suite in (gpu, batch):
        assert {c.train.device for c in suite.cases} == {"cuda"}
        assert {c.train.dtype for c in suite.cases} == {"bfloat16"}
    depths = {c.model.n_layers for c in gpu.cases if c.model.d_model == 512}
    assert depths == {16, 32}
    assert {c.model.arch for c in batch.cases} == {"baseline", "midpoint"}
    assert batch.cases[0].measure.budget == "8GiB"
    for src in (GPU_SUITE, KIT_DIR / "max_batch_budget.yaml"):
        dst = tmp_path / src.name
        subprocess.run(
            [sys.executable, str(KIT_DIR / "tiny.py"), str(src), str(dst), "--device", "cpu"],
            check=True,
        )
        tiny = load_suite(dst)
        assert tiny.name.endswith("_tiny") and len(tiny.cases) <= 4
        assert all(c.train.device == "cpu" and c.model.d_model <= 32 for c in tiny.cases)
        assert all(c.model.n_layers <= 3 for c in tiny.cases)


def test_stamp_fills_only_missing_commits(tmp_path: Path) -> None:
    row = {
        "schema_version": results.SCHEMA_VERSION,
        "suite": "s",
        "case": "c",
        "config_hash": "h",
        "repeat": 0,
        "timestamp_utc": dt.datetime.now(dt.timezone.utc),
        "status": "ok",
    }
    results.write_row(row, tmp_path / "s" / "a.parquet")
    results.write_row({**row, "git_commit": "kept"}, tmp_path / "s" / "b.parquet")
    assert kit.stamp(tmp_path, "abc123") == 1
    df = results.load(tmp_path)
    assert sorted(df["git_commit"]) == ["abc123", "kept"]
    assert kit.stamp(tmp_path, "abc123") == 0
    # --replace: the device tool's copy reads its .git's older commit (run 2 of stop 27)
    assert kit.stamp(tmp_path, "def456", replace=True) == 2
    assert sorted(results.load(tmp_path)["git_commit"]) == ["def456", "def456"]
    assert kit.stamp(tmp_path, "def456", replace=True) == 0


def test_summary_prints_rows_whose_first_cells_are_lists(tmp_path: Path) -> None:
    # max-batch rows carry search_trial_list, which parquet gives back as an array: the
    # summary of the first GPU run's rows stopped on it (pd.isna of an array)
    row = {
        "schema_version": results.SCHEMA_VERSION,
        "suite": "gpu_validation_max_batch",
        "case": "midpoint",
        "case_index": 0,
        "config_hash": "h",
        "repeat": 0,
        "timestamp_utc": dt.datetime.now(dt.timezone.utc),
        "status": "ok",
        "max_batch_size": 11,
        "search_trial_list": [
            {"size": 12, "fits": False, "peak_bytes": None, "status": "oom"},
            {"size": 11, "fits": True, "peak_bytes": 7.5e9, "status": "ok"},
        ],
    }
    results.write_row(row, tmp_path / "gpu_validation_max_batch" / "a.parquet")
    text = kit.summary(tmp_path)
    assert "gpu_validation_max_batch: 1/1 rows ok" in text
    assert "midpoint" in text and "11" in text


def test_run_sh_rejects_bad_arguments(tmp_path: Path) -> None:
    for args in ([], ["--tiny"], [str(tmp_path), "--device", "tpu"], [str(tmp_path), "--bogus"]):
        proc = subprocess.run(
            ["bash", str(KIT_DIR / "run.sh"), *args], capture_output=True, text=True
        )
        assert proc.returncode == 2, args
        assert proc.stderr.strip().count("\n") == 0, proc.stderr


@pytest.mark.slow
def test_run_sh_tiny_on_cpu_end_to_end(tmp_path: Path) -> None:
    out, empty = tmp_path / "out", tmp_path / "no-wheels"
    empty.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHON": sys.executable}
    args = ["--device", "cpu", "--tiny", "--wheels", str(empty), "--budget-s", "400"]
    proc = subprocess.run(
        ["bash", str(KIT_DIR / "run.sh"), str(out), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=500,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # what comes back through the device tool: at most 8 plain files, no folders
    files = sorted(p.name for p in out.iterdir())
    assert files == ["doctor.txt", "env.txt", "kit.tar.gz", "summary.txt"]
    summary = (out / "summary.txt").read_text()
    for stage in ("doctor: rc 0", "suite: rc 0", "max_batch: rc 0"):
        assert stage in summary, summary
    assert "gpu_validation_tiny: 4/4 rows ok" in summary
    assert "PASS" in (out / "doctor.txt").read_text()
    unpacked = tmp_path / "unpacked"
    with tarfile.open(out / "kit.tar.gz") as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: refuse unsafe members
            tar.extractall(unpacked, filter="data")
        else:  # pragma: no cover - our own archive
            tar.extractall(unpacked)
    for log in ("doctor", "suite", "max_batch"):
        assert (unpacked / "logs" / f"{log}.log").stat().st_size > 0
    df = results.load(unpacked / "results")
    assert set(df["suite"]) == {"doctor", "gpu_validation_tiny", "gpu_validation_max_batch_tiny"}
    assert (df["status"] == "ok").all()
    assert df["git_commit"].notna().all()
    mb = df[df["suite"] == "gpu_validation_max_batch_tiny"]
    assert mb["max_batch_size"].notna().all() and mb["max_batch_tokens_per_s"].notna().all()
    assert yaml.safe_load(GPU_SUITE.read_text())["name"] == "gpu_validation"


# --- reference rows: shown by report and dashboard when nothing else is given -------------

FIXTURE_ROWS = ROOT / "tests" / "fixtures" / "results" / "base"


@pytest.fixture
def reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A checkout whose revbench/data/reference holds the fixture rows, run from an empty folder."""
    import shutil

    from revbench.analysis import report

    ref = tmp_path / "checkout" / "revbench" / "data" / "reference"
    shutil.copytree(FIXTURE_ROWS, ref / "fx-gpu")
    monkeypatch.setattr(report, "REFERENCE", ref.resolve())
    monkeypatch.chdir(tmp_path)
    return ref.resolve()


def test_report_shows_reference_rows_when_given_none(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from revbench.analysis.report import default_results
    from revbench.cli import main

    assert default_results() == reference and default_results("results") == reference
    out = tmp_path / "report"
    assert main(["report", "--out", str(out), "--format", "md,html", "--no-figures"]) == 0
    md = (out / "report.md").read_text()
    note = md.splitlines()[2]
    assert note.startswith("*Reference rows shipped with revbench") and "commit" in note
    devices = set(results.load(reference)["device_name"].dropna())
    assert devices and all(d in note for d in devices)
    assert "Reference rows shipped" in (out / "report.html").read_text()
    # rows of one's own under results/ win; a named folder is always what is shown
    own = tmp_path / "results" / "quickstart"
    own.mkdir(parents=True)
    (own / "row.parquet").write_bytes((next(FIXTURE_ROWS.rglob("*.parquet"))).read_bytes())
    assert default_results() == Path("results")
    assert default_results(reference / "fx-gpu") == reference / "fx-gpu"
    assert main(["report", "--out", str(tmp_path / "r2"), "--format", "md", "--no-figures"]) == 0
    assert "Reference rows" not in (tmp_path / "r2" / "report.md").read_text()


def test_report_without_any_rows_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from revbench.analysis import report
    from revbench.cli import main

    monkeypatch.setattr(report, "REFERENCE", tmp_path / "no-reference")
    monkeypatch.chdir(tmp_path)
    assert main(["report", "--out", str(tmp_path / "r"), "--no-figures"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "revbench: error: results: no such results file or folder"


def test_dashboard_shows_reference_rows_when_given_none(
    reference: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import require

    require("streamlit")
    from streamlit.testing.v1 import AppTest

    from revbench.dashboard import APP, check

    assert check("results") == reference  # what `revbench dashboard` would serve
    monkeypatch.delenv("REVBENCH_RESULTS", raising=False)
    monkeypatch.setattr(sys, "argv", ["app.py"])
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    infos = "\n".join(e.value for e in at.info)
    assert "Reference rows shipped with revbench" in infos
    assert str(reference) in at.caption[0].value
