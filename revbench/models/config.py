"""ModelConfig: every knob of every architecture, validated where it is built.

A pydantic dataclass, so ``ModelConfig(n_layers=0)`` fails in Python exactly as a suite with
``n_layers: 0`` fails in YAML, with the same message. Derived values are filled in
``__post_init__``; impossible combinations raise there, naming the fields involved.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import random
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass

from revbench.errors import ConfigError
from revbench.registry import Registry


@dataclasses.dataclass(frozen=True)
class Arch:
    """An architecture's registry entry: its builder and every fact about it that code outside
    its module needs. Validation (``ModelConfig``), FLOPs (``measure/flops.py``), the memory
    planner, loading and conversion read these instead of testing the architecture's name, so
    a new scheme registered with its facts is validated, counted and tested (the contract tests
    run over the registry) without touching other files."""

    builder: Callable[[ModelConfig], Any] | str
    """``(ModelConfig) -> nn.Module``, or where it lives as ``"module:function"`` (imported on
    the first build, so the registry is read without torch)."""
    reversible: bool = False
    """Rebuilds its hidden states in the backward instead of keeping them (rejects
    checkpointing; its backward recomputes every block's forward once)."""
    readout: str | None = None
    """Reversible: what the LM head reads from the final state by default (``last`` slot,
    ``mean`` of the two slots, ``concat`` of halves; revbench's choice)."""
    recompute: str | None = None
    """Reversible: what one backward step recomputes (the whole ``block``, one of its
    ``branches``, or ``revffn``'s adapted branches and fixed-point iterations)."""
    euler_start: bool = False
    """With ``init_state: euler``, one extra block evaluation seeds the second state."""
    moe_block: bool = False
    """Its blocks' FFN is the mixture-of-experts module (a dense MLP when ``n_experts: 0``)."""
    needs_experts: bool = False
    """Only meaningful with routed experts: ``n_experts`` must be >= 1."""
    adapters: bool = False
    """Adds new parameters (adapters) around a pretrained layer's: conversion may train only
    them (``trainable: adapters``), and a checkpoint without them is a residual model's."""
    split_state: bool = False
    """Splits the hidden state in halves: ``d_model`` must be even."""
    settings: frozenset[str] = frozenset()
    """Its own ``ModelConfig`` settings among those only some architectures have
    (``SCHEME_SETTINGS``); the others must stay at their defaults."""
    teacher: bool = False
    """A pretrained checkpoint of it can be converted (distilled) into a reversible one."""
    exact_with: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Reversible: settings under which its inverse is exact in exact arithmetic (RevFFN's
    default cross-branch queries rebuild X1 by fixed-point iteration; ``revffn_query: x2`` is
    exact); the contract tests check exactness under them."""

    def build(self, cfg: ModelConfig) -> Any:
        """A freshly initialised model of ``cfg``."""
        builder = self.builder
        if isinstance(builder, str):
            module, _, name = builder.partition(":")
            builder = getattr(importlib.import_module(module), name)
        return builder(cfg)


# name -> Arch; the shipped ones are in ``models/catalog.py`` (imported with revbench.models).
ARCHITECTURES: Registry[Arch] = Registry("architecture")

SCHEME_SETTINGS = ("a_layers", "a_draw", "ham_a", "ham_b", "ham_carry", "force", "readout")
"""Settings that belong to some architectures only (``Arch.settings``)."""


def add_arch(
    name: str, description: str, builder: Callable[[ModelConfig], Any] | str, **facts: Any
) -> None:
    """Register ``name``: its builder (or ``"module:function"``) and its facts (``Arch``)."""
    unknown = set(facts.get("settings", ())) - set(SCHEME_SETTINGS)
    if unknown:
        raise ValueError(f"arch '{name}': unknown scheme settings {sorted(unknown)}")
    facts["settings"] = frozenset(facts.get("settings", ()))
    ARCHITECTURES.add(name, Arch(builder, **facts), description)


def register_arch(name: str, description: str, **facts: Any) -> Callable[[Any], Any]:
    """Decorator: register the builder it decorates under ``name`` with its facts."""

    def deco(build: Callable[[ModelConfig], Any]) -> Callable[[ModelConfig], Any]:
        add_arch(name, description, build, **facts)
        return build

    return deco


def arch_facts(arch: str) -> Arch:
    """The registry entry of ``arch`` (raises ConfigError naming the known ones)."""
    return ARCHITECTURES.get(arch)


def archs_where(fact: Callable[[Arch], bool]) -> list[str]:
    """The registered architectures whose entry satisfies ``fact`` (for messages)."""
    return [e.name for e in ARCHITECTURES.entries() if fact(e.obj)]


def archs_with(setting: str) -> list[str]:
    """The registered architectures that have ``setting`` (``Arch.settings``)."""
    return archs_where(lambda a: setting in a.settings)


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def is_reversible(arch: str) -> bool:
    """Whether ``arch`` is registered as reversible."""
    return arch in ARCHITECTURES and ARCHITECTURES.get(arch).reversible


def scheme_readout(arch: str, readout: str = "auto") -> str | None:
    """What the LM head reads from a reversible ``arch``'s final state: the model's ``readout``
    setting, or with ``auto`` its registry entry's ``readout`` fact (``last`` slot, ``mean`` of
    the two slots, ``concat`` of halves; revbench's choice); None for a residual architecture or
    an unknown name."""
    if not is_reversible(arch):
        return None
    return readout if readout != "auto" else ARCHITECTURES.get(arch).readout


PosInt = Annotated[int, Field(ge=1)]


INPLACE_ROWS = 1024
"""Rows (tokens) of the float32 work chunk of ``head_impl: inplace`` on low-precision logits
(``models/head.py::inplace_cross_entropy``; the memory planner books it too)."""


@dataclass(config=ConfigDict(extra="forbid", strict=True))
class ModelConfig:
    """Configuration of one model; field groups below, defaults chosen for CPU-sized tests."""

    # --- which model ---
    arch: str = "baseline"
    """Registry name of the residual scheme (``revbench list`` shows them)."""
    block: Literal["gpt2", "llama"] = "gpt2"
    """gpt2: LayerNorm, GELU MLP, learned positions. llama: RMSNorm, SwiGLU MLP, rotary."""

    # --- shape ---
    vocab_size: Annotated[int, Field(ge=2)] = 256
    d_model: PosInt = 64
    n_layers: PosInt = 4
    n_heads: PosInt = 4
    d_ff: Annotated[int, Field(ge=0)] = 0
    """MLP hidden width; 0 means 4 * d_model for gpt2 and the 8/3 * d_model rule (rounded up to
    a multiple of 8) for llama."""
    max_seq_len: PosInt = 128
    tie_embeddings: bool = True
    norm_eps: Annotated[float, Field(gt=0)] = 1e-5
    rope_theta: Annotated[float, Field(gt=0)] = 10000.0

    # --- LM head ---
    head_chunk_tokens: Annotated[int, Field(ge=0)] = 0
    """Compute the training loss's LM head in chunks of this many tokens (``models/head.py``):
    the full (tokens, vocab) logits are never materialised, each chunk's logits are recomputed
    in backward. 0: the full logits (what the papers' models do). The loss is the same."""
    head_impl: Literal["torch", "inplace", "liger"] = "torch"
    """torch: revbench's own head (full or chunked, any device), the full logits' loss through
    ``F.cross_entropy``. inplace: the full logits too, but the cross-entropy's backward writes
    the logits' gradient into the logits' own memory (``models/head.py``): the logits at their
    dtype and a 1024-token chunk in float32 instead of three full (tokens, vocab) float32
    buffers; the model's output then carries no logits (they are overwritten). liger:
    Liger-Kernel's fused linear cross-entropy (CUDA only, ``pip install liger-kernel``; never
    materialises logits)."""

    # --- reversible backward ---
    recompute_chunk_seqs: Annotated[int, Field(ge=0)] = 0
    """Run each step of the reversible backward (recompute, rebuild, VJP) over slices of this
    many sequences of the batch, summing the parameters' gradients over the slices
    (``reversible.sliced_backward_step``): a step then holds one slice's recompute graph
    instead of the whole batch's, beside the whole states and their gradients. 0: the whole
    batch at once. The gradients are the same (float64: equal); it needs a block whose
    sequences do not interact, so it refuses dropout (one mask over the batch), experts (the
    load-balancing loss is over the batch) and RevFFN's tolerance-stopped fixed point."""

    # --- training behaviour ---
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    checkpointing: bool = False
    """Wrap each block of a residual (non-reversible) model in non-reentrant checkpointing.
    Reversible architectures reject it: they already keep no per-layer activations."""

    # --- reversible schemes (Gal et al.) ---
    step_size: Annotated[float, Field(gt=0)] = 1.0
    """h in the midpoint / leapfrog updates; the branches' scale in the Hamiltonian's
    (q = a q + h Attn(N1(p)), p = b p + h MLP(N2(q)))."""
    a: float | None = None
    """Generalised midpoint coefficient, the same in every layer (Gal et al. Eq. 3.6):
    p_{l+1} = a p_{l-1} + (1-a) p_l + h f(p_l). None selects the plain midpoint
    p_{l+1} = p_{l-1} + 2h f(p_l) (Eq. 2.4; the generalised form at a = 1 with h doubled). The
    inverse divides by a, so a must be non-zero; |a| < 1 amplifies reconstruction error by about
    1/|a| per layer."""
    a_layers: list[float] | None = None
    """Generalised midpoint coefficients, one per layer, first layer first: layer l computes
    p_{l+1} = a_l p_{l-1} + (1-a_l) p_l + h f_l(p_l). Each non-zero and finite; excludes a and
    a_draw. arch midpoint only."""
    a_draw: Literal["none", "pm1_uniform", "one_uniform"] = "none"
    """Draw the per-layer midpoint coefficients from a_seed when the model is built; fixed
    afterwards (not trained). pm1_uniform: a_l = s_l + U(-w, w) with a random sign s_l = +-1
    (equal odds) and w = a_width, the distribution public readers of Gal et al. describe for
    their main midpoint results (README: not confirmed from the paper); one_uniform:
    a_l = 1 + U(-w, w). none: no draw (a or a_layers, or plain midpoint). arch midpoint only;
    ``midpoint_coefficients()`` gives the drawn values."""
    a_width: Annotated[float, Field(ge=0, lt=1)] = 0.5
    """Half-width w of a_draw's U(-w, w); below 1, so |a_l| >= 1 - w > 0."""
    a_seed: Annotated[int, Field(ge=0)] = 0
    """Seed of a_draw (its own, not train.seed: the coefficients are part of the model)."""
    init_state: Literal["embedding", "euler"] = "embedding"
    """How two-state schemes get (p_{-1}, p_0), revbench's choice (the paper does not fix it):
    both the embedding, or p_0 = p_{-1} + h f(p_{-1}) (one Euler step with the first block)."""
    ham_a: float = 1.0
    """Hamiltonian coefficient a in q_l = a q_{l-1} + Attn(N1(p_{l-1})); non-zero (the inverse
    divides by it). arch hamiltonian only; a = b = 1 is RevNet's update."""
    ham_b: float = 1.0
    """Hamiltonian coefficient b in p_l = b p_{l-1} + MLP(N2(q_l)); non-zero, as ham_a."""
    ham_carry: bool = False
    """Hamiltonian only: carry the other slot's complement, q_l = a q_{l-1} + (1-a) p_{l-1} +
    h Attn(N1(p_{l-1})), p_l = b p_{l-1} + (1-b) q_l + h MLP(N2(q_l)): the generalised midpoint
    (Gal et al. Eq. 3.6) on the coupling's half-steps (revbench's retrofit, ``convert --init
    damped``); at a = b = 1 the same update as without it."""
    force: Literal["block", "pair", "pair2"] = "block"
    """What each step of midpoint, leapfrog and hamiltonian applies to the state (revbench's
    reading of Gal et al.'s conversion of a residual network, ``revbench.models.retrofit``):
    block: the layer's own block f_l (or its branch); pair: f_l(p) + sign f_{l-1}(p), the
    previous block's update estimated at the current state (p_{l-1} ~ p_l - f_{l-1}(p_l), first
    order; sign + for midpoint and hamiltonian, - for leapfrog; the hamiltonian pairs each
    branch with the half-step before it); pair2: f_l(p) + sign f_{l-1}(p - f_{l-1}(p)), one
    more fixed-point step. pair costs two block evaluations per step, pair2 three."""
    readout: Literal["auto", "last", "mean"] = "auto"
    """What the LM head reads from a two-slot reversible stack's final state: the last slot,
    the mean of both, or auto (the architecture's own: last for midpoint and leapfrog, mean
    for hamiltonian and revnet)."""

    # --- pretrained-model compatibility (issue 6: loading GPT-2, Llama, Qwen2 checkpoints) ---
    n_kv_heads: Annotated[int, Field(ge=0)] = 0
    """Key/value heads (grouped-query attention, Ainslie et al. 2023; SmolLM2-135M: 9 heads,
    3 KV heads). 0 means n_heads (plain multi-head attention); must divide n_heads."""
    attn_bias: Literal["auto", "none", "qkv", "all"] = "auto"
    """Biases of the attention projections. auto: all for gpt2, none for llama; qkv: on the
    q, k, v projections only (Qwen2)."""
    mlp_act: Literal["gelu", "gelu_tanh"] = "gelu"
    """Activation of the gpt2 MLP: exact GELU, or its tanh approximation (GPT-2's gelu_new)."""

    # --- mixture of experts (RevFFN, Liu et al.) ---
    n_experts: Annotated[int, Field(ge=0)] = 0
    """Routed SwiGLU experts of the MoE FFN (Mixtral / Qwen-MoE style); each has width d_ff.
    0: dense FFN. ``moe`` needs >= top_k; ``revffn`` with 0 wraps the dense MLP."""
    top_k: PosInt = 2
    """Experts per token, weighted by their router softmax probabilities."""
    norm_topk_prob: bool = True
    """Renormalise the top_k probabilities to sum to 1 (Mixtral); false keeps the raw softmax
    probabilities (Qwen1.5-MoE-A2.7B, Hugging Face's ``norm_topk_prob``)."""
    shared_expert: bool = False
    """Add an always-on SwiGLU expert with a sigmoid gate (Qwen-MoE)."""
    d_ff_shared: Annotated[int, Field(ge=0)] = 0
    """Width of the shared expert; 0 means d_ff (Qwen1.5-MoE-A2.7B: 5632, experts 1408)."""
    aux_loss_weight: Annotated[float, Field(ge=0)] = 0.01
    """Weight of the load-balancing loss n_experts * sum_e f_e P_e (Switch Transformer;
    averaged over layers), returned as ``ModelOutput.aux_loss``."""
    revffn_query: Literal["x1", "x2"] = "x1"
    """RevFFN attention queries: from X1 (the paper's cross-branch attention; X1 is rebuilt by
    fixed-point iteration) or from X2 like keys and values (an exact additive coupling)."""
    revffn_adapters: Literal["five", "pair"] = "five"
    """RevFFN's adapters per layer. ``five``: U1, U2, U3 lift the query half, the key/value half
    and the FFN's input half to width d, P1, P2 project attention's and the FFN's outputs back
    (each its own d x d/2 matrix). ``pair``: the paper's "pair of lightweight projection
    adapters": one lift U shared by the queries, keys/values and FFN input, one projection P
    shared by both outputs (2 matrices instead of 5; the same matmuls, so the same FLOPs and
    activations)."""
    revffn_fp_iters: PosInt = 8
    """Most fixed-point iterations (attention evaluations) to rebuild X1 (revffn_query: x1)."""
    revffn_fp_tol: Annotated[float, Field(ge=0)] = 0.0
    """Stop the fixed-point iteration once ||X1_k - X1_{k-1}|| / ||X1_k|| <= tol; 0 always
    runs revffn_fp_iters."""

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES and len(ARCHITECTURES):
            ARCHITECTURES.get(self.arch)  # raises with the known names and a hint
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if self.block == "llama" and (self.d_model // self.n_heads) % 2:
            raise ValueError(
                f"block 'llama' needs an even head size for rotary embeddings; "
                f"d_model/n_heads = {self.d_model // self.n_heads}"
            )
        facts = ARCHITECTURES.get(self.arch) if self.arch in ARCHITECTURES else None
        if self.checkpointing and is_reversible(self.arch):
            raise ValueError(
                f"checkpointing applies to residual models; arch '{self.arch}' is reversible and "
                "already keeps no per-layer activations (set checkpointing: false)"
            )
        if self.n_heads % self.kv_heads:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads})"
            )
        self._check_scheme_coefficients()
        if self.recompute_chunk_seqs:
            self._check_recompute_chunks()
        if self.head_impl == "inplace" and self.head_chunk_tokens:
            raise ValueError(
                "head_impl: inplace is the full logits' loss; head_chunk_tokens must be 0 "
                "(or use head_impl: torch with head_chunk_tokens)"
            )
        if self.d_ff == 0:
            if self.block == "gpt2":
                self.d_ff = 4 * self.d_model
            else:
                self.d_ff = -(-(8 * self.d_model // 3) // 8) * 8
        # mixture of experts and RevFFN
        if facts is not None and facts.needs_experts and not self.n_experts:
            raise ValueError(f"arch '{self.arch}' needs n_experts >= 1 (n_experts: 0 is dense)")
        if self.d_ff_shared and not self.shared_expert:
            raise ValueError("d_ff_shared sets the shared expert's width; set shared_expert: true")
        if self.n_experts and self.top_k > self.n_experts:
            raise ValueError(f"top_k ({self.top_k}) must not exceed n_experts ({self.n_experts})")
        if facts is not None and facts.split_state and self.d_model % 2:
            raise ValueError(
                f"{self.arch} splits the hidden state in halves; d_model ({self.d_model}) must "
                "be even"
            )

    def _check_recompute_chunks(self) -> None:
        """``recompute_chunk_seqs`` slices the batch: only where sequences do not interact."""
        why = None
        if not is_reversible(self.arch):
            why = f"arch '{self.arch}' is not reversible (it has no reversible backward)"
        elif self.dropout:
            why = f"dropout ({self.dropout}) draws one mask over the whole batch"
        elif self.n_experts:
            why = "the experts' load-balancing loss and routing are over the whole batch"
        elif self.revffn_fp_tol:
            why = "revffn_fp_tol stops the fixed point on a norm over the whole batch"
        if why:
            raise ValueError(
                f"recompute_chunk_seqs ({self.recompute_chunk_seqs}) slices the reversible "
                f"backward over the batch, but {why}; set recompute_chunk_seqs: 0"
            )

    def _check_scheme_coefficients(self) -> None:
        """The coefficients of the midpoint and Hamiltonian updates: invertible and used."""

        def bad(x: float) -> bool:
            return x == 0 or not math.isfinite(x)

        if self.a is not None and bad(self.a):
            raise ConfigError(
                f"a is {self.a}: it must be non-zero and finite (the midpoint inverse divides by "
                "a); unset it for the plain midpoint"
            )
        per_layer = "a_layers" if self.a_layers is not None else None
        if self.a_draw != "none":
            if per_layer:
                raise ConfigError("a_layers and a_draw both set the per-layer a; set one of them")
            per_layer = "a_draw"
        elif self.a_width != 0.5 or self.a_seed != 0:
            which = "a_width" if self.a_width != 0.5 else "a_seed"
            raise ConfigError(f"{which} parameterises a_draw; set a_draw (pm1_uniform, ...)")
        if per_layer and self.a is not None:
            raise ConfigError(f"a and {per_layer} both set midpoint's a; set one of them")
        if per_layer and not self._has(per_layer):
            raise ConfigError(
                f"{per_layer} sets the generalised midpoint's a per layer; arch is "
                f"'{self.arch}' (use arch: {_listed(archs_with(per_layer))}, or unset "
                f"{per_layer})"
            )
        if self.a_layers is not None:
            if len(self.a_layers) != self.n_layers:
                n = len(self.a_layers)
                raise ConfigError(
                    f"a_layers has {n} entr{'y' if n == 1 else 'ies'} but n_layers is "
                    f"{self.n_layers}; give one coefficient per layer"
                )
            for i, a in enumerate(self.a_layers):
                if bad(a):
                    raise ConfigError(
                        f"a_layers[{i}] is {a}: every coefficient must be non-zero and finite "
                        "(the midpoint inverse divides by it)"
                    )
        self._check_retrofit_settings()
        known = self.arch in ARCHITECTURES
        if self.revffn_adapters != "five" and known and not arch_facts(self.arch).adapters:
            owners = _listed(archs_where(lambda a: a.adapters))
            raise ConfigError(
                f"revffn_adapters: {self.revffn_adapters} chooses the adapters of arch {owners}; "
                f"arch is '{self.arch}' (leave revffn_adapters at five)"
            )
        for name in ("ham_a", "ham_b"):
            value = getattr(self, name)
            if bad(value):
                raise ConfigError(
                    f"{name} is {value}: it must be non-zero and finite (the Hamiltonian "
                    f"inverse divides by it); 1 is the default"
                )
            if value != 1 and not self._has(name):
                owners = _listed(archs_with(name))
                raise ConfigError(
                    f"{name} is a coefficient of arch {owners}; arch is '{self.arch}' "
                    f"(use arch: {owners}, or leave {name} at 1)"
                )

    def _check_retrofit_settings(self) -> None:
        """force, readout and ham_carry: only where the architecture has them."""
        if self.force != "block" and not self._has("force"):
            raise ConfigError(
                f"force: {self.force} pairs the blocks of {_listed(archs_with('force'))}; "
                f"arch is '{self.arch}' (leave force at block)"
            )
        if self.readout != "auto" and not self._has("readout"):
            raise ConfigError(
                f"readout: {self.readout} chooses between a two-slot reversible stack's slots; "
                f"arch '{self.arch}' has no such choice (leave readout at auto)"
            )
        if self.ham_carry and not self._has("ham_carry"):
            owners = _listed(archs_with("ham_carry"))
            raise ConfigError(
                f"ham_carry is a setting of arch {owners}; arch is '{self.arch}' "
                f"(use arch: {owners}, or leave ham_carry false)"
            )

    def _has(self, setting: str) -> bool:
        """Whether this config's arch has ``setting`` (an unknown arch: not judged here)."""
        return self.arch not in ARCHITECTURES or setting in ARCHITECTURES.get(self.arch).settings

    def midpoint_coefficients(self) -> list[float | None]:
        """The generalised midpoint's a of each layer, first layer first (None: the plain
        midpoint p_{l+1} = p_{l-1} + 2h f(p_l)); ``a_draw``'s values are drawn here, the same
        for the same ``a_seed`` on every machine (Python's ``random``)."""
        if self.a_layers is not None:
            return list(self.a_layers)
        if self.a_draw == "none":
            return [self.a] * self.n_layers
        rng = random.Random(self.a_seed)
        out: list[float | None] = []
        for _ in range(self.n_layers):
            sign = 1.0 if self.a_draw == "one_uniform" or rng.random() < 0.5 else -1.0
            out.append(sign + rng.uniform(-self.a_width, self.a_width))
        return out

    def one_layer_settings(self) -> dict[str, Any]:
        """The settings that make a one-layer copy of this model (CPU measurements warm the
        runtime with one, ``measure.step.warm_runtime``; the planner replays it): ``n_layers``
        1 and the per-layer settings cut to the first layer's."""
        out: dict[str, Any] = {"n_layers": 1}
        if self.a_layers is not None:
            out["a_layers"] = list(self.a_layers[:1])
        return out

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads: ``n_kv_heads``, or ``n_heads`` when that is 0."""
        return self.n_kv_heads or self.n_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
