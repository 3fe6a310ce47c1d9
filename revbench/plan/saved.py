"""Tensors autograd saves for backward, op by op: what ``activation_bytes`` measures.

Each function lists the new storages one part of the model saves in a training forward (a
tensor saved by two ops, or a view of a saved tensor, counts once, as ``SavedTensors``
de-duplicates storages; parameters are not activations). The rules, from PyTorch's autograd
formulas for the ops the models run:

* a norm saves its input and its statistics (``st`` bytes per token each: LayerNorm mean and
  rstd; RMSNorm rstd and the normalised input, which its weight's gradient needs);
* ``Linear`` saves its input; under autocast it saves the bf16/fp16 *cast* of its input (a new
  tensor, made per call) and of its weight (once per forward and weight: autocast caches the
  casts of leaf tensors), and not the float32 input;
* attention (the fused kernel on CPU and CUDA) saves q, k and v, its output and a float32
  log-sum-exp per head and query; q, k, v that are views of the fused qkv product keep that
  whole product alive; with rotary embeddings q and k are new tensors, and the cos/sin tables
  of each call are saved by the rotation;
* an elementwise activation saves its input (GELU, SiLU), a product saves both factors, the
  next Linear saves the activation's output;
* cross-entropy saves its log-softmax (``st`` bytes per token per vocabulary entry) and the
  targets; an embedding saves its indices.
"""

from __future__ import annotations

import dataclasses

from revbench.plan.dims import INT64, Dims


@dataclasses.dataclass(frozen=True)
class Term:
    name: str
    bytes: int


def total(terms: list[Term]) -> int:
    return sum(t.bytes for t in terms)


def norm(D: Dims, where: str, *, counts_input: bool = True) -> list[Term]:
    """LayerNorm (gpt2) or RMSNorm (llama) of a (N, d) stream tensor; ``counts_input`` False
    when the input is already counted (the same storage saved elsewhere)."""
    out = [Term(f"{where} input", D.slot)] if counts_input else []
    if D.llama:
        out += [Term(f"{where} rstd", D.st * D.N), Term(f"{where} normalised", D.slot)]
    else:
        out += [Term(f"{where} mean, rstd", 2 * D.st * D.N)]
    return out


def linear(
    D: Dims, where: str, n_in: int, n_out: int, *, input_new: bool, rows: int = 0
) -> list[Term]:
    """A Linear on ``rows`` (default N) rows of width ``n_in``. Without autocast it saves its
    input, counted here when ``input_new`` (no other op saved that storage); under autocast
    the input's cast (always new) and the weight's cast."""
    rows = rows or D.N
    if D.autocast:
        return [
            Term(f"{where} input (cast)", 2 * rows * n_in),
            Term(f"{where} weight (cast)", 2 * n_in * n_out),
        ]
    return [Term(f"{where} input", D.s * rows * n_in)] if input_new else []


def attention(D: Dims, where: str = "attention") -> list[Term]:
    """Norm, qkv projection, rotary, fused attention, output projection of one block."""
    d, kv, N = D.d, D.kv, D.N
    out = norm(D, f"{where} norm")
    out += linear(D, f"{where} qkv", d, d + 2 * kv, input_new=True)
    out += [Term(f"{where} qkv product", D.a * N * (d + 2 * kv))]  # v (and q, k) views of it
    if D.llama:
        half = D.cfg.head_dim // 2
        angle = 8 if D.st == 8 else 4
        out += [Term(f"{where} rotary cos/sin", 4 * D.T * half * angle)]
        out += [Term(f"{where} rotated q, k", D.a * N * (d + kv))]
    out += [Term(f"{where} output", D.a * N * d)]
    out += [Term(f"{where} log-sum-exp", D.st * D.B * D.H * D.T)]
    if D.attention_output_copied:
        out += [Term(f"{where} output (contiguous)", D.a * N * d)]
    out += linear(D, f"{where} proj", d, d, input_new=False)[1:] if D.autocast else []
    return out


def mlp(
    D: Dims,
    where: str = "mlp",
    *,
    rows: int = 0,
    width: int = 0,
    input_new: bool = True,
    weights: bool = True,
    swiglu: bool | None = None,
) -> list[Term]:
    """GELU MLP (gpt2) or SwiGLU (llama, and every expert) on ``rows`` tokens of the normalised
    stream; its input counted when ``input_new``; the weights' casts when ``weights``."""
    rows, F, d = rows or D.N, width or D.F, D.d
    a = D.a
    if D.llama if swiglu is None else swiglu:  # gate and up save (casts of) the input
        out = _lin(D, f"{where} gate", d, F, rows, input_new, weights)
        out += (
            _lin(D, f"{where} up", d, F, rows, False, weights)
            if not D.autocast
            else _lin(D, f"{where} up", d, F, rows, True, weights)
        )
        out += [
            Term(f"{where} gate product", a * rows * F),
            Term(f"{where} silu", a * rows * F),
            Term(f"{where} up product", a * rows * F),
            Term(f"{where} gated", a * rows * F),
        ]
        out += _lin(D, f"{where} proj", F, d, rows, False, weights)[1:] if D.autocast else []
        return out
    out = _lin(D, f"{where} fc", d, F, rows, input_new, weights)
    out += [Term(f"{where} fc product", a * rows * F), Term(f"{where} gelu", a * rows * F)]
    out += _lin(D, f"{where} proj", F, d, rows, False, weights)[1:] if D.autocast else []
    return out


def _lin(
    D: Dims, where: str, n_in: int, n_out: int, rows: int, input_new: bool, weights: bool
) -> list[Term]:
    terms = linear(D, where, n_in, n_out, input_new=input_new, rows=rows)
    if D.autocast and not weights:
        terms = [t for t in terms if "weight" not in t.name]
    return terms


def block(D: Dims, *, counts_input: bool = True) -> list[Term]:
    """One residual block p + A + MLP(N2(p + A)) (baseline), or its MoE version."""
    out = attention(D)
    if not counts_input:
        out = [t for t in out if t.name != "attention norm input"]
    out += norm(D, "mlp norm")  # its input: p + A, a new tensor
    out += moe(D) if D.moe else mlp(D)
    return out


def moe(D: Dims) -> list[Term]:
    """Router, top-k, dispatch, the experts on their tokens (every token runs top_k of them:
    the sum over experts does not depend on the routing), combine, shared expert, aux loss."""
    c = D.cfg
    N, d, E, k = D.N, D.d, c.n_experts, c.top_k
    rp = D.st  # router probabilities in float32 at least
    out = linear(D, "router", d, E, input_new=True)
    out += [Term("router probabilities", rp * N * E), Term("top-k indices", INT64 * N * k)]
    if c.norm_topk_prob:  # weights / sum: both saved; the quotient saved by the combine
        out += [
            Term("top-k weights", rp * N * k),
            Term("top-k sum", rp * N),
            Term("normalised weights", (2 if D.autocast else rp) * N * k),
        ]
    else:
        out += [Term("top-k weights", (2 if D.autocast else rp) * N * k)]
    out += [Term("dispatch index", INT64 * N * k)]
    if not D.autocast:  # the experts' Linears save views of the gathered tokens
        out += [Term("gathered tokens", D.s * N * k * d)]
    out += mlp(D, "experts", rows=N * k, input_new=False, weights=False, swiglu=True)
    if D.autocast:
        out += [Term("experts weights (cast)", E * 2 * 3 * d * c.d_ff)]
    out += [Term("combine index", INT64 * N * k), Term("expert outputs", D.a * N * k * d)]
    if c.shared_expert:
        width = c.d_ff_shared or c.d_ff
        out += linear(D, "shared gate", d, 1, input_new=False)
        out += [Term("shared gate sigmoid", D.a * N)]
        out += mlp(D, "shared expert", width=width, input_new=False, swiglu=True)
        out += [Term("shared expert output", D.a * N * d)]
    out += [Term("routed fractions", rp * E)]
    return out


def embedding(D: Dims) -> list[Term]:
    out = [Term("token ids", INT64 * D.N)]
    if not D.llama:
        out += [Term("position ids", INT64 * D.T)]
    return out


def head(D: Dims, *, counts_input: bool = True) -> list[Term]:
    """Final norm, projection and cross-entropy (full), or the chunked head's saved hidden."""
    out = norm(D, "final norm", counts_input=counts_input)
    c = D.cfg
    if c.head_impl == "inplace":  # the loss saves the logits instead of a log-softmax
        out += linear(D, "head", D.d, D.V, input_new=True)
        return [*out, Term("logits", D.a * D.N * D.V)]
    if c.head_chunk_tokens or c.head_impl != "torch":
        return [*out, Term("head hidden", D.slot)]
    out += linear(D, "head", D.d, D.V, input_new=True)
    out += [Term("log-softmax", D.st * D.N * D.V), Term("targets", INT64 * D.N)]
    out += [Term("loss weight", D.st)]
    return out


def trunk(D: Dims) -> list[Term]:
    """What the trunk keeps between forward and backward, the head's input included."""
    c = D.cfg
    if D.reversible:
        return reversible_state(D)
    if c.checkpointing:  # non-reentrant checkpointing keeps each block's input
        return [Term("block inputs", D.L * D.slot), *head(D)]
    return D.L * block(D) + head(D)


def reversible_state(D: Dims) -> list[Term]:
    """The final state the reversible Function keeps, and the head on its readout."""
    if D.readout == "concat":  # RevFFN: halves (and the aux-loss slot), the head reads a cat
        aux = [Term("aux slot", D.s)] if D.moe else []
        return [Term("final state", D.slot), *aux, *head(D)]
    if D.readout == "mean":  # the head reads a new tensor, (p + q) / 2
        return [Term("final state", 2 * D.slot), *head(D)]
    return [Term("final state", 2 * D.slot), *head(D, counts_input=False)]  # reads slot 1


def activations(D: Dims) -> list[Term]:
    """Everything saved for backward in one training step (``activation_bytes``)."""
    return embedding(D) + trunk(D)
