"""What every accuracy task shares: its config, what it is given, what it returns, the loop.

A task is a small class with a ``name`` (its registry key), a pydantic ``Config`` (so a task
reads from YAML or Python with the same checks) and ``run(ctx) -> TaskResult``. It trains the
model it is given (from scratch, or fine-tunes every parameter of a pretrained or converted one,
as the papers do) for ``ctx.steps`` steps, then evaluates on held-out data.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from revbench.errors import ConfigError
from revbench.registry import Registry
from revbench.tasks.text import Tokenizer

FINAL_LOSS_STEPS = 10
"""``train_loss_final`` is the mean loss of the last this-many training steps."""


class TaskConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclasses.dataclass
class TaskContext:
    """Everything a task run is given (live objects; built in the metric's child process)."""

    model: nn.Module
    tokenizer: Tokenizer | None
    steps: int
    batch_size: int
    seq_len: int
    lr: float
    seed: int
    eval_examples: int
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))


@dataclasses.dataclass
class TaskResult:
    """One accuracy row's worth of numbers (columns in revbench.tasks.metric)."""

    task: str
    metric: str
    """accuracy | perplexity"""
    value: float
    ci_low: float
    ci_high: float
    n_eval: int
    train_steps: int
    tokens_seen: int
    train_loss_final: float | None
    extra: dict[str, float] = dataclasses.field(default_factory=dict)


class Task:
    name: ClassVar[str] = ""
    Config: ClassVar[type[TaskConfig]] = TaskConfig
    needs_tokenizer: ClassVar[bool] = True

    def __init__(self, config: TaskConfig) -> None:
        self.config = config

    def run(self, ctx: TaskContext) -> TaskResult:
        raise NotImplementedError


TASKS: Registry[type[Task]] = Registry("task")
"""Every task by name (``revbench list``); ``revbench.tasks`` imports the modules that fill it."""


def register(name: str, description: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator: register a ``Task`` subclass under ``name``."""

    def deco(cls: type[Task]) -> type[Task]:
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise TypeError(f"task '{name}' must subclass revbench.tasks.base.Task")
        cls.name = name
        TASKS.add(name, cls, description)
        return cls

    return deco


def build_task(name: str, **config: Any) -> Task:
    """The task ``name`` with its config validated; unknown keys or bad values raise
    ``ConfigError`` naming the task and the field."""
    cls = TASKS.get(name)
    try:
        return cls(cls.Config(**config))
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "config"
        raise ConfigError(f"task '{name}': {loc}: {err['msg']}") from None


def final_hidden(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """(B, T, C) normalised state the LM head reads: the features a classifier head uses."""
    return model.features(input_ids)[0]


def lm_loss(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    out = model(input_ids, labels=input_ids)
    return out.loss if out.aux_loss is None else out.loss + out.aux_loss


@dataclasses.dataclass
class TrainState:
    """Where a ``train`` run stands: what a resumed run continues from."""

    step: int = 0
    """Steps done."""
    tokens: int = 0
    recent: list[float] = dataclasses.field(default_factory=list)
    """The losses of the last ``FINAL_LOSS_STEPS`` steps."""


def train(
    params: Iterable[nn.Parameter],
    step_loss: Callable[[int], tuple[torch.Tensor, int]],
    steps: int,
    lr: float,
    *,
    state: TrainState | None = None,
    optimizer_state: dict[str, Any] | None = None,
    after_step: Callable[[TrainState, torch.optim.Optimizer, float], None] | None = None,
) -> tuple[float | None, int]:
    """AdamW for ``steps`` steps; ``step_loss(i)`` returns (loss, tokens fed). Returns the mean
    loss of the last ``FINAL_LOSS_STEPS`` steps (None without steps) and the tokens seen.

    To resume, pass the ``state`` and the optimizer's ``optimizer_state`` a run had reached:
    the loop continues from ``state.step`` (``state`` is updated in place).
    ``after_step(state, optimizer, loss)`` runs after every step (progress, checkpoints)."""
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    if optimizer_state is not None:
        opt.load_state_dict(optimizer_state)
    state = state if state is not None else TrainState()
    for i in range(state.step, steps):
        loss, n = step_loss(i)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"training loss became {value} at step {i}")
        state.recent = [*state.recent, value][-FINAL_LOSS_STEPS:]
        state.tokens += n
        state.step = i + 1
        if after_step is not None:
            after_step(state, opt, value)
    tail = state.recent
    return (sum(tail) / len(tail) if tail else None), state.tokens
