"""Losses over the vocabulary without the full logits: the LM head in chunks of tokens.

A full-vocabulary loss materialises logits of (tokens, vocab) and, in its backward, softmax and
gradient buffers of the same size: about 12 bytes per token per vocabulary entry at the peak in
float32 and under bf16 autocast alike (cross-entropy runs in float32). At GPT-2's vocabulary
that is most of what a reversible model keeps, so it, not the trunk, caps the max batch.

``chunked_head_loss`` computes ``mean(loss(hidden @ W^T))`` ``chunk`` tokens at a time: the
forward keeps no logits (each chunk's are made, reduced to a loss sum and dropped), the
backward recomputes each chunk's logits from the saved hidden states and accumulates
``d hidden = dlogits @ W`` and ``d W += dlogits^T hidden`` chunk by chunk. Peak memory of the
head is then a chunk's logits and their gradient plus ``d W``, whatever the batch. The loss's
gradient with respect to the logits is written out (``LossKernel.grad``), so no autograd
graph is built per chunk. Exact: float64 results equal the full head's (tests/test_head.py).

Two kernels: next-token cross-entropy (``CrossEntropy``, ignore index -100), and the
distillation KL of ``revbench.convert`` (``DistillKL``), whose teacher log-probabilities are
recomputed per chunk too. ``head_impl: liger`` hands cross-entropy to Liger-Kernel's fused
linear cross-entropy (Triton; CUDA only) when it is installed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from revbench.models.config import INPLACE_ROWS

IGNORE = -100


class LossKernel:
    """A loss summed over tokens, given a chunk of logits (float32 or float64)."""

    def value(self, logits: Tensor, rows: slice) -> Tensor:
        """Sum of the loss over the chunk's tokens (0-dim)."""
        raise NotImplementedError

    def grad(self, logits: Tensor, rows: slice) -> Tensor:
        """d(sum of the loss)/d logits for the chunk, in ``logits``' memory (it is not
        needed afterwards)."""
        raise NotImplementedError

    def count(self) -> Tensor | int:
        """What the sum is divided by: the mean's denominator."""
        raise NotImplementedError


class CrossEntropy(LossKernel):
    """Cross-entropy of ``targets`` (N,), ``IGNORE`` where a token has none; the mean over
    the tokens that have one (``F.cross_entropy``'s ``reduction='mean'``)."""

    def __init__(self, targets: Tensor) -> None:
        self.targets = targets
        self.valid = targets != IGNORE

    def value(self, logits: Tensor, rows: slice) -> Tensor:
        t, v = self.targets[rows], self.valid[rows]
        lse = torch.logsumexp(logits, dim=-1)  # (n,)
        picked = logits.gather(1, t.clamp(min=0).unsqueeze(1)).squeeze(1)  # (n,)
        return ((lse - picked) * v).sum()

    def grad(self, logits: Tensor, rows: slice) -> Tensor:
        t, v = self.targets[rows], self.valid[rows]
        p = logits.sub_(torch.logsumexp(logits, dim=-1, keepdim=True)).exp_()  # softmax
        p.scatter_add_(1, t.clamp(min=0).unsqueeze(1), -torch.ones_like(p[:, :1]))
        return p.mul_(v.unsqueeze(1).to(p.dtype))

    def count(self) -> Tensor:
        return self.valid.sum()


def _denominator(kernel: LossKernel, like: Tensor) -> Tensor:
    n = kernel.count()
    return torch.as_tensor(n).to(device=like.device, dtype=like.dtype)


class DistillKL(LossKernel):
    """``T^2 KL(p_teacher || p_student)`` at temperature ``T`` per token, averaged over tokens
    (``F.kl_div(..., reduction='batchmean')`` over flattened tokens); ``teacher(rows)`` gives the
    teacher's log-probabilities at temperature T for those tokens, (n, V) float32."""

    def __init__(self, teacher: Callable[[slice], Tensor], n_tokens: int, T: float) -> None:
        self.teacher, self.n, self.T = teacher, n_tokens, T

    def value(self, logits: Tensor, rows: slice) -> Tensor:
        s = (logits / self.T).log_softmax(-1)
        t = self.teacher(rows).to(s.dtype)
        return self.T * self.T * F.kl_div(s, t, log_target=True, reduction="sum")

    def grad(self, logits: Tensor, rows: slice) -> Tensor:
        # d/dz [T^2 sum p_t (log p_t - log q)], q = softmax(z / T): T (q - p_t)
        q = logits.div_(self.T).softmax(-1)
        q.sub_(self.teacher(rows).to(q.dtype).exp_())
        return q.mul_(self.T)

    def count(self) -> int:
        return self.n


def _compute_dtype(hidden: Tensor) -> torch.dtype:
    """The dtype of the head's matrix product: the autocast dtype where autocast is on for a
    float32 input (as ``nn.Linear`` would run), else the input's own."""
    kind = hidden.device.type
    if hidden.dtype == torch.float32 and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return hidden.dtype


class _ChunkedHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, hidden: Tensor, weight: Tensor, kernel: LossKernel, chunk: int
    ) -> Tensor:
        dtype = _compute_dtype(hidden)
        acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        ctx.kernel, ctx.chunk, ctx.dtype = kernel, chunk, dtype
        ctx.save_for_backward(hidden, weight)
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            total = hidden.new_zeros((), dtype=acc)
            for i in range(0, hidden.shape[0], chunk):
                rows = slice(i, i + chunk)
                logits = (hidden[rows].to(dtype) @ w.T).to(acc)  # (n, V)
                total += kernel.value(logits, rows)
                del logits
            return total / _denominator(kernel, total)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        hidden, weight = ctx.saved_tensors
        kernel, chunk, dtype = ctx.kernel, ctx.chunk, ctx.dtype
        need_h, need_w = ctx.needs_input_grad[:2]
        d_hidden = torch.zeros_like(hidden) if need_h else None
        d_weight = torch.zeros_like(weight) if need_w else None
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            factor = grad / _denominator(kernel, grad)
            for i in range(0, hidden.shape[0], chunk):
                rows = slice(i, i + chunk)
                h = hidden[rows].to(dtype)
                logits = (h @ w.T).to(grad.dtype)  # recomputed, (n, V)
                dl = kernel.grad(logits, rows).mul_(factor).to(dtype)
                del logits
                if d_hidden is not None:
                    d_hidden[rows] = dl @ w
                if d_weight is not None and d_weight.dtype == dtype:
                    d_weight.addmm_(dl.T, h)
                elif d_weight is not None:  # autocast: a low-precision product, added in fp32
                    d_weight.add_(dl.T @ h)
                del dl, h
        return d_hidden, d_weight, None, None


class _InplaceLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: Tensor, kernel: LossKernel) -> Tensor:  # type: ignore[override]
        acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
        ctx.kernel = kernel
        ctx.save_for_backward(logits)
        total = logits.new_zeros((), dtype=acc)
        for i in range(0, logits.shape[0], INPLACE_ROWS):
            rows = slice(i, i + INPLACE_ROWS)
            # a float32 chunk copy for low-precision logits; the logits themselves (a view)
            # otherwise, which value() only reads
            total += kernel.value(logits[rows].to(acc), rows)
        return total / _denominator(ctx.kernel, total)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None]:
        (logits,) = ctx.saved_tensors
        kernel = ctx.kernel
        factor = grad / _denominator(kernel, grad)
        for i in range(0, logits.shape[0], INPLACE_ROWS):
            rows = slice(i, i + INPLACE_ROWS)
            chunk = logits[rows]
            work = chunk.to(factor.dtype)  # the chunk itself at float32/float64
            work = kernel.grad(work, rows).mul_(factor)
            if work.data_ptr() != chunk.data_ptr():
                chunk.copy_(work)  # back into the logits' memory, at their dtype
            del work, chunk
        return logits, None


def inplace_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of ``targets`` (N,) (-100: not scored) over ``logits`` (N, V), equal
    to ``F.cross_entropy(logits.float(), targets)``, whose backward writes d loss / d logits into
    ``logits``' memory and returns it: the logits must not be read after the backward.

    ``F.cross_entropy`` keeps a float32 log-softmax for its backward and makes two more (N, V)
    float32 buffers in it (the NLL's gradient and the log-softmax's); this keeps the logits
    (which it needs: they are saved instead of the log-softmax) and works in float32 chunks of
    ``INPLACE_ROWS`` tokens when they are bf16/fp16."""
    if not logits.is_contiguous():
        raise ValueError("inplace_cross_entropy needs contiguous logits")
    return _InplaceLoss.apply(logits, CrossEntropy(targets))


def chunked_head_loss(hidden: Tensor, weight: Tensor, kernel: LossKernel, chunk: int) -> Tensor:
    """``kernel``'s mean loss of ``hidden @ weight^T`` computed ``chunk`` tokens at a time.

    ``hidden``: (N, d) the normalised final states, one row per token; ``weight``: (V, d) the LM
    head's (tied or not). The full (N, V) logits never exist, in forward or backward."""
    return _ChunkedHeadLoss.apply(hidden, weight, kernel, chunk)


def liger_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
    """Liger-Kernel's fused linear cross-entropy (Triton kernels, CUDA only)."""
    try:
        from liger_kernel.transformers.fused_linear_cross_entropy import (
            LigerFusedLinearCrossEntropyLoss,
        )
    except ImportError as e:
        raise RuntimeError(
            f"head_impl is liger but Liger-Kernel cannot be imported ({e}); "
            "pip install liger-kernel, or use head_impl: torch"
        ) from None
    if hidden.device.type != "cuda":
        raise RuntimeError("head_impl liger runs on CUDA only; use head_impl: torch on CPU")
    dtype = _compute_dtype(hidden)
    loss_fn = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE)
    return loss_fn(weight.to(dtype), hidden.to(dtype), targets)


def next_token_targets(labels: Tensor) -> Tensor:
    """(B, T) targets aligned with the positions that predict them: ``labels[:, t+1]`` at t,
    ``IGNORE`` at the last position (it predicts nothing)."""
    targets = torch.full_like(labels, IGNORE)
    targets[:, :-1] = labels[:, 1:]
    return targets
