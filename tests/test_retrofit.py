"""The retrofit's model settings: the paired forces (``force: pair | pair2``), the
Hamiltonian's carry: float64 gradients of the reversible Function equal ordinary autograd's,
the rebuilt states equal the forward's, and the stack computes the recurrence written out by
hand below with the model's own blocks."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from gradcheck import grad_error
from torch import nn

from revbench.errors import ConfigError
from revbench.models import ModelConfig, build_model, reconstruction_errors
from revbench.models.retrofit import PairedBlock, retrofit_settings

TINY = {"vocab_size": 32, "d_model": 16, "n_heads": 2, "max_seq_len": 16}


def tiny_model(arch: str, **over: Any) -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(**{**TINY, "arch": arch, **over})).to(torch.float64)


def batch() -> torch.Tensor:
    return torch.randint(TINY["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(1))


FORCES: dict[str, tuple[str, dict[str, Any]]] = {
    "midpoint-pair": ("midpoint", {"n_layers": 4, "force": "pair", "step_size": 0.5}),
    "midpoint-pair2-llama": (
        "midpoint",
        {"n_layers": 3, "force": "pair2", "step_size": 0.5, "block": "llama"},
    ),
    "midpoint-pair-a-euler-mean": (
        "midpoint",
        {"n_layers": 3, "force": "pair", "a": 0.4, "init_state": "euler", "readout": "mean"},
    ),
    "midpoint-pair-dropout": ("midpoint", {"n_layers": 3, "force": "pair", "dropout": 0.2}),
    "leapfrog-pair": ("leapfrog", {"n_layers": 4, "force": "pair"}),
    "leapfrog-pair2": ("leapfrog", {"n_layers": 3, "force": "pair2", "step_size": 0.7}),
    "hamiltonian-pair-last": ("hamiltonian", {"n_layers": 3, "force": "pair", "readout": "last"}),
    "hamiltonian-pair2-llama": (
        "hamiltonian",
        {"n_layers": 3, "force": "pair2", "block": "llama"},
    ),
    "hamiltonian-carry": (
        "hamiltonian",
        {"n_layers": 3, "ham_carry": True, "ham_a": 0.3, "ham_b": 0.6, "step_size": 1.5},
    ),
    "hamiltonian-carry-pair-dropout": (
        "hamiltonian",
        {"n_layers": 2, "ham_carry": True, "ham_a": -0.5, "force": "pair", "dropout": 0.2},
    ),
}


@pytest.mark.parametrize("name", FORCES)
def test_float64_grads_equal_plain_autograd(name: str) -> None:
    arch, over = FORCES[name]
    model = tiny_model(arch, **over)
    if over.get("force", "block") != "block":
        assert any(isinstance(b, PairedBlock) for _, b in model.steps)
    plain = tiny_model(arch, **{k: v for k, v in over.items() if k != "force"})
    assert model.state_dict().keys() == plain.state_dict().keys()  # no parameter of its own
    loss_err, grad_err = grad_error(model, batch())
    # Measured on this machine: loss bit-equal, gradients within 2e-14 relative.
    assert loss_err < 1e-13
    assert grad_err < 1e-12, f"max relative gradient error {grad_err:.2e}"


@pytest.mark.parametrize("name", [n for n in FORCES if "dropout" not in n])
def test_float64_reconstruction_is_exact(name: str) -> None:
    arch, over = FORCES[name]
    errors = reconstruction_errors(tiny_model(arch, **over), batch())
    assert len(errors) == over["n_layers"]
    assert max(errors) < 1e-12, errors


def by_hand(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The final pair of states from the recurrences written out here (the model's blocks)."""
    cfg, B = model.config, list(model.blocks)
    h, iters = cfg.step_size, {"block": None, "pair": 0, "pair2": 1}[cfg.force]

    def est(g: Any, p: torch.Tensor) -> torch.Tensor:  # g(estimate of the state before p)
        y = p
        for _ in range(iters):
            y = p - g(y)
        return g(y)

    if cfg.arch == "hamiltonian":
        seq = [br for b in B for br in (b.attn_branch, b.mlp_branch)]  # the half-steps
        a, bb = cfg.ham_a, cfg.ham_b
        z = [x, x]  # (q, p)
        for k, F in enumerate(seq):
            t, keep = k % 2, (a if k % 2 == 0 else bb)
            force = F(z[1 - t])
            if iters is not None and k > 0:
                force = force + est(seq[k - 1], z[1 - t])
            carry = (1 - keep) * z[1 - t] if cfg.ham_carry else 0
            z[t] = keep * z[t] + carry + h * force
        q, p = z
        return [q, p]
    sign = -1.0 if cfg.arch == "leapfrog" else 1.0
    prev, cur = x, x
    coefs = cfg.midpoint_coefficients()
    for i in range(cfg.n_layers):
        f = B[i].f(cur)
        if iters is not None and i > 0:
            f = f + sign * est(B[i - 1].f, cur)
        if cfg.arch == "leapfrog":
            nxt = 2 * cur - prev + h * h * f
        elif coefs[i] is None:
            nxt = prev + 2 * h * f
        else:
            nxt = coefs[i] * prev + (1 - coefs[i]) * cur + h * f
        prev, cur = cur, nxt
    return [prev, cur]


@pytest.mark.parametrize("name", [n for n in FORCES if "dropout" not in n and "euler" not in n])
def test_the_stack_follows_the_recurrence_written_by_hand(name: str) -> None:
    arch, over = FORCES[name]
    model = tiny_model(arch, **over)
    x = torch.randn(2, 6, TINY["d_model"], dtype=torch.float64)
    with torch.no_grad():
        want, got = by_hand(model, x), model.run_stack(x)
    for w, o in zip(want, got, strict=True):
        torch.testing.assert_close(o, w, rtol=1e-12, atol=1e-12)


def test_settings_apply_only_where_they_exist() -> None:
    # ModelConfig's errors arrive as pydantic's ValidationError (a ValueError)
    with pytest.raises(ValueError, match="force: pair pairs the blocks of midpoint"):
        ModelConfig(**TINY, arch="revnet", force="pair")
    with pytest.raises(ValueError, match="arch 'baseline' has no such choice"):
        ModelConfig(**TINY, readout="mean")
    with pytest.raises(ValueError, match="ham_carry is a setting of arch hamiltonian"):
        ModelConfig(**TINY, arch="midpoint", ham_carry=True)
    with pytest.raises(ConfigError, match="damped leapfrog is midpoint with a < 0"):
        retrofit_settings("leapfrog", "damped", 0.2)
    with pytest.raises(ConfigError, match="init mean exists for midpoint, hamiltonian"):
        retrofit_settings("revnet", "mean", 0.2)
    assert retrofit_settings("revnet", "naive", 0.2) == {}
    assert retrofit_settings("midpoint", "auto", 0.3) == {"a": 0.3, "step_size": 1.0}
