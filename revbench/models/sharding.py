"""FSDP2 and the reversible Function: whole parameters around a block's steps, and the
block's gradients reduce-scattered to their shards.

The schemes call a block's branch methods, not its ``forward``, so FSDP2's own hooks (unshard
before forward, reshard after, reduce-scatter in post-backward) never fire on the reversible
trunk; the Function does their work with these helpers: ``gathered`` unshards each block (one
all-gather) for its run of consecutive steps, in forward and again around its recompute in
backward, and ``WeightGrads`` averages the block's summed gradients over the ranks and
scatters them in one reduce-scatter, as DTensors placed like the sharded parameters. Without
FSDP2 every helper is a no-op, and nothing here imports torch.distributed.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from revbench.models.blocks import Block
    from revbench.models.schemes import Scheme


def fsdp_sharded(block: object) -> bool:
    """Whether ``fully_shard`` (FSDP2) was applied to ``block``. Looked up in ``sys.modules``:
    nothing can be sharded before torch.distributed.fsdp is imported, and importing it here
    would cost every process ~1 s."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    return fsdp is not None and isinstance(block, fsdp.FSDPModule)


def gathered(
    steps: Sequence[tuple[Scheme, Block]], order: Iterable[int]
) -> Iterator[tuple[int, Scheme, Block]]:
    """``(i, scheme, block)`` for the steps in ``order``, each block's parameters whole while
    its run of consecutive steps lasts.

    Under FSDP2 (``fully_shard`` on the block) that is ``unshard()`` (one all-gather) at the
    start of the run and ``reshard()`` at its end, and, as FSDP's own hooks do, the next
    block's all-gather is issued (``unshard(async_op=True)``) as soon as this one's is complete,
    so it runs while this block computes; the next run's ``unshard()`` waits for it. At most two
    blocks are whole at a time. The schemes call the blocks' branch methods, not ``forward``,
    so FSDP's hooks never fire and the Function does what they would. Without FSDP this only
    walks the steps. Close the generator (``contextlib.closing``) so an exception mid-run still
    reshards, a prefetched block included.
    """
    runs: list[tuple[Block, list[int]]] = []  # consecutive steps on one block
    for i in order:
        if runs and steps[i][1] is runs[-1][0]:
            runs[-1][1].append(i)
        else:
            runs.append((steps[i][1], [i]))
    held: Block | None = None
    ahead: Block | None = None  # the block whose all-gather is in flight
    try:
        for r, (block, indices) in enumerate(runs):
            if fsdp_sharded(block):
                block.unshard()  # waits for the prefetch, or all-gathers now
            held, ahead = block, None
            following = runs[r + 1][0] if r + 1 < len(runs) else None
            if fsdp_sharded(following):
                following.unshard(async_op=True)
                ahead = following
            for i in indices:
                yield i, steps[i][0], block
            if fsdp_sharded(block):
                block.reshard()
            held = None
    finally:
        for block in (held, ahead):
            if fsdp_sharded(block):
                block.unshard()  # an all-gather in flight completes before its memory goes
                block.reshard()


class WeightGrads:
    """The gradients of the Function's inputs from the gradients of whole parameters, one
    block at a time: as they are, or for FSDP2-sharded weights (DTensors) averaged over the
    ranks and scattered, each rank keeping its shard (``_reduce_scatter``).

    As FSDP2 does, one block's reduce-scatter stays in flight while the next block computes:
    calling this for a block first waits for the previous block's. ``wait()`` before the
    gradients are used (the Function's return).
    """

    def __init__(self) -> None:
        self._work: Any = None
        self._send: Tensor | None = None  # the buffer the collective in flight reads

    def __call__(self, weights: list[Tensor], grads: list[Tensor | None]) -> list[Tensor | None]:
        dtensor = sys.modules.get("torch.distributed.tensor")  # imported by anything sharded
        if dtensor is None or not any(isinstance(w, dtensor.DTensor) for w in weights):
            return grads
        self.wait()
        # Every rank must join the collective, so a missing gradient counts as zeros.
        whole = [
            w.to_local().new_zeros(w.shape) if g is None else g
            for w, g in zip(weights, grads, strict=True)
        ]
        out, self._work, self._send = _reduce_scatter(weights, whole)
        return out

    def wait(self) -> None:
        if self._work is not None:
            self._work.wait()
        self._work = self._send = None


def _reduce_scatter(weights: list[Any], grads: list[Tensor]) -> tuple[list[Tensor], Any, Tensor]:
    """FSDP2's gradient reduction for one block: the whole gradients of every rank averaged
    and scattered in ONE reduce-scatter, each rank receiving the rows of its shards
    (``torch.chunk`` of dim 0, as FSDP2 shards), returned as DTensors placed like ``weights``
    (their values once the returned work completes: ``(dtensors, work, send buffer)``);
    autograd accumulates them into the sharded ``param.grad``, where FSDP2 keeps its own.
    """
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor, Shard

    mesh = weights[0].device_mesh
    if mesh.ndim != 1 or any(tuple(w.placements) != (Shard(0),) for w in weights):
        raise NotImplementedError(
            "reversible backprop under FSDP2 expects parameters sharded on dim 0 over a 1-D "
            f"mesh (revbench's fully_shard), got {weights[0].placements} on {mesh}"
        )
    world = mesh.size()
    rows = [-(-w.shape[0] // world) for w in weights]  # torch.chunk's chunk size
    parts = []
    for g, r in zip(grads, rows, strict=True):
        padded = g.new_zeros((r * world, *g.shape[1:]))
        padded[: g.shape[0]] = g
        parts.append(padded.reshape(world, -1))  # row k: rank k's rows of this parameter
    # Divide before summing, as FSDP2 does for float64 and on gloo (no AVG there).
    send = torch.cat(parts, dim=1).div_(world)
    mine = send.new_empty(send.shape[1])
    # reduce_scatter_single is reduce_scatter_tensor's name from torch 2.13 on.
    reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    work = reduce_scatter(mine, send.reshape(-1), group=mesh.get_group(), async_op=True)
    out, start = [], 0
    for w, part in zip(weights, parts, strict=True):
        local = w.to_local()  # this rank's shard: its shape, possibly fewer rows or none
        shard = mine[start : start + local.numel()].view(local.shape)  # then its padding
        start += part.shape[1]
        out.append(DTensor.from_local(shard, mesh, w.placements, shape=w.shape, stride=w.stride()))
    return out, work, send
