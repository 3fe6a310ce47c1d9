"""MoE FFN: batched dispatch equals a per-token reference; ``moe`` checkpointing equals plain."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tinymodels import TINY as DENSE
from tinymodels import make_model, token_batch

from revbench.models import ModelConfig, build_model
from revbench.models.moe import MoE

TINY = {**DENSE, "n_experts": 4}


def naive_moe(moe: MoE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The MoE token by token: softmax, top-k, renormalise (if on), sum of weighted experts."""
    B, T, C = x.size()
    h = x.reshape(B * T, C)
    probs = F.softmax(moe.router(h), dim=-1)
    rows, f = [], torch.zeros(moe.n_experts, dtype=h.dtype)
    for n in range(B * T):
        w, e = probs[n].topk(moe.top_k)
        w = w / w.sum() if moe.norm_topk_prob else w
        y = sum(w[j] * moe.experts[int(e[j])](h[n : n + 1])[0] for j in range(moe.top_k))
        if moe.shared is not None:
            y = y + torch.sigmoid(moe.shared_gate(h[n])) * moe.shared(h[n : n + 1])[0]
        rows.append(y)
        f[e] += 1.0 / (B * T)
    return torch.stack(rows).view(B, T, C), moe.n_experts * (f * probs.mean(0)).sum()


# (top_k, shared expert, renormalised top-k weights, shared expert's width: 0 = d_ff)
DISPATCH = [(1, False, True, 0), (2, False, True, 0), (2, True, True, 0), (3, True, True, 0)]
DISPATCH += [(2, False, False, 0), (2, True, False, 40)]  # Qwen1.5-MoE's routing and widths


@pytest.mark.parametrize(("top_k", "shared", "norm", "d_ff_shared"), DISPATCH)
def test_dispatch_equals_per_token_reference(
    top_k: int, shared: bool, norm: bool, d_ff_shared: int
) -> None:
    torch.manual_seed(0)
    cfg = {"top_k": top_k, "shared_expert": shared, "norm_topk_prob": norm}
    moe = MoE(ModelConfig(**TINY, **cfg, d_ff_shared=d_ff_shared)).double()
    if d_ff_shared:
        assert moe.shared is not None and moe.shared.up.out_features == d_ff_shared
    x = torch.randn(3, 7, 16, dtype=torch.float64, requires_grad=True)
    y, aux = moe(x)
    y_ref, aux_ref = naive_moe(moe, x)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(aux, aux_ref, rtol=1e-12, atol=0)
    params = [x, *moe.parameters()]
    g = torch.autograd.grad((y.square().sum() + aux), params)
    g_ref = torch.autograd.grad((y_ref.square().sum() + aux_ref), params)
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


def test_every_expert_used_and_skewed_routing() -> None:
    # A router that prefers expert 0 for every token: it runs on all of them, and the balance
    # loss rises above its minimum top_k.
    torch.manual_seed(0)
    moe = MoE(ModelConfig(**TINY)).double()
    x = torch.randn(2, 8, 16, dtype=torch.float64)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0] = 5 * x.reshape(-1, 16).mean(0) / x.reshape(-1, 16).mean(0).norm() ** 2
    y, aux = moe(x)
    y_ref, _ = naive_moe(moe, x)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-14)
    assert aux > moe.top_k


def test_balance_loss_is_top_k_under_uniform_routing() -> None:
    moe = MoE(ModelConfig(**TINY)).double()
    torch.nn.init.zeros_(moe.router.weight)  # every probability 1 / n_experts
    _, aux = moe(torch.randn(2, 5, 16, dtype=torch.float64))
    assert float(aux.detach()) == pytest.approx(moe.top_k, rel=1e-12)


def loss_and_grads(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    out = model(ids, labels=ids)
    loss = out.loss + out.aux_loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("block", ["gpt2", "llama"])
@pytest.mark.parametrize("shared", [False, True])
def test_checkpointing_grads_equal_plain(block: str, shared: bool) -> None:
    ids = token_batch(TINY["vocab_size"])
    results = []
    for ckpt in (False, True):
        model = make_model(
            "moe",
            torch.float64,
            shape=TINY,
            block=block,
            n_layers=3,
            shared_expert=shared,
            checkpointing=ckpt,
        )
        results.append(loss_and_grads(model, ids))
    (loss_p, grads_p), (loss_c, grads_c) = results
    assert loss_c == loss_p
    assert grads_c.keys() == grads_p.keys()
    for n in grads_p:
        torch.testing.assert_close(grads_c[n], grads_p[n], rtol=1e-12, atol=0, msg=n)


def test_aux_loss_weighting_and_dense_models_have_none() -> None:
    ids = token_batch(TINY["vocab_size"])
    auxes = []
    for w in (0.01, 0.5):
        model = make_model("moe", shape=TINY, n_layers=2, aux_loss_weight=w)
        aux = model(ids).aux_loss
        assert aux.requires_grad
        auxes.append(float(aux.detach()))
    assert auxes[1] == pytest.approx(50 * auxes[0], rel=1e-6)
    assert build_model(ModelConfig(**TINY, arch="baseline", n_layers=1))(ids).aux_loss is None


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"arch": "moe", "n_experts": 0}, "arch 'moe' needs n_experts >= 1"),
        ({"arch": "moe", "n_experts": 2, "top_k": 3}, r"top_k \(3\) must not exceed n_experts"),
        ({"arch": "revffn", "d_model": 15, "n_heads": 3}, "d_model \\(15\\) must be even"),
        ({"arch": "revffn", "checkpointing": True}, "is reversible"),
        ({"arch": "moe", "revffn_query": "x3"}, "revffn_query"),
    ],
)
def test_config_errors(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ModelConfig(**{**TINY, **overrides})
