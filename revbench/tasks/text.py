"""Tokenizers for the tasks: bytes, a BPE trained offline, or the pretrained model's own.

All three expose ``encode(text) -> list[int]`` and ``vocab_size``; a task never needs more.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from revbench.errors import ConfigError


class Tokenizer(Protocol):
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...


class ByteTokenizer:
    """UTF-8 bytes as token ids 0..255: no training, no files, any text (from-scratch models)."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` or a transformers tokenizer, without special tokens."""

    def __init__(self, tok: Any) -> None:
        self.tok = tok
        size = getattr(tok, "get_vocab_size", None)
        self.vocab_size = int(size() if size else len(tok))

    def encode(self, text: str) -> list[int]:
        if hasattr(self.tok, "get_vocab_size"):  # tokenizers.Tokenizer
            return list(self.tok.encode(text, add_special_tokens=False).ids)
        return list(self.tok(text, add_special_tokens=False)["input_ids"])


def train_bpe(texts: Iterable[str], vocab_size: int, path: str | Path | None = None) -> HFTokenizer:
    """A byte-level BPE trained offline on ``texts`` with the ``tokenizers`` package; saved to
    ``path`` (a JSON file that ``tokenizer: PATH`` in a suite reads back) when given."""
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = RawTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if path is not None:
        tok.save(str(path))
    return HFTokenizer(tok)


def get_tokenizer(spec: str, pretrained: str | None = None) -> Tokenizer:
    """``auto``: the pretrained model's own tokenizer when there is one, else bytes;
    ``byte``; ``pretrained``; or the path of a ``tokenizers`` JSON file (``train_bpe``)."""
    if spec == "auto":
        spec = "pretrained" if pretrained else "byte"
    if spec == "byte":
        return ByteTokenizer()
    if spec == "pretrained":
        if not pretrained:
            raise ConfigError("tokenizer 'pretrained' needs a pretrained model (train.pretrained)")
        from revbench.models.hf import checkpoint_metadata, load_tokenizer, resolve_source

        source = resolve_source(pretrained)
        if (
            source.kind == "revbench"
            and checkpoint_metadata(source.location).get("tokenizer") == "byte"
        ):
            return ByteTokenizer()  # converted with bytes (tiny test models): no files to load
        return HFTokenizer(load_tokenizer(pretrained))
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(
            f"tokenizer '{spec}': not auto, byte, pretrained or an existing tokenizers JSON file"
        )
    from tokenizers import Tokenizer as RawTokenizer

    return HFTokenizer(RawTokenizer.from_file(str(path)))
