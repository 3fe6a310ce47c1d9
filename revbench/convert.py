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

Where the reversible model starts (``init``, ``revbench.models.retrofit``): ``naive`` drops
every block into the scheme unchanged; ``mean``, ``pair``, ``pair2`` and ``damped`` choose the
step size, coefficients, force and readout so that the scheme reproduces the residual update
(``retrofit.INITS``; the README's conversion section has the maths and the measurements).

With ``out``, a training checkpoint (student, optimizer, step, RNG states) is written there
every ``checkpoint_every`` steps, atomically; ``convert(..., resume=True)`` (``revbench
convert --resume``) continues from it, to the same weights as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from revbench.errors import ConfigError
from revbench.models import arch_facts, build_model
from revbench.models.config import archs_where
from revbench.models.head import CrossEntropy, DistillKL, chunked_head_loss, next_token_targets
from revbench.models.hf import from_pretrained, load_weights, save_checkpoint
from revbench.models.output import loss_dtype
from revbench.models.retrofit import Init, resolve_init, retrofit_settings
from revbench.models.reversible import ReversibleLM, reconstruction_errors
from revbench.models.revffn import is_adapter
from revbench.tasks.base import TrainState, train
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
    revffn_adapters: Literal["five", "pair"] = "five"
    """arch revffn: five adapters per layer (U1, U2, P1, U3, P2) or the paper's pair (one lift,
    one projection shared by every use; ``ModelConfig.revffn_adapters``)."""
    data: str = "kjv"
    text_column: str = "text"
    eval_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    eval_windows: Annotated[int, Field(ge=1)] = 32
    tokenizer: str = "auto"
    """auto: the checkpoint's own tokenizer; byte; or a tokenizers JSON file."""
    seed: Annotated[int, Field(ge=0)] = 0
    init: Init = "auto"
    """Where the reversible model starts (``revbench.models.retrofit.INITS``): naive (every
    block dropped in unchanged), mean, pair, pair2, damped, or auto (the default: the start
    closest to the original measured on SmolLM2-135M for the arch, ``retrofit.BEST_INIT``)."""
    init_a: Annotated[float, Field(gt=0, lt=1)] = 0.2
    """init damped: the coefficient a of p_{l+1} = a p_{l-1} + (1-a) p_l + f_l(p_l) (0 would
    be the residual network itself; the inverse divides by a, so rounding errors of rebuilt
    states grow by about 1/a per layer)."""
    backprop: Literal["auto", "reversible", "autograd"] = "auto"
    """How distillation backpropagates through the student: its reversible backward (rebuilds
    the states by the inverse), or ordinary autograd (stores activations; exact gradients
    whatever the inverse's rounding). auto: autograd for init damped (a < 1), else reversible."""
    checkpoint_every: Annotated[int, Field(ge=0)] = 50
    """With an output folder: write the training checkpoint every this many steps (0: never)."""
    eval_steps: list[Annotated[int, Field(ge=1)]] = []
    """Also evaluate KL and perplexity after these steps (``ConversionReport.evaluations``)."""


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
    init: str = "naive"
    backprop: str = "reversible"
    reconstruction_before: float | None = None
    """Largest relative error of a state rebuilt by the float32 inverse (one held-out window,
    ``reconstruction_errors``), before fine-tuning; None for a model without an inverse."""
    reconstruction_after: float | None = None
    evaluations: list[dict[str, float]] = dataclasses.field(default_factory=list)
    """KL and perplexity after each of ``eval_steps`` (``step``, ``kl_nats``, ``perplexity``)."""
    resumed_at: int | None = None
    """The step a resumed conversion continued from (None: ran in one go)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def markdown(self) -> str:
        rows = [
            ("original (unconverted)", "0", self.original_perplexity),
            (
                f"{self.arch}, before fine-tuning (init {self.init})",
                f"{self.kl_before_nats:.4f}",
                self.perplexity_before,
            ),
            *(
                (f"{self.arch}, after {e['step']} steps", f"{e['kl_nats']:.4f}", e["perplexity"])
                for e in self.evaluations
                if e["step"] < self.steps
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


def distillation_terms(
    student: nn.Module, teacher: nn.Module, ids: torch.Tensor, cfg: ConvertConfig
) -> dict[str, torch.Tensor]:
    """The terms of ``distillation_loss`` on ``ids``: ``kl`` (T^2 KL(p_teacher || p_student)
    per token at temperature T), ``lm`` (the student's next-token loss; only with
    ``lm_weight``) and ``aux`` (the student's auxiliary loss, if it has one)."""
    T = cfg.temperature
    terms: dict[str, torch.Tensor] = {}
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
        terms["kl"] = chunked_head_loss(
            hidden, weight, DistillKL(teacher_logp, hidden.shape[0], T), chunk
        )
        if cfg.lm_weight:
            targets = next_token_targets(ids).flatten()
            terms["lm"] = chunked_head_loss(hidden, weight, CrossEntropy(targets), chunk)
        if aux is not None:
            terms["aux"] = aux
        return terms
    with torch.no_grad():
        t = (loss_dtype(teacher(ids).logits) / T).log_softmax(-1)
    out = student(ids, labels=ids if cfg.lm_weight else None)
    s = (loss_dtype(out.logits) / T).log_softmax(-1)
    kl = F.kl_div(s.flatten(0, 1), t.flatten(0, 1), log_target=True, reduction="batchmean")
    terms["kl"] = T * T * kl
    if cfg.lm_weight:
        terms["lm"] = out.loss
    if out.aux_loss is not None:
        terms["aux"] = out.aux_loss
    return terms


def distillation_loss(
    student: nn.Module, teacher: nn.Module, ids: torch.Tensor, cfg: ConvertConfig
) -> torch.Tensor:
    """``kl_weight T^2 KL(p_teacher || p_student)`` per token at temperature T, plus
    ``lm_weight`` times the student's next-token loss and its auxiliary loss, on ``ids``.

    With a student head that avoids the full logits (``head_chunk_tokens``, ``head_impl``),
    neither model's full logits exist: the student's head runs in chunks and the teacher's
    log-probabilities are recomputed per chunk from its final states (``models/head.py``)."""
    return _combine(distillation_terms(student, teacher, ids, cfg), cfg)


def _combine(terms: dict[str, torch.Tensor], cfg: ConvertConfig) -> torch.Tensor:
    loss = cfg.kl_weight * terms["kl"]
    if "lm" in terms:
        loss = loss + cfg.lm_weight * terms["lm"]
    return loss + terms["aux"] if "aux" in terms else loss


@dataclasses.dataclass
class StepInfo:
    """What ``distill`` hands its ``after_step`` hook after every step."""

    state: TrainState
    optimizer: torch.optim.Optimizer
    data: torch.Generator
    """The generator drawing the training windows (its state belongs in a checkpoint)."""
    loss: float
    kl: float


StepHook = Callable[[StepInfo], None]


def backprop_of(cfg: ConvertConfig) -> str:
    """``reversible`` or ``autograd``: ``cfg.backprop``, with auto resolved (module docs)."""
    if cfg.backprop != "auto":
        return cfg.backprop
    return "autograd" if resolve_init(cfg.arch, cfg.init) == "damped" else "reversible"


def distill(
    student: nn.Module,
    teacher: nn.Module,
    train_tokens: torch.Tensor,
    cfg: ConvertConfig,
    *,
    after_step: StepHook | None = None,
    resume: dict[str, Any] | None = None,
) -> tuple[float | None, int]:
    """Fine-tune ``student`` towards ``teacher`` (module docstring); returns (final loss,
    tokens seen). ``resume``: a training checkpoint's body (``training_checkpoint``) to
    continue from; ``after_step`` runs after every step."""
    teacher.eval().requires_grad_(False)
    student.train()
    if cfg.trainable == "blocks":
        student.embed.requires_grad_(False)
        student.head.requires_grad_(False)
    elif cfg.trainable == "adapters":
        for name, p in student.named_parameters():
            p.requires_grad_(is_adapter(name))
    gen = torch.Generator().manual_seed(cfg.seed)
    state, opt_state = TrainState(), None
    if resume is not None:
        state, opt_state = TrainState(**resume["state"]), resume["optimizer"]
        gen.set_state(resume["rng"]["data"])
        torch.set_rng_state(resume["rng"]["torch"])
    kl = [math.nan]

    def step(_: int) -> tuple[torch.Tensor, int]:
        ids = random_windows(train_tokens, cfg.batch_size, cfg.seq_len, gen)
        terms = distillation_terms(student, teacher, ids, cfg)
        kl[0] = float(terms["kl"].detach())
        return _combine(terms, cfg), ids.numel()

    def hook(st: TrainState, opt: torch.optim.Optimizer, loss: float) -> None:
        if after_step is not None:
            after_step(StepInfo(st, opt, gen, loss, kl[0]))

    was = getattr(student, "reversible_backprop", None)
    if was is not None:
        student.reversible_backprop = backprop_of(cfg) == "reversible"
    try:
        return train(
            student.parameters(),
            step,
            cfg.steps,
            cfg.lr,
            state=state,
            optimizer_state=opt_state,
            after_step=hook,
        )
    finally:
        if was is not None:
            student.reversible_backprop = was


def build_student(teacher: nn.Module, cfg: ConvertConfig, source: str) -> nn.Module:
    """``cfg.arch`` with the original's weights, started as ``cfg.init`` asks."""
    settings = retrofit_settings(cfg.arch, cfg.init, cfg.init_a)
    if cfg.revffn_adapters != "five":
        settings["revffn_adapters"] = cfg.revffn_adapters
    student = build_model(dataclasses.replace(teacher.config, arch=cfg.arch, **settings))
    load_weights(student, teacher.state_dict(), source)
    return student


def reconstruction_error(model: nn.Module, windows: torch.Tensor) -> float | None:
    """Largest relative error of a state rebuilt by the inverse, on the first window (None for
    a model without one, e.g. RevFFN's fixed-point mode or a residual model)."""
    if not isinstance(model, ReversibleLM) or type(model) is not ReversibleLM:
        return None
    errors = [e for e in reconstruction_errors(model, windows[:1]) if math.isfinite(e)]
    return max(errors) if errors else math.inf


# --- checkpoints and progress -----------------------------------------------------------------

TRAINING_CHECKPOINT = "convert_training.pt"
"""The training checkpoint in the output folder (removed once the conversion is saved)."""
_RESUME_FREE = {"steps", "checkpoint_every", "eval_steps"}
"""ConvertConfig fields a resumed conversion may change."""


def training_checkpoint(out: str | Path) -> Path:
    return Path(out) / TRAINING_CHECKPOINT


def save_training_state(path: Path, body: dict[str, Any]) -> None:
    """Write ``body`` to ``path`` atomically: a temporary file in the same folder, then
    ``os.replace`` (a crash leaves the previous checkpoint, never half of one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(body, tmp)
    os.replace(tmp, path)


def load_training_state(path: Path, cfg: ConvertConfig, source: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` (None when there is none); ConfigError when it belongs to
    another conversion (other source or settings than ``_RESUME_FREE``)."""
    if not path.is_file():
        return None
    try:
        body = torch.load(path, weights_only=True)
        saved_cfg, saved_source = body["config"], body["source"]
    except Exception as e:  # a damaged file: torch and pickle raise many types
        raise ConfigError(f"{path}: not a readable conversion checkpoint ({e}); delete it") from e
    mine = cfg.model_dump()
    diff = sorted(k for k in mine if k not in _RESUME_FREE and saved_cfg.get(k) != mine[k])
    if saved_source != source or diff:
        what = f"source {saved_source}" if saved_source != source else ", ".join(diff)
        raise ConfigError(
            f"{path} belongs to another conversion ({what} differ); resume with its settings, "
            "or delete it to start again"
        )
    if body["state"]["step"] > cfg.steps:
        raise ConfigError(
            f"{path} is at step {body['state']['step']}, past --steps {cfg.steps}; raise --steps"
        )
    return body


class Progress:
    """Distillation progress on a rich console: a live bar with loss and KL on a terminal, a
    plain line every tenth of the run elsewhere (logs, pipes: no control codes)."""

    def __init__(self, console: Any, total: int, start: int = 0) -> None:
        self.console, self.total, self.t0 = console, total, time.perf_counter()
        self.every = max(1, total // 10)
        self.bar: Any = None
        if console.is_terminal:
            from rich import progress as rp

            self.bar = rp.Progress(
                rp.TextColumn("distil"),
                rp.BarColumn(),
                rp.MofNCompleteColumn(),
                rp.TimeElapsedColumn(),
                rp.TimeRemainingColumn(),
                rp.TextColumn("loss {task.fields[loss]:.4f}  KL {task.fields[kl]:.4f}"),
                console=console,
                transient=False,
            )
            self.task = self.bar.add_task("distil", total=total, completed=start, loss=0.0, kl=0.0)
            self.bar.start()

    def update(self, step: int, loss: float, kl: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, loss=loss, kl=kl)
        elif step % self.every == 0 or step == self.total:
            took = time.perf_counter() - self.t0
            self.console.print(
                f"distil step {step}/{self.total}  loss {loss:.4f}  KL {kl:.4f}  ({took:.0f} s)",
                highlight=False,
                soft_wrap=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def convert(
    source: str | Path,
    config: ConvertConfig | None = None,
    *,
    out: str | Path | None = None,
    teacher: nn.Module | None = None,
    tokenizer: Tokenizer | None = None,
    resume: bool = False,
    progress: Any | None = None,
) -> tuple[nn.Module, ConversionReport]:
    """Build ``config.arch`` from the checkpoint ``source``, distil it towards the original,
    report KL and perplexity before/after, and save it to ``out`` when given (a folder that
    ``from_pretrained`` and suites' ``pretrained:`` read back, tokenizer included).

    ``resume``: continue from the training checkpoint in ``out`` (module docstring; none there:
    start afresh). ``progress``: a rich ``Console`` to show the distillation's progress on."""
    cfg = config or ConvertConfig()
    _check_before_distilling(cfg, out)
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    teacher = teacher if teacher is not None else from_pretrained(source)
    original, target = arch_facts(teacher.config.arch), arch_facts(cfg.arch)
    if not original.teacher:
        teachers = " or ".join(archs_where(lambda a: a.teacher))
        raise ConfigError(
            f"{source}: the original must be a {teachers} model, not {teacher.config.arch}"
        )
    if original.moe_block and not target.moe_block:
        into = ", ".join(archs_where(lambda a: a.moe_block and a.reversible))
        raise ConfigError(
            f"{source} is a mixture-of-experts model: it converts into arch {into}, not {cfg.arch}"
        )
    if cfg.trainable == "adapters" and not target.adapters:
        owners = ", ".join(archs_where(lambda a: a.adapters))
        raise ConfigError(f"trainable: adapters needs arch {owners} (the only one with adapters)")
    if cfg.revffn_adapters != "five" and not target.adapters:
        owners = ", ".join(archs_where(lambda a: a.adapters))
        raise ConfigError(
            f"revffn_adapters: {cfg.revffn_adapters} needs arch {owners} (the only one with "
            "adapters)"
        )
    student = build_student(teacher, cfg, str(source))
    tok = tokenizer or get_tokenizer(cfg.tokenizer, str(source))
    if tok.vocab_size > teacher.config.vocab_size:
        raise ConfigError(
            f"tokenizer has {tok.vocab_size} tokens, the model {teacher.config.vocab_size}"
        )
    tokens = corpus_tokens(cfg.data, cfg.text_column, tok)
    train_tokens, held = split_stream(tokens, cfg.eval_fraction, cfg.seq_len, cfg.data)
    n = min(cfg.eval_windows, len(held) // cfg.seq_len)
    windows = held[: n * cfg.seq_len].view(n, cfg.seq_len)  # (n, T)
    run = _Run(cfg, str(source), out, student, teacher, windows, start, resume)
    try:
        final, seen = distill(
            student, teacher, train_tokens, cfg, after_step=run.hook(progress), resume=run.body
        )
    finally:
        run.close()
    if cfg.steps or run.body is not None:
        kl1, ppl1, _ = evaluate(student, teacher, windows, cfg.batch_size)
        recon1 = reconstruction_error(student, windows)
    else:  # nothing trained: the model evaluated before
        kl1, ppl1, recon1 = run.kl0, run.ppl0, run.recon0
    report = ConversionReport(
        source=str(source),
        arch=cfg.arch,
        steps=cfg.steps,
        tokens_seen=seen,
        train_loss_final=final,
        kl_before_nats=run.kl0,
        kl_after_nats=kl1,
        original_perplexity=run.ppl_t,
        perplexity_before=run.ppl0,
        perplexity_after=ppl1,
        wall_time_s=run.elapsed(),
        init=resolve_init(cfg.arch, cfg.init),
        backprop=backprop_of(cfg),
        reconstruction_before=run.recon0,
        reconstruction_after=recon1,
        evaluations=run.evaluations,
        resumed_at=run.resumed_at,
    )
    student.eval()
    if out is not None:
        save_converted(student, out, report, cfg, tok)
        training_checkpoint(out).unlink(missing_ok=True)
    return student, report


def _check_before_distilling(cfg: ConvertConfig, out: str | Path | None) -> None:
    """Fail in one line before any weight is loaded: an unknown ``arch``, an ``out`` that
    cannot be written (minutes of distillation must not end in a failed save)."""
    from revbench.models import ARCHITECTURES
    from revbench.outdir import check_out_dir

    try:
        ARCHITECTURES.get(cfg.arch)
    except ConfigError as e:
        raise ConfigError(f"--arch: {e}") from None
    if out is not None:
        check_out_dir(out, create=True)


class _Run:
    """One conversion's bookkeeping around ``distill``: the evaluation before fine-tuning (or
    the one a resumed checkpoint holds), evaluations at ``eval_steps``, the periodic training
    checkpoint and the progress display."""

    def __init__(
        self,
        cfg: ConvertConfig,
        source: str,
        out: str | Path | None,
        student: nn.Module,
        teacher: nn.Module,
        windows: torch.Tensor,
        start: float,
        resume: bool,
    ) -> None:
        self.cfg, self.source, self.student, self.teacher = cfg, source, student, teacher
        self.windows, self.start = windows, start
        self.path = training_checkpoint(out) if out is not None else None
        if resume and self.path is None:
            raise ConfigError("resume needs the output folder that holds the checkpoint (--out)")
        self.body = load_training_state(self.path, cfg, source) if resume and self.path else None
        self.evaluations: list[dict[str, float]] = []
        self.resumed_at: int | None = None
        self.bar: Progress | None = None
        self.before_s = 0.0  # wall time of earlier sessions
        if self.body is not None:
            student.load_state_dict(self.body["student"])
            self.kl0, self.ppl0, self.ppl_t, self.recon0 = self.body["before"]
            self.evaluations = list(self.body["evaluations"])
            self.resumed_at = self.body["state"]["step"]
            self.before_s = self.body["elapsed_s"]
            self.start = time.perf_counter()
        else:
            self.kl0, self.ppl0, self.ppl_t = evaluate(student, teacher, windows, cfg.batch_size)
            self.recon0 = reconstruction_error(student, windows)

    def elapsed(self) -> float:
        return self.before_s + time.perf_counter() - self.start

    def hook(self, console: Any | None) -> StepHook:
        """The ``after_step`` of ``distill``: evaluations, checkpoints, progress."""
        if console is not None and self.cfg.steps > (self.resumed_at or 0):
            self.bar = Progress(console, self.cfg.steps, self.resumed_at or 0)

        def after_step(info: StepInfo) -> None:
            step = info.state.step
            if step in self.cfg.eval_steps:
                k, ppl, _ = evaluate(self.student, self.teacher, self.windows, self.cfg.batch_size)
                self.evaluations.append({"step": step, "kl_nats": k, "perplexity": ppl})
            every = self.cfg.checkpoint_every
            if self.path is not None and every and step % every == 0:
                self.checkpoint(info)
            if self.bar is not None:
                self.bar.update(step, info.loss, info.kl)

        return after_step

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def checkpoint(self, info: StepInfo) -> None:
        """Write the training checkpoint (atomically) at ``info``'s step."""
        assert self.path is not None
        body = {
            "format": 1,
            "source": self.source,
            "config": self.cfg.model_dump(),
            "state": dataclasses.asdict(info.state),
            "student": self.student.state_dict(),
            "optimizer": info.optimizer.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "data": info.data.get_state()},
            "before": (self.kl0, self.ppl0, self.ppl_t, self.recon0),
            "evaluations": self.evaluations,
            "elapsed_s": self.elapsed(),
        }
        save_training_state(self.path, body)


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
