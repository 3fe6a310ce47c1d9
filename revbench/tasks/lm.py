"""Language modeling: held-out loss and perplexity on a text corpus (default: the shipped KJV)."""

from __future__ import annotations

import math
from typing import Annotated

import torch
from pydantic import Field

from revbench.errors import ConfigError
from revbench.tasks.base import Task, TaskConfig, TaskContext, TaskResult, lm_loss, register, train
from revbench.tasks.data import load_table, require_column
from revbench.tasks.stats import bootstrap_interval
from revbench.tasks.text import Tokenizer


class LMConfig(TaskConfig):
    data: str = "kjv"
    """Shipped name, local file or hub data set (revbench.tasks.data)."""
    text_column: str = "text"
    eval_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    """The held-out text is the corpus's last fraction (contiguous: no verse is in both)."""


def corpus_tokens(data: str, text_column: str, tokenizer: Tokenizer) -> torch.Tensor:
    """The whole corpus as one token stream (rows joined by newlines), int64."""
    texts = require_column(load_table(data), text_column, data).dropna().astype(str)
    ids = tokenizer.encode("\n".join(texts.tolist()))
    return torch.tensor(ids, dtype=torch.long)


def split_stream(
    tokens: torch.Tensor, eval_fraction: float, seq_len: int, data: str
) -> tuple[torch.Tensor, torch.Tensor]:
    cut = int(len(tokens) * (1 - eval_fraction))
    train_part, held = tokens[:cut], tokens[cut:]
    for name, part in (("train", train_part), ("eval", held)):
        if len(part) < seq_len + 1:
            raise ConfigError(
                f"data '{data}': the {name} split has {len(part)} tokens, fewer than one "
                f"window of seq_len {seq_len}; use more text or a shorter seq_len"
            )
    return train_part, held


def random_windows(
    tokens: torch.Tensor, batch: int, seq_len: int, gen: torch.Generator
) -> torch.Tensor:
    starts = torch.randint(0, len(tokens) - seq_len, (batch,), generator=gen)
    return torch.stack([tokens[s : s + seq_len] for s in starts.tolist()])  # (B, T)


@torch.no_grad()
def window_losses(
    model: torch.nn.Module, tokens: torch.Tensor, seq_len: int, batch: int, limit: int
) -> list[float]:
    """Mean next-token loss of each non-overlapping window of ``tokens`` (at most ``limit``)."""
    n = min(limit, len(tokens) // seq_len)
    windows = tokens[: n * seq_len].view(n, seq_len)  # (n, T)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[float] = []
    for i in range(0, n, batch):
        ids = windows[i : i + batch].to(device)
        logits = model(ids).logits[:, :-1].float()  # (b, T-1, V)
        ce = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), ids[:, 1:], reduction="none"
        )  # (b, T-1)
        out.extend(ce.mean(dim=1).tolist())
    model.train(was_training)
    return out


@register("lm", "language modeling: held-out loss and perplexity (bootstrap CI) on a corpus")
class LanguageModelingTask(Task):
    Config = LMConfig

    def run(self, ctx: TaskContext) -> TaskResult:
        cfg: LMConfig = self.config  # type: ignore[assignment]
        assert ctx.tokenizer is not None, "the lm task needs a tokenizer"
        tokens = corpus_tokens(cfg.data, cfg.text_column, ctx.tokenizer)
        train_part, held = split_stream(tokens, cfg.eval_fraction, ctx.seq_len, cfg.data)
        gen = torch.Generator().manual_seed(ctx.seed)
        model = ctx.model.train()

        def step(_: int) -> tuple[torch.Tensor, int]:
            ids = random_windows(train_part, ctx.batch_size, ctx.seq_len, gen).to(ctx.device)
            return lm_loss(model, ids), ids.numel()

        final, seen = train(model.parameters(), step, ctx.steps, ctx.lr)
        losses = window_losses(model, held, ctx.seq_len, ctx.batch_size, ctx.eval_examples)
        mean = sum(losses) / len(losses)
        lo, hi = bootstrap_interval(losses, seed=ctx.seed)
        return TaskResult(
            task=self.name,
            metric="perplexity",
            value=math.exp(mean),
            ci_low=math.exp(lo),
            ci_high=math.exp(hi),
            n_eval=len(losses),
            train_steps=ctx.steps,
            tokens_seen=seen,
            train_loss_final=final,
            extra={"heldout_loss_nats": mean},
        )
