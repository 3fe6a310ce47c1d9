"""Reversible transformers: one autograd Function over the whole stack, and the architectures.

The Function (memcnn's ``InvertibleModuleWrapper`` in spirit) knows nothing about any scheme: it
gets a list of ``(scheme, block)`` steps (``schemes.py``) and the blocks' parameters as
``*weights``. Its forward runs every step under ``no_grad`` and keeps only the final state.
Its backward walks the steps in reverse; per step it calls ``scheme.backward_step`` once, which
recomputes the step's one branch with grad enabled, rebuilds the previous state from it in
place of the next one, and applies the step's adjoint (the branch's vector-Jacobian product by
``torch.autograd.grad``). One extra forward per branch, never an inverse pass followed by a
recompute.

Memory: between two steps the backward holds the current state and its gradient, nothing else;
within a step, one branch's recompute graph and its VJP. To get there (issue 14; measured on
CPU, d_model 128, 8 layers, batch 8 x 128: midpoint's training footprint 41.1 -> 38.2 MiB):
the final state lives on ``ctx`` (``save_for_backward`` would pin it for the whole backward)
and the backward takes it; a hook on each output hands the incoming gradient to the backward
and the engine a zero-byte stand-in (the engine would otherwise hold it to the end); missing
gradients stay None; states and gradients are updated in place (only tensors no one else
shares: ``schemes.owned``); the branch's output is freed once the rebuild has used it. The
cost: a second backward through the same forward (``retain_graph=True``) is an error. A final
state that someone else still holds (a caller keeping the trunk's output) is copied first, so
nothing the caller can see changes.

Semantics worth knowing:

* Dropout: when training with ``dropout > 0`` the RNG state (CPU, plus the device's) is captured
  before each step and restored for its recompute, as ``torch.utils.checkpoint`` does, so the
  recomputed masks are the forward's.
* Autocast: the residual stream stays in its own dtype (float32); branch outputs in bf16/fp16 are
  promoted when added to it. The autocast state of the forward is re-entered for the recompute.
* The plain path (no Function) runs whenever no gradient is needed (``no_grad``, inference mode,
  nothing requires grad) and when ``model.reversible_backprop`` is False; the latter is the same
  math under ordinary autograd, activations stored. Eval mode alone does not switch paths: eval
  with grad enabled (e.g. fine-tuning without dropout) still wants the memory saving.
* ``torch.autograd.grad(loss, params)`` works; double backward (``create_graph=True``) and a
  second backward of one forward (``retain_graph=True``) raise: use ``reversible_backprop =
  False`` for those.
* A state is a tuple of slots; a step may change their number (``revffn.py`` splits the stream
  into halves and adds a slot accumulating the MoE auxiliary loss, whose gradient then flows
  through the same recompute). The Function's inputs are always the pair ``(x, x)``.
* Under FSDP2 (``parallel: fsdp``) the Function gathers each block's whole parameters around
  its steps and reduce-scatters the block's gradients itself (``sharding.py``), since the
  schemes' branch calls bypass FSDP's forward hooks.
* ``model.grads_per_block = True`` (set for DDP, ``measure/parallel.py``): the blocks' weights
  are not the Function's inputs; when the backward finishes a block's run of steps it
  accumulates that block's gradients into ``param.grad`` with a backward rooted at the
  parameters, so their hooks (DDP's all-reduce buckets, ``register_post_accumulate_grad_hook``)
  fire block by block, last block first, while the blocks below are still being recomputed.
  The gradients are the same; ``torch.autograd.grad(loss, block_params)`` no longer sees them
  (the blocks' weights are not in the graph): use ``.backward()``.
* ``checkpointing: true`` is rejected for reversible architectures (ModelConfig raises): they
  already keep nothing per layer, so a checkpointed reversible model would be the same model.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import get_device_states, set_device_states

from revbench.errors import ConfigError
from revbench.models.blocks import Block
from revbench.models.config import ModelConfig
from revbench.models.output import LanguageModel
from revbench.models.retrofit import paired_forces
from revbench.models.schemes import (
    AdditiveCoupling,
    Grads,
    Leapfrog,
    Midpoint,
    Scheme,
    State,
    axpy,
    owned,
)
from revbench.models.sharding import WeightGrads, fsdp_sharded, gathered

Step = tuple[Scheme, Block]


class _RngState:
    """The CPU and device RNG states at one point of the forward (a few KiB)."""

    def __init__(self, like: Tensor) -> None:
        self.cpu = torch.get_rng_state()
        self.devices, self.device_states = get_device_states(like)

    @contextlib.contextmanager
    def restored(self) -> Iterator[None]:
        # fork_rng so the backward leaves the caller's RNG stream where it was.
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.cpu)
            set_device_states(self.devices, self.device_states)
            yield


def _autocast_state(device_type: str) -> dict[str, Any]:
    return {
        "device_type": device_type,
        "enabled": torch.is_autocast_enabled(device_type),
        "dtype": torch.get_autocast_dtype(device_type),
    }


def _trainable(block: torch.nn.Module) -> list[Tensor]:
    return [p for p in block.parameters() if p.requires_grad]


def _hand_over(
    ctx: Any,
    block: Block | None,
    pending: list[Tensor | None],
    wgrads: list[Tensor | None],
    weight_grads: WeightGrads,
) -> None:
    """Deliver the summed gradients of ``block``'s parameters: added to the Function's weight
    gradients, or (``grads_per_block``) accumulated into the parameters' ``.grad`` now."""
    if block is None:
        return
    if ctx.per_block:
        # A backward rooted at the leaves themselves runs their AccumulateGrad nodes, so every
        # hook on them fires now, DDP's reducer included (it launches a bucket's all-reduce as
        # soon as the bucket is full), while the blocks below are still being recomputed.
        done = [(p, g) for p, g in zip(_trainable(block), pending, strict=True) if g is not None]
        if done:
            torch.autograd.backward([p for p, _ in done], [g for _, g in done])
        return
    slots = ctx.slots[id(block)]
    grads = weight_grads([ctx.weights[j] for j in slots], pending)
    if any(wgrads[j] is not None for j in slots):  # a block met again: add reduced values
        weight_grads.wait()
    for j, gw in zip(slots, grads, strict=True):
        if gw is not None:
            wgrads[j] = gw if wgrads[j] is None else wgrads[j] + gw


class _Inbox:
    """Where the gradients of the Function's outputs wait for its backward.

    The autograd engine holds the gradients it passes to a Function for the whole of its
    backward call, so a gradient the backward is done with after its first step would stay
    alive to the end. A hook on each output takes the real gradient here and hands the engine
    a stand-in of no memory (a zero broadcast to the shape); the backward then holds the only
    reference and drops it when the maths does.
    """

    def __init__(self) -> None:
        self.grads: dict[int, Tensor] = {}

    def hook(self, slot: int) -> Callable[[Tensor], Tensor]:
        def take(grad: Tensor | None) -> Tensor | None:
            if grad is None:  # no gradient reaches this output (the Function gets None)
                return None
            self.grads[slot] = grad
            return grad.new_zeros(()).expand(grad.shape)

        return take


def _own(t: Tensor | None, seen: set[int]) -> Tensor | None:
    """``t``, or a copy of it when someone else shares its memory (or an earlier slot does):
    the backward step writes its states and gradients in place."""
    if t is None:
        return None
    key = t.untyped_storage().data_ptr()
    mine = owned(t) and key not in seen and t.is_contiguous()
    if not mine:
        t = t.clone(memory_format=torch.contiguous_format)
        key = t.untyped_storage().data_ptr()
    seen.add(key)
    return t


def sliced_forward_step(scheme: Scheme, state: State, block: Any, chunk: int) -> State:
    """``scheme.forward_step`` (no grad) over slices of ``chunk`` sequences: the step's
    transient activations are a slice's; a slot it passes through stays the same tensor, a new
    one is gathered into a whole tensor made at the first slice (``sliced_backward_step``)."""
    B = state[0].shape[0]
    if chunk <= 0 or B <= chunk or not scheme.forward_slices:
        return scheme.forward_step(state, block)
    wholes = list(state)
    out: list[Tensor | None] = []
    for start in range(0, B, chunk):
        rows = slice(start, start + chunk)
        part: list[Tensor | None] = list(scheme.forward_step(tuple(t[rows] for t in state), block))
        out = out or [None] * len(part)
        _gather(out, part, wholes, rows, B)
    return tuple(out)  # type: ignore[arg-type]


def sliced_backward_step(
    scheme: Scheme,
    y: list[Tensor | None],
    g: Grads,
    block: Any,
    params: Sequence[Tensor],
    rebuild: bool,
    chunk: int,
) -> Grads:
    """``scheme.backward_step`` over slices of ``chunk`` sequences of the batch (dim 0), the
    parameters' gradients summed over the slices (``ModelConfig.recompute_chunk_seqs``; 0 or a
    batch no larger than ``chunk``: one call on the whole batch).

    The step is a function of each sequence on its own (the config refuses dropout, experts
    and a tolerance-stopped fixed point), so each slice's rebuild and adjoint are the rows of
    the whole batch's. A slice is a view of the whole state and gradient tensors: what the step
    writes in place lands in them, and only a slot the step makes anew (the gradient of a slot
    no gradient had reached) is gathered into a whole tensor made at the first slice. The step
    then holds one slice's recompute graph at a time, beside the whole states and gradients."""
    first = next((t for t in (*y, *g) if t is not None), None)
    if chunk <= 0 or first is None or first.shape[0] <= chunk:
        return scheme.backward_step(y, g, block, params, rebuild=rebuild)
    B = first.shape[0]
    del first
    whole_y, whole_g = list(y), list(g)
    y.clear()
    g.clear()
    wholes = [t for t in (*whole_y, *whole_g) if t is not None]
    out_y: list[Tensor | None] = [None] * len(whole_y)
    out_g: Grads = [None] * len(whole_g)
    total: Grads = [None] * len(params)
    for start in range(0, B, chunk):
        rows = slice(start, start + chunk)
        ys: list[Tensor | None] = [None if t is None else t[rows] for t in whole_y]
        gs: Grads = [None if t is None else t[rows] for t in whole_g]
        step = scheme.backward_step(ys, gs, block, params, rebuild=rebuild)
        total = [axpy(acc, gp) for acc, gp in zip(total, step, strict=True)]
        del step
        _gather(out_y, ys, wholes, rows, B)
        _gather(out_g, gs, wholes, rows, B)
        del ys, gs
    del wholes, whole_y, whole_g
    y[:] = out_y
    g[:] = out_g
    return total


def _gather(
    out: list[Tensor | None], part: list[Tensor | None], wholes: list[Tensor], rows: slice, B: int
) -> None:
    """Slot k of ``out`` becomes the whole tensor whose ``rows`` ``part[k]`` is (written in
    place by the step), or a new whole tensor that ``part[k]`` is copied into."""
    for k, t in enumerate(part):
        if t is None:
            continue
        if out[k] is None:
            out[k] = next((w for w in wholes if _is_rows_of(t, w, rows)), None)
            if out[k] is None:
                out[k] = t.new_empty((B, *t.shape[1:]))
        dest = out[k]
        assert dest is not None
        if not _is_rows_of(t, dest, rows):
            dest[rows].copy_(t)
    part.clear()


def _is_rows_of(t: Tensor, whole: Tensor, rows: slice) -> bool:
    """Whether ``t`` is ``whole[rows]`` itself (same memory, same layout)."""
    view = whole[rows]
    return (
        t.untyped_storage().data_ptr() == whole.untyped_storage().data_ptr()
        and t.storage_offset() == view.storage_offset()
        and t.shape == view.shape
        and t.stride() == view.stride()
    )


class ReversibleFunction(torch.autograd.Function):
    """Runs ``steps`` on the state (x0, x1) keeping nothing per step; rebuilds in backward.

    What it holds between forward and backward is the final state, on ``ctx`` (not
    ``save_for_backward``, which would keep it to the end of the backward call): the backward
    takes it and overwrites it step by step with the rebuilt states. The backward raises if it
    runs a second time (``retain_graph=True``): the final state is gone by then.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        steps: Sequence[Step],
        preserve_rng: bool,
        per_block: bool,
        inbox: _Inbox,
        chunk: int,
        x0: Tensor,
        x1: Tensor,
        *weights: Tensor,
    ) -> State:
        ctx.set_materialize_grads(False)  # a missing gradient stays None, not a zeros tensor
        ctx.steps, ctx.weights, ctx.per_block, ctx.inbox = steps, weights, per_block, inbox
        ctx.chunk = chunk
        # Each block's trainable parameters as positions in ``weights``, read now: under FSDP2
        # the module's parameters are the sharded ones (the Function's inputs) only while it is
        # not unsharded. With ``per_block`` the weights are not inputs (``weights`` is empty).
        index = {id(w): i for i, w in enumerate(weights)}
        ctx.slots = (
            {} if per_block else {id(b): [index[id(p)] for p in _trainable(b)] for _, b in steps}
        )
        ctx.autocast = _autocast_state(x0.device.type)
        ctx.rng = []
        state: State = (x0, x1)
        with torch.no_grad(), contextlib.closing(gathered(steps, range(len(steps)))) as run:
            for _, scheme, block in run:
                if preserve_rng:
                    ctx.rng.append(_RngState(x0))
                state = sliced_forward_step(scheme, state, block, chunk)
        # A slot carried through unchanged (one-layer midpoint) is still an input; autograd wants
        # outputs of its own.
        state = tuple(s.clone() if s is x0 or s is x1 else s for s in state)
        ctx.final = tuple(s.detach() for s in state)  # aliases: no reference cycle via grad_fn
        return state

    @staticmethod
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():
            raise RuntimeError(
                "reversible backprop does not support double backward (create_graph=True); "
                "set model.reversible_backprop = False for higher-order gradients"
            )
        if ctx.final is None:
            raise RuntimeError(
                "the reversible stack's backward ran twice (retain_graph=True?): its states are "
                "rebuilt in place and gone after the first; set model.reversible_backprop = "
                "False to backpropagate through one forward more than once"
            )
        seen: set[int] = set()
        y = [_own(t, seen) for t in ctx.final]
        ctx.final = None
        taken = ctx.inbox.grads
        g: Grads = [_own(taken.pop(i, gr), seen) for i, gr in enumerate(grads)]
        del grads, taken, seen
        wgrads: list[Tensor | None] = [None] * len(ctx.weights)
        # The gradients of one block are summed over its run of consecutive steps (RevNet's two
        # half-steps, the Euler start and layer 1) and handed to its weights once the run ends:
        # under FSDP2 that is one reduce-scatter per block.
        held: Block | None = None
        pending: list[Tensor | None] = []
        reduced = WeightGrads()  # under FSDP2 one block's reduce-scatter runs beside the next
        with contextlib.closing(gathered(ctx.steps, reversed(range(len(ctx.steps))))) as run:
            for i, scheme, block in run:
                params = _trainable(block)  # whole (all-gathered) under FSDP2
                if block is not held:
                    _hand_over(ctx, held, pending, wgrads, reduced)
                    held, pending = block, [None] * len(params)
                rng = ctx.rng[i].restored() if ctx.rng else contextlib.nullcontext()
                with torch.enable_grad(), torch.autocast(**ctx.autocast), rng:
                    # In place on y and g: the step's output state and gradient become its
                    # input's (schemes.py); the step's recompute graph is gone on return.
                    # The stack's first step need not rebuild its input (the embedding).
                    step_grads = sliced_backward_step(
                        scheme, y, g, block, params, rebuild=i > 0, chunk=ctx.chunk
                    )
                pending = [axpy(acc, gp) for acc, gp in zip(pending, step_grads, strict=True)]
                del step_grads
            _hand_over(ctx, held, pending, wgrads, reduced)
        reduced.wait()
        need = ctx.needs_input_grad
        del y
        return (
            None,
            None,
            None,
            None,
            None,
            g[0] if need[5] else None,
            g[1] if need[6] else None,
            *wgrads,
        )


class ReversibleLM(LanguageModel):
    """A language model whose trunk is a sequence of reversible steps on a pair of states.

    ``prologue`` steps (the Euler start) run before the ``n_layers`` layers of
    ``steps_per_layer`` steps each (``layer(i, block)``: layer i's steps, so a scheme may differ
    between layers; ``block`` is layer i's block, or what ``forces`` made of the blocks for it);
    ``readout`` maps the final pair to what the head reads.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        layer: Callable[[int, Block], list[Step]],
        readout: Callable[[State], Tensor],
        prologue: Callable[[Block], list[Step]] | None = None,
        block: Callable[[ModelConfig], torch.nn.Module] = Block,
        forces: Callable[[Sequence[Block]], list[torch.nn.Module]] | None = None,
    ) -> None:
        if cfg.checkpointing:  # ModelConfig rejects this too; kept for direct construction
            raise ConfigError(f"arch '{cfg.arch}' is reversible; checkpointing must be false")
        # torch.autograd.grad with grad_outputs imports symbolic_shapes (and sympy, ~35 MB of
        # Python objects) on first use. Importing it here puts that one-time cost before any
        # memory baseline taken after building the model, not inside the first measured backward.
        importlib.import_module("torch.fx.experimental.symbolic_shapes")
        super().__init__(cfg, block)
        self.reversible_backprop = True
        # Accumulate each block's gradients into its parameters' .grad as soon as its recompute
        # ends, instead of returning them all from the Function at the end (see the module doc).
        self.grads_per_block = False
        self.readout = readout
        pro = prologue(self.blocks[0]) if prologue else []
        # What layer i's steps evaluate: its block, or a force pairing it with its neighbour
        # (``forces``, ``retrofit.paired_forces``; ``ModelConfig.force``).
        per_layer = forces(list(self.blocks)) if forces else list(self.blocks)
        layers = [layer(i, b) for i, b in enumerate(per_layer)]
        # Plain list: the blocks are registered once, in self.blocks.
        self.steps: list[Step] = pro + [s for steps in layers for s in steps]
        self.n_prologue = len(pro)
        self.steps_per_layer = len(layers[0])

    def run_steps(self, state: State) -> State:
        """The plain path: every step under ordinary autograd (or none).

        Under FSDP2 only without grad (each block all-gathered around its steps): ordinary
        autograd would need every block's whole parameters kept until backward, which FSDP's
        hooks arrange for ``forward`` calls and these branch calls bypass.
        """
        if torch.is_grad_enabled() and any(fsdp_sharded(b) for b in self.blocks):
            raise RuntimeError(
                "the plain path (reversible_backprop = False) does not train under FSDP2; "
                "use the reversible backward, or parallel: ddp"
            )
        with contextlib.closing(gathered(self.steps, range(len(self.steps)))) as run:
            for _, scheme, block in run:
                state = scheme.forward_step(state, block)
        return state

    def trunk(self, x: Tensor) -> Tensor:
        return self.readout(self.run_stack(x))

    def run_stack(self, x: Tensor) -> State:
        """The final state from the embedding ``x``: the Function, or the plain path."""
        if self.config.force != "block" and (
            self.grads_per_block or any(fsdp_sharded(b) for b in self.blocks)
        ):
            raise RuntimeError(
                f"force {self.config.force} evaluates two blocks in one step; DDP's per-block "
                "gradients and FSDP2 expect one (use force: block)"
            )
        weights = tuple(self.blocks.parameters())
        needs_grad = torch.is_grad_enabled() and (
            x.requires_grad or any(w.requires_grad for w in weights)
        )
        if self.reversible_backprop and needs_grad:
            preserve_rng = self.training and self.config.dropout > 0
            chunk = self.config.recompute_chunk_seqs
            inbox = _Inbox()
            if not self.grads_per_block:
                state = ReversibleFunction.apply(
                    self.steps, preserve_rng, False, inbox, chunk, x, x, *weights
                )
            else:
                if any(fsdp_sharded(b) for b in self.blocks):
                    raise RuntimeError("grads_per_block does not apply under FSDP2; set it False")
                # The weights are not the Function's inputs, so the Function's backward runs
                # only if its input needs a gradient: a frozen embedding gets a stand-in leaf.
                x = x if x.requires_grad else x.detach().requires_grad_()
                state = ReversibleFunction.apply(self.steps, preserve_rng, True, inbox, chunk, x, x)
            for slot, t in enumerate(state):
                if t.requires_grad:
                    t.register_hook(inbox.hook(slot))
            return state
        return self.run_steps((x, x))


def _last(state: State) -> Tensor:
    """The head reads p_L, the last slot (midpoint, leapfrog: revbench's choice)."""
    return state[1]


def _mean(state: State) -> Tensor:
    """The head reads (q_L + p_L) / 2 (hamiltonian, revnet: revbench's choice)."""
    return 0.5 * (state[0] + state[1])


def _readout(cfg: ModelConfig, default: Callable[[State], Tensor]) -> Callable[[State], Tensor]:
    """The readout ``cfg.readout`` asks for (auto: the architecture's ``default``)."""
    return {"auto": default, "last": _last, "mean": _mean}[cfg.readout]


def _forces(cfg: ModelConfig, sign: float, branches: bool = False) -> Any:
    """``ReversibleLM``'s ``forces`` for ``cfg.force`` (None: each layer its own block)."""
    if cfg.force == "block":
        return None
    return lambda blocks: paired_forces(cfg.force, blocks, sign, branches=branches)


def _euler_start(cfg: ModelConfig) -> Callable[[Block], list[Step]] | None:
    """p_0 = p_{-1} + h f_1(p_{-1}) with the FIRST block's weights (shared with layer 1, so the
    parameter count equals the baseline's); a step of the Function, rebuilt like the others.
    Without it (``init_state: embedding``, the default) p_{-1} = p_0 = the embedding. Both are
    revbench's choices: Gal et al. do not fix how the two-step schemes start."""
    if cfg.init_state == "embedding":
        return None
    return lambda block: [(AdditiveCoupling(1, "f", cfg.step_size), block)]


def _coupling_layer(
    a: float = 1.0, b: float = 1.0, h: float = 1.0, carry: bool = False
) -> Callable[[int, Block], list[Step]]:
    """The two half-steps of a coupling layer on (q, p): q = a q + h Attn(N1(p)), then
    p = b p + h MLP(N2(q)) (with ``carry``, plus (1-a) p and (1-b) q); both slots start as the
    embedding (revbench's choice)."""
    attn = AdditiveCoupling(0, "attn_branch", scale=h, keep=a, mix=(1 - a) if carry else 0.0)
    mlp = AdditiveCoupling(1, "mlp_branch", scale=h, keep=b, mix=(1 - b) if carry else 0.0)
    return lambda i, block: [(attn, block), (mlp, block)]


def build_midpoint(cfg: ModelConfig) -> ReversibleLM:
    schemes = [Midpoint(cfg.step_size, a) for a in cfg.midpoint_coefficients()]
    return ReversibleLM(
        cfg,
        lambda i, b: [(schemes[i], b)],
        _readout(cfg, _last),
        _euler_start(cfg),
        forces=_forces(cfg, 1.0),
    )


def build_leapfrog(cfg: ModelConfig) -> ReversibleLM:
    scheme = Leapfrog(cfg.step_size)
    return ReversibleLM(
        cfg,
        lambda i, b: [(scheme, b)],
        _readout(cfg, _last),
        _euler_start(cfg),
        forces=_forces(cfg, -1.0),
    )


def build_hamiltonian(cfg: ModelConfig) -> ReversibleLM:
    layer = _coupling_layer(cfg.ham_a, cfg.ham_b, cfg.step_size, cfg.ham_carry)
    return ReversibleLM(cfg, layer, _readout(cfg, _mean), forces=_forces(cfg, 1.0, branches=True))


def build_revnet(cfg: ModelConfig) -> ReversibleLM:
    return ReversibleLM(cfg, _coupling_layer(), _readout(cfg, _mean))


def _rel_error(rebuilt: State, true: State) -> float:
    num = sum(
        torch.linalg.vector_norm((r - t).double()) ** 2 for r, t in zip(rebuilt, true, strict=True)
    )
    den = sum(torch.linalg.vector_norm(t.double()) ** 2 for t in true)
    return float((num / den) ** 0.5)


@torch.no_grad()
def reconstruction_errors(model: torch.nn.Module, input_ids: Tensor) -> list[float]:
    """Relative error ||rebuilt - true|| / ||true|| of the state entering each layer.

    Runs the forward keeping every state, then inverts step by step from the final states, each
    inverse starting from the previous *rebuilt* state, as the reversible backward does. Entry
    ``l`` is the pair entering layer ``l`` (both slots together). Dropout is off (eval mode) while
    measuring; the model's mode is restored.
    """
    if not isinstance(model, ReversibleLM):
        raise TypeError(f"{type(model).__name__} is not a reversible model")
    was_training = model.training
    model.eval()
    try:
        x = model.embed(input_ids)
        states: list[State] = [(x, x)]
        for scheme, block in model.steps:
            states.append(scheme.forward_step(states[-1], block))
        rebuilt = states[-1]
        errors = []
        for i in reversed(range(len(model.steps))):
            scheme, block = model.steps[i]
            rebuilt = scheme.inverse_step(rebuilt, block)
            layer_start = i - model.n_prologue
            if layer_start >= 0 and layer_start % model.steps_per_layer == 0:
                errors.append(_rel_error(rebuilt, states[i]))
        return errors[::-1]
    finally:
        model.train(was_training)
