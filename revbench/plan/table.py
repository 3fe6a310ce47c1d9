"""``revbench plan SUITE``: every case's predicted peak and max batch, without running anything."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from revbench.errors import RevbenchError
from revbench.gpus import GPUS, Gpu, by_name
from revbench.plan import predict, predict_max_batch

MiB = 1 << 20


@dataclasses.dataclass(frozen=True)
class Target:
    """A memory size to fit: a GPU of the table, or a size given on the command line."""

    label: str
    memory_bytes: int
    device: str
    gpu: Gpu | None = None


def targets(gpus: str | None, memory: str | None, device: str | None) -> list[Target]:
    """The ``--gpu`` names (comma-separated; ``all`` for the whole table) and ``--memory``
    size; one-line errors naming the known GPUs or the expected form."""
    from revbench.units import parse_bytes

    out: list[Target] = []
    for name in filter(None, (n.strip() for n in (gpus or "").split(","))):
        if name.lower() == "all":
            out += [Target(g.name, g.memory_bytes, "cuda", g) for g in GPUS]
            continue
        try:
            gpu: Gpu = by_name(name)
        except KeyError as e:
            raise RevbenchError(f"--gpu: {e.args[0]}") from None
        out.append(Target(gpu.name, gpu.memory_bytes, "cuda", gpu))
    if memory:
        try:
            size = parse_bytes(memory)
        except ValueError as e:
            raise RevbenchError(f"--memory: {e}") from None
        if size <= 0:
            raise RevbenchError("--memory: must be more than 0 bytes (e.g. 24GiB)")
        out.append(Target(memory, size, device or "auto"))
    return out


def plan_table(suite_path: str | Path, wanted: list[Target], device: str | None = None) -> Table:
    """One row per case: its predicted peak with the breakdown, and the predicted max batch
    for each target (headroom as the case's ``measure.headroom``)."""
    from revbench.suite import load_suite

    suite = load_suite(suite_path)
    dev = device or ("cuda" if any(t.device == "cuda" for t in wanted) else None)
    table = Table(title=f"{suite.name}: predicted peak memory per device (MiB) and max batch")
    for col in (
        "case",
        "batch x seq",
        "dtype",
        "params+grads+optim",
        "activations",
        "peak",
        "peak at",
    ):
        table.add_column(col, justify="right" if col not in ("case", "peak at") else "left")
    for t in wanted:
        table.add_column(f"max batch {t.label}", justify="right")
    for case in suite.cases:
        p = predict(case, device=dev)
        fixed = p.param_bytes + p.grad_bytes + p.optimizer_state_bytes
        row = [
            case.name,
            f"{p.batch_size} x {p.seq_len}",
            case.train.dtype,
            f"{fixed / MiB:,.1f}",
            f"{p.activation_bytes / MiB:,.1f}",
            f"{p.peak_bytes / MiB:,.1f}",
            p.peak_at,
        ]
        for t in wanted:
            tdev = None if t.device == "auto" else t.device
            row.append(f"{predict_max_batch(case, t.memory_bytes, device=tdev, gpu=t.gpu):,}")
        table.add_row(*map(escape, row))
    return table
