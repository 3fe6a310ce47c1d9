"""Hugging Face model families: each maps its config onto ``ModelConfig`` and its weights onto
revbench parameter names (shared by every architecture of the zoo). Used by ``hf.py``.

Llama-layout q/k projections are permuted from Hugging Face's rotate-half layout to revbench's
interleaved rotary pairs (``_interleave``); GPT-2's Conv1D weights are transposed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from revbench.errors import RevbenchError
from revbench.models.config import ModelConfig


class CheckpointError(RevbenchError):
    """A checkpoint that is missing, corrupt or of an unsupported family."""


def _reject(hf: Any, family: str, **unsupported: Any) -> None:
    for key, ok in unsupported.items():
        value = getattr(hf, key, None)
        if value not in ok:
            raise CheckpointError(
                f"{family} checkpoint has {key}={value!r}; revbench supports {sorted(ok, key=str)}"
            )


def _rope_theta(hf: Any) -> float:
    params = getattr(hf, "rope_parameters", None) or getattr(hf, "rope_scaling", None) or {}
    if params.get("rope_type", "default") != "default":
        raise CheckpointError(f"rope_type {params['rope_type']!r} is not supported (only default)")
    return float(params.get("rope_theta") or getattr(hf, "rope_theta", None) or 10000.0)


def _gpt2_config(hf: Any) -> dict[str, Any]:
    _reject(
        hf,
        "gpt2",
        activation_function={"gelu_new", "gelu", "gelu_pytorch_tanh"},
        scale_attn_by_inverse_layer_idx={False, None},
        reorder_and_upcast_attn={False, None},
    )
    return {
        "block": "gpt2",
        "vocab_size": hf.vocab_size,
        "d_model": hf.n_embd,
        "n_layers": hf.n_layer,
        "n_heads": hf.n_head,
        "d_ff": hf.n_inner or 4 * hf.n_embd,
        "max_seq_len": hf.n_positions,
        "tie_embeddings": bool(getattr(hf, "tie_word_embeddings", True)),
        "norm_eps": float(hf.layer_norm_epsilon),
        "mlp_act": "gelu" if hf.activation_function == "gelu" else "gelu_tanh",
    }


def _llama_config(hf: Any) -> dict[str, Any]:
    family = hf.model_type
    _reject(hf, family, hidden_act={"silu"}, mlp_bias={False, None})
    if family in ("qwen2", "qwen2_moe"):
        _reject(hf, family, use_sliding_window={False, None})
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    if head_dim * hf.num_attention_heads != hf.hidden_size:
        raise CheckpointError(
            f"{family} checkpoint has head_dim {head_dim} != hidden_size / num_attention_heads; "
            "revbench needs d_model = n_heads * head_dim"
        )
    if family in ("qwen2", "qwen2_moe"):  # Qwen2-MoE can turn its q, k, v biases off
        bias = "qkv" if getattr(hf, "qkv_bias", True) else "none"
    else:
        bias = "all" if getattr(hf, "attention_bias", False) else "none"
    return {
        "block": "llama",
        "vocab_size": hf.vocab_size,
        "d_model": hf.hidden_size,
        "n_layers": hf.num_hidden_layers,
        "n_heads": hf.num_attention_heads,
        "n_kv_heads": hf.num_key_value_heads or hf.num_attention_heads,
        "d_ff": hf.intermediate_size,
        "max_seq_len": hf.max_position_embeddings,
        "tie_embeddings": bool(getattr(hf, "tie_word_embeddings", False)),
        "norm_eps": float(hf.rms_norm_eps),
        "rope_theta": _rope_theta(hf),
        "attn_bias": bias,
    }


def _gpt2_weights(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """GPT-2 keeps its linears as Conv1D, weight (in, out): transpose to nn.Linear's (out, in)."""
    p = "transformer."
    out = {
        "embed.tok.weight": sd[p + "wte.weight"],
        "embed.pos.weight": sd[p + "wpe.weight"],
        "head.norm.weight": sd[p + "ln_f.weight"],
        "head.norm.bias": sd[p + "ln_f.bias"],
        "head.proj.weight": sd.get("lm_head.weight", sd[p + "wte.weight"]),
    }
    pairs = {"ln_1": "n1", "ln_2": "n2"}
    linears = {"attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj"}
    linears |= {"mlp.c_fc": "mlp.fc", "mlp.c_proj": "mlp.proj"}
    for i in range(cfg.n_layers):
        hf, rb = f"{p}h.{i}.", f"blocks.{i}."
        for a, b in pairs.items():
            out[f"{rb}{b}.weight"] = sd[f"{hf}{a}.weight"]
            out[f"{rb}{b}.bias"] = sd[f"{hf}{a}.bias"]
        for a, b in linears.items():
            out[f"{rb}{b}.weight"] = sd[f"{hf}{a}.weight"].t()
            out[f"{rb}{b}.bias"] = sd[f"{hf}{a}.bias"]
    return out


def _interleave(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of a q or k projection from HF's rotate-half layout (channel i pairs with i + hs/2)
    to revbench's interleaved pairs (2i with 2i+1): the inverse of the permutation in HF's
    convert_llama_weights_to_hf.py. Scores are unchanged since q and k move together."""
    rows = t.shape[0]
    hs = rows // n_heads
    return t.reshape(n_heads, 2, hs // 2, *t.shape[1:]).transpose(1, 2).reshape(t.shape)


def _llama_common(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Embedding, head, norms and attention of the Llama layout (Llama, Qwen2, Mixtral)."""
    p = "model."
    out = {
        "embed.tok.weight": sd[p + "embed_tokens.weight"],
        "head.norm.weight": sd[p + "norm.weight"],
        "head.proj.weight": sd.get("lm_head.weight", sd[p + "embed_tokens.weight"]),
    }
    for i in range(cfg.n_layers):
        hf, rb = f"{p}layers.{i}.", f"blocks.{i}."
        out[rb + "n1.weight"] = sd[hf + "input_layernorm.weight"]
        out[rb + "n2.weight"] = sd[hf + "post_attention_layernorm.weight"]
        for kind in ("weight", "bias"):
            key = f"{hf}self_attn.q_proj.{kind}"
            if key not in sd:
                continue
            q = _interleave(sd[key], cfg.n_heads)
            k = _interleave(sd[f"{hf}self_attn.k_proj.{kind}"], cfg.kv_heads)
            out[f"{rb}attn.qkv.{kind}"] = torch.cat([q, k, sd[f"{hf}self_attn.v_proj.{kind}"]])
        out[rb + "attn.proj.weight"] = sd[hf + "self_attn.o_proj.weight"]
        if hf + "self_attn.o_proj.bias" in sd:
            out[rb + "attn.proj.bias"] = sd[hf + "self_attn.o_proj.bias"]
    return out


def _llama_weights(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    out = _llama_common(sd, cfg)
    for i in range(cfg.n_layers):
        hf, rb = f"model.layers.{i}.mlp.", f"blocks.{i}.mlp."
        for a, b in (("gate_proj", "gate"), ("up_proj", "up"), ("down_proj", "proj")):
            out[f"{rb}{b}.weight"] = sd[f"{hf}{a}.weight"]
    return out


def _mixtral_config(hf: Any) -> dict[str, Any]:
    """Mixtral: Llama attention, top-k softmax router renormalised over the chosen experts,
    SwiGLU experts, no shared expert: exactly revbench's ``moe`` block."""
    _reject(hf, "mixtral", router_jitter_noise={0, None}, sliding_window={None})
    return {
        **_llama_config(hf),
        "n_experts": hf.num_local_experts,
        "top_k": hf.num_experts_per_tok,
        "aux_loss_weight": float(getattr(hf, "router_aux_loss_coef", 0.01)),
    }


def _expert_weights(
    sd: dict[str, torch.Tensor], hf: str, e: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(gate, up, down) of expert ``e`` in the layer whose MoE keys start with ``hf``.

    transformers >= 5 fuses the experts: gate_up_proj (E, 2 d_ff, C) with the gate rows first,
    down_proj (E, C, d_ff). transformers 4 keeps one module per expert: Qwen2-MoE's
    gate_proj/up_proj/down_proj, Mixtral's w1 (gate), w3 (up), w2 (down) under
    ``block_sparse_moe``."""
    if hf + "experts.gate_up_proj" in sd:
        gate, up = sd[hf + "experts.gate_up_proj"][e].chunk(2, dim=0)
        return gate, up, sd[hf + "experts.down_proj"][e]
    x = f"{hf}experts.{e}."
    if x + "w1.weight" in sd:
        return sd[x + "w1.weight"], sd[x + "w3.weight"], sd[x + "w2.weight"]
    return sd[x + "gate_proj.weight"], sd[x + "up_proj.weight"], sd[x + "down_proj.weight"]


def _moe_weights(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Mixtral and Qwen2-MoE (either transformers layout, ``_expert_weights``); Qwen2-MoE adds
    shared_expert (an MLP) and shared_expert_gate."""
    out = _llama_common(sd, cfg)
    for i in range(cfg.n_layers):
        hf, rb = f"model.layers.{i}.mlp.", f"blocks.{i}.moe."
        if hf + "gate.weight" not in sd:  # Mixtral under transformers 4
            hf = f"model.layers.{i}.block_sparse_moe."
        out[rb + "router.weight"] = sd[hf + "gate.weight"]
        for e in range(cfg.n_experts):
            gate, up, down = _expert_weights(sd, hf, e)
            out[f"{rb}experts.{e}.gate.weight"] = gate
            out[f"{rb}experts.{e}.up.weight"] = up
            out[f"{rb}experts.{e}.proj.weight"] = down
        if cfg.shared_expert:
            for a, b in (("gate_proj", "gate"), ("up_proj", "up"), ("down_proj", "proj")):
                out[f"{rb}shared.{b}.weight"] = sd[f"{hf}shared_expert.{a}.weight"]
            out[rb + "shared_gate.weight"] = sd[hf + "shared_expert_gate.weight"]
    return out


def _qwen2_moe_config(hf: Any) -> dict[str, Any]:
    """Qwen2-MoE (Qwen1.5-MoE-A2.7B, the RevFFN paper's model): Qwen2 attention, top-k softmax
    router (renormalised only with ``norm_topk_prob``), SwiGLU experts of width
    ``moe_intermediate_size`` and a sigmoid-gated shared expert of its own width."""
    _reject(hf, "qwen2_moe", decoder_sparse_step={1})
    if getattr(hf, "mlp_only_layers", None):
        raise CheckpointError(
            f"qwen2_moe checkpoint has dense layers (mlp_only_layers={hf.mlp_only_layers}); "
            "revbench supports checkpoints whose every layer is sparse"
        )
    shared = int(getattr(hf, "shared_expert_intermediate_size", 0) or 0)
    return {
        **_llama_config(hf),
        "d_ff": hf.moe_intermediate_size,
        "n_experts": hf.num_experts,
        "top_k": hf.num_experts_per_tok,
        "norm_topk_prob": bool(hf.norm_topk_prob),
        "shared_expert": shared > 0,
        "d_ff_shared": shared,
        "aux_loss_weight": float(getattr(hf, "router_aux_loss_coef", 0.001)),
    }


@dataclasses.dataclass(frozen=True)
class Family:
    config: Callable[[Any], dict[str, Any]]
    weights: Callable[[dict[str, torch.Tensor], ModelConfig], dict[str, torch.Tensor]]
    arch: str = "baseline"
    """The residual architecture whose logits equal the Hugging Face model's."""


FAMILIES: dict[str, Family] = {
    "gpt2": Family(_gpt2_config, _gpt2_weights),
    "llama": Family(_llama_config, _llama_weights),
    "qwen2": Family(_llama_config, _llama_weights),
    "mixtral": Family(_mixtral_config, _moe_weights, arch="moe"),
    "qwen2_moe": Family(_qwen2_moe_config, _moe_weights, arch="moe"),
}


def family_of(hf_config: Any) -> Family:
    kind = getattr(hf_config, "model_type", None)
    if kind not in FAMILIES:
        raise CheckpointError(
            f"model_type '{kind}' is not supported; supported families: {', '.join(FAMILIES)}"
        )
    return FAMILIES[kind]
