"""What every registered architecture promises, checked for each entry of the registry.

Registering an architecture (``models.config.register_arch``) is enough for it to be tested
here: its gradients against ordinary autograd in float64, its reconstruction in float64 and the
bytes its backward keeps over depth (reversible ones), and its analytic FLOPs against
``FlopCounterMode``. The settings each test needs come from the entry's facts (experts for an
MoE block, the exact-inverse settings), never from the architecture's name.
``tests/toy_scheme.py`` registers a scheme from outside the package and shows that it is picked
up (``tests/test_toy_scheme.py``).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from gradcheck import grad_error, loss_and_grads, rel
from tinymodels import saved_bytes, step_flops

from revbench.measure.flops import training_step_flops
from revbench.models import ARCHITECTURES, ModelConfig, arch_facts, build_model, reversible
from revbench.models.reversible import reconstruction_errors

SHAPE = {"vocab_size": 48, "d_model": 16, "n_heads": 2, "max_seq_len": 24}
ARCHS = ARCHITECTURES.names()
REVERSIBLE = [a for a in ARCHS if arch_facts(a).reversible]


def settings(arch: str, **overrides: Any) -> dict[str, Any]:
    """A tiny config of ``arch``, with what its facts call for."""
    facts = arch_facts(arch)
    extra: dict[str, Any] = {"n_experts": 4, "top_k": 2} if facts.moe_block else {}
    return {**SHAPE, "arch": arch, **extra, **facts.exact_with, **overrides}


def model_of(arch: str, dtype: torch.dtype = torch.float64, **overrides: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(**settings(arch, **overrides))).to(dtype)


def ids(B: int = 2, T: int = 12) -> torch.Tensor:
    return torch.randint(SHAPE["vocab_size"], (B, T), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("arch", ARCHS)
def test_gradients_equal_ordinary_autograd_in_float64(arch: str) -> None:
    """Reversible: the reversible backward against the same model under plain autograd.
    Residual: the checkpointed backward against the plain one."""
    if arch_facts(arch).reversible:
        loss_err, grad_err = grad_error(model_of(arch, n_layers=3), ids())
    else:
        plain, ckpt = model_of(arch, n_layers=3), model_of(arch, n_layers=3, checkpointing=True)
        loss_p, grads_p = loss_and_grads(plain, ids(), reversible=False)
        loss_c, grads_c = loss_and_grads(ckpt, ids(), reversible=False)
        assert grads_p.keys() == grads_c.keys()
        loss_err = rel(loss_c, loss_p)
        grad_err = max(rel(grads_c[n], grads_p[n]) for n in grads_p)
    assert loss_err < 1e-12
    assert grad_err < 1e-10, f"max relative gradient error {grad_err:.2e}"


@pytest.mark.parametrize("arch", REVERSIBLE)
def test_reconstruction_is_exact_in_float64(arch: str) -> None:
    errors = reconstruction_errors(model_of(arch, n_layers=4), ids())
    assert len(errors) == 4
    assert max(errors) < 1e-12, errors


def saved(arch: str, n_layers: int) -> int:
    return saved_bytes(model_of(arch, torch.float32, n_layers=n_layers), ids(4, 24))


@pytest.mark.parametrize("arch", REVERSIBLE)
def test_saved_bytes_do_not_grow_with_depth(arch: str) -> None:
    """What autograd keeps for the backward, 2 -> 8 layers: the baseline's grows by six layers'
    activations, a reversible model's not at all (the final states, head and loss only)."""
    baseline = saved("baseline", 8) - saved("baseline", 2)
    growth = saved(arch, 8) - saved(arch, 2)
    assert baseline > 5 * saved(arch, 2) / 10  # activations are a visible share
    assert abs(growth) < 0.02 * baseline, (growth, baseline)


@pytest.mark.parametrize("arch", ARCHS)
def test_analytic_flops_equal_the_flop_counter(arch: str) -> None:
    cfg = ModelConfig(**settings(arch, n_layers=3))
    fwd, bwd = step_flops(build_model(cfg), ids(2, 24))
    want = training_step_flops(cfg, 2, 24)
    assert fwd == want.forward
    assert bwd == want.backward + want.recompute
    assert (want.recompute > 0) == arch_facts(arch).reversible


# bf16 autocast (CPU, tiny models, 1/3/6 layers x 3 seeds): the reversible backward's gradients
# differ from ordinary autograd's by at most 5.2e-7 (leapfrog; 2.6e-8 to 1.0e-7 for the
# others): the stream stays float32 and the recompute re-enters the forward's autocast, so it
# rebuilds the same bf16 branch values. A recompute that ignores autocast (float32 branches
# against the forward's bf16 ones) is off by 4.3e-3 to 1.5e-2. The bound sits between.
BF16_BOUND = 1e-5


def bf16_grad_error(arch: str, n_layers: int = 3) -> float:
    model = model_of(arch, torch.float32, n_layers=n_layers)
    grads = {}
    for rev in (True, False):
        model.reversible_backprop = rev
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(ids(), labels=ids())
        assert out.loss.dtype == torch.float32
        (out.loss if out.aux_loss is None else out.loss + out.aux_loss).backward()
        grads[rev] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return max(rel(grads[True][n], grads[False][n]) for n in grads[False])


@pytest.mark.parametrize("arch", REVERSIBLE)
def test_bf16_autocast_gradients_track_ordinary_autograd(arch: str) -> None:
    assert bf16_grad_error(arch) < BF16_BOUND


def test_a_recompute_that_ignores_autocast_fails_the_bf16_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        reversible, "_autocast_state", lambda device: {"device_type": device, "enabled": False}
    )
    assert bf16_grad_error("midpoint") > 100 * BF16_BOUND
