"""The model zoo's public surface: registry, builder, outputs, blocks, reconstruction."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from revbench.models import ARCHITECTURES, ModelConfig, build_model, reconstruction_errors
from revbench.models.reversible import ReversibleLM

ARCHS = ["baseline", "midpoint", "leapfrog", "hamiltonian", "revnet"]
REVERSIBLE = ARCHS[1:]
TINY = {"vocab_size": 32, "d_model": 16, "n_heads": 2, "max_seq_len": 32}


def tiny(arch: str, dtype: torch.dtype = torch.float32, **overrides: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(**{**TINY, "arch": arch, **overrides})).to(dtype)  # type: ignore[arg-type]


def batch(B: int = 2, T: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(TINY["vocab_size"], (B, T), generator=torch.Generator().manual_seed(seed))


def test_registry_lists_every_arch_with_a_description() -> None:
    assert set(ARCHS) <= set(ARCHITECTURES.names())
    for entry in ARCHITECTURES.entries():
        assert entry.description and "\n" not in entry.description


def test_unknown_arch_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="did you mean 'midpoint'"):
        ModelConfig(arch="midpont")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("block", ["gpt2", "llama"])
def test_forward_shapes_loss_and_attributes(arch: str, block: str) -> None:
    model = tiny(arch, block=block, n_layers=3)
    assert model.config.arch == arch and model.config.block == block
    assert getattr(model, "reversible_backprop", True) is True
    ids = batch()
    out = model(ids)
    assert out.logits.shape == (2, 12, TINY["vocab_size"])
    assert out.loss is None and out.aux_loss is None
    labels = ids.clone()
    labels[0, 5:] = -100  # ignored positions
    loss = model(ids, labels=labels).loss
    want = F.cross_entropy(out.logits[:, :-1].reshape(-1, 32), labels[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, want)


def test_blocks_differ_as_documented() -> None:
    gpt2, llama = tiny("baseline", block="gpt2"), tiny("baseline", block="llama")
    assert gpt2.embed.pos is not None and llama.embed.pos is None
    assert isinstance(gpt2.blocks[0].n1, torch.nn.LayerNorm)
    assert isinstance(llama.blocks[0].n1, torch.nn.RMSNorm)
    assert llama.blocks[0].mlp.gate.out_features == 48  # 8/3 * 16 rounded up to a multiple of 8


def test_tied_and_untied_embeddings() -> None:
    tied, untied = tiny("midpoint"), tiny("midpoint", tie_embeddings=False)
    assert tied.head.proj.weight is tied.embed.tok.weight
    assert untied.head.proj.weight is not untied.embed.tok.weight


def test_attention_is_causal() -> None:
    # Changing the last token must not change any earlier position's logits.
    for arch in ARCHS:
        model = tiny(arch, block="llama", n_layers=2).eval()
        a, b = batch(), batch()
        b[:, -1] = (b[:, -1] + 1) % TINY["vocab_size"]
        with torch.no_grad():
            la, lb = model(a).logits, model(b).logits
        torch.testing.assert_close(la[:, :-1], lb[:, :-1])
        assert not torch.allclose(la[:, -1], lb[:, -1])


def test_reversible_archs_have_equal_parameter_counts_to_baseline() -> None:
    # The Euler start reuses block 0's weights, so no arch carries extra parameters.
    count = {a: sum(p.numel() for p in tiny(a, init_state="euler").parameters()) for a in ARCHS}
    assert len(set(count.values())) == 1, count


def test_checkpointing_on_a_reversible_arch_is_rejected() -> None:
    with pytest.raises(ValidationError, match="checkpointing applies to residual models"):
        ModelConfig(arch="midpoint", checkpointing=True)


def test_checkpointed_baseline_grads_equal_plain() -> None:
    grads = {}
    for ckpt in (False, True):
        model = tiny("baseline", dtype=torch.float64, n_layers=3, dropout=0.1, checkpointing=ckpt)
        calls: list[int] = []
        for b in model.blocks:
            b.register_forward_pre_hook(lambda *_, c=calls: c.append(1))
        torch.manual_seed(0)
        model(batch(), labels=batch()).loss.backward()
        grads[ckpt] = [p.grad for p in model.parameters()]
        # the checkpointed path really ran: each block entered once forward, again in backward
        assert len(calls) == (6 if ckpt else 3), (ckpt, len(calls))
    for a, b in zip(grads[True], grads[False], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("arch", REVERSIBLE)
@pytest.mark.parametrize("block", ["gpt2", "llama"])
def test_reconstruction_is_exact_in_float64(arch: str, block: str) -> None:
    model = tiny(arch, dtype=torch.float64, block=block, n_layers=6)
    errors = reconstruction_errors(model, batch())
    assert len(errors) == 6
    assert max(errors) < 1e-12, errors


def test_reconstruction_with_euler_start() -> None:
    model = tiny("midpoint", dtype=torch.float64, n_layers=4, init_state="euler", step_size=0.5)
    errors = reconstruction_errors(model, batch())
    assert len(errors) == 4 and max(errors) < 1e-12


def test_generalised_midpoint_amplifies_error_by_one_over_a() -> None:
    # Each inverse divides by a = 0.5, so the error of the state entering layer l grows ~2x per
    # layer walked back: layer 0 ends up orders of magnitude worse than the last layer.
    model = tiny("midpoint", dtype=torch.float64, n_layers=16, a=0.5)
    errors = reconstruction_errors(model, batch())
    assert errors[0] > 100 * errors[-1]


# Measured (d_model 16, 24 layers, float32, this machine): worst relative error of a rebuilt state
# midpoint 1.6e-7, hamiltonian/revnet 1.1e-7, leapfrog 8.8e-6 (its inverse accumulates error
# roughly linearly in depth). Tolerances leave ~10x margin.
FLOAT32_24 = {"midpoint": 2e-6, "leapfrog": 1e-4, "hamiltonian": 2e-6, "revnet": 2e-6}


@pytest.mark.parametrize("arch", REVERSIBLE)
def test_reconstruction_error_float32_at_24_layers(arch: str) -> None:
    model = tiny(arch, n_layers=24)
    errors = reconstruction_errors(model, batch(T=32))
    assert len(errors) == 24 and max(errors) < FLOAT32_24[arch], max(errors)


def test_reconstruction_errors_restores_train_mode_and_rejects_baseline() -> None:
    model = tiny("midpoint", dropout=0.1)
    reconstruction_errors(model, batch())
    assert model.training and isinstance(model, ReversibleLM)
    with pytest.raises(TypeError, match="not a reversible model"):
        reconstruction_errors(tiny("baseline"), batch())
