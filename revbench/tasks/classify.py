"""Sequence classification: fine-tune every parameter plus a linear head, report accuracy.

The head reads the final normalised state at each text's last token (a causal model has seen
the whole text there). Texts are truncated to ``seq_len`` tokens and right-padded.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from revbench.errors import ConfigError
from revbench.tasks.base import (
    Task,
    TaskConfig,
    TaskContext,
    TaskResult,
    final_hidden,
    register,
    train,
)
from revbench.tasks.data import load_table, require_column, split_indices
from revbench.tasks.stats import wilson_interval


class ClassifyConfig(TaskConfig):
    data: str = "tweets"
    text_column: str = "text"
    label_column: str = "sentiment"
    labels: list[str] | None = None
    """Classes to keep, in order; None keeps every label in the data (sorted). The shipped
    tweets default to all three (negative / neutral / positive)."""
    eval_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2


def encode_batch(
    texts: list[str], tokenizer, seq_len: int, pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) right-padded ids and (B,) index of each text's last token."""
    rows = [tokenizer.encode(t)[:seq_len] or [pad_id] for t in texts]
    ids = torch.full((len(rows), seq_len), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    return ids, torch.tensor([len(r) - 1 for r in rows])


@register("classify", "sequence classification: full fine-tune, held-out accuracy (Wilson CI)")
class ClassificationTask(Task):
    Config = ClassifyConfig

    def _rows(
        self, seed: int
    ) -> tuple[list[str], torch.Tensor, list[str], torch.Tensor, torch.Tensor]:
        cfg: ClassifyConfig = self.config  # type: ignore[assignment]
        df = load_table(cfg.data)
        require_column(df, cfg.text_column, cfg.data)
        df = df.dropna(
            subset=[cfg.text_column, require_column(df, cfg.label_column, cfg.data).name]
        )
        texts = require_column(df, cfg.text_column, cfg.data).astype(str).tolist()
        raw = require_column(df, cfg.label_column, cfg.data).astype(str).tolist()
        classes = cfg.labels or sorted(set(raw))
        missing = [c for c in classes if c not in set(raw)]
        if missing or len(classes) < 2:
            raise ConfigError(
                f"task 'classify': labels {missing or classes} not usable in column "
                f"'{cfg.label_column}' of '{cfg.data}' (need >= 2 present; found "
                f"{sorted(set(raw))})"
            )
        keep = [i for i, lab in enumerate(raw) if lab in classes]
        texts = [texts[i] for i in keep]
        labels = torch.tensor([classes.index(raw[i]) for i in keep])
        train_idx, eval_idx = split_indices(len(texts), cfg.eval_fraction, seed, cfg.data)
        return texts, labels, classes, train_idx, eval_idx

    def run(self, ctx: TaskContext) -> TaskResult:
        assert ctx.tokenizer is not None, "the classify task needs a tokenizer"
        texts, labels, classes, train_idx, eval_idx = self._rows(ctx.seed)
        eval_idx = eval_idx[: ctx.eval_examples]
        model = ctx.model.train()
        d_model = model.config.d_model
        head = nn.Linear(d_model, len(classes)).to(ctx.device)
        gen = torch.Generator().manual_seed(ctx.seed)

        def logits_of(idx: torch.Tensor) -> tuple[torch.Tensor, int]:
            ids, last = encode_batch([texts[i] for i in idx.tolist()], ctx.tokenizer, ctx.seq_len)
            h = final_hidden(model, ids.to(ctx.device))  # (B, T, C)
            feats = h[torch.arange(len(idx)), last.to(ctx.device)]  # (B, C)
            return head(feats), int((last + 1).sum())

        def step(_: int) -> tuple[torch.Tensor, int]:
            pick = train_idx[torch.randint(0, len(train_idx), (ctx.batch_size,), generator=gen)]
            logits, n = logits_of(pick)
            return nn.functional.cross_entropy(logits, labels[pick].to(ctx.device)), n

        params = [*model.parameters(), *head.parameters()]
        final, seen = train(params, step, ctx.steps, ctx.lr)
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(eval_idx), ctx.batch_size):
                chunk = eval_idx[i : i + ctx.batch_size]
                pred = logits_of(chunk)[0].argmax(-1).cpu()
                correct += int((pred == labels[chunk]).sum())
        n = len(eval_idx)
        lo, hi = wilson_interval(correct, n)
        majority = float(torch.bincount(labels[eval_idx], minlength=len(classes)).max()) / n
        return TaskResult(
            task=self.name,
            metric="accuracy",
            value=correct / n,
            ci_low=lo,
            ci_high=hi,
            n_eval=n,
            train_steps=ctx.steps,
            tokens_seen=seen,
            train_loss_final=final,
            extra={"majority_class_frac": majority},
        )
