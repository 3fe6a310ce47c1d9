"""Data-parallel cases: every torchrun rank trains the case's model on its own batch.

``parallel: ddp`` wraps the model in ``DistributedDataParallel``; ``parallel: fsdp`` applies
FSDP2's ``fully_shard`` to every block and then to the root (embedding, final norm and the tied
head form the root's group). nccl on CUDA (one device per rank, ``LOCAL_RANK``), gloo on CPU.
Rank ``r`` of ``n`` trains on rows ``r*B .. (r+1)*B`` of the batch one process with batch size
``n*B`` would draw, so the ranks' data differ and together they are exactly that global batch
(the parallel tests compare gradients against it).

Reversible models under DDP: by default the reversible Function returns the trunk's weight
gradients when its whole backward ends, so DDP's hooks would fire for every block at once and no
all-reduce could overlap the trunk's backward. ``wrap`` therefore sets ``model.grads_per_block``:
the Function accumulates each block's gradients into ``param.grad`` as soon as the backward
leaves the block (``models/reversible.py``), DDP's hooks fire there, and a bucket's all-reduce
starts while the blocks below are recomputed, as for the baseline. Not for MoE models, which
DDP runs with ``find_unused_parameters`` (its search of the forward graph must find the
weights there); they keep the one hand-over at the end.

FSDP2 does not work on a reversible model as is: its hooks fire around ``forward`` calls, and
the schemes call the blocks' branch methods (``f``, ``attn_branch``, ...) inside one autograd
Function whose backward takes gradients with ``torch.autograd.grad`` (which never fills
``.grad``, the tensor FSDP2 reduce-scatters). So the Function does what the hooks would
(``models/reversible.py``): per run of consecutive steps on one block, ``unshard()`` (one
all-gather) and ``reshard()`` after, in forward and again around each recompute in backward;
the block's whole-parameter gradients, summed over its steps, are reduce-scattered (averaged)
into DTensors placed like the sharded parameters and returned as the Function's weight
gradients, which autograd accumulates into the sharded ``param.grad`` where FSDP2 keeps its
own. FSDP2's end-of-backward callback then finds no unsharded gradient on the blocks and adds
nothing. Like FSDP2's hooks, the Function issues the next block's all-gather while the current
block computes (``unshard(async_op=True)``, one block ahead) and keeps one block's reduce-scatter
in flight while the next block recomputes (``sharding.WeightGrads``): at most two blocks whole
and one block's whole gradients in the reduce-scatter buffer. On the table's midpoint case, in
back-to-back runs, that took the footprint from 35.8 MiB per rank (fully synchronous) to 36.1
(prefetch) and 37.4 (both; the table's own run gives 37.1); the time it saves cannot be
resolved on 2 CPU cores (step times 0.34-0.45 s either way over 3 alternating runs) and needs
a GPU measurement. Not done: a MixedPrecisionPolicy's reduce dtype.

Collectives of one training step under FSDP2, per block (counted with a TorchDispatchMode on
the c10d ops, 2 ranks, gloo, 2 and 4 layers; the root adds one all-gather and one
reduce-scatter; FSDP2 does not reshard the root after forward):

==========================  ==========  ==============
model                       all-gather  reduce-scatter
==========================  ==========  ==============
baseline                    2           1
baseline + checkpointing    2           1
midpoint, leapfrog, revnet  2           1
==========================  ==========  ==============

Baseline: forward and pre-backward. Checkpointing: the same two; the recompute runs inside the
pre-backward's unshard. Reversible: forward and recompute (a RevNet layer's two half-steps, or
midpoint's Euler start and layer 1, share one block and one all-gather). Under DDP every model
all-reduces its gradients once, in buckets. When the buckets' all-reduces start, as a share of
the backward's duration (0.5 MB buckets, 8 layers, d_model 128, 2 gloo ranks): baseline 9-93%,
midpoint 14-99% block by block, midpoint with the one hand-over at the end 81-83% (no overlap).
On 2 CPU cores the step time is the same either way (d_model 256: 765 vs 764 ms), since gloo's
all-reduce competes with compute for the cores; the overlap pays where communication runs beside
compute (NCCL on GPUs).

``revbench/suites/parallel.yaml`` on 2 CPU processes (gloo, 1 thread each; GPT-2 blocks, 8 layers,
d_model 128, batch 8 x 128 per rank, AdamW, float32). Per-rank training footprint
(``peak_mem_delta_bytes``, the larger rank's), activations, and median step time:

==============  ========  ===========  ========  ====================
case            MiB/rank  activations  step (s)  tokens/s (2 ranks)
==============  ========  ===========  ========  ====================
ddp baseline    100.2     67.3 MiB     0.228     8,976
ddp + ckpt      45.0      7.0 MiB      0.236     8,664
ddp midpoint    49.2      3.5 MiB      0.262     7,821
fsdp baseline   89.2      67.3 MiB     0.324     6,315
fsdp + ckpt     31.5      7.0 MiB      0.369     5,543
fsdp midpoint   37.1      3.5 MiB      0.310     6,609
==============  ========  ===========  ========  ====================

FSDP2 halves parameters, gradients and optimizer state per rank (6.4 + 6.4 + 12.7 MiB under DDP,
3.2 + 3.2 + 6.4 under FSDP2). Midpoint's backward transient (15-17 MiB: one block's recompute,
the block's whole gradients and, under FSDP2, the reduce-scatter buffers) is larger than
checkpointing's (9-10 MiB), which is why its footprint is not below checkpointing's at this size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from revbench.errors import ConfigError

if TYPE_CHECKING:
    from revbench.case import Case

# A rank that dies stops its peers through torchrun (child.py exits non-zero on failure); this
# timeout is the backstop for a rank that hangs, so the others give up well before the default
# (10 min nccl, 30 min gloo).
MAX_COLLECTIVE_TIMEOUT_S = 300.0


@dataclasses.dataclass(frozen=True)
class Ranks:
    """This process's place among the case's processes (rank 0 of 1 outside torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def active() -> bool:
    """Whether ``init`` ran in this process (a parallel case's rank)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def ranks() -> Ranks:
    """The process group's ranks once ``init`` ran, else a single process."""
    import torch.distributed as dist

    if not active():
        return Ranks()
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def init(case: Case) -> Ranks:
    """Join the process group torchrun describes in the environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``); selects this rank's GPU on CUDA."""
    import torch.distributed as dist

    from revbench.measure.device import resolve_device

    if not dist.is_available():
        raise ConfigError(f"parallel: {case.train.parallel} needs torch.distributed")
    if "RANK" not in os.environ:
        raise ConfigError("parallel cases run under torchrun (revbench.runner starts them)")
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = resolve_device(case.train.device)
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(
                f"nproc_per_node is {case.train.nproc_per_node} but torch sees "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
        torch.cuda.set_device(local)
    timeout = dt.timedelta(seconds=min(case.measure.timeout_s, MAX_COLLECTIVE_TIMEOUT_S))
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timeout)
    return ranks()


def shutdown() -> None:
    import torch.distributed as dist

    if active():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, parallel: str, device: torch.device) -> torch.nn.Module:
    """The module a training step calls: the model itself (``none``, ``fsdp``, which shards it
    in place) or its DDP wrapper."""
    if parallel == "none":
        return model
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        # Routed experts a batch leaves idle get no gradient in that step.
        find_unused = bool(getattr(model.config, "n_experts", 0))
        if hasattr(model, "grads_per_block") and not find_unused:
            # Reversible trunk gradients reach DDP's buckets block by block (module doc). Not
            # with find_unused_parameters: DDP's search of the forward graph would not find the
            # blocks' weights there and would count them as unused.
            model.grads_per_block = True
        return DistributedDataParallel(
            model,
            device_ids=[device] if device.type == "cuda" else None,
            find_unused_parameters=find_unused,
        )
    if parallel == "fsdp":
        fully_shard = _fully_shard()
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    raise ConfigError(f"unknown parallel mode {parallel!r}")


def _fully_shard() -> Any:
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        try:  # torch 2.4 and 2.5 kept FSDP2 under _composable
            from torch.distributed._composable.fsdp import fully_shard
        except ImportError:
            raise ConfigError(
                f"parallel: fsdp needs FSDP2 (torch.distributed.fsdp.fully_shard, torch >= 2.4); "
                f"torch {torch.__version__} lacks it; use parallel: ddp"
            ) from None
    return fully_shard


def gather(obj: Any) -> list[Any] | None:
    """``obj`` of every rank, in rank order, on rank 0 (None elsewhere); ``[obj]`` outside a
    process group."""
    import torch.distributed as dist

    r = ranks()
    if r.world_size == 1:
        return [obj]
    out: list[Any] | None = [None] * r.world_size if r.rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


@contextlib.contextmanager
def whole_parameters(model: torch.nn.Module) -> Iterator[None]:
    """Every FSDP2-sharded module of ``model`` unsharded for the duration (to inspect the model
    outside a training step); nothing to do otherwise."""
    fsdp = _fsdp_modules(model)
    for m in fsdp:
        m.unshard()
    try:
        yield
    finally:
        for m in fsdp:
            m.reshard()


def sharded(model: torch.nn.Module) -> bool:
    """Whether any module of ``model`` is FSDP2-sharded."""
    return bool(_fsdp_modules(model))


def _fsdp_modules(model: torch.nn.Module) -> list[Any]:
    import sys

    mod = sys.modules.get("torch.distributed.fsdp")
    return [m for m in model.modules() if mod is not None and isinstance(m, mod.FSDPModule)]
