"""The peak-memory breakdown adds up to the measured footprint (CPU, VmHWM in a child)."""

from __future__ import annotations

from pathlib import Path

from conftest import write_suite

from revbench import results
from revbench.runner import run_suite

SUITE = """
name: breakdown
defaults:
  model: {vocab_size: 128, d_model: 64, n_heads: 2, max_seq_len: 256, n_layers: 8}
  data: {batch_size: 16, seq_len: 256}
  train: {device: cpu, threads: 1}
measure: {warmup: 0, steps: 1}
matrix:
  arch: [baseline, midpoint]
metrics: [peak_memory]
"""


def test_parameters_gradients_optimizer_activations_add_up_to_the_peak(tmp_path: Path) -> None:
    report = run_suite(write_suite(tmp_path, SUITE), tmp_path / "r", quiet=True)
    assert not report.failed
    df = results.load(tmp_path / "r").set_index("model.arch")
    parts = ["param_bytes", "grad_bytes", "optimizer_state_bytes", "activation_bytes"]

    # Baseline, activations ~95% of the total: the four parts explain the footprint to within
    # 10% (measured here: 1% — 140.7 MiB footprint, 139.3 MiB in the parts).
    base = df.loc["baseline"]
    explained = sum(int(base[p]) for p in parts)
    assert base["activation_bytes"] > 0.8 * explained
    assert abs(base["peak_mem_delta_bytes"] - explained) < 0.10 * base["peak_mem_delta_bytes"]

    # Midpoint keeps almost nothing: its footprint lies between what must exist at the backward's
    # peak (parameters, optimizer state, gradients, the two kept states and one block's
    # recompute) and everything saved plus what the backward adds on top of it (an over-count:
    # the head's saved tensors are gone before the trunk's recompute). Measured: 25.8 MiB
    # between 24.6 and 28.4 MiB (33.5-34.2 MiB before the engine kept only what the maths needs).
    mid = df.loc["midpoint"]
    must = (
        "param_bytes",
        "optimizer_state_bytes",
        "grad_bytes",
        "reversible_stack_bytes",
        "recompute_step_bytes",
    )
    lower = sum(int(mid[p]) for p in must)
    kept = ("param_bytes", "optimizer_state_bytes", "activation_bytes")
    upper = sum(int(mid[p]) for p in kept) + int(mid["backward_transient_bytes"])
    assert lower <= mid["peak_mem_delta_bytes"] <= upper
    assert upper - lower < 0.2 * mid["peak_mem_delta_bytes"]
    assert mid["activation_bytes"] < 0.1 * base["activation_bytes"]
    assert mid["peak_mem_delta_bytes"] < 0.5 * base["peak_mem_delta_bytes"]


def test_reversible_stack_keeps_two_states_and_recompute_is_one_step() -> None:
    import torch
    from gradcheck import reversible_node

    from revbench.measure.stack import reversible_memory
    from revbench.models import ModelConfig, build_model

    ids = torch.randint(0, 128, (4, 64), generator=torch.Generator().manual_seed(0))
    seen = {}
    for arch in ("midpoint", "hamiltonian", "baseline"):
        for layers in (2, 8):
            cfg = ModelConfig(arch=arch, n_layers=layers, d_model=64, n_heads=4, vocab_size=128)
            seen[arch, layers] = reversible_memory(build_model(cfg), ids)
    state = 4 * 64 * 64 * 4  # (B, T, C) float32
    for arch in ("midpoint", "hamiltonian"):
        kept, recompute = seen[arch, 2]
        # ``kept`` is read off the state's own shape; what the real forward's Function holds
        # for its backward (saved tensors and final states) must be that and nothing more
        for layers in (2, 8):
            torch.manual_seed(0)
            cfg = ModelConfig(arch=arch, n_layers=layers, d_model=64, n_heads=4, vocab_size=128)
            rev = reversible_node(build_model(cfg)(ids, labels=ids).loss)
            held = [*rev.saved_tensors, *rev.final]
            assert sum(t.numel() * t.element_size() for t in held) == kept, (arch, layers)
        assert kept == 2 * state
        assert recompute > state  # a block's graph holds several (B, T, C) activations
        assert seen[arch, 8] == seen[arch, 2]  # neither grows with depth
    # midpoint recomputes the whole block f, a Hamiltonian half-step one branch
    assert seen["midpoint", 2][1] > seen["hamiltonian", 2][1]
    assert seen["baseline", 8] == (None, None)
