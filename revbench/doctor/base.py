"""What every check of the doctor shares: its outcome, its sizes, its thresholds, its context."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from rich.console import Console

from revbench.errors import RevbenchError

GROUPS = ("env", "memory", "timing", "exactness", "suite")
STATUSES = ("pass", "fail", "info", "skip")
MIB = 2**20

# Thresholds (module constants so that a reader, and a test, can see them).
GRAD_REL_TOL = 1e-10
"""float64 reversible vs autograd gradients: largest per-parameter relative error."""
MFU_RANGE = (0.30, 1.05)
"""A large matmul's share of the GPU table's peak: below means a slow path (no tensor cores,
throttling, a shared GPU), above a wrong peak or a timer that misses work."""
CLOCK_RATIO = (0.5, 2.0)
"""Timer median / host-clock mean per call: a timer missing a CUDA synchronisation reads the
launch, not the work (a large matmul: x0.01), far outside; the band leaves room for a shared
CPU."""
CLOCK_ROUNDS = 5
"""Rounds of timer-vs-clock; the best-agreeing one decides (a wrong timer is wrong in all)."""
EVENTS_RATIO = (0.8, 1.25)
"""CUDA events median / host+sync median."""
BUDGET_MARGIN = (0.8, 1.3)
"""Budgets for the refused and the accepted trial, as fractions of the trial's own footprint."""


def memory_tolerance(device_type: str, n_tensors: int, expected: int) -> int:
    """Largest allowed |measured - expected| peak for ``n_tensors`` fresh tensors.

    CUDA: the caching allocator rounds every block up to 512 bytes. CPU: each tensor is its own
    mmap (>= 64 KiB with ``MALLOC_MMAP_THRESHOLD_``), rounded up to 4 KiB pages, and the kernel
    counts whatever else the process touches meanwhile (interpreter objects, thread stacks):
    allow 1 MiB plus 1%.
    """
    if device_type == "cuda":
        return 512 * n_tensors
    return MIB + expected // 100


@dataclasses.dataclass
class Check:
    """One check's outcome: what the table prints and what its results row holds."""

    group: str
    name: str
    status: str
    """pass | fail | info (a figure shown, not judged) | skip (not applicable; no row)."""
    measured: str = ""
    expected: str = ""
    detail: str = ""
    columns: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Figures, in results-schema columns (``peak_mem_delta_bytes``, ``grad_rel_err``...)."""
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    """``section.field`` configuration columns (``model.arch``, ``train.dtype``...)."""
    seconds: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.group}: {self.name}"


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big each check is, by device and ``--quick`` (CPU quick: about a minute on 2 cores;
    CUDA quick: about two minutes, most of it child processes starting)."""

    probe_mib: tuple[int, ...]
    budget_model: dict[str, Any]
    budget_data: dict[str, Any]
    matmul_n: int
    timed_calls: int
    blocks: tuple[str, ...]
    drift_layers: int
    suite_model: dict[str, Any]
    suite_data: dict[str, Any]
    suite_depths: tuple[int, ...]
    suite_metrics: tuple[str, ...]

    @classmethod
    def for_device(cls, device_type: str, quick: bool) -> Sizes:
        if device_type == "cuda":
            return cls(
                probe_mib=(256, 512, 1024),
                budget_model={"vocab_size": 8192, "d_model": 512, "n_heads": 8, "n_layers": 4},
                budget_data={"batch_size": 8, "seq_len": 512},
                matmul_n=8192,
                timed_calls=10 if quick else 20,
                blocks=("gpt2",) if quick else ("gpt2", "llama"),
                drift_layers=8 if quick else 16,
                suite_model={"vocab_size": 512, "d_model": 128, "n_heads": 4},
                suite_data={"batch_size": 8, "seq_len": 128},
                suite_depths=(2, 8),
                suite_metrics=("peak_memory",) if quick else ("peak_memory", "throughput"),
            )
        return cls(
            probe_mib=(16, 32, 48),
            budget_model={"vocab_size": 256, "d_model": 64, "n_heads": 4, "n_layers": 2},
            budget_data={"batch_size": 8, "seq_len": 128},
            matmul_n=512 if quick else 1024,
            timed_calls=5 if quick else 10,
            blocks=("gpt2",) if quick else ("gpt2", "llama"),
            drift_layers=4 if quick else 8,
            suite_model={"vocab_size": 128, "d_model": 32, "n_heads": 2},
            suite_data={"batch_size": 2, "seq_len": 32},
            suite_depths=(2,) if quick else (1, 4),
            suite_metrics=("peak_memory",) if quick else ("peak_memory", "throughput"),
        )


@dataclasses.dataclass
class Context:
    """What the checks share: where rows and scratch files go, and the run's provenance."""

    out_dir: Path
    scratch: Path
    run_id: str
    host: dict[str, Any]
    device_columns: dict[str, Any]
    console: Console

    def suite_file(self, name: str, **body: Any) -> Path:
        """Write a suite YAML (the same path as a user's suite: validated, expanded)."""
        import yaml

        sections = {k: body.pop(k) for k in ("model", "data", "train") if k in body}
        path = self.scratch / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": name, "defaults": sections, **body}))
        return path


def resolve_device(name: str) -> Any:
    """The torch device for ``--device``; a one-line error when CUDA is asked for and absent."""
    import torch

    if name not in ("auto", "cpu", "cuda"):
        raise RevbenchError(f"--device: '{name}' is not one of auto, cpu, cuda")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        why = "torch was built without CUDA" if torch.version.cuda is None else "no GPU visible"
        raise RevbenchError(
            f"--device cuda: torch {torch.__version__} sees no CUDA device ({why}); "
            "use --device cpu or auto"
        )
    return torch.device(name, 0) if name == "cuda" else torch.device("cpu")


def dtype_name(device_type: str) -> str:
    """The dtype revbench trains in on this device type (GPU suites run bf16 autocast)."""
    return "bfloat16" if device_type == "cuda" else "float32"


def mib(n: float | None) -> str:
    return "-" if n is None else f"{n / MIB:,.2f} MiB"


def sci(x: float | None) -> str:
    return "-" if x is None else f"{x:.2e}"


def within(x: float, lo_hi: tuple[float, float]) -> bool:
    return lo_hi[0] <= x <= lo_hi[1]
