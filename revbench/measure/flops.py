"""Analytic FLOPs of a training step, and FLOP utilisation against the GPU's peak dense rate.

Conventions are those of ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add is 2
FLOPs; only matrix products count; attention scores are counted in full, not halved for the
causal mask; the attention backward is 2.5x its forward, as flash attention recomputes the
scores), so the count can be checked against it (tests/test_flops.py).

* model FLOPs: forward + backward, what the maths of the model needs;
* hardware FLOPs: model FLOPs + the forward recomputed during backward by checkpointed and
  reversible models (one extra forward of every block), what the device really executes.

What an architecture costs is read from its registry entry (``models.config.Arch``): whether it
recomputes (``reversible``), seeds with an extra block (``euler_start``), holds experts in its
block (``moe_block``) and adds adapters (``adapters``, ``recompute: revffn``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from revbench.gpus import by_device_name
from revbench.models import ModelConfig, arch_facts

SDPA_BACKWARD_FACTOR = 2.5


@dataclasses.dataclass(frozen=True)
class StepFlops:
    forward: int
    backward: int
    recompute: int

    @property
    def model(self) -> int:
        return self.forward + self.backward

    @property
    def hardware(self) -> int:
        return self.model + self.recompute


def block_forward_flops(cfg: ModelConfig, batch: int, seq: int) -> tuple[int, int, int]:
    """(matmul FLOPs, attention-score FLOPs, MLP down-projection FLOPs) of one block's forward."""
    tokens = batch * seq
    d = cfg.d_model
    kv = cfg.kv_heads * cfg.head_dim  # < d under grouped-query attention
    proj = 2 * tokens * (2 * d * d + 2 * d * kv)  # q and output, k and v projections
    mlp = 2 * tokens * d * cfg.d_ff * (2 if cfg.block == "gpt2" else 3)  # GELU MLP / SwiGLU
    scores = 2 * 2 * batch * seq * seq * d  # Q K^T and P V over all heads
    down = 2 * tokens * cfg.d_ff * d
    return proj + mlp, scores, down


def training_step_flops(cfg: ModelConfig, batch: int, seq: int) -> StepFlops:
    """FLOPs of one training step (forward, backward, recompute) of ``cfg`` at this shape."""
    facts = arch_facts(cfg.arch)
    if facts.moe_block:
        return moe_step_flops(cfg, batch, seq)
    mm, scores, down = block_forward_flops(cfg, batch, seq)
    blocks = cfg.n_layers + (1 if facts.euler_start and cfg.init_state == "euler" else 0)
    head = 2 * batch * seq * cfg.d_model * cfg.vocab_size
    forward = blocks * (mm + scores) + head
    backward = blocks * (2 * mm + int(SDPA_BACKWARD_FACTOR * scores)) + 2 * head
    if facts.reversible:
        recompute = blocks * (mm + scores)
    elif cfg.checkpointing:
        # Non-reentrant checkpointing stops recomputing once every tensor the backward needs is
        # back: the MLP's down projection, whose output nobody saved, is skipped.
        recompute = blocks * (mm + scores - down)
    else:
        recompute = 0
    return StepFlops(forward, backward, recompute)


def ffn_forward_flops(cfg: ModelConfig, tokens: int) -> int:
    """Matmul FLOPs of the FFN at width d_model: dense MLP, or router + top-k experts (+ shared).

    The routed part does not depend on the routing: every token runs exactly ``top_k`` experts,
    and an expert's matmuls scale with its token count (an expert with no tokens costs 0), so
    the total is tokens * top_k * one SwiGLU whatever the per-expert counts are."""
    d = cfg.d_model
    if not cfg.n_experts:
        return 2 * tokens * d * cfg.d_ff * (2 if cfg.block == "gpt2" else 3)
    swiglu = 2 * 3 * d * cfg.d_ff
    flops = tokens * (2 * d * cfg.n_experts + cfg.top_k * swiglu)  # router, routed experts
    if cfg.shared_expert:  # shared expert and its sigmoid gate
        flops += tokens * (2 * 3 * d * (cfg.d_ff_shared or cfg.d_ff) + 2 * d)
    return flops


def moe_step_flops(cfg: ModelConfig, batch: int, seq: int) -> StepFlops:
    """``moe`` (+ checkpointing) and ``revffn`` steps.

    ``moe`` checkpointing recomputes the whole block: the expert outputs are saved by their
    weighting and the load-balancing loss comes last, so nothing is skipped at the end.
    ``revffn`` (``adapters``) adds the adapters (five d x d/2 matmuls per layer, whether the
    matrices are five or a shared pair) and recomputes both branches once; with
    ``revffn_query: x1`` the fixed-point inverse adds ``revffn_fp_iters`` attention branch
    evaluations per layer: all of them, so with ``revffn_fp_tol > 0`` (early stop) this is an
    upper bound.
    """
    tokens, d = batch * seq, cfg.d_model
    attn_mm, scores, _ = block_forward_flops(cfg, batch, seq)
    ffn = ffn_forward_flops(cfg, tokens)
    attn_mm -= 2 * tokens * d * cfg.d_ff * (2 if cfg.block == "gpt2" else 3)  # attention only
    facts = arch_facts(cfg.arch)
    if facts.adapters:
        attn_mm += 3 * 2 * tokens * (d // 2) * d  # U1, U2 and P1
        ffn += 2 * 2 * tokens * (d // 2) * d  # U3 and P2
    mm = attn_mm + ffn
    head = 2 * tokens * d * cfg.vocab_size
    forward = cfg.n_layers * (mm + scores) + head
    backward = cfg.n_layers * (2 * mm + int(SDPA_BACKWARD_FACTOR * scores)) + 2 * head
    recompute = 0
    if facts.reversible:
        fixed_point = (
            cfg.revffn_fp_iters if facts.recompute == "revffn" and cfg.revffn_query == "x1" else 0
        )
        recompute = cfg.n_layers * (mm + scores + fixed_point * (attn_mm + scores))
    elif cfg.checkpointing:
        recompute = cfg.n_layers * (mm + scores)
    return StepFlops(forward, backward, recompute)


def peak_tflops(device_name: str | None, dtype: str) -> float | None:
    """Peak dense TFLOP/s of a GPU for the step's dtype (``revbench.gpus``, the table the
    memory planner uses too); None when the GPU is not in the table."""
    gpu = by_device_name(device_name)
    return None if gpu is None else gpu.peak_tflops(dtype)


def utilisation(
    flops: StepFlops, step_time_s: float, device_type: str, device_name: str, dtype: str
) -> dict[str, Any]:
    peak = peak_tflops(device_name, dtype) if device_type == "cuda" else None
    achieved = flops.model / step_time_s / 1e12
    return {
        "model_flops_per_step": flops.model,
        "hardware_flops_per_step": flops.hardware,
        "model_tflops_per_s": achieved,
        "peak_tflops": peak,
        "mfu": achieved / peak if peak else None,
        "hfu": flops.hardware / step_time_s / 1e12 / peak if peak else None,
    }


def register_cpu_attention_formulas() -> None:
    """Teach FlopCounterMode the CPU flash-attention kernels (torch counts only the CUDA ones),
    with the same formulas it uses for CUDA attention."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is None or bwd is None or fwd in fc.flop_registry:
        return

    @fc.register_flop_formula(fwd)
    def _fwd(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
        return fc.sdpa_flop_count(query, key, value)  # shapes, not tensors

    @fc.register_flop_formula(bwd)
    def _bwd(grad_out: Any, query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
        return fc.sdpa_backward_flop_count(grad_out, query, key, value)
