"""Conversion by distillation on a tiny Llama-family checkpoint: KL falls, the result reloads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import require, require_module

transformers = require_module("transformers")
require("safetensors")

from revbench.cli import main  # noqa: E402
from revbench.convert import ConvertConfig, convert  # noqa: E402
from revbench.errors import ConfigError, SuiteError  # noqa: E402
from revbench.models.hf import checkpoint_metadata, from_pretrained  # noqa: E402
from revbench.suite import load_suite  # noqa: E402
from revbench.tasks.metric import measure_accuracy  # noqa: E402
from revbench.tasks.text import ByteTokenizer, get_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Byte vocabulary so the shipped corpus needs no tokenizer; large init so the original's
    next-token distribution is far from uniform and the schemes' rewiring shows in the KL."""
    folder = tmp_path_factory.mktemp("tiny_llama")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        initializer_range=0.2,
    )
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


FAST = {"steps": 40, "lr": 3e-3, "seq_len": 32, "batch_size": 8, "eval_windows": 16}
"""Distillation's mechanics: the naive start (far from the original), so there is KL to lose."""
NAIVE = {**FAST, "init": "naive"}


@pytest.mark.parametrize("arch", ["midpoint", "leapfrog", "hamiltonian"])
def test_distillation_reduces_kl(arch: str, tiny_llama: Path, tmp_path: Path) -> None:
    model, report = convert(
        tiny_llama, ConvertConfig(arch=arch, **NAIVE), tokenizer=ByteTokenizer(), out=tmp_path
    )
    assert report.kl_before_nats > 0.01
    assert report.kl_after_nats < 0.5 * report.kl_before_nats, report
    assert report.tokens_seen == 40 * 8 * 32
    again = from_pretrained(tmp_path)
    assert again.config.arch == arch
    ids = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)
    meta = checkpoint_metadata(tmp_path)
    assert meta["conversion"]["kl_after_nats"] == report.kl_after_nats
    assert meta["tokenizer"] == "byte"
    assert isinstance(get_tokenizer("auto", str(tmp_path)), ByteTokenizer)


def test_cli_convert(tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["convert", str(tiny_llama), "--out", str(tmp_path / "c"), "--steps", "2"]
    args += ["--seq-len", "16", "--tokenizer", "byte"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| midpoint, after 2 steps |" in out and "original (unconverted)" in out
    assert (tmp_path / "c" / "model.safetensors").is_file()
    assert main(["convert", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("revbench: error: ") and "missing: no such checkpoint" in err
    assert main(["convert", str(tiny_llama), "--out", str(tmp_path), "--steps", "-1"]) == 2
    assert "--steps: Input should be greater than or equal to 0" in capsys.readouterr().err


def test_suite_pretrained_case_converts_then_runs_the_task(
    tiny_llama: Path, tmp_path: Path
) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: conv\n"
        "defaults:\n"
        "  model: {arch: midpoint, max_seq_len: 32}\n"
        "  data: {task: lm, batch_size: 4, seq_len: 32, eval_examples: 8, tokenizer: byte}\n"
        f"  train: {{pretrained: {tiny_llama}, distill_steps: 5, train_steps: 2, lr: 1.0e-3}}\n"
        "metrics: [accuracy]\n"
    )
    case = load_suite(path).cases[0]
    assert case.model.d_model == 32 and case.model.n_kv_heads == 2
    assert case.model.max_seq_len == 32
    row = measure_accuracy(case)
    assert row["conversion_steps"] == 5 and row["kl_after_nats"] < row["kl_before_nats"]
    assert row["perplexity"] > 1 and row["original_perplexity"] > 1


@pytest.fixture(scope="module")
def tiny_qwen_moe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen1.5-MoE-A2.7B's architecture in miniature (the RevFFN paper's model), byte vocab."""
    folder = tmp_path_factory.mktemp("tiny_qwen_moe")
    torch.manual_seed(0)
    cfg = transformers.Qwen2MoeConfig(
        vocab_size=256,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=64,
        max_position_embeddings=64,
        initializer_range=0.2,
    )
    transformers.Qwen2MoeForCausalLM(cfg).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(("adapters", "per_layer"), [("five", 5), ("pair", 2)])
def test_moe_original_into_revffn_training_only_the_adapters(
    tiny_qwen_moe: Path, tmp_path: Path, adapters: str, per_layer: int
) -> None:
    """RevFFN's first stage: the pretrained attention, norms and MoE stay as they were, the
    adapters (five per layer, or the paper's shared pair) learn to match the original; the KL
    falls, and the saved model comes back with the same adapters."""
    cfg = ConvertConfig(arch="revffn", trainable="adapters", revffn_adapters=adapters, **FAST)
    model, report = convert(tiny_qwen_moe, cfg, tokenizer=ByteTokenizer(), out=tmp_path)
    assert report.kl_after_nats < 0.7 * report.kl_before_nats, report
    original = {
        re.sub(r"\.moe\.", ".ffn.", k): v
        for k, v in from_pretrained(tiny_qwen_moe).state_dict().items()
    }
    trained = 0
    for name, t in model.state_dict().items():
        if name in original:
            assert torch.equal(t, original[name]), name
        else:
            trained += 1
    assert trained == per_layer * model.config.n_layers  # U1 U2 P1 U3 P2, or U and P
    back = from_pretrained(tmp_path)
    assert back.config.arch == "revffn" and back.config.revffn_adapters == adapters
    for name, t in back.state_dict().items():
        assert torch.equal(t, model.state_dict()[name]), name


def test_conversion_pairs_that_do_not_exist_are_refused(
    tiny_qwen_moe: Path, tiny_llama: Path
) -> None:
    tok = ByteTokenizer()
    with pytest.raises(ConfigError, match="mixture-of-experts model: it converts into arch revffn"):
        convert(tiny_qwen_moe, ConvertConfig(arch="midpoint", steps=0), tokenizer=tok)
    with pytest.raises(ConfigError, match="trainable: adapters needs arch revffn"):
        convert(tiny_llama, ConvertConfig(trainable="adapters", steps=0), tokenizer=tok)
    with pytest.raises(ConfigError, match="revffn_adapters: pair needs arch revffn"):
        convert(tiny_llama, ConvertConfig(revffn_adapters="pair", steps=0), tokenizer=tok)


def test_suite_on_an_moe_checkpoint_keeps_the_reference_and_distils_revffn_adapters(
    tiny_qwen_moe: Path, tmp_path: Path
) -> None:
    """RevFFN's recipe as a suite: the checkpoint's own ``moe`` is the unconverted reference
    (never distilled, even with distill_steps in the defaults); ``revffn`` first trains its
    adapters towards it (distill_trainable: adapters), then the task fine-tunes everything."""
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: revffn_recipe\n"
        "defaults:\n"
        "  data: {task: lm, batch_size: 4, seq_len: 32, eval_examples: 8, tokenizer: byte}\n"
        f"  train: {{pretrained: {tiny_qwen_moe}, distill_steps: 4, distill_trainable: adapters,"
        " train_steps: 2, lr: 1.0e-3}\n"
        "cases:\n"
        "  - {name: original, arch: moe}\n"
        "  - {name: revffn, arch: revffn}\n"
        "metrics: [accuracy]\n"
    )
    original, rev = load_suite(path).cases
    assert original.model.norm_topk_prob is False and original.model.d_ff_shared == 64
    ref = measure_accuracy(original)
    assert ref["conversion_steps"] == 0 and ref["perplexity"] > 1
    row = measure_accuracy(rev)
    assert row["conversion_steps"] == 4 and row["kl_after_nats"] < row["kl_before_nats"]
    bad = path.read_text().replace("arch: revffn}", "arch: midpoint}")
    path.write_text(bad)
    with pytest.raises(SuiteError, match="distill_trainable is adapters but arch is midpoint"):
        load_suite(path)


@pytest.mark.parametrize("lm_weight", [0.0, 0.5])
def test_distillation_with_a_chunked_head_equals_the_full_head(lm_weight: float) -> None:
    """The student's head in chunks (and the teacher's log-probabilities per chunk) gives the
    distillation loss and gradients of the full logits (float64)."""
    import dataclasses

    from revbench.convert import distillation_loss
    from revbench.models import ModelConfig, build_model

    torch.manual_seed(0)
    teacher = build_model(ModelConfig(vocab_size=40, d_model=16, n_heads=2, n_layers=2)).double()
    cfg = ConvertConfig(arch="midpoint", lm_weight=lm_weight, temperature=2.0)
    ids = torch.randint(0, 40, (3, 9), generator=torch.Generator().manual_seed(1))
    results = []
    for chunk in (0, 5):
        torch.manual_seed(1)
        mcfg = ModelConfig(vocab_size=40, d_model=16, n_heads=2, n_layers=2, arch="midpoint")
        student = build_model(dataclasses.replace(mcfg, head_chunk_tokens=chunk)).double()
        loss = distillation_loss(student, teacher, ids, cfg)
        loss.backward()
        results.append((float(loss.detach()), {n: p.grad for n, p in student.named_parameters()}))
    (full, gf), (chunked, gc) = results
    assert abs(chunked - full) <= 1e-12 * abs(full)
    for n in gf:
        torch.testing.assert_close(gc[n], gf[n], rtol=1e-10, atol=1e-14, msg=n)
