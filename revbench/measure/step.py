"""A full training step (forward, backward, optimizer step) built from a case.

Every metric measures this same step, so a memory figure and a speed figure of one case describe
the same work. Plain data in (a ``Case``), live objects out; never crosses a process boundary.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from revbench.measure import parallel
from revbench.measure.device import resolve_device
from revbench.models import build_model

if TYPE_CHECKING:
    from revbench.case import Case

_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def tensor_bytes(tensors: object) -> int:
    """Bytes of the distinct storages among ``tensors`` (an iterable, nested one level); of a
    DTensor (FSDP2's sharded parameters and their optimizer state), this rank's shard."""
    seen: dict[int, int] = {}
    for t in tensors:  # type: ignore[attr-defined]
        if isinstance(t, torch.Tensor):
            if hasattr(t, "to_local"):  # DTensor, without importing torch.distributed.tensor
                t = t.to_local()
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


@dataclasses.dataclass
class TrainStep:
    """Callable full training step on a fixed synthetic batch (this rank's, in a parallel
    case)."""

    model: torch.nn.Module
    """The model (sharded in place under FSDP2); read its config and parameters here."""
    optimizer: torch.optim.Optimizer
    input_ids: torch.Tensor
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager[None]]
    wrapper: torch.nn.Module | None = None
    """What the step calls when it is not ``model`` itself (the DDP wrapper)."""
    world_size: int = 1
    """Processes training the case together, each on its own batch like ``input_ids``."""

    @property
    def tokens(self) -> int:
        """Tokens of one step, all ranks together."""
        return self.input_ids.numel() * self.world_size

    @property
    def samples(self) -> int:
        """Sequences of one step, all ranks together."""
        return self.input_ids.shape[0] * self.world_size

    def loss(self) -> torch.Tensor:
        """The forward: the loss of this rank's batch (plus any auxiliary loss)."""
        with self.autocast():
            out = (self.wrapper or self.model)(self.input_ids, labels=self.input_ids)
        return out.loss if out.aux_loss is None else out.loss + out.aux_loss

    def forward_backward(self) -> float:
        loss = self.loss()
        loss.backward()
        return float(loss.detach())

    def __call__(self) -> float:
        loss = self.forward_backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def param_bytes(self) -> int:
        return tensor_bytes(self.model.parameters())

    def grad_bytes(self) -> int:
        """Bytes the gradients take during a step (one per trainable parameter)."""
        return tensor_bytes(p for p in self.model.parameters() if p.requires_grad)

    def optimizer_state_bytes(self) -> int:
        return tensor_bytes(v for state in self.optimizer.state.values() for v in state.values())


def build_train_step(case: Case) -> TrainStep:
    """The case's model, optimizer and batch; in a parallel case (``parallel.init`` done) the
    model wrapped or sharded as ``train.parallel`` says and this rank's share of the batch."""
    train, data = case.train, case.data
    ranks = parallel.ranks()
    # Every rank builds the same weights (FSDP2 shards each rank's copy; DDP would broadcast).
    torch.manual_seed(train.seed)
    if train.threads:
        torch.set_num_threads(train.threads)
    device = resolve_device(train.device)
    if device.type == "cuda" and parallel.active():
        device = torch.device("cuda", torch.cuda.current_device())  # parallel.init picked it
    dtype = _DTYPES[train.dtype]
    model = build_model(case.model)
    model = model.to(device=device, dtype=torch.float64 if dtype == torch.float64 else None)
    model.train()
    wrapped = parallel.wrap(model, train.parallel, device) if parallel.active() else model
    # After wrapping: FSDP2 replaces the parameters with sharded ones, which the optimizer holds.
    params = [p for p in model.parameters() if p.requires_grad]
    if train.optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=train.lr)
    else:
        opt = torch.optim.SGD(params, lr=train.lr, momentum=0.9)
    gen = torch.Generator().manual_seed(train.seed)
    B = data.batch_size
    ids = torch.randint(
        case.model.vocab_size, (ranks.world_size * B, data.seq_len), generator=gen
    )  # the global batch; this rank trains on its rows
    if ranks.world_size > 1:
        ids = ids[ranks.rank * B : (ranks.rank + 1) * B].clone()
    ids = ids.to(device)

    def autocast() -> contextlib.AbstractContextManager[None]:
        if dtype in (torch.bfloat16, torch.float16):
            return torch.autocast(device.type, dtype=dtype)
        return contextlib.nullcontext()

    wrapper = None if wrapped is model else wrapped
    return TrainStep(model, opt, ids, device, autocast, wrapper, ranks.world_size)


def warm_runtime(case: Case) -> None:
    """Run one full step of a one-layer copy of the case (same batch and sequence length) and
    free it.

    On CPU the first step pages in the code of every kernel it uses and sets up thread pools
    and allocator arenas (~90 MB of RSS with torch 2.13), which the kernel's high-water mark
    would otherwise charge to the model; this is the CPU analogue of a CUDA context. oneDNN,
    which runs bf16/fp16 autocast matmuls on CPU, also builds a kernel per matrix shape, so the
    warm step uses the case's own shapes (measured, tiny llama model, bf16, before memory
    processes held oneDNN's kernel caches to one entry (``metrics.MMAP_ENV``): 15.9 MiB charged
    to the model after a batch-1 x 8-token warm step, 4.2 MiB after one at the case's shape;
    float32 5.8 and 4.8). Measured figures then start from the warmed runtime.
    """
    import gc

    small = case.with_settings(**case.model.one_layer_settings())
    step = build_train_step(small)
    step()
    del step
    gc.collect()
