"""Reversible schemes: small classes, each one update of a state and its inverse and adjoint.

A state is a tuple of (B, T, C) tensors (two slots here; RevFFN's steps in ``revffn.py`` use
halves and a third slot). Each scheme evaluates exactly ONE branch of a block per step, on a
slot the step does not change, so the reversible backward (``reversible.py``) recomputes each
branch once and uses that single result both to rebuild the previous state and to
backpropagate. A scheme has three methods:

* ``forward_step(x, block) -> y``: the update, differentiable (the plain path uses it too);
* ``inverse_step(y, block) -> x``: the previous state, without gradients (reconstruction error);
* ``backward_step(y, g, block, params) -> param_grads``: one step of the reversible backward,
  called with grad enabled. On entry the lists ``y`` and ``g`` hold the step's output state and
  its gradient (an entry may be None: no gradient reaches that slot); on return they hold the
  rebuilt input state and its gradient, and the gradients of ``params`` are returned. With
  ``rebuild`` False (the first step of the stack, the backward's last) the input state is not
  needed, only its gradient: the step may drop the old value instead of rebuilding it.

``backward_step`` writes the adjoint of its update out by hand (the vector-Jacobian product of
the branch is autograd's, ``Recompute.vjp``) instead of backpropagating through a rebuilt
``y_hat = prev + 2h f(p)``, which would materialise ``y_hat`` and the scaled branch for nothing.
It may overwrite the tensors of ``y`` and ``g`` in place: the Function only passes tensors it
owns (no one else holds their storage, ``owned``). So the target slot's old value becomes the
rebuilt one in place (``p_{l+1}`` turns into ``p_{l-1}``), and a step keeps only the two
states, their two gradients, one branch's recompute graph and the branch's input gradient.

The residual stream keeps its own dtype (float32 under autocast): a branch output in bf16 is
promoted when it is added to the stream, in the forward as in the rebuild (``torch.add`` with
``alpha`` in both, so the scale multiplies the promoted value the same way each time).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from revbench.models.blocks import Block

State = tuple[Tensor, ...]
Grads = list[Tensor | None]


def _leaf(t: Tensor) -> Tensor:
    return t.detach().requires_grad_()


def _storage_refs(t: Tensor) -> int | None:
    """How many owners the storage of ``t`` has, or None where torch cannot say."""
    count = getattr(torch._C, "_storage_Use_Count", None)
    if count is None:
        return None
    storage = t.untyped_storage()  # itself one reference while it lives
    return int(count(storage._cdata)) - 1


def owned(t: Tensor) -> bool:
    """Whether ``t``'s memory belongs to ``t`` alone, so writing it in place changes nothing
    anyone else can see: no other tensor (a caller's copy, a tensor saved by a graph) shares its
    storage; a view may share it with its own base only (``autograd.grad`` returns a weight's
    gradient as the transpose of a fresh product). False when torch cannot tell (then the
    caller copies)."""
    refs = _storage_refs(t)
    return refs is not None and refs == (2 if t._is_view() else 1)


def axpy(y: Tensor | None, x: Tensor | None, alpha: float = 1.0) -> Tensor | None:
    """``y + alpha x`` with None meaning zero, in ``y``'s memory when ``y`` is owned (every
    gradient the reversible backward holds is; see the module docstring). ``x`` is only read."""
    if x is None:
        return y
    if y is None:
        return x if alpha == 1.0 else x * alpha
    if owned(y) and y.dtype == torch.promote_types(y.dtype, x.dtype):
        return y.add_(x, alpha=alpha)
    return torch.add(y, x, alpha=alpha)


def scaled(x: Tensor | None, alpha: float, *keep: Tensor | None) -> Tensor | None:
    """``alpha x``, in ``x``'s memory when it is owned and is none of ``keep`` (tensors the
    caller still needs: a gradient ``vjp`` might hand back as is)."""
    if x is None or alpha == 1.0:
        return x
    if owned(x) and not any(x is k for k in keep):
        return x.mul_(alpha)
    return x * alpha


def scale(grads: Grads, alpha: float) -> Grads:
    """Each gradient times ``alpha`` (fresh ones from ``vjp``: in place)."""
    return [scaled(g, alpha) for g in grads]


def _add_into(out: Tensor, x: Tensor, alpha: float) -> Tensor:
    """``out + alpha x``, in ``out``'s memory (``out`` is a fresh tensor of the caller's) unless
    ``x``'s dtype would promote it (a bf16 stream with a float32 branch)."""
    if out.dtype == torch.promote_types(out.dtype, x.dtype):
        return out.add_(x, alpha=alpha)
    return torch.add(out, x, alpha=alpha)


def _keep_add(x: Tensor, keep: float, b: Tensor, alpha: float) -> Tensor:
    """``keep x + alpha b`` in one new tensor."""
    if keep == 1:
        return torch.add(x, b, alpha=alpha)
    return _add_into(x * keep, b, alpha)


class Recompute:
    """The one branch evaluation of a backward step, with grad, on fresh inputs.

    ``fn(*inputs)`` runs on views of ``inputs`` that require grad, so ``vjp`` reaches them.
    Views, not leaves: module backward hooks (FlopCounterMode's ModuleTracker) hang multi-grad
    hooks on block inputs, which torch refuses on leaves inside ``autograd.grad``.
    """

    def __init__(self, fn: Callable[..., Any], *inputs: Tensor) -> None:
        self.inputs = tuple(_leaf(t).view_as(t) for t in inputs)
        out = fn(*self.inputs)
        self.outputs: tuple[Tensor | None, ...] = out if isinstance(out, tuple) else (out,)

    @property
    def value(self) -> Tensor:
        """The (first) branch output, detached: what the rebuild subtracts."""
        return self.outputs[0].detach()  # type: ignore[union-attr]

    def release(self) -> None:
        """Free the outputs' memory once the rebuild has used their values.

        The VJP needs an output's graph and shape, not its values, unless a node of the graph
        saved the output itself (then its storage has another owner and stays). The storage is
        emptied in place (``resize_(0)``, as FSDP frees parameters), so the tensor keeps its
        shape and ``grad_fn`` while its bytes go back before the branch's backward allocates.
        """
        for o in self.outputs:
            if o is not None and o.dim() and owned(o):
                o.untyped_storage().resize_(0)

    def vjp(self, grads: Sequence[Tensor | None], params: Sequence[Tensor]) -> tuple[Grads, Grads]:
        """(gradients of the inputs, gradients of ``params``) for the outputs' ``grads``
        (None: no gradient). Frees the recompute graph."""
        pairs = [
            (o, g.to(o.dtype))
            for o, g in zip(self.outputs, grads, strict=True)
            if g is not None and o is not None and o.requires_grad
        ]
        self.outputs = ()  # the graph goes with the last reference to its outputs
        n = len(self.inputs)
        if not pairs:
            return [None] * n, [None] * len(params)
        outs, gs = zip(*pairs, strict=True)
        del pairs
        res = torch.autograd.grad(outs, (*self.inputs, *params), gs, allow_unused=True)
        del outs, gs
        self.inputs = ()
        return list(res[:n]), list(res[n:])


class Scheme:
    """One reversible step (contract in the module docstring)."""

    forward_slices = True
    """Whether the Function's forward may run ``forward_step`` over slices of the batch
    (``recompute_chunk_seqs``); False for a step that only rearranges the state."""

    def forward_step(self, x: State, block: Any) -> State:
        raise NotImplementedError

    def inverse_step(self, y: State, block: Any) -> State:
        raise NotImplementedError

    def backward_step(
        self,
        y: list[Tensor],
        g: Grads,
        block: Any,
        params: Sequence[Tensor],
        rebuild: bool = True,
    ) -> Grads:
        raise NotImplementedError


class TwoStep(Scheme):
    """A two-step recurrence on the state (p_{l-1}, p_l) -> (p_l, p_{l+1}):

        p_{l+1} = a p_{l-1} + c p_l + s f(p_l)
        inverse  p_{l-1} = (p_{l+1} - c p_l - s f(p_l)) / a      (a != 0)
        adjoint  g_{l-1} = a g_{l+1},   g_l <- g_l + c g_{l+1} + s J^T g_{l+1}

    with J = df/dp at p_l. Midpoint and leapfrog are two choices of (a, c, s)
    (``coefficients``); a coefficient of 0 or 1 is skipped, so plain midpoint computes
    p_{l-1} + 2h f(p_l) exactly as written."""

    @property
    def coefficients(self) -> tuple[float, float, float]:
        """(a, c, s)."""
        raise NotImplementedError

    def _combine(self, prev: Tensor, cur: Tensor, fc: Tensor) -> Tensor:
        """a prev + c cur + s fc in one new tensor (the other terms are added into it)."""
        a, c, s = self.coefficients
        if a == 1:
            if not c:
                return torch.add(prev, fc, alpha=s)
            out = torch.add(prev, cur, alpha=c)
        else:
            out = -prev if a == -1 else prev * a
            if c:
                out.add_(cur, alpha=c)
        return _add_into(out, fc, s)

    def _rebuild_(self, nxt: Tensor, cur: Tensor, fc: Tensor) -> Tensor:
        """p_{l-1} from p_{l+1}, in ``nxt``'s memory."""
        a, c, s = self.coefficients
        nxt.sub_(fc, alpha=s)
        if c:
            nxt.sub_(cur, alpha=c)
        return nxt if a == 1 else nxt.neg_() if a == -1 else nxt.div_(a)

    def forward_step(self, x: State, block: Block) -> State:
        prev, cur = x
        return cur, self._combine(prev, cur, block.f(cur))

    @torch.no_grad()
    def inverse_step(self, y: State, block: Block) -> State:
        cur, nxt = y
        return self._rebuild_(nxt.clone(), cur, block.f(cur)), cur

    def backward_step(
        self,
        y: list[Tensor],
        g: Grads,
        block: Block,
        params: Sequence[Tensor],
        rebuild: bool = True,
    ) -> Grads:
        a, c, s = self.coefficients
        cur, nxt = y
        r = Recompute(block.f, cur)  # the one recompute, on the known p_l
        with torch.no_grad():
            y[:] = [self._rebuild_(nxt, cur, r.value) if rebuild else None, cur]
        r.release()
        del nxt
        g_cur, g_nxt = g
        g.clear()
        (jg,), grads = r.vjp([g_nxt], params)
        g_cur = axpy(g_cur, jg, s) if g_cur is not None else scaled(jg, s, g_nxt)
        if g_cur is g_nxt:  # a branch that hands its gradient back as is, at s == 1
            g_cur = g_cur.clone()  # two slots, two tensors: the next step writes one in place
        del jg
        if c:
            g_cur = axpy(g_cur, g_nxt, c)
        g[:] = [scaled(g_nxt, a), g_cur]
        return scale(grads, s)


@dataclass(frozen=True)
class Midpoint(TwoStep):
    """Midpoint (leapfrog-in-time) step, state (p_{l-1}, p_l) -> (p_l, p_{l+1}).

    Plain (``a`` None), Gal et al. Eq. 2.4:
        p_{l+1} = p_{l-1} + 2h f(p_l)            inverse  p_{l-1} = p_{l+1} - 2h f(p_l)
    Generalised (Gal et al. Eq. 3.6, the form of their main midpoint results):
        p_{l+1} = a p_{l-1} + (1-a) p_l + h f(p_l)
        inverse  p_{l-1} = (p_{l+1} - (1-a) p_l - h f(p_l)) / a      (a != 0)
    Adjoint (J = df/dp at p_l; plain: a = 1 and h -> 2h):
        g_{l-1} = a g_{l+1},   g_l <- g_l + (1-a) g_{l+1} + h J^T g_{l+1}

    Plain midpoint is the generalised form at a = 1 with h doubled, not at a = 0 (which has no
    inverse). A model holds one ``Midpoint`` per layer, so ``a`` may differ between layers
    (``ModelConfig.a_layers`` / ``a_draw``); a = -1 gives p_{l+1} = 2 p_l - p_{l-1} + h f(p_l),
    leapfrog's recurrence with h in place of h^2. The inverse divides by ``a``: the rebuild's
    recurrence has the roots 1 and -1/a, so with |a| < 1 the rounding errors of the rebuilt
    states grow by about 1/|a| per layer (|a|^-L over L layers; ``benchmarks/
    midpoint_coefficients.py`` measures it), while |a| > 1 amplifies the forward instead.
    """

    h: float = 1.0
    a: float | None = None

    @property
    def coefficients(self) -> tuple[float, float, float]:
        if self.a is None:
            return 1.0, 0.0, 2 * self.h
        return self.a, 1 - self.a, self.h


@dataclass(frozen=True)
class Leapfrog(TwoStep):
    """Leapfrog (Verlet) step, state (p_{l-1}, p_l) -> (p_l, p_{l+1}) (Gal et al.):

        p_{l+1} = 2 p_l - p_{l-1} + h^2 f(p_l)    inverse  p_{l-1} = 2 p_l - p_{l+1} + h^2 f(p_l)
    Adjoint: g_{l-1} = -g_{l+1},   g_l <- g_l + 2 g_{l+1} + h^2 J^T g_{l+1}

    No division in the inverse, but the two-step recurrence lets rounding errors of the rebuilt
    states accumulate with depth (measured: ~50x midpoint's at 24 layers in float32).
    """

    h: float = 1.0

    @property
    def coefficients(self) -> tuple[float, float, float]:
        return -1.0, 2.0, self.h * self.h


Branch = Literal["attn_branch", "mlp_branch", "f"]


@dataclass(frozen=True)
class AdditiveCoupling(Scheme):
    """Additive coupling: one slot moves by a branch of the other, which stays put.

        y_t = k x_t + m x_o + s B(x_o),  y_o = x_o
        inverse  x_t = (y_t - m y_o - s B(y_o)) / k   (k != 0)
    Adjoint: g_{x_t} = k g_{y_t},   g_{x_o} = g_{y_o} + m g_{y_t} + s J_B^T g_{y_t}

    (t = ``target``, o = the other slot, B = ``branch`` of the block, k = ``keep``, s =
    ``scale``, m = ``mix``, 0 but for the Hamiltonian's ``ham_carry``: m = 1 - k.) Two of
    these make a layer: RevNet (Gomez et al. 2017) Y1 = X1 + Attn(N1(X2)),
    Y2 = X2 + MLP(N2(Y1)); the Hamiltonian scheme (Gal et al. Eqs. 2.8-2.9)
    q_l = a q_{l-1} + Attn(N1(p_{l-1})), p_l = b p_{l-1} + MLP(N2(q_l)) with (q, p) in the slots
    and k = a, then b (reversible for any non-zero a, b; at a = b = 1, the default, it is
    RevNet's update under another name). Splitting the layer into its two half-steps is what lets
    the backward evaluate each branch once: a whole-layer inverse would have to evaluate MLP on
    Y1 before Y1's dependence on X1 is known.
    """

    target: int
    branch: Branch
    scale: float = 1.0
    keep: float = 1.0
    mix: float = 0.0

    def forward_step(self, x: State, block: Block) -> State:
        x_t, x_o = x[self.target], x[1 - self.target]
        y_t = _keep_add(x_t, self.keep, getattr(block, self.branch)(x_o), self.scale)
        if self.mix:
            y_t = _add_into(y_t, x_o, self.mix)  # y_t is new: _keep_add made it
        return (y_t, x_o) if self.target == 0 else (x_o, y_t)

    @torch.no_grad()
    def inverse_step(self, y: State, block: Block) -> State:
        t, o = self.target, 1 - self.target
        x = list(y)
        x[t] = y[t].clone().sub_(getattr(block, self.branch)(y[o]), alpha=self.scale)
        if self.mix:
            x[t].sub_(y[o], alpha=self.mix)
        if self.keep != 1:
            x[t].div_(self.keep)
        return tuple(x)

    def backward_step(
        self,
        y: list[Tensor],
        g: Grads,
        block: Block,
        params: Sequence[Tensor],
        rebuild: bool = True,
    ) -> Grads:
        t, o = self.target, 1 - self.target
        r = Recompute(getattr(block, self.branch), y[o])  # the one recompute, unchanged slot
        if rebuild:
            with torch.no_grad():
                y[t].sub_(r.value, alpha=self.scale)  # x_t, in y_t's memory
                if self.mix:
                    y[t].sub_(y[o], alpha=self.mix)
                if self.keep != 1:
                    y[t].div_(self.keep)
        else:
            y[t] = None  # type: ignore[call-overload]
        r.release()
        (jg,), grads = r.vjp([g[t]], params)
        g[o] = axpy(g[o], jg, self.scale) if g[o] is not None else scaled(jg, self.scale, g[t])
        del jg
        if self.mix and g[t] is not None:
            # g[o] may be g[t] itself (vjp's pass-through): then a new tensor, not in place
            g[o] = (
                torch.add(g[o], g[t], alpha=self.mix)
                if g[o] is g[t]
                else axpy(g[o], g[t], self.mix)
            )
        g[t] = scaled(g[t], self.keep, g[o])  # g[o] may be g[t] itself (vjp's pass-through)
        return scale(grads, self.scale)
