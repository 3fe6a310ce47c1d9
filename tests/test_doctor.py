"""revbench doctor on CPU: the quick run end to end through the CLI, a wrong measurement reported
as a failed check (exit 1, an ``error`` row), one-line errors for bad arguments; and the timer
that the doctor and the throughput metric share."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
import torch

from revbench import results
from revbench.analysis.report import sections
from revbench.cli import main
from revbench.doctor import checks as doctor_checks
from revbench.doctor import run_doctor
from revbench.doctor.base import CLOCK_RATIO, Sizes, memory_tolerance
from revbench.doctor.checks import depth_check, memory_probe_check, reversible_archs
from revbench.measure import timer
from revbench.models import ARCHITECTURES


@pytest.mark.slow
def test_cli_doctor_quick_cpu(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["doctor", "--device", "cpu", "--quick", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert rc == 0, captured.out + captured.err
    assert " 0 fail," in captured.out and "PASS" in captured.out
    df = results.load(tmp_path / "doctor")
    assert set(df["suite"]) == {"doctor"} and (df["status"] == "ok").all()
    assert df["device_type"].eq("cpu").all() and df["hostname"].notna().all()
    assert df["run_id"].nunique() == 1 and df["timestamp_utc"].notna().all()
    cases = set(df["case"])
    for name in (
        "env: device computes",
        "memory: known allocations measured",
        "memory: budget refuses a trial above it",
        "memory: budget accepts a trial below it",
        "timing: matmul rate against peak",
        "timing: timer agrees with the host clock",
        "suite: every architecture through the runner (peak_memory)",
    ):
        assert name in cases, name
    # the memory check's figures: measured peak vs the known tensors' bytes
    mem = df[df["case"] == "memory: known allocations measured"].iloc[0]
    expected = mem["activation_bytes"]
    tol = memory_tolerance("cpu", 3, expected)
    assert abs(mem["peak_mem_delta_bytes"] - expected) <= tol
    assert mem["memory_method"] == "vmhwm+mmap65536"
    refused = df[df["case"] == "memory: budget refuses a trial above it"].iloc[0]
    assert not refused["search_trial_list"][0]["fits"]
    assert refused["search_trial_list"][0]["peak_bytes"] > refused["budget_bytes"]
    # every reversible architecture's float64 gradients, RevFFN in its exact mode
    exact = df[df["case"].str.endswith("float64 grads") & ~df["case"].str.contains("x1")]
    assert set(exact["model.arch"]) == set(reversible_archs()) and len(reversible_archs()) >= 4
    assert (exact["grad_rel_err_max"] < 1e-10).all()
    assert set(exact[exact["model.arch"] == "revffn"]["model.revffn_query"]) == {"x2"}
    drift = df[df["case"].str.endswith("reconstruction drift")]
    assert set(drift["train.dtype"]) == {"float32", "bfloat16"}
    # the mini suite: every architecture through the runner, rows of its own
    mini = results.load(tmp_path / "doctor_mini")
    assert set(mini["model.arch"]) == set(ARCHITECTURES.names())
    assert (mini["status"] == "ok").all()
    # the views accept the doctor's rows: its drift case is drawn like any other
    assert "drift" in {s.key for s in sections(results.load(tmp_path))}


def _slow_timer(factor: float):  # type: ignore[no-untyped-def]
    real = timer.time_calls

    def fake(*args, **kwargs):  # type: ignore[no-untyped-def]
        t = real(*args, **kwargs)
        return dataclasses.replace(t, times=tuple(x * factor for x in t.times))

    return fake


def test_a_wrong_timer_is_a_failed_check(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # A timer reading 1/20 of the real time is what a missing CUDA synchronisation looks like.
    monkeypatch.setattr(timer, "time_calls", _slow_timer(1 / 20))
    rc = main(["doctor", "--device", "cpu", "--quick", "--only", "timing", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert rc == 1
    assert "FAIL" in captured.out and "1 of 2 checks failed" in captured.err
    df = results.load(tmp_path / "doctor")
    bad = df[df["status"] == "error"]
    assert list(bad["case"]) == ["timing: timer agrees with the host clock"]
    assert f"expected ratio {CLOCK_RATIO[0]}" in bad.iloc[0]["error"]


def test_a_wrong_memory_peak_is_a_failed_check(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = Sizes.for_device("cpu", quick=True)

    def probe(device: object, nbytes: list[int]) -> dict[str, object]:
        # a peak twice the allocations: a high-water mark that kept freed memory, say
        return {
            "method": "vmhwm+mmap65536",
            "before": 10,
            "peak": 10 + 2 * sum(nbytes),
            "allocated": sum(nbytes),
            "mmap_threshold": "65536",
        }

    monkeypatch.setattr(doctor_checks, "run_probe", probe)
    check = memory_probe_check(torch.device("cpu"), sizes)
    assert check.status == "fail"
    monkeypatch.setattr(
        doctor_checks,
        "run_probe",
        lambda d, n: {**probe(d, n), "peak": 10 + sum(n), "mmap_threshold": None},
    )
    check = memory_probe_check(torch.device("cpu"), sizes)
    assert check.status == "fail" and "MALLOC_MMAP_THRESHOLD_" in check.detail


def test_inexact_gradients_fail_and_a_broken_group_does_not_stop_the_rest(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(doctor_checks, "gradient_error", lambda cfg, device: (0.0, 1e-6, 0.99))

    def broken(*args: object) -> object:
        raise RuntimeError("NVML exploded")
        yield  # pragma: no cover

    monkeypatch.setitem(doctor_checks.CHECKS, "env", broken)
    monkeypatch.setattr(doctor_checks, "drift_checks", lambda device, sizes: iter(()))
    report = run_doctor("cpu", tmp_path, quick=True, only=("env", "exactness"))
    failed = {c.label for c in report.failed}
    assert "env: did not complete" in failed
    assert {f"exactness: {a} gpt2 float64 grads" for a in ("midpoint", "revnet")} <= failed
    broke = next(c for c in report.checks if c.label == "env: did not complete")
    assert broke.detail == "RuntimeError: NVML exploded"
    df = results.load(tmp_path / "doctor")
    assert (df["status"] == "error").sum() == len(report.failed)


def test_depth_check_wants_flat_reversible_and_growing_baseline() -> None:
    def rows(act: dict[tuple[str, int], int]) -> list[dict[str, object]]:
        return [
            {"model.arch": a, "model.n_layers": n, "activation_bytes": b}
            for (a, n), b in act.items()
        ]

    flat = {(a, n): 1000 for a in reversible_archs() for n in (1, 4)}
    ok = rows({**flat, ("baseline", 1): 1000, ("baseline", 4): 4000})
    assert depth_check(ok, (1, 4)).status == "pass"
    grows = rows({**flat, ("midpoint", 4): 4_000_000, ("baseline", 1): 1, ("baseline", 4): 4})
    check = depth_check(grows, (1, 4))
    assert check.status == "fail" and "midpoint" in check.detail


def test_bad_arguments_are_one_line_errors(capsys: pytest.CaptureFixture) -> None:
    assert main(["doctor", "--only", "memory,bogus"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown check group bogus" in err
    if torch.cuda.is_available():
        return
    assert main(["doctor", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("revbench: error: --device cuda:"), err


# --- the timer -----------------------------------------------------------------------------


def test_time_calls_times_every_call_after_warmup() -> None:
    calls: list[float] = []

    def fn() -> None:
        calls.append(time.perf_counter())
        time.sleep(0.002 * len(calls))

    t = timer.time_calls(fn, 4, warmup=2, device="cpu")
    assert len(calls) == 6 and len(t.times) == 4
    assert list(t.times) == sorted(t.times) and t.method == "host+sync"
    assert t.times[0] >= 0.006 and t.p10 <= t.median <= t.p90
    assert timer.percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    with pytest.raises(ValueError):
        timer.time_calls(fn, 0)


def test_nvml_check_matches_by_bus_id_and_uuid(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA-only NVML check's logic, on a stand-in GPU and a stand-in NVML."""
    import sys
    import types

    props = types.SimpleNamespace(
        name="NVIDIA H100 80GB HBM3",
        total_memory=85_520_809_984,
        pci_domain_id=0,
        pci_bus_id=0x3B,
        pci_device_id=0,
        uuid="8c39d7b3-45e8-1234-abcd-0123456789ab",
    )
    asked: list[str] = []
    nvml = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByPciBusId=lambda bus: asked.append(bus) or "handle",
        nvmlDeviceGetName=lambda h: "NVIDIA H100 80GB HBM3",
        nvmlDeviceGetUUID=lambda h: "GPU-8c39d7b3-45e8-1234-abcd-0123456789ab",
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(total=85_520_809_984),
    )
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: props)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    check = doctor_checks.nvml_check(torch.device("cuda", 0))
    assert check.status == "pass", check
    assert asked == ["00000000:3b:00.0"]
    assert "torch's indices may not be NVML's" in check.detail  # 2 GPUs, no PCI_BUS_ID order
    nvml.nvmlDeviceGetUUID = lambda h: "GPU-00000000-45e8-1234-abcd-0123456789ab"
    assert doctor_checks.nvml_check(torch.device("cuda", 0)).status == "fail"

    def no_nvml() -> None:
        raise OSError("libnvidia-ml.so.1: cannot open shared object file")

    nvml.nvmlInit = no_nvml
    check = doctor_checks.nvml_check(torch.device("cuda", 0))
    assert check.status == "fail" and "libnvidia-ml" in check.detail
