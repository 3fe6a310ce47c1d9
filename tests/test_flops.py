"""The analytic FLOP count equals what FlopCounterMode counts on the real models."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tinymodels import step_flops, token_batch

from revbench.measure.flops import peak_tflops, training_step_flops, utilisation
from revbench.models import ModelConfig, build_model


def tiny(**overrides: object) -> ModelConfig:
    """The shape every count is checked at (batch 2 x seq 24)."""
    shape = {"vocab_size": 96, "d_model": 32, "n_heads": 4, "n_layers": 3, "max_seq_len": 24}
    return ModelConfig(**{**shape, **overrides})  # type: ignore[arg-type]


def counted(model: torch.nn.Module) -> tuple[int, int]:
    """(forward, backward) FLOPs FlopCounterMode counts for one step on a 2 x 24 batch."""
    return step_flops(model, token_batch(96, 2, 24, seed=0))


CASES = [
    ("baseline", "gpt2", False),
    ("baseline", "llama", False),
    ("baseline", "gpt2", True),
    ("midpoint", "gpt2", False),
    ("leapfrog", "llama", False),
    ("hamiltonian", "gpt2", False),
    ("revnet", "llama", False),
]


@pytest.mark.parametrize(
    ("arch", "block", "ckpt"), CASES, ids=[f"{a}-{b}{'-ckpt' if c else ''}" for a, b, c in CASES]
)
def test_analytic_count_matches_flop_counter(arch: str, block: str, ckpt: bool) -> None:
    cfg = tiny(arch=arch, block=block, checkpointing=ckpt)
    fwd, bwd = counted(build_model(cfg))
    want = training_step_flops(cfg, 2, 24)
    assert fwd == want.forward
    assert bwd == want.backward + want.recompute
    assert want.hardware == fwd + bwd
    assert (want.recompute > 0) == (arch != "baseline" or ckpt)


@pytest.mark.parametrize("arch", ["baseline", "midpoint"])
def test_grouped_query_attention_count_matches_flop_counter(arch: str) -> None:
    """k and v projections shrink with n_kv_heads; the attention scores do not."""
    cfg = tiny(arch=arch, block="llama", d_model=48, n_heads=6, n_kv_heads=2, n_layers=2)
    assert sum(counted(build_model(cfg))) == training_step_flops(cfg, 2, 24).hardware
    full = dataclasses.replace(cfg, n_kv_heads=0)
    assert training_step_flops(cfg, 2, 24).model < training_step_flops(full, 2, 24).model


def test_peak_table_and_utilisation() -> None:
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.4
    assert peak_tflops("NVIDIA H100 PCIe", "float32") == 51.2
    assert peak_tflops("NVIDIA A10", "bfloat16") == 125.0  # not mistaken for an A100
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "bfloat16") == 312.0
    assert peak_tflops("Some CPU", "float32") is None
    flops = training_step_flops(ModelConfig(), 4, 128)
    u = utilisation(flops, 0.5, "cuda", "NVIDIA H100 80GB HBM3", "bfloat16")
    assert u["mfu"] == pytest.approx(flops.model / 0.5 / 1e12 / 989.4)
    assert u["hfu"] == u["mfu"]  # the baseline recomputes nothing
    cpu = utilisation(flops, 0.5, "cpu", "Intel Xeon", "float32")
    assert cpu["mfu"] is None and cpu["model_tflops_per_s"] > 0


def test_euler_start_counts_one_more_block() -> None:
    cfg = tiny(arch="midpoint", init_state="euler", n_layers=2)
    assert sum(counted(build_model(cfg))) == training_step_flops(cfg, 2, 24).hardware


# Routing makes the per-expert token counts data-dependent, but not the total: every token runs
# exactly top_k experts and an expert's matmuls scale with its token count, so the analytic count
# (tokens * top_k SwiGLUs) holds for any routing. Fixed-point RevFFN runs all revffn_fp_iters
# iterations here (tol 0), each one more attention-branch forward in the backward.
MOE_CASES = {
    "moe": {"arch": "moe"},
    "moe-ckpt-shared-llama": {
        "arch": "moe",
        "checkpointing": True,
        "shared_expert": True,
        "block": "llama",
    },
    "revffn-x1": {"arch": "revffn", "revffn_fp_iters": 3},
    "revffn-x2-llama": {"arch": "revffn", "revffn_query": "x2", "block": "llama"},
    "revffn-x1-shared-top1": {"arch": "revffn", "shared_expert": True, "top_k": 1},
    "moe-qwen-widths": {"arch": "moe", "shared_expert": True, "d_ff_shared": 40, "d_ff": 24},
    "revffn-dense": {"arch": "revffn", "n_experts": 0, "revffn_fp_iters": 2},
    "revffn-pair": {"arch": "revffn", "revffn_adapters": "pair", "revffn_fp_iters": 2},
}


@pytest.mark.parametrize("name", MOE_CASES)
def test_moe_and_revffn_counts_match_flop_counter(name: str) -> None:
    cfg = tiny(**{"n_experts": 4, **MOE_CASES[name]})
    torch.manual_seed(0)
    fwd, bwd = counted(build_model(cfg))
    want = training_step_flops(cfg, 2, 24)
    assert fwd == want.forward
    assert bwd == want.backward + want.recompute
    assert (want.recompute > 0) == (cfg.arch == "revffn" or cfg.checkpointing)


def test_moe_count_holds_when_experts_get_no_tokens() -> None:
    cfg = tiny(arch="moe", n_experts=4, n_layers=2)
    model = build_model(cfg)
    for block in model.blocks:  # uniform router: every token picks the same top-2, two idle
        torch.nn.init.zeros_(block.moe.router.weight)
    assert sum(counted(model)) == training_step_flops(cfg, 2, 24).hardware
