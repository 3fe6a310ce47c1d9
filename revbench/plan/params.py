"""Parameters, their gradients and the optimizer's state, counted from the model config.

``parameter_shapes`` lists the element count of every parameter tensor the model builds
(``models/blocks.py``, ``moe.py``, ``revffn.py``, ``output.py``), in no particular order; a
test checks it against ``model.parameters()`` for every architecture and block style.
"""

from __future__ import annotations

from revbench.models.config import ModelConfig, arch_facts
from revbench.plan.dims import Dims


def _norm(cfg: ModelConfig, width: int) -> list[int]:
    return [width, width] if cfg.block == "gpt2" else [width]  # LayerNorm: weight and bias


def _linear(n_in: int, n_out: int, bias: bool) -> list[int]:
    return [n_in * n_out] + ([n_out] if bias else [])


def _attention(cfg: ModelConfig) -> list[int]:
    d, kv = cfg.d_model, cfg.kv_heads * cfg.head_dim
    bias = cfg.attn_bias if cfg.attn_bias != "auto" else "all" if cfg.block == "gpt2" else "none"
    return _linear(d, d + 2 * kv, bias in ("qkv", "all")) + _linear(d, d, bias == "all")


def _mlp(cfg: ModelConfig, width: int = 0, swiglu: bool | None = None) -> list[int]:
    d, F = cfg.d_model, width or cfg.d_ff
    if cfg.block == "llama" if swiglu is None else swiglu:
        return [d * F, d * F, F * d]  # gate, up, down: no biases
    return _linear(d, F, True) + _linear(F, d, True)


def _ffn(cfg: ModelConfig) -> list[int]:
    if not cfg.n_experts:
        return _mlp(cfg)
    d = cfg.d_model
    out = [d * cfg.n_experts]  # router
    for _ in range(cfg.n_experts):
        out += _mlp(cfg, swiglu=True)
    if cfg.shared_expert:
        out += [*_mlp(cfg, cfg.d_ff_shared or cfg.d_ff, swiglu=True), d]  # and its gate
    return out


def block_shapes(cfg: ModelConfig) -> list[int]:
    """Element count of each parameter tensor of one block."""
    d = cfg.d_model
    block = _norm(cfg, d) + _attention(cfg) + _norm(cfg, d) + _ffn(cfg)
    if arch_facts(cfg.arch).adapters:  # RevFFN's U1, U2, P1, U3, P2 (or the pair U, P)
        block += [d // 2 * d] * (5 if cfg.revffn_adapters == "five" else 2)
    return block


def root_shapes(cfg: ModelConfig) -> list[int]:
    """Element count of each parameter tensor outside the blocks (embeddings, head)."""
    d = cfg.d_model
    out = [cfg.vocab_size * d]  # token embedding (tied to the head unless tie_embeddings off)
    if cfg.block == "gpt2":
        out.append(cfg.max_seq_len * d)  # learned positions
    out += _norm(cfg, d)
    if not cfg.tie_embeddings:
        out.append(cfg.vocab_size * d)
    return out


def parameter_shapes(cfg: ModelConfig) -> list[int]:
    """Element count of each parameter tensor."""
    return root_shapes(cfg) + block_shapes(cfg) * cfg.n_layers


def param_bytes(D: Dims) -> int:
    return D.s * sum(parameter_shapes(D.cfg))


def grad_bytes(D: Dims) -> int:
    """Every parameter trains (a pretrained case's ``distill_trainable`` aside)."""
    return param_bytes(D)


def optimizer_bytes(D: Dims) -> int:
    """AdamW: exp_avg and exp_avg_sq per parameter, and a float32 step count per tensor;
    SGD with momentum: one buffer per parameter."""
    shapes = parameter_shapes(D.cfg)
    if D.optimizer == "adamw":
        return 2 * D.s * sum(shapes) + 4 * len(shapes)
    return D.s * sum(shapes)


def charged(D: Dims, kind: str) -> int:
    """``param_bytes`` (``kind`` "params") or ``optimizer_bytes`` ("optimizer") as the
    allocator charges them, tensor by tensor (``Dims.charge``); under FSDP2 each rank's
    shards (dim 0 split in ``world_size`` chunks)."""
    shapes = parameter_shapes(D.cfg)
    W = D.world_size if D.parallel == "fsdp" else 1
    one = sum(D.charge(D.s * -(-n // W)) for n in shapes)
    if kind == "params":
        return one
    if D.optimizer == "adamw":
        return 2 * one + len(shapes) * D.charge(4)
    return one


def optimizer_step_transient(D: Dims) -> int:
    """What the optimizer step allocates on top of parameters, gradients and state.

    AdamW on CPU runs its per-tensor loop (``foreach`` is for CUDA): ``exp_avg_sq.sqrt()`` and
    the division by the bias correction are two tensors the size of the largest parameter.
    On CUDA the ``foreach`` implementation takes the square roots of every state at once: one
    copy of all the trainable parameters. SGD with momentum updates in place."""
    if D.optimizer != "adamw":
        return 0
    shapes = parameter_shapes(D.cfg)
    if D.device == "cuda":
        return D.s * sum(shapes)
    return 2 * D.s * max(shapes)
