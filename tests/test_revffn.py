"""RevFFN: exact mode equals autograd in float64; fixed-point mode converges with iterations.

Gradients of the reversible path (``reversible_backprop`` True) are compared with the same model
under ordinary autograd (False), loss = LM loss + MoE aux loss, every parameter (router and
adapters included). Weights are redrawn "trained-like" (stream of unit scale, W ~ N(0, 1/fan_in))
so that attention really depends on its queries and the fixed point is not trivial; the
attention output adapter P1 is scaled by ``p1_scale``, which sets the fixed-point map's
contraction.
"""

from __future__ import annotations

import pytest
import torch
from gradcheck import grad_error, loss_and_grads, rel, reversible_node
from tinymodels import TINY as DENSE
from tinymodels import make_model, saved_bytes, token_batch

from revbench.models import reconstruction_errors
from revbench.models.revffn import RevFFNLM

TINY = {**DENSE, "n_experts": 4}


def model(p1_scale: float = 1.0, n_layers: int = 3, **overrides: object) -> RevFFNLM:
    m = make_model("revffn", torch.float64, shape=TINY, n_layers=n_layers, **overrides)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.dim() == 2:
                scale = p1_scale if "attn_out_proj" in n or "down_proj" in n else 1.0
                p.copy_(
                    torch.randn(p.shape, generator=g, dtype=p.dtype) * scale / p.shape[1] ** 0.5
                )
    assert isinstance(m, RevFFNLM)
    return m


EXACT = {
    "moe-gpt2": {},
    "moe-llama-shared": {"block": "llama", "shared_expert": True},
    "moe-top1-aux0.5": {"top_k": 1, "aux_loss_weight": 0.5},
    "moe-dropout": {"dropout": 0.2},
    "dense": {"n_experts": 0},
    "one-layer": {"n_layers": 1},
    "adapter-pair": {"revffn_adapters": "pair"},
    "adapter-pair-llama-shared": {
        "revffn_adapters": "pair",
        "block": "llama",
        "shared_expert": True,
    },
}


@pytest.mark.parametrize("name", EXACT)
def test_exact_mode_float64_grads_equal_autograd(name: str) -> None:
    m = model(**{"revffn_query": "x2", **EXACT[name]})  # type: ignore[arg-type]
    m.train()
    loss_err, grad_err = grad_error(m, token_batch())
    assert loss_err < 1e-12
    assert grad_err < 1e-10, f"max relative gradient error {grad_err:.2e}"


def test_aux_loss_gradient_reaches_the_router_through_the_function() -> None:
    m = model(revffn_query="x2", aux_loss_weight=1.0)
    _, with_aux = loss_and_grads(m, token_batch(), reversible=True)
    m.config.aux_loss_weight = 0.0
    _, without = loss_and_grads(m, token_batch(), reversible=True)
    for i in range(3):
        name = f"blocks.{i}.ffn.router.weight"
        assert rel(with_aux[name], without[name]) > 1e-3, name


def test_function_saves_only_the_final_halves_and_aux() -> None:
    out = model(revffn_query="x2")(token_batch())
    rev = reversible_node(out.aux_loss)
    assert rev.saved_tensors == ()
    shapes = sorted(tuple(t.shape) for t in rev.final)
    assert shapes == [(), (2, 12, 8), (2, 12, 8)]


# Measured (float64, 4 layers, p1_scale 0.1, this seed): max relative gradient error
# 1.3e-1, 1.8e-2, 9.4e-4, 5.1e-6, 3.2e-10, 2.6e-15 at 1, 2, 4, 8, 16, 32 iterations.
def test_fixed_point_grad_error_falls_with_iterations() -> None:
    errors = {}
    for iters in (1, 4, 16, 32):
        m = model(p1_scale=0.1, n_layers=4, revffn_fp_iters=iters)
        errors[iters] = grad_error(m, token_batch())[1]
        residuals = m.fixed_point_residuals()
        assert len(residuals) == 4 and all(r is not None for r in residuals)
    assert errors[1] > 1e-2  # the approximation is real ...
    assert errors[1] > errors[4] > errors[16]  # ... shrinks with iterations ...
    assert errors[16] < 1e-8  # ... and reaches exactness once converged
    assert errors[32] < 1e-12


def test_fixed_point_tolerance_stops_early_and_reports_residual() -> None:
    m = model(p1_scale=0.1, revffn_fp_iters=50, revffn_fp_tol=1e-6)
    grad_error(m, token_batch())
    residuals = m.fixed_point_residuals()
    assert all(r is not None and 1e-12 < r <= 1e-6 for r in residuals), residuals


def test_fixed_point_with_dropout_replays_the_masks() -> None:
    m = model(p1_scale=0.1, dropout=0.2, revffn_fp_iters=32)
    m.train()
    assert grad_error(m, token_batch())[1] < 1e-10


def test_reconstruction_errors_exact_and_fixed_point() -> None:
    exact = reconstruction_errors(model(revffn_query="x2"), token_batch())
    assert len(exact) == 3 and max(exact) < 1e-14
    loose = reconstruction_errors(model(p1_scale=0.1, revffn_fp_iters=2), token_batch())
    tight = reconstruction_errors(model(p1_scale=0.1, revffn_fp_iters=32), token_batch())
    assert max(loose) > 1e-3 and max(tight) < 1e-13


def test_queries_from_x1_differ_from_x2() -> None:
    ids = token_batch()
    with torch.no_grad():
        a = model(revffn_query="x1")(ids).logits
        b = model(revffn_query="x2")(ids).logits
    assert rel(a, b) > 1e-3  # the two modes are different models with the same parameters


# Measured: 2.3e-6 (float64 cases above: 1e-15 to 1e-14).
def test_float32_exact_mode_close_to_autograd() -> None:
    m = model(revffn_query="x2").float()
    assert grad_error(m, token_batch())[1] < 1e-4


# Measured (p1_scale 1.0, 4 layers, 16 iterations): per-layer residuals 0.9, 0.6, 0.1, 1e-6 and
# gradient error ~2: when P1's branch is large against the stream the map is no contraction and
# the fixed point never settles. The residuals make that visible; the test pins it.
def test_non_contractive_fixed_point_shows_in_residuals() -> None:
    m = model(p1_scale=1.0, n_layers=4, revffn_fp_iters=16)
    grad_error(m, token_batch())
    assert max(r for r in m.fixed_point_residuals() if r is not None) > 1e-2


SHAPE = {"vocab_size": 64, "d_model": 32, "n_heads": 2, "max_seq_len": 64, "n_experts": 4}


def saved(n_layers: int, arch: str, **overrides: object) -> int:
    m = make_model(arch, shape=SHAPE, n_layers=n_layers, **overrides)
    return saved_bytes(m, token_batch(SHAPE["vocab_size"], 4, 64, seed=0))


# Measured (batch 4 x seq 64, d_model 32, 4 experts top-2, fp32), bytes at 2 / 4 / 8 / 16 layers:
# moe 3,075,588 / 6,014,500 / 11,892,324 / 23,647,972 (1,469,456 per layer); moe+ckpt 202,212 /
# 267,748 / 398,820 / 660,964 (32,768 per layer: the block input); revffn 169,448 at every depth
# in both query modes (final halves, aux slot, head and loss).
def test_saved_bytes_revffn_flat_moe_linear_checkpointing_between() -> None:
    moe = [saved(n, arch="moe") for n in (2, 6)]
    ckpt = [saved(n, arch="moe", checkpointing=True) for n in (2, 6)]
    rev = [saved(n, arch="revffn") for n in (2, 6)]
    per_layer = (moe[1] - moe[0]) / 4
    assert per_layer > 5 * rev[0]  # activations dominate the setup
    assert rev[1] == rev[0]
    assert ckpt[1] - ckpt[0] == 4 * 4 * 64 * 32 * 4  # one fp32 (B, T, C) block input per layer
    assert moe[0] > ckpt[0] > rev[0]


# --- the block's equations, written out from the paper (Liu et al. 2025) -------------------


def _ln(x: torch.Tensor, norm: torch.nn.Module, eps: float) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * norm.weight + norm.bias


def _attn(q_in: torch.Tensor, kv_in: torch.Tensor, attn: torch.nn.Module, nh: int) -> torch.Tensor:
    """softmax(Q K^T / sqrt(hs) + causal mask) V, heads merged, output projection."""
    B, T, C = q_in.shape
    W, b = attn.qkv.weight, attn.qkv.bias
    q = q_in @ W[:C].T + b[:C]
    k = kv_in @ W[C : 2 * C].T + b[C : 2 * C]
    v = kv_in @ W[2 * C :].T + b[2 * C :]
    hs = C // nh
    q, k, v = (t.reshape(B, T, nh, hs).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
    scores = q @ k.transpose(-1, -2) / hs**0.5  # (B, nh, T, T)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    weights = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
    y = (weights @ v).transpose(1, 2).reshape(B, T, C)
    return y @ attn.proj.weight.T + attn.proj.bias


def _gelu_mlp(z: torch.Tensor, mlp: torch.nn.Module) -> torch.Tensor:
    h = z @ mlp.fc.weight.T + mlp.fc.bias
    h = 0.5 * h * (1 + torch.erf(h / 2**0.5))
    return h @ mlp.proj.weight.T + mlp.proj.bias


ADAPTER_NAMES = {
    "five": ("q_up", "kv_up", "attn_out_proj", "ffn_up", "ffn_out_proj"),
    "pair": ("lift", "lift", "down_proj", "lift", "down_proj"),
}
"""U1, U2, P1, U3, P2 by the block's module names."""


def reference_stack(m: RevFFNLM, h: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """X1, X2 (and A) after every layer, from

        Y1 = X1 + P1(Attn(q: N1(U1(X1 or X2)), k, v: N1(U2(X2))))
        Y2 = X2 + P2(FFN(N2(U3(Y1))))      A += aux (MoE)

    with attention, LayerNorm and the GELU MLP written out here (the MoE, when there is one,
    is the block's own module: the coupling is under test, not the router). With the adapter
    pair, U1 = U2 = U3 is the block's ``lift`` and P1 = P2 its ``down_proj``."""
    cfg = m.config
    names = ADAPTER_NAMES[cfg.revffn_adapters]
    x1, x2 = h[..., : cfg.d_model // 2], h[..., cfg.d_model // 2 :]
    a = h.new_zeros(())
    for blk in m.blocks:
        u1, u2, p1, u3, p2 = (getattr(blk, n).weight for n in names)
        q_in = x1 if cfg.revffn_query == "x1" else x2
        q = _ln(q_in @ u1.T, blk.n1, cfg.norm_eps)
        kv = _ln(x2 @ u2.T, blk.n1, cfg.norm_eps)
        y1 = x1 + _attn(q, kv, blk.attn, cfg.n_heads) @ p1.T
        z = _ln(y1 @ u3.T, blk.n2, cfg.norm_eps)
        if cfg.n_experts:
            out, aux = blk.ffn(z)
            a = a + aux
        else:
            out = _gelu_mlp(z, blk.ffn)
        y2 = x2 + out @ p2.T
        x1, x2 = y1, y2
    return (x1, x2, a) if cfg.n_experts else (x1, x2)


@pytest.mark.parametrize("query", ["x1", "x2"])
@pytest.mark.parametrize("experts", [0, 4])
@pytest.mark.parametrize("grad", [False, True], ids=["plain-path", "function"])
@pytest.mark.parametrize("adapters", ["five", "pair"])
def test_forward_follows_the_papers_equations(
    query: str, experts: int, grad: bool, adapters: str
) -> None:
    m = model(revffn_query=query, n_experts=experts, revffn_adapters=adapters)
    with torch.no_grad():  # biases and norm scales away from 0 and 1, so each one shows
        for n, p in m.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(n))))
    h = torch.randn(2, 12, TINY["d_model"], dtype=torch.float64)
    with torch.set_grad_enabled(grad):
        got = m.run_stack(h)  # with grad: the reversible Function's forward
    with torch.no_grad():
        want = reference_stack(m, h)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.detach(), w, rtol=1e-12, atol=1e-12)


def test_adapter_pair_is_two_shared_matrices() -> None:
    """``revffn_adapters: pair``: per block one lift and one projection, each a parameter once,
    and 3 (d/2 x d) matrices per layer fewer than the five; a non-RevFFN arch refuses it."""
    from revbench.models.config import ModelConfig

    five, pair = model(), model(revffn_adapters="pair")
    d = TINY["d_model"]
    n_five = sum(p.numel() for p in five.parameters())
    n_pair = sum(p.numel() for p in pair.parameters())
    assert n_five - n_pair == 3 * (d // 2) * d * 3  # three layers
    blk = pair.blocks[0]
    assert {n.split(".")[0] for n, _ in blk.named_parameters()} >= {"lift", "down_proj"}
    assert not hasattr(blk, "q_up") and blk.lifts == (blk.lift,) * 3
    assert blk.projections == (blk.down_proj,) * 2
    assert not any("lifts" in k or "projections" in k for k in pair.state_dict())
    with pytest.raises(ValueError, match="revffn_adapters: pair chooses the adapters of arch"):
        ModelConfig(arch="midpoint", revffn_adapters="pair")
