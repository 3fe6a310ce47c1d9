"""Convert a pretrained model into a reversible one by distillation (``revbench convert``).

Gal et al. turn pretrained LLMs (TinyLlama, SmolLM2) into reversible ones by fine-tuning, losing
about a point of accuracy. Here the reversible model (``midpoint``, ``leapfrog``,
``hamiltonian``, ...) starts from every pretrained block's weights (``hf.from_pretrained``: the
same parameters, wired by the scheme), then trains to match the original's next-token
distribution. A mixture-of-experts original (Mixtral, Qwen2-MoE) converts into ``revffn``
(RevFFN, Liu et al.): its attention, norms and MoE inside RevFFN's blocks, the adapters new;
``trainable: adapters`` trains only those, the paper's first stage.

    loss = kl_weight * T^2 * KL(p_original(./T) || p_reversible(./T)) + lm_weight * CE(next token)

Documented defaults (``ConvertConfig``): 200 AdamW steps at lr 1e-4 (no weight decay, gradient
norm clipped to 1), batch 8 x 128 tokens of the shipped KJV corpus, every parameter trains
(``trainable: blocks`` freezes embedding and head), KL only (``lm_weight: 0``), T = 1. KL and
perplexity on held-out text (the corpus's last 10%) are reported before and after, beside the
original's perplexity (``ConversionReport``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from revbench.errors import ConfigError
from revbench.models import build_model
from revbench.models.head import CrossEntropy, DistillKL, chunked_head_loss, next_token_targets
from revbench.models.hf import from_pretrained, load_weights, save_checkpoint
from revbench.models.output import loss_dtype
from revbench.models.revffn import is_adapter
from revbench.tasks.base import train
from revbench.tasks.lm import corpus_tokens, random_windows, split_stream
from revbench.tasks.text import ByteTokenizer, HFTokenizer, Tokenizer, get_tokenizer


class ConvertConfig(BaseModel):
    """How a conversion runs; every field has the documented default (module docstring)."""

    model_config = ConfigDict(extra="forbid")
    arch: str = "midpoint"
    steps: Annotated[int, Field(ge=0)] = 200
    lr: Annotated[float, Field(gt=0)] = 1e-4
    batch_size: Annotated[int, Field(ge=1)] = 8
    seq_len: Annotated[int, Field(ge=2)] = 128
    kl_weight: Annotated[float, Field(ge=0)] = 1.0
    lm_weight: Annotated[float, Field(ge=0)] = 0.0
    temperature: Annotated[float, Field(gt=0)] = 1.0
    trainable: Literal["all", "blocks", "adapters"] = "all"
    """What trains: everything; the blocks (embedding and head frozen); or, for ``revffn``,
    only its adapters (the RevFFN paper's first stage, the pretrained weights frozen)."""
    data: str = "kjv"
    text_column: str = "text"
    eval_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    eval_windows: Annotated[int, Field(ge=1)] = 32
    tokenizer: str = "auto"
    """auto: the checkpoint's own tokenizer; byte; or a tokenizers JSON file."""
    seed: Annotated[int, Field(ge=0)] = 0


@dataclasses.dataclass
class ConversionReport:
    source: str
    arch: str
    steps: int
    tokens_seen: int
    train_loss_final: float | None
    kl_before_nats: float
    """Mean per-token KL(original || converted) on held-out text, before fine-tuning."""
    kl_after_nats: float
    original_perplexity: float
    perplexity_before: float
    perplexity_after: float
    wall_time_s: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def markdown(self) -> str:
        rows = [
            ("original (unconverted)", "0", self.original_perplexity),
            (
                f"{self.arch}, before fine-tuning",
                f"{self.kl_before_nats:.4f}",
                self.perplexity_before,
            ),
            (
                f"{self.arch}, after {self.steps} steps",
                f"{self.kl_after_nats:.4f}",
                self.perplexity_after,
            ),
        ]
        lines = ["| model | KL to original (nats/token) | held-out perplexity |", "|---|---|---|"]
        lines += [f"| {m} | {kl} | {ppl:.3f} |" for m, kl, ppl in rows]
        return "\n".join(lines) + "\n"


@torch.no_grad()
def evaluate(
    student: nn.Module, teacher: nn.Module, windows: torch.Tensor, batch: int
) -> tuple[float, float, float]:
    """(mean KL(teacher || student) per token, student perplexity, teacher perplexity)."""
    was = student.training
    student.eval()
    kl = ce_s = ce_t = 0.0
    n = 0
    for i in range(0, len(windows), batch):
        ids = windows[i : i + batch]
        s = student(ids).logits[:, :-1].float().log_softmax(-1)  # (b, T-1, V)
        t = teacher(ids).logits[:, :-1].float().log_softmax(-1)
        target = ids[:, 1:]
        kl += float(F.kl_div(s, t, log_target=True, reduction="sum"))
        ce_s += float(F.nll_loss(s.transpose(1, 2), target, reduction="sum"))
        ce_t += float(F.nll_loss(t.transpose(1, 2), target, reduction="sum"))
        n += target.numel()
    student.train(was)
    return kl / n, math.exp(ce_s / n), math.exp(ce_t / n)


def distillation_loss(
    student: nn.Module, teacher: nn.Module, ids: torch.Tensor, cfg: ConvertConfig
) -> torch.Tensor:
    """``kl_weight T^2 KL(p_teacher || p_student)`` per token at temperature T, plus
    ``lm_weight`` times the student's next-token loss and its auxiliary loss, on ``ids``.

    With a student head that avoids the full logits (``head_chunk_tokens``, ``head_impl``),
    neither model's full logits exist: the student's head runs in chunks and the teacher's
    log-probabilities are recomputed per chunk from its final states (``models/head.py``)."""
    T = cfg.temperature
    if not student.head.materialises_logits:
        with torch.no_grad():
            t_hidden = teacher.features(ids)[0].flatten(0, 1)  # (B*T, C_teacher)
        t_weight = teacher.head.proj.weight

        def teacher_logp(rows: slice) -> torch.Tensor:
            with torch.no_grad():
                return (loss_dtype(F.linear(t_hidden[rows], t_weight)) / T).log_softmax(-1)

        hidden, aux = student.features(ids)
        hidden = hidden.flatten(0, 1)  # (B*T, C)
        weight, chunk = student.head.proj.weight, student.head.chunk_tokens or ids.shape[1]
        loss = cfg.kl_weight * chunked_head_loss(
            hidden, weight, DistillKL(teacher_logp, hidden.shape[0], T), chunk
        )
        if cfg.lm_weight:
            targets = next_token_targets(ids).flatten()
            loss = loss + cfg.lm_weight * chunked_head_loss(
                hidden, weight, CrossEntropy(targets), chunk
            )
        return loss if aux is None else loss + aux
    with torch.no_grad():
        t = (loss_dtype(teacher(ids).logits) / T).log_softmax(-1)
    out = student(ids, labels=ids if cfg.lm_weight else None)
    s = (loss_dtype(out.logits) / T).log_softmax(-1)
    loss = (
        cfg.kl_weight
        * T
        * T
        * F.kl_div(s.flatten(0, 1), t.flatten(0, 1), log_target=True, reduction="batchmean")
    )
    if cfg.lm_weight:
        loss = loss + cfg.lm_weight * out.loss
    if out.aux_loss is not None:
        loss = loss + out.aux_loss
    return loss


def distill(
    student: nn.Module,
    teacher: nn.Module,
    train_tokens: torch.Tensor,
    cfg: ConvertConfig,
) -> tuple[float | None, int]:
    """Fine-tune ``student`` towards ``teacher`` (module docstring); returns (final loss,
    tokens seen)."""
    teacher.eval().requires_grad_(False)
    student.train()
    if cfg.trainable == "blocks":
        student.embed.requires_grad_(False)
        student.head.requires_grad_(False)
    elif cfg.trainable == "adapters":
        for name, p in student.named_parameters():
            p.requires_grad_(is_adapter(name))
    gen = torch.Generator().manual_seed(cfg.seed)

    def step(_: int) -> tuple[torch.Tensor, int]:
        ids = random_windows(train_tokens, cfg.batch_size, cfg.seq_len, gen)
        return distillation_loss(student, teacher, ids, cfg), ids.numel()

    return train(student.parameters(), step, cfg.steps, cfg.lr)


def convert(
    source: str | Path,
    config: ConvertConfig | None = None,
    *,
    out: str | Path | None = None,
    teacher: nn.Module | None = None,
    tokenizer: Tokenizer | None = None,
) -> tuple[nn.Module, ConversionReport]:
    """Build ``config.arch`` from the checkpoint ``source``, distil it towards the original,
    report KL and perplexity before/after, and save it to ``out`` when given (a folder that
    ``from_pretrained`` and suites' ``pretrained:`` read back, tokenizer included)."""
    cfg = config or ConvertConfig()
    _check_before_distilling(cfg, out)
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    teacher = teacher if teacher is not None else from_pretrained(source)
    if teacher.config.arch not in ("baseline", "moe"):
        raise ConfigError(
            f"{source}: the original must be a baseline or moe model, not {teacher.config.arch}"
        )
    if teacher.config.arch == "moe" and cfg.arch != "revffn":
        raise ConfigError(
            f"{source} is a mixture-of-experts model: it converts into arch revffn, not {cfg.arch}"
        )
    if cfg.trainable == "adapters" and cfg.arch != "revffn":
        raise ConfigError("trainable: adapters needs arch revffn (the only one with adapters)")
    student = build_model(dataclasses.replace(teacher.config, arch=cfg.arch))
    load_weights(student, teacher.state_dict(), str(source))
    tok = tokenizer or get_tokenizer(cfg.tokenizer, str(source))
    if tok.vocab_size > teacher.config.vocab_size:
        raise ConfigError(
            f"tokenizer has {tok.vocab_size} tokens, the model {teacher.config.vocab_size}"
        )
    tokens = corpus_tokens(cfg.data, cfg.text_column, tok)
    train_tokens, held = split_stream(tokens, cfg.eval_fraction, cfg.seq_len, cfg.data)
    n = min(cfg.eval_windows, len(held) // cfg.seq_len)
    windows = held[: n * cfg.seq_len].view(n, cfg.seq_len)  # (n, T)
    kl0, ppl0, ppl_t = evaluate(student, teacher, windows, cfg.batch_size)
    final, seen = distill(student, teacher, train_tokens, cfg)
    kl1, ppl1, _ = evaluate(student, teacher, windows, cfg.batch_size)
    report = ConversionReport(
        source=str(source),
        arch=cfg.arch,
        steps=cfg.steps,
        tokens_seen=seen,
        train_loss_final=final,
        kl_before_nats=kl0,
        kl_after_nats=kl1,
        original_perplexity=ppl_t,
        perplexity_before=ppl0,
        perplexity_after=ppl1,
        wall_time_s=time.perf_counter() - start,
    )
    student.eval()
    if out is not None:
        save_converted(student, out, report, cfg, tok)
    return student, report


def _check_before_distilling(cfg: ConvertConfig, out: str | Path | None) -> None:
    """Fail in one line before any weight is loaded: an unknown ``arch``, an ``out`` that
    cannot be written (minutes of distillation must not end in a failed save)."""
    from revbench.models import ARCHITECTURES
    from revbench.results import check_out_dir

    try:
        ARCHITECTURES.get(cfg.arch)
    except ConfigError as e:
        raise ConfigError(f"--arch: {e}") from None
    if out is not None:
        check_out_dir(out, create=True)


def save_converted(
    model: nn.Module, out: str | Path, report: ConversionReport, cfg: ConvertConfig, tok: Tokenizer
) -> Path:
    """Save the converted model with its report, and the tokenizer it was trained with."""
    meta = {"conversion": report.to_dict(), "convert_config": cfg.model_dump()}
    if isinstance(tok, ByteTokenizer):
        meta["tokenizer"] = "byte"
    folder = save_checkpoint(model, out, meta)
    if isinstance(tok, HFTokenizer) and hasattr(tok.tok, "save_pretrained"):
        tok.tok.save_pretrained(folder)
    elif isinstance(tok, HFTokenizer):
        tok.tok.save(str(folder / "tokenizer.json"))
    return folder
