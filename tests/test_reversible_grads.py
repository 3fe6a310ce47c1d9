"""Reversible backprop is real and exact: gradients equal plain autograd's (after minREV's test).

Every check runs one model twice on the same weights and data, once with
``reversible_backprop`` True (the custom Function: nothing stored, states rebuilt in backward) and
once False (the same math under ordinary autograd), and compares loss and every gradient.
"""

from __future__ import annotations

import pytest
import torch
from gradcheck import grad_error, loss_and_grads, rel, reversible_node
from tinymodels import make_model, token_batch

from revbench.models.schemes import Scheme

REVERSIBLE = ["midpoint", "leapfrog", "hamiltonian", "revnet"]

CASES = [(arch, block, n) for arch in REVERSIBLE for block in ("gpt2", "llama") for n in (1, 3, 4)]


@pytest.mark.parametrize(
    ("arch", "block", "n_layers"), CASES, ids=[f"{a}-{b}-{n}" for a, b, n in CASES]
)
def test_float64_grads_equal_plain_autograd(arch: str, block: str, n_layers: int) -> None:
    model = make_model(arch, torch.float64, block=block, n_layers=n_layers)
    loss_err, grad_err = grad_error(model, token_batch())
    assert loss_err < 1e-12
    assert grad_err < 1e-10, f"max relative gradient error {grad_err:.2e}"


VARIANTS = {
    "midpoint-a0.5": ("midpoint", {"a": 0.5}),
    "midpoint-a-1.5-h0.5": ("midpoint", {"a": -1.5, "step_size": 0.5}),
    "midpoint-euler": ("midpoint", {"init_state": "euler", "step_size": 0.5}),
    "leapfrog-euler-llama": ("leapfrog", {"init_state": "euler", "block": "llama"}),
    "midpoint-dropout": ("midpoint", {"dropout": 0.2}),
    "leapfrog-dropout-llama": ("leapfrog", {"dropout": 0.2, "block": "llama"}),
    "hamiltonian-dropout": ("hamiltonian", {"dropout": 0.2}),
    "revnet-dropout-untied": ("revnet", {"dropout": 0.2, "tie_embeddings": False}),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_float64_variants_equal_plain_autograd(name: str) -> None:
    arch, overrides = VARIANTS[name]
    model = make_model(arch, torch.float64, n_layers=3, **overrides)
    loss_err, grad_err = grad_error(model, token_batch())
    assert loss_err < 1e-12
    assert grad_err < 1e-10, f"max relative gradient error {grad_err:.2e}"


def test_dropout_masks_really_differ_between_seeds() -> None:
    # Guards the dropout test above: with dropout on, the seed must matter.
    model = make_model("midpoint", torch.float64, n_layers=2, dropout=0.2)
    a, _ = loss_and_grads(model, token_batch(), reversible=True, seed=0)
    b, _ = loss_and_grads(model, token_batch(), reversible=True, seed=1)
    assert a != b


# Measured on this machine (d_model 16, 4 layers, float32): max relative gradient error between
# 1e-7 and 6e-7 over the four archs and both blocks; 1e-5 leaves a wide margin.
@pytest.mark.parametrize("arch", REVERSIBLE)
@pytest.mark.parametrize("block", ["gpt2", "llama"])
def test_float32_grads_close_to_plain_autograd(arch: str, block: str) -> None:
    model = make_model(arch, torch.float32, block=block, n_layers=4)
    loss_err, grad_err = grad_error(model, token_batch())
    assert loss_err < 1e-6
    assert grad_err < 1e-5, f"max relative gradient error {grad_err:.2e}"


@pytest.mark.parametrize("arch", REVERSIBLE)
def test_gradient_accumulation_adds(arch: str) -> None:
    model = make_model(arch, torch.float64, n_layers=2)
    ids = token_batch()
    _, once = loss_and_grads(model, ids, reversible=True)
    model.zero_grad(set_to_none=True)
    for _ in range(2):
        model(ids, labels=ids).loss.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, 2 * once[n], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("arch", ["midpoint", "hamiltonian"])
def test_frozen_parameters(arch: str) -> None:
    model = make_model(arch, torch.float64, n_layers=3)
    frozen = {"blocks.1.attn.qkv.weight", "blocks.0.mlp.fc.weight", "embed.tok.weight"}
    for n, p in model.named_parameters():
        p.requires_grad_(n not in frozen)
    ids = token_batch()
    _, grads_r = loss_and_grads(model, ids, reversible=True)
    _, grads_p = loss_and_grads(model, ids, reversible=False)
    assert frozen.isdisjoint(grads_r) and grads_r.keys() == grads_p.keys()
    for n in grads_p:
        assert rel(grads_r[n], grads_p[n]) < 1e-10, n


def test_all_blocks_frozen_still_trains_embedding() -> None:
    model = make_model("leapfrog", torch.float64, n_layers=2)
    for p in model.blocks.parameters():
        p.requires_grad_(False)
    ids = token_batch()
    _, grads_r = loss_and_grads(model, ids, reversible=True)
    _, grads_p = loss_and_grads(model, ids, reversible=False)
    assert grads_r.keys() == grads_p.keys() and "embed.tok.weight" in grads_r
    for n in grads_p:
        assert rel(grads_r[n], grads_p[n]) < 1e-10, n


def test_no_grad_and_eval_use_the_plain_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from revbench.models.reversible import ReversibleFunction

    calls: list[int] = []
    real = ReversibleFunction.apply
    monkeypatch.setattr(
        ReversibleFunction, "apply", lambda *a: calls.append(1) or real(*a), raising=True
    )
    model = make_model("midpoint", torch.float64, n_layers=2)
    ids = token_batch()
    model(ids)
    assert calls == [1]  # with grad: the Function (the spy sees it) ...
    with torch.no_grad():
        out = model(ids)
    assert calls == [1], "no_grad ran the reversible Function"  # ... without: the plain steps
    assert out.logits.grad_fn is None and out.loss is None and out.aux_loss is None
    model.eval()
    with torch.inference_mode():
        logits = model(ids).logits
    torch.testing.assert_close(logits, out.logits, rtol=0, atol=0)


def test_function_keeps_only_the_final_states_and_gives_them_up() -> None:
    model = make_model("midpoint", torch.float64, n_layers=3)
    ids = token_batch()
    out = model(ids, labels=ids)
    rev = reversible_node(out.loss)
    # Nothing through save_for_backward (it would pin the states for the whole backward); the
    # final pair on ctx, which the backward takes and rebuilds in place.
    assert rev.saved_tensors == ()
    assert [tuple(t.shape) for t in rev.final] == [(2, 12, 16), (2, 12, 16)]
    out.loss.backward()
    assert rev.final is None


@pytest.mark.parametrize("readout", ["last", "mean"])
def test_one_midpoint_layer_leaves_the_input_in_the_first_slot(readout: str) -> None:
    """After one midpoint layer the state's first slot is still the embedding, an input of the
    Function; a head that reads it (mean) gets its gradient through the Function's output."""
    model = make_model("midpoint", torch.float64, n_layers=1, readout=readout)
    loss_err, grad_err = grad_error(model, token_batch())
    assert loss_err < 1e-12 and grad_err < 1e-10, (loss_err, grad_err)


class Spy(Scheme):
    """``inner``, recording which gradients each backward step receives as None."""

    def __init__(self, inner: Scheme, log: list[list[bool]]) -> None:
        self.inner, self.log = inner, log

    def forward_step(self, x, block):  # type: ignore[no-untyped-def]
        return self.inner.forward_step(x, block)

    def backward_step(self, y, g, block, params, rebuild=True):  # type: ignore[no-untyped-def]
        self.log.append([t is None for t in g])
        return self.inner.backward_step(y, g, block, params, rebuild=rebuild)


def test_a_slot_the_loss_does_not_read_gets_no_gradient_tensor() -> None:
    """Midpoint's head reads the last slot only: the backward's first step gets None for the
    other, not a tensor of zeros (a slot's worth of memory), and the steps below get both."""
    model = make_model("midpoint", torch.float64, n_layers=3)
    log: list[list[bool]] = []
    model.steps = [(Spy(s, log), b) for s, b in model.steps]
    ids = token_batch()
    model(ids, labels=ids).loss.backward()
    assert log == [[True, False], [False, False], [False, False]]


def test_a_trunk_output_the_caller_holds_is_not_overwritten() -> None:
    # The backward rebuilds states in place of the final ones; one the caller still holds is
    # copied first.
    model = make_model("midpoint", torch.float64, n_layers=3)
    h = model.trunk(model.embed(token_batch()))
    before = h.detach().clone()
    (h * h).sum().backward()
    torch.testing.assert_close(h.detach(), before, rtol=0, atol=0)


def test_retain_graph_second_backward_is_a_clear_error() -> None:
    model = make_model("midpoint", torch.float64, n_layers=2)
    ids = token_batch()
    loss = model(ids, labels=ids).loss
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


def test_autograd_grad_matches_backward() -> None:
    model = make_model("revnet", torch.float64, n_layers=3)
    ids = token_batch()
    _, grads = loss_and_grads(model, ids, reversible=True)
    names, params = zip(*model.named_parameters(), strict=True)
    got = torch.autograd.grad(model(ids, labels=ids).loss, params)
    for n, g in zip(names, got, strict=True):
        assert rel(g, grads[n]) < 1e-12, n


PER_BLOCK = [(arch, "embedding") for arch in REVERSIBLE] + [("midpoint", "euler")]


@pytest.mark.parametrize(("arch", "init_state"), PER_BLOCK, ids=[f"{a}-{i}" for a, i in PER_BLOCK])
def test_grads_per_block_land_block_by_block_with_the_same_values(
    arch: str, init_state: str
) -> None:
    """``grads_per_block`` (what DDP uses): each block's gradients reach ``param.grad`` (and its
    hooks) when the backward leaves the block, last block first, before the blocks below are
    recomputed; the values are exactly those the Function returns otherwise."""
    model = make_model(arch, torch.float64, n_layers=4, init_state=init_state)
    ids = token_batch()
    _, want = loss_and_grads(model, ids, reversible=True)
    landed: list[tuple[int, bool]] = []  # (block, whether block 0 had its gradient yet)
    first = next(model.blocks[0].parameters())
    for name, p in model.blocks.named_parameters():
        k = int(name.split(".")[0])
        p.register_post_accumulate_grad_hook(
            lambda _, k=k: landed.append((k, first.grad is not None))
        )
    model.grads_per_block = True
    _, got = loss_and_grads(model, ids, reversible=True)
    assert got.keys() == want.keys()
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=0, atol=0, msg=n)
    blocks = [k for k, _ in landed]
    assert blocks == sorted(blocks, reverse=True) and blocks[0] == 3 and blocks[-1] == 0
    assert not any(zero_done for k, zero_done in landed if k > 0)


def test_grads_per_block_with_a_frozen_embedding_still_trains_the_blocks() -> None:
    model = make_model("midpoint", torch.float64, n_layers=2)
    model.embed.tok.weight.requires_grad_(False)
    ids = token_batch()
    _, want = loss_and_grads(model, ids, reversible=False)
    model.grads_per_block = True
    _, got = loss_and_grads(model, ids, reversible=True)
    assert got.keys() == want.keys() and any(n.startswith("blocks.") for n in got)
    for n in want:
        assert rel(got[n], want[n]) < 1e-12, n


def test_double_backward_raises() -> None:
    model = make_model("midpoint", torch.float64, n_layers=2)
    loss = model(token_batch(), labels=token_batch()).loss
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(loss, list(model.parameters()), create_graph=True)


def test_autocast_bf16_runs_and_tracks_plain_path() -> None:
    # The stream stays float32; the recompute re-enters bf16 autocast, so the rebuilt graph uses
    # the forward's bf16 branch values and gradients track the plain path closely.
    model = make_model("midpoint", torch.float32, n_layers=3)
    ids = token_batch()
    grads = {}
    for reversible in (True, False):
        model.reversible_backprop = reversible
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(ids, labels=ids)
        assert out.loss.dtype == torch.float32
        out.loss.backward()
        grads[reversible] = {n: p.grad.clone() for n, p in model.named_parameters()}
    errs = [rel(grads[True][n], grads[False][n]) for n in grads[False]]
    assert max(errs) < 1e-5, max(errs)  # measured <= 1e-7 (test_contract.py: BF16_BOUND)


# --- recompute_chunk_seqs: the reversible backward over slices of the batch ------------------

SLICED = [
    ("midpoint", {}),
    ("midpoint", {"a": -1.5, "step_size": 0.5, "init_state": "euler"}),
    ("leapfrog", {"block": "llama"}),
    ("hamiltonian", {}),
    ("revnet", {"readout": "last"}),
    ("revffn", {"revffn_query": "x2"}),
    ("revffn", {"revffn_query": "x1", "revffn_adapters": "pair"}),
    ("midpoint", {"force": "pair"}),
]


@pytest.mark.parametrize(
    ("arch", "over"), SLICED, ids=[f"{a}-{i}" for i, (a, _) in enumerate(SLICED)]
)
@pytest.mark.parametrize("chunk", [1, 2, 4])
def test_sliced_backward_equals_plain_autograd(arch: str, over: dict, chunk: int) -> None:
    """Slices of 1, 2 and 4 sequences of a batch of 5 (the last slice shorter, 4: two slices)
    give the plain path's float64 gradients, and the whole-batch reversible backward's to
    rounding."""
    ids = token_batch(B=5)
    model = make_model(arch, torch.float64, n_layers=3, recompute_chunk_seqs=chunk, **over)
    loss_err, grad_err = grad_error(model, ids)
    assert loss_err < 1e-12
    assert grad_err < 1e-10, f"max relative gradient error {grad_err:.2e}"
    whole = make_model(arch, torch.float64, n_layers=3, **over)
    _, want = loss_and_grads(whole, ids, reversible=True)
    _, got = loss_and_grads(model, ids, reversible=True)
    assert max(rel(got[n], want[n]) for n in want) < 1e-13


def test_sliced_backward_holds_one_slice_of_recompute() -> None:
    """What the backward adds beyond the states falls with the slice: a step's recompute graph
    is a slice's (traced live tensor bytes, float32, batch 8: slices of 2 sequences keep well
    under half the whole batch's transient)."""
    from livebytes import LiveBytes

    def backward_peak(chunk: int) -> int:
        model = make_model("midpoint", torch.float32, n_layers=2, recompute_chunk_seqs=chunk)
        ids = token_batch(B=8, T=16)
        loss = model(ids, labels=ids).loss
        with LiveBytes() as live:
            loss.backward()
        return live.peak

    whole, sliced = backward_peak(0), backward_peak(2)
    assert sliced < 0.6 * whole, (sliced, whole)


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"arch": "baseline"}, "not reversible"),
        ({"dropout": 0.1}, "dropout"),
        ({"arch": "revffn", "n_experts": 4}, "load-balancing"),
        ({"arch": "revffn", "revffn_fp_tol": 1e-4}, "revffn_fp_tol"),
    ],
)
def test_sliced_backward_refuses_what_mixes_sequences(over: dict, field: str) -> None:
    from revbench.models.config import ModelConfig

    with pytest.raises(ValueError, match=f"recompute_chunk_seqs .*{field}"):
        ModelConfig(**{"arch": "midpoint", "recompute_chunk_seqs": 2, **over})
