"""Synthetic checks that train in about a minute on CPU and separate working from broken models.

Both need attention to move information between positions (an induction-style lookup), so a
model whose attention or residual scheme is broken stays near chance while a working one
learns them. Token ids are drawn directly (no tokenizer); ``seq_len`` is the task's own.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from revbench.errors import ConfigError
from revbench.tasks.base import Task, TaskConfig, TaskContext, TaskResult, register, train
from revbench.tasks.stats import wilson_interval


class RecallConfig(TaskConfig):
    n_pairs: Annotated[int, Field(ge=1)] = 4
    n_keys: Annotated[int, Field(ge=2)] = 16
    n_values: Annotated[int, Field(ge=2)] = 16


class CopyConfig(TaskConfig):
    length: Annotated[int, Field(ge=1)] = 8
    n_symbols: Annotated[int, Field(ge=2)] = 16


def _check_vocab(name: str, needed: int, ctx: TaskContext) -> None:
    vocab = ctx.model.config.vocab_size
    if vocab < needed:
        raise ConfigError(f"task '{name}' needs vocab_size >= {needed}, the model has {vocab}")


class _SyntheticTask(Task):
    """Train on fresh batches of ``sample``; score the positions ``sample`` marks."""

    needs_tokenizer = False

    def sample(self, batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) ids and (B, T) targets at the scored positions, -100 elsewhere."""
        raise NotImplementedError

    def vocab_needed(self) -> int:
        raise NotImplementedError

    def run(self, ctx: TaskContext) -> TaskResult:
        _check_vocab(self.name, self.vocab_needed(), ctx)
        model = ctx.model.train()
        gen = torch.Generator().manual_seed(ctx.seed)

        def loss_of(ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            # Cross-entropy at the scored positions; the model's head decides whether the full
            # logits exist (head_chunk_tokens).
            out = model(ids.to(ctx.device), targets=targets.to(ctx.device))
            return out.loss if out.aux_loss is None else out.loss + out.aux_loss

        def step(_: int) -> tuple[torch.Tensor, int]:
            ids, targets = self.sample(ctx.batch_size, gen)
            return loss_of(ids, targets), ids.numel()

        final, seen = train(model.parameters(), step, ctx.steps, ctx.lr)
        model.eval()
        eval_gen = torch.Generator().manual_seed(ctx.seed + 1_000_003)  # never a training batch
        correct = total = 0
        with torch.no_grad():
            for i in range(0, ctx.eval_examples, ctx.batch_size):
                ids, targets = self.sample(min(ctx.batch_size, ctx.eval_examples - i), eval_gen)
                pred = model(ids.to(ctx.device)).logits.argmax(-1).cpu()
                mask = targets != -100
                correct += int((pred[mask] == targets[mask]).sum())
                total += int(mask.sum())
        lo, hi = wilson_interval(correct, total)
        return TaskResult(
            task=self.name,
            metric="accuracy",
            value=correct / total,
            ci_low=lo,
            ci_high=hi,
            n_eval=total,
            train_steps=ctx.steps,
            tokens_seen=seen,
            train_loss_final=final,
            extra={"majority_class_frac": self.chance()},
        )

    def chance(self) -> float:
        raise NotImplementedError


@register("recall", "associative recall: k1 v1 .. kn vn ? k -> v (synthetic, ~1 min on CPU)")
class AssociativeRecall(_SyntheticTask):
    """Layout: 0 is the query marker, keys are 1..n_keys, values follow them."""

    Config = RecallConfig

    def vocab_needed(self) -> int:
        c: RecallConfig = self.config  # type: ignore[assignment]
        return 1 + c.n_keys + c.n_values

    def chance(self) -> float:
        return 1.0 / self.config.n_values  # type: ignore[attr-defined]

    def sample(self, batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        c: RecallConfig = self.config  # type: ignore[assignment]
        if c.n_pairs > c.n_keys:
            raise ConfigError(f"task 'recall': n_pairs ({c.n_pairs}) exceeds n_keys ({c.n_keys})")
        keys = torch.stack(
            [torch.randperm(c.n_keys, generator=gen)[: c.n_pairs] for _ in range(batch)]
        )
        values = torch.randint(0, c.n_values, (batch, c.n_pairs), generator=gen)
        pick = torch.randint(0, c.n_pairs, (batch,), generator=gen)
        rows = torch.arange(batch)
        pairs = torch.stack([keys + 1, values + 1 + c.n_keys], dim=2).flatten(1)  # (B, 2n)
        query = torch.stack([torch.zeros(batch, dtype=torch.long), keys[rows, pick] + 1], dim=1)
        ids = torch.cat([pairs, query], dim=1)  # (B, 2n + 2)
        targets = torch.full_like(ids, -100)
        targets[:, -1] = values[rows, pick] + 1 + c.n_keys
        return ids, targets


@register("copy", "copying: x 0 x, score the second copy (synthetic, ~1 min on CPU)")
class Copy(_SyntheticTask):
    Config = CopyConfig

    def vocab_needed(self) -> int:
        return 1 + self.config.n_symbols  # type: ignore[attr-defined]

    def chance(self) -> float:
        return 1.0 / self.config.n_symbols  # type: ignore[attr-defined]

    def sample(self, batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        c: CopyConfig = self.config  # type: ignore[assignment]
        x = torch.randint(1, c.n_symbols + 1, (batch, c.length), generator=gen)
        ids = torch.cat([x, torch.zeros(batch, 1, dtype=torch.long), x], dim=1)  # (B, 2L + 1)
        targets = torch.full_like(ids, -100)
        targets[:, c.length : 2 * c.length] = x  # position t predicts token t + 1
        return ids, targets
