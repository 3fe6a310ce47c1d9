"""The chunked LM head: the same loss and gradients as the full logits, without the full logits.

Every architecture in the registry runs twice on the same weights and batch, once with the full
head and once with ``head_chunk_tokens`` (a chunk size that does not divide the token count), in
float64: loss and every gradient must agree to rounding. A dispatch-mode tracker then checks
that no tensor of (tokens, vocab) elements is ever allocated by the chunked head.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from gradcheck import rel
from tinymodels import token_batch
from torch.utils._python_dispatch import TorchDispatchMode

from revbench.models import ARCHITECTURES, ModelConfig, build_model
from revbench.models.head import DistillKL, chunked_head_loss

TINY = {"vocab_size": 61, "d_model": 16, "n_heads": 2, "max_seq_len": 16, "n_layers": 2}
MOE = {"n_experts": 4, "top_k": 2}


def config(arch: str, **overrides: object) -> ModelConfig:
    extra = MOE if ARCHITECTURES.get(arch).needs_experts else {}
    return ModelConfig(**{**TINY, **extra, "arch": arch, **overrides})  # type: ignore[arg-type]


def run(cfg: ModelConfig, ids: torch.Tensor, **kwargs: torch.Tensor) -> tuple[float, dict]:
    torch.manual_seed(0)
    model = build_model(cfg).double()
    out = model(ids, **kwargs)
    loss = out.loss if out.aux_loss is None else out.loss + out.aux_loss
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


CASES = [(a, tie) for a in ARCHITECTURES.names() for tie in (True, False)]


@pytest.mark.parametrize(("arch", "tie"), CASES, ids=[f"{a}-tied{t}" for a, t in CASES])
def test_chunked_head_equals_full_head_float64(arch: str, tie: bool) -> None:
    full = config(arch, tie_embeddings=tie)
    chunked = dataclasses.replace(full, head_chunk_tokens=7)  # 33 tokens: 4 full chunks + 5
    ids = token_batch(TINY["vocab_size"], 3, 11)
    loss_f, grads_f = run(full, ids, labels=ids)
    loss_c, grads_c = run(chunked, ids, labels=ids)
    assert abs(loss_c - loss_f) <= 1e-12 * abs(loss_f)
    assert grads_c.keys() == grads_f.keys()
    for n in grads_f:
        assert rel(grads_c[n], grads_f[n]) < 1e-10, n


def test_per_position_targets_with_ignored_positions() -> None:
    ids = token_batch(TINY["vocab_size"], 3, 11)
    targets = token_batch(TINY["vocab_size"], *ids.shape, seed=2)
    targets[:, ::3] = -100  # unscored positions, as the synthetic tasks have
    full = config("midpoint")
    loss_f, grads_f = run(full, ids, targets=targets)
    loss_c, grads_c = run(dataclasses.replace(full, head_chunk_tokens=5), ids, targets=targets)
    assert abs(loss_c - loss_f) <= 1e-12 * abs(loss_f)
    for n in grads_f:
        assert rel(grads_c[n], grads_f[n]) < 1e-10, n


def test_no_logits_when_the_head_is_chunked_and_full_logits_without_a_loss() -> None:
    model = build_model(config("baseline", head_chunk_tokens=4))
    ids = token_batch(TINY["vocab_size"], 3, 11)
    out = model(ids, labels=ids)
    assert out.logits is None and out.loss is not None
    with torch.no_grad():
        assert model(ids).logits.shape == (*ids.shape, TINY["vocab_size"])
    with pytest.raises(ValueError, match="not both"):
        model(ids, labels=ids, targets=ids)


class _Largest(TorchDispatchMode):
    """Largest number of elements of any tensor an op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


@pytest.mark.parametrize("chunk", [0, 8])
def test_chunked_head_never_makes_a_tokens_by_vocab_tensor(chunk: int) -> None:
    cfg = config("midpoint", vocab_size=512, d_model=8, head_chunk_tokens=chunk)
    model = build_model(cfg)
    ids = torch.randint(512, (4, 16))  # 64 tokens; the largest parameter is 512 x 8
    with _Largest() as seen:
        model(ids, labels=ids).loss.backward()
    if chunk:
        assert seen.numel <= 8 * 512  # one chunk of logits
    else:  # the check would catch the full logits
        assert seen.numel >= 63 * 512


def test_chunked_bf16_autocast_tracks_the_full_head() -> None:
    ids = token_batch(TINY["vocab_size"], 3, 11)
    grads = {}
    for chunk in (0, 6):
        torch.manual_seed(0)
        model = build_model(config("midpoint", head_chunk_tokens=chunk))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(ids, labels=ids)
        assert out.loss.dtype == torch.float32
        out.loss.backward()
        grads[chunk] = {n: p.grad for n, p in model.named_parameters()}
    # Both round the head's product to bf16 and differ by summation order: measured 1.7e-3.
    errs = [rel(grads[6][n], grads[0][n]) for n in grads[0]]
    assert max(errs) < 5e-3, max(errs)


def test_distill_kl_kernel_equals_kl_div() -> None:
    gen = torch.Generator().manual_seed(3)
    N, d, V, T = 13, 6, 17, 2.0
    hidden = torch.randn(N, d, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(V, d, dtype=torch.float64, generator=gen, requires_grad=True)
    teacher = torch.randn(N, V, dtype=torch.float64, generator=gen)
    t_logp = (teacher / T).log_softmax(-1)
    want = (
        T
        * T
        * F.kl_div(
            (hidden @ weight.T / T).log_softmax(-1), t_logp, log_target=True, reduction="batchmean"
        )
    )
    gw = torch.autograd.grad(want, (hidden, weight))
    got = chunked_head_loss(hidden, weight, DistillKL(lambda rows: t_logp[rows], N, T), 4)
    gg = torch.autograd.grad(got, (hidden, weight))
    assert abs(float(got.detach()) - float(want.detach())) < 1e-12
    for a, b in zip(gg, gw, strict=True):
        assert rel(a, b) < 1e-12


def test_liger_head_is_a_clear_error_without_its_kernel_on_cpu() -> None:
    model = build_model(config("baseline", head_impl="liger"))
    ids = token_batch(TINY["vocab_size"], 3, 11)
    with pytest.raises(RuntimeError, match="liger"):
        model(ids, labels=ids)


# --- head_impl: inplace ----------------------------------------------------------------------

INPLACE = [(a, tie) for a in ("baseline", "midpoint", "moe", "revffn") for tie in (True, False)]


@pytest.mark.parametrize(("arch", "tie"), INPLACE, ids=[f"{a}-tied{t}" for a, t in INPLACE])
def test_inplace_head_equals_full_head_float64(arch: str, tie: bool) -> None:
    full = config(arch, tie_embeddings=tie)
    ids = token_batch(TINY["vocab_size"], 3, 11)
    targets = token_batch(TINY["vocab_size"], 3, 11, seed=2)
    targets[:, ::3] = -100
    for kw in ({"labels": ids}, {"targets": targets}):
        loss_f, grads_f = run(full, ids, **kw)
        loss_i, grads_i = run(dataclasses.replace(full, head_impl="inplace"), ids, **kw)
        assert abs(loss_i - loss_f) <= 1e-12 * abs(loss_f)
        assert grads_i.keys() == grads_f.keys()
        for n in grads_f:
            assert rel(grads_i[n], grads_f[n]) < 1e-10, n


def test_inplace_head_works_in_chunks_of_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """More tokens than one work chunk (33 tokens in chunks of 7): the same loss and grads."""
    from revbench.models import head

    ids = token_batch(TINY["vocab_size"], 3, 11)
    cfg = config("midpoint", head_impl="inplace")
    loss_1, grads_1 = run(cfg, ids, labels=ids)
    monkeypatch.setattr(head, "INPLACE_ROWS", 7)
    loss_7, grads_7 = run(cfg, ids, labels=ids)
    assert loss_7 == pytest.approx(loss_1, rel=1e-14)
    for n in grads_1:
        assert rel(grads_7[n], grads_1[n]) < 1e-13, n


def test_inplace_head_keeps_no_float32_tokens_by_vocab_buffers_beside_the_logits() -> None:
    """bf16 autocast: the loss saves the bf16 logits, works in float32 chunks of rows, and
    its backward returns the logits' own memory; F.cross_entropy's backward makes float32
    (tokens, vocab) buffers. Traced live bytes of the backward, and the loss and gradients
    against the torch head (the same bf16 product). Over the step: the torch head holds a
    float32 copy of the logits and their log-softmax, then two float32 gradients; this one
    the bf16 logits and one float32 chunk (here all 256 rows)."""
    from livebytes import LiveBytes

    from revbench.models import head

    ids = torch.randint(512, (4, 64))  # 256 tokens, vocab 512: the head is most of the step
    peaks, grads, losses = {}, {}, {}
    for impl in ("torch", "inplace"):
        torch.manual_seed(0)
        model = build_model(config("midpoint", vocab_size=512, max_seq_len=64, head_impl=impl))
        with LiveBytes() as live:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(ids, labels=ids)
            assert (out.logits is None) == (impl == "inplace")
            loss = out.loss.detach()
            out.loss.backward()
            del out
        peaks[impl], losses[impl] = live.peak, float(loss)
        grads[impl] = {n: p.grad for n, p in model.named_parameters()}
    assert losses["inplace"] == pytest.approx(losses["torch"], rel=1e-6)
    assert max(rel(grads["inplace"][n], grads["torch"][n]) for n in grads["torch"]) < 1e-2
    full = 256 * 512 * 4  # one float32 (tokens, vocab) buffer
    assert peaks["torch"] - peaks["inplace"] > 1.5 * full, peaks  # measured 1.96
    assert head.INPLACE_ROWS >= 256  # one work chunk here


def test_inplace_head_refuses_chunks() -> None:
    with pytest.raises(ValueError, match=r"head_impl: inplace .*head_chunk_tokens must be 0"):
        config("midpoint", head_impl="inplace", head_chunk_tokens=8)
