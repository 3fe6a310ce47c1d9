"""The analytic FLOP count equals what FlopCounterMode counts on the real models."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from revbench.measure.flops import (
    peak_tflops,
    register_cpu_attention_formulas,
    training_step_flops,
    utilisation,
)
from revbench.models import ModelConfig, build_model

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
    register_cpu_attention_formulas()
    cfg = ModelConfig(
        arch=arch,
        block=block,
        checkpointing=ckpt,
        vocab_size=96,
        d_model=32,
        n_heads=4,
        n_layers=3,
        max_seq_len=24,
    )
    model = build_model(cfg)
    ids = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as fwd:
        out = model(ids, labels=ids)
    with FlopCounterMode(display=False) as bwd:
        out.loss.backward()
    want = training_step_flops(cfg, 2, 24)
    assert fwd.get_total_flops() == want.forward
    assert bwd.get_total_flops() == want.backward + want.recompute
    assert want.hardware == fwd.get_total_flops() + bwd.get_total_flops()
    assert (want.recompute > 0) == (arch != "baseline" or ckpt)


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
    register_cpu_attention_formulas()
    cfg = ModelConfig(
        arch="midpoint",
        init_state="euler",
        vocab_size=96,
        d_model=32,
        n_heads=4,
        n_layers=2,
        max_seq_len=24,
    )
    model = build_model(cfg)
    ids = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        model(ids, labels=ids).loss.backward()
    assert counter.get_total_flops() == training_step_flops(cfg, 2, 24).hardware
