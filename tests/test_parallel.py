"""Parallel cases: 2 CPU processes (gloo) under DDP and FSDP2 give one process's gradients.

Each worker process joins a gloo group the way a torchrun rank does (``parallel.init`` from
RANK / WORLD_SIZE / MASTER_* in the environment), builds the case's training step (its half of
the global batch, the model wrapped or sharded) and runs one forward and backward in float64.
Reference: one process, no wrapper, the global batch (batch_size x 2). Each rank's loss is the
mean over its own tokens, and DDP and FSDP average the ranks' gradients, so the two must agree
to rounding: relative error per parameter below 1e-12 (seen: ~1e-16).
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from conftest import run_rows, write_suite
from gradcheck import rel

from revbench.case import Case
from revbench.measure import parallel
from revbench.measure.step import build_train_step
from revbench.suite import load_suite

WORLD = 2
TOL = 1e-12

MODELS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "baseline+ckpt": {"checkpointing": True},
    "midpoint": {"arch": "midpoint"},
    "midpoint-euler-llama": {"arch": "midpoint", "init_state": "euler", "block": "llama"},
    # 3 heads of 11: qkv has 99 rows, sharded 50 + 49 (FSDP2 pads the last shard).
    "midpoint-uneven": {"arch": "midpoint", "d_model": 33, "n_heads": 3},
    "leapfrog": {"arch": "leapfrog"},
    "revnet": {"arch": "revnet"},
    # The load-balancing loss is a product of batch statistics, each rank's of its own batch
    # (as in any data-parallel MoE), so it is not the global batch's: left out here.
    "revffn-moe": {"arch": "revffn", "n_experts": 4, "aux_loss_weight": 0.0},
    "moe": {"arch": "moe", "n_experts": 4, "aux_loss_weight": 0.0},
}
SUITE = {
    "name": "grads",
    "defaults": {
        "model": {"vocab_size": 64, "d_model": 32, "n_heads": 2, "max_seq_len": 16, "n_layers": 3},
        "data": {"batch_size": 2, "seq_len": 12},
        "train": {"device": "cpu", "dtype": "float64", "threads": 1, "nproc_per_node": WORLD},
    },
    "measure": {"timeout_s": 60},
    "cases": [
        {"name": f"{name},{mode}", "parallel": mode, **over}
        for mode in ("ddp", "fsdp")
        for name, over in MODELS.items()
    ],
    "metrics": ["peak_memory"],
}


def _cases(tmp: Path) -> list[Case]:
    path = tmp / "grads.yaml"
    path.write_text(json.dumps(SUITE))  # JSON is YAML
    return list(load_suite(path).cases)


def _grads(case: Case) -> dict[str, torch.Tensor]:
    """One forward and backward of the case's step; every gradient whole (gathered). Under
    ``"grads_per_block"``: whether the reversible trunk handed DDP its gradients block by block."""
    step = build_train_step(case)
    step.forward_backward()
    if case.train.parallel == "fsdp":  # every block resharded after the step
        assert all(hasattr(p, "to_local") for p in step.model.parameters())
    out = {}
    for name, p in step.model.named_parameters():
        g = p.grad
        if g is not None and hasattr(g, "full_tensor"):  # FSDP2: this rank's shard
            g = g.full_tensor()
        out[name] = g.detach().clone() if g is not None else None
    out["grads_per_block"] = getattr(step.model, "grads_per_block", None)
    return out


def _worker(rank: int, port: int, tmp: str) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    cases = _cases(Path(tmp))
    parallel.init(cases[0])
    try:
        grads = {case.name: _grads(case) for case in cases}
        if rank == 0:
            torch.save(grads, Path(tmp) / "parallel.pt")
    finally:
        parallel.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Case]]:
    """Gradients of every case from the 2-process run, and the cases."""
    tmp = tmp_path_factory.mktemp("parallel")
    mp.spawn(_worker, args=(_free_port(), str(tmp)), nprocs=WORLD, join=True)
    cases = {c.name: c for c in _cases(tmp)}
    return torch.load(tmp / "parallel.pt"), cases


def _reference(case: Case) -> dict[str, torch.Tensor]:
    """One process, no wrapper, the ranks' batches together."""
    single = case.with_settings(
        batch_size=case.data.batch_size * WORLD, parallel="none", nproc_per_node=1
    )
    return _grads(single)


NAMES = [c["name"] for c in SUITE["cases"]]


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_two_processes_give_the_global_batch_gradients(
    runs: tuple[dict[str, Any], dict[str, Case]], name: str
) -> None:
    grads, cases = runs
    got, want = grads[name], _reference(cases[name])
    assert got.keys() == want.keys()
    # DDP gets a reversible trunk's gradients block by block, except with MoE experts (DDP's
    # search for unused parameters needs the weights in the forward graph).
    reversible = want.pop("grads_per_block") is not None
    per_block = reversible and name.endswith(",ddp") and "moe" not in name
    assert got.pop("grads_per_block") is (per_block if reversible else None)
    for pname, g in want.items():
        assert (got[pname] is None) == (g is None), pname
        if g is not None:
            err = rel(got[pname], g)
            assert err < TOL, f"{pname}: relative gradient error {err:.1e}"


# --- DDP with a frozen embedding: the last gradient DDP waits for comes from block 0 ----------
# With grads_per_block that gradient lands inside the reversible Function's backward, so DDP
# finishes its reduction from there; two iterations show it is left in a clean state.

FROZEN = {"arch": "midpoint", "vocab_size": 64, "d_model": 32, "n_heads": 2, "max_seq_len": 16}


def _frozen_embedding_model() -> torch.nn.Module:
    from revbench.models import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(**FROZEN, n_layers=3)).double()
    model.embed.requires_grad_(False)
    return model


def _frozen_ids() -> torch.Tensor:
    return torch.randint(64, (2 * WORLD, 12), generator=torch.Generator().manual_seed(1))


def _frozen_worker(rank: int, port: int, tmp: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = _frozen_embedding_model()
        ddp = parallel.wrap(model, "ddp", torch.device("cpu"))
        assert model.grads_per_block
        ids = _frozen_ids()[2 * rank : 2 * rank + 2]
        for _ in range(2):
            model.zero_grad(set_to_none=True)
            ddp(ids, labels=ids).loss.backward()
        if rank == 0:
            grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
            torch.save(grads, Path(tmp) / "frozen.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_with_a_frozen_embedding_gives_the_global_batch_gradients(tmp_path: Path) -> None:
    mp.spawn(_frozen_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    got = torch.load(tmp_path / "frozen.pt")
    ref = _frozen_embedding_model()
    ids = _frozen_ids()
    ref(ids, labels=ids).loss.backward()
    want = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    assert got.keys() == want.keys() and "embed.tok.weight" not in want
    for name, g in want.items():
        assert rel(got[name], g) < TOL, name


# --- through the runner: torchrun, every rank measuring, rank 0 writing the row ---------------

RUNNER_SUITE = """
name: ddp
defaults:
  model: {arch: midpoint, vocab_size: 64, d_model: 32, n_heads: 2, max_seq_len: 16, n_layers: 2}
  data: {batch_size: 2, seq_len: 16}
  train: {device: cpu, threads: 1, parallel: ddp, nproc_per_node: 2}
measure: {warmup: 1, steps: 2, timeout_s: 120}
metrics: [peak_memory, throughput]
"""


@pytest.mark.slow
def test_a_ddp_case_run_by_the_runner_gives_one_row_for_both_ranks(tmp_path: Path) -> None:
    (ok,) = run_rows(tmp_path, RUNNER_SUITE)
    assert ok["status"] == "ok", ok["error"]
    assert ok["world_size"] == 2
    per_rank = ok["peak_mem_per_rank_bytes"]
    assert len(per_rank) == 2 and ok["peak_mem_bytes"] == max(per_rank)
    assert ok["peak_mem_rank_sum_bytes"] == sum(per_rank)
    # Global throughput: both ranks' tokens per step over the step time.
    tokens = 2 * ok["data.batch_size"] * ok["data.seq_len"]
    assert ok["tokens_per_s"] == pytest.approx(tokens / ok["step_time_s_median"])


@pytest.fixture(scope="module")
def faulty_ranks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """One run of a DDP case whose ranks raise and one whose ranks are SIGKILLed: rows by case."""
    text = RUNNER_SUITE.replace("[peak_memory, throughput]", "[throughput]")
    text += "cases:\n  - {name: fails, fault: error}\n  - {name: killed, fault: killed}\n"
    rows = run_rows(tmp_path_factory.mktemp("ranks"), text)
    return {r["case"]: r for r in rows}


def test_a_failing_rank_gives_an_error_row_naming_it(
    faulty_ranks: dict[str, dict[str, Any]],
) -> None:
    row = faulty_ranks["fails"]
    assert row["status"] == "error"
    assert row["error"].startswith("throughput: rank ") and "injected fault" in row["error"]


def test_a_rank_killed_like_the_oom_killer_gives_an_oom_row(
    faulty_ranks: dict[str, dict[str, Any]],
) -> None:
    row = faulty_ranks["killed"]
    assert row["status"] == "oom"  # torchrun exits 1; its summary names the rank and SIGKILL
    assert re.fullmatch(r"throughput: rank [01] killed by SIGKILL", row["error"]), row["error"]


def test_a_parallel_case_rejects_a_metric_that_does_not_run_distributed(tmp_path: Path) -> None:
    from revbench.errors import SuiteError

    path = write_suite(
        tmp_path, RUNNER_SUITE.replace("[peak_memory, throughput]", "[reconstruction]")
    )
    with pytest.raises(SuiteError, match="metric 'reconstruction' does not run with parallel"):
        load_suite(path)
