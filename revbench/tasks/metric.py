"""The ``accuracy`` metric: run a case's task on its model and return one row of columns.

The model is the case's own (``model`` section, freshly initialised) or, with
``train.pretrained``, the checkpoint loaded into the case's ``arch``; with ``distill_steps > 0``
it is first converted by distillation (revbench.convert) and the conversion's KL and perplexity
figures join the row. Then the task (``data.task``) trains it for ``train_steps`` steps at
``train.lr`` (``data.batch_size`` x ``data.seq_len``) and evaluates on held-out data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa

from revbench.columns import Column
from revbench.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from revbench.case import Case
    from revbench.tasks.text import Tokenizer

COLUMNS = (
    Column("task", pa.string(), "", "accuracy: the registered task that was run"),
    Column("train_steps", pa.int64(), "steps", "accuracy: task training / fine-tuning steps"),
    Column("tokens_seen", pa.int64(), "tokens", "accuracy: tokens fed during task training"),
    Column(
        "train_loss_final", pa.float64(), "nats", "accuracy: mean loss of the last 10 train steps"
    ),
    Column(
        "accuracy",
        pa.float64(),
        "fraction",
        "held-out accuracy (classify, recall, copy)",
        better="higher",
        quality=True,
    ),
    Column(
        "accuracy_ci_low",
        pa.float64(),
        "fraction",
        "95% Wilson interval, lower end",
        better="higher",
        quality=True,
    ),
    Column(
        "accuracy_ci_high",
        pa.float64(),
        "fraction",
        "95% Wilson interval, upper end",
        better="higher",
        quality=True,
    ),
    Column(
        "perplexity",
        pa.float64(),
        "",
        "held-out perplexity, exp(mean loss) (lm)",
        better="lower",
        quality=True,
    ),
    Column(
        "perplexity_ci_low",
        pa.float64(),
        "",
        "95% bootstrap interval over windows, lower",
        better="lower",
        quality=True,
    ),
    Column(
        "perplexity_ci_high",
        pa.float64(),
        "",
        "95% bootstrap interval over windows, upper",
        better="lower",
        quality=True,
    ),
    Column(
        "heldout_loss_nats",
        pa.float64(),
        "nats",
        "held-out mean next-token loss (lm)",
        better="lower",
    ),
    Column("n_eval", pa.int64(), "examples", "held-out examples (tokens for synthetic tasks)"),
    Column(
        "majority_class_frac",
        pa.float64(),
        "fraction",
        "accuracy of always guessing the majority class (chance for synthetic tasks)",
    ),
    Column("conversion_steps", pa.int64(), "steps", "distillation steps before the task"),
    Column(
        "kl_before_nats",
        pa.float64(),
        "nats",
        "KL(original || converted) before distilling",
        better="lower",
    ),
    Column(
        "kl_after_nats",
        pa.float64(),
        "nats",
        "KL(original || converted) after distilling",
        better="lower",
    ),
    Column(
        "original_perplexity",
        pa.float64(),
        "",
        "conversion corpus: the original's",
        better="lower",
        quality=True,
    ),
    Column(
        "perplexity_before_conversion",
        pa.float64(),
        "",
        "conversion corpus, before",
        better="lower",
        quality=True,
    ),
    Column(
        "perplexity_after_conversion",
        pa.float64(),
        "",
        "conversion corpus, after",
        better="lower",
        quality=True,
    ),
)


def _task_config(case: Case) -> dict[str, Any]:
    d = case.data
    pairs = {"data": d.task_data, "text_column": d.text_column}
    pairs["label_column"] = d.label_column
    return {k: v for k, v in pairs.items() if v is not None}


def case_model(case: Case, tokenizer: Tokenizer | None) -> tuple[nn.Module, dict[str, Any]]:
    """The case's model (module docstring: its own, pretrained, or converted by distillation
    with ``tokenizer``) and the conversion's columns; the caller seeds and places it."""
    from revbench.models import build_model
    from revbench.models.config import is_reversible

    data, tr = case.data, case.train
    pretrained = tr.pretrained
    row: dict[str, Any] = {}
    cfg = case.model
    if pretrained and tr.distill_steps and is_reversible(cfg.arch):
        from revbench.convert import ConvertConfig, convert

        conv = ConvertConfig(
            arch=cfg.arch,
            steps=tr.distill_steps,
            lr=tr.lr,
            batch_size=data.batch_size,
            seq_len=data.seq_len,
            lm_weight=tr.lm_weight,
            trainable=tr.distill_trainable,
            init=tr.distill_init,
            seed=tr.seed,
            revffn_adapters=cfg.revffn_adapters,
        )
        model, report = convert(pretrained, conv, tokenizer=tokenizer)
        row |= {
            "conversion_steps": report.steps,
            "kl_before_nats": report.kl_before_nats,
            "kl_after_nats": report.kl_after_nats,
            "original_perplexity": report.original_perplexity,
            "perplexity_before_conversion": report.perplexity_before,
            "perplexity_after_conversion": report.perplexity_after,
        }
    elif pretrained:
        from revbench.models.hf import FREE_FIELDS, from_pretrained

        scheme = {k: getattr(cfg, k) for k in FREE_FIELDS - {"arch"}}
        model = from_pretrained(pretrained, arch=cfg.arch, **scheme)
        row["conversion_steps"] = 0
    else:
        model = build_model(cfg)
    if tokenizer is not None and tokenizer.vocab_size > model.config.vocab_size:
        raise ConfigError(
            f"tokenizer has {tokenizer.vocab_size} tokens but vocab_size is "
            f"{model.config.vocab_size}; raise vocab_size (byte tokenizer: 256)"
        )
    return model, row


def measure_accuracy(case: Case) -> dict[str, Any]:
    import torch

    from revbench.measure.device import resolve_device
    from revbench.tasks import TaskContext, build_task
    from revbench.tasks.text import get_tokenizer

    data, tr = case.data, case.train
    if not data.task:
        raise ConfigError("metric 'accuracy' needs data.task (revbench list shows the tasks)")
    torch.manual_seed(tr.seed)
    if tr.threads:
        torch.set_num_threads(tr.threads)
    device = resolve_device(tr.device)
    task = build_task(data.task, **_task_config(case))
    pretrained = tr.pretrained
    tokenizer = get_tokenizer(data.tokenizer, pretrained) if task.needs_tokenizer else None
    model, row = case_model(case, tokenizer)
    model = model.to(device)
    ctx = TaskContext(
        model=model,
        tokenizer=tokenizer,
        steps=tr.train_steps,
        batch_size=data.batch_size,
        seq_len=data.seq_len,
        lr=tr.lr,
        seed=tr.seed,
        eval_examples=data.eval_examples,
        device=device,
    )
    res = task.run(ctx)
    row |= {
        "task": res.task,
        "train_steps": res.train_steps,
        "tokens_seen": res.tokens_seen,
        "train_loss_final": res.train_loss_final,
        res.metric: res.value,
        f"{res.metric}_ci_low": res.ci_low,
        f"{res.metric}_ci_high": res.ci_high,
        "n_eval": res.n_eval,
        **res.extra,
    }
    return row
