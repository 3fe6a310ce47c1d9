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

from revbench.models import ModelConfig, build_model

if TYPE_CHECKING:
    from revbench.suite import Case

_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but torch sees no CUDA device; use 'auto'")
    return torch.device(name)


def tensor_bytes(tensors: object) -> int:
    """Bytes of the distinct storages among ``tensors`` (an iterable, nested one level)."""
    seen: dict[int, int] = {}
    for t in tensors:  # type: ignore[attr-defined]
        if isinstance(t, torch.Tensor):
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


@dataclasses.dataclass
class TrainStep:
    """Callable full training step on a fixed synthetic batch."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    input_ids: torch.Tensor
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager[None]]

    @property
    def tokens(self) -> int:
        return self.input_ids.numel()

    def forward_backward(self) -> float:
        with self.autocast():
            out = self.model(self.input_ids, labels=self.input_ids)
        loss = out.loss if out.aux_loss is None else out.loss + out.aux_loss
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
    train, data = case.train, case.data
    torch.manual_seed(train["seed"])
    if train["threads"]:
        torch.set_num_threads(train["threads"])
    device = resolve_device(train["device"])
    dtype = _DTYPES[train["dtype"]]
    model = build_model(ModelConfig(**case.model))
    model = model.to(device=device, dtype=torch.float64 if dtype == torch.float64 else None)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if train["optimizer"] == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=train["lr"])
    else:
        opt = torch.optim.SGD(params, lr=train["lr"], momentum=0.9)
    gen = torch.Generator().manual_seed(train["seed"])
    ids = torch.randint(
        case.model["vocab_size"], (data["batch_size"], data["seq_len"]), generator=gen
    ).to(device)

    def autocast() -> contextlib.AbstractContextManager[None]:
        if dtype in (torch.bfloat16, torch.float16):
            return torch.autocast(device.type, dtype=dtype)
        return contextlib.nullcontext()

    return TrainStep(model, opt, ids, device, autocast)


def warm_runtime(case: Case) -> None:
    """Run one full step of a one-layer, batch-1 copy of the case and free it.

    On CPU the first step pages in the code of every kernel it uses and sets up thread pools
    and allocator arenas (~90 MB of RSS with torch 2.13), which the kernel's high-water mark
    would otherwise charge to the model; this is the CPU analogue of a CUDA context. Measured
    figures then start from the warmed runtime.
    """
    import gc

    small = dataclasses.replace(
        case,
        model={**case.model, "n_layers": 1},
        data={**case.data, "batch_size": 1, "seq_len": min(8, case.data["seq_len"])},
    )
    step = build_train_step(small)
    step()
    del step
    gc.collect()
