"""The schemes' coefficients: per-layer midpoint a (a list, a seeded draw) and the Hamiltonian's
a and b.

Three kinds of check, all in float64:
* the custom Function's gradients equal ordinary autograd's on the same weights;
* the states rebuilt by running each scheme backwards equal the forward's;
* an independent equation check: the model's blocks are swapped for stubs whose branches are
  known simple functions (tanh of a fixed linear map, different in every layer), and the stack's
  output (plain path and the Function) and its gradients are compared with the recurrence
  written out by hand below, not with anything in ``schemes.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from conftest import write_suite
from gradcheck import grad_error, rel
from tinymodels import TINY, make_model, token_batch
from torch import nn

from revbench import caserun, results
from revbench.case import config_hash
from revbench.models import ModelConfig, build_model, reconstruction_errors
from revbench.models.schemes import TwoStep
from revbench.suite import load_suite

# |a| < 1, negative a, |a| > 1; a·b = 1 and a·b != 1, negative coefficients.
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "midpoint-list": ("midpoint", {"n_layers": 4, "a_layers": [0.7, -1.3, 1.4, -0.6]}),
    "midpoint-list-h0.5-llama": (
        "midpoint",
        {"n_layers": 3, "a_layers": [-0.55, 0.8, 1.2], "step_size": 0.5, "block": "llama"},
    ),
    "midpoint-list-euler": (
        "midpoint",
        {"n_layers": 3, "a_layers": [0.6, -1.1, 1.45], "init_state": "euler", "step_size": 0.5},
    ),
    "midpoint-draw-pm1": ("midpoint", {"n_layers": 5, "a_draw": "pm1_uniform", "a_seed": 3}),
    "midpoint-draw-one": (
        "midpoint",
        {"n_layers": 4, "a_draw": "one_uniform", "a_width": 0.45, "a_seed": 1},
    ),
    "midpoint-draw-dropout": (
        "midpoint",
        {"n_layers": 3, "a_draw": "pm1_uniform", "dropout": 0.2},
    ),
    "hamiltonian-ab1": ("hamiltonian", {"n_layers": 3, "ham_a": 2.0, "ham_b": 0.5}),
    "hamiltonian-ab-not1": ("hamiltonian", {"n_layers": 3, "ham_a": 0.8, "ham_b": 1.3}),
    "hamiltonian-negative-llama": (
        "hamiltonian",
        {"n_layers": 4, "ham_a": -1.5, "ham_b": 0.7, "block": "llama"},
    ),
    "hamiltonian-dropout": (
        "hamiltonian",
        {"n_layers": 2, "ham_a": 0.6, "ham_b": 1.7, "dropout": 0.2},
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_float64_grads_equal_plain_autograd(name: str) -> None:
    arch, over = CASES[name]
    loss_err, grad_err = grad_error(make_model(arch, torch.float64, **over), token_batch())
    # Measured on this machine: loss bit-equal, gradients within 3e-15 relative.
    assert loss_err < 1e-13
    assert grad_err < 1e-12, f"max relative gradient error {grad_err:.2e}"


@pytest.mark.parametrize("name", [n for n in CASES if "dropout" not in n])
def test_float64_reconstruction_is_exact(name: str) -> None:
    arch, over = CASES[name]
    errors = reconstruction_errors(make_model(arch, torch.float64, **over), token_batch())
    assert len(errors) == over["n_layers"]
    assert max(errors) < 1e-12, errors


def test_the_draw_is_seeded_per_layer_and_recorded_by_its_settings() -> None:
    cfg = ModelConfig(**TINY, arch="midpoint", n_layers=64, a_draw="pm1_uniform", a_seed=7)
    a = cfg.midpoint_coefficients()
    again = ModelConfig(**TINY, arch="midpoint", n_layers=64, a_draw="pm1_uniform", a_seed=7)
    assert again.midpoint_coefficients() == a  # the same values every time
    other = ModelConfig(**TINY, arch="midpoint", n_layers=64, a_draw="pm1_uniform", a_seed=8)
    assert other.midpoint_coefficients() != a
    values = [x for x in a if x is not None]
    assert len(values) == 64 and all(0.5 <= abs(x) <= 1.5 for x in values)
    assert any(x < 0 for x in values) and any(x > 0 for x in values)  # both signs
    assert any(abs(x) < 1 for x in values) and any(abs(x) > 1 for x in values)
    one = ModelConfig(**TINY, arch="midpoint", n_layers=64, a_draw="one_uniform", a_width=0.25)
    assert all(0.75 <= x <= 1.25 for x in one.midpoint_coefficients())  # type: ignore[operator]
    # the model uses them, layer by layer
    model = build_model(cfg)
    assert [s.a for s, _ in model.steps] == a
    assert ModelConfig(**TINY, arch="midpoint").midpoint_coefficients() == [None] * 4


BAD = [
    ({"a": 0.0}, "a is 0.0: it must be non-zero and finite"),
    ({"a": float("inf")}, "a is inf: it must be non-zero and finite"),
    ({"a_layers": [1.0, 0.5]}, "a_layers has 2 entries but n_layers is 4; give one"),
    ({"a_layers": [1.0, 0.0, 1.0, 1.0]}, r"a_layers\[1\] is 0.0: every coefficient must be"),
    ({"a_layers": [1.0, 1.0, float("nan"), 1.0]}, r"a_layers\[2\] is nan"),
    ({"a_layers": [1.0] * 4, "a_draw": "pm1_uniform"}, "a_layers and a_draw both set"),
    ({"a": 0.5, "a_layers": [1.0] * 4}, "a and a_layers both set midpoint's a"),
    ({"a_width": 0.3}, "a_width parameterises a_draw; set a_draw"),
    ({"a_seed": 2}, "a_seed parameterises a_draw"),
    ({"arch": "leapfrog", "a_draw": "pm1_uniform"}, "arch is 'leapfrog' \\(use arch: midpoint"),
    ({"ham_a": 2.0}, "ham_a is a coefficient of arch hamiltonian; arch is 'midpoint'"),
    ({"arch": "hamiltonian", "ham_b": 0.0}, "ham_b is 0.0: it must be non-zero and finite"),
    ({"arch": "revnet", "ham_b": 2.0}, "arch is 'revnet' \\(use arch: hamiltonian"),
]


@pytest.mark.parametrize(("over", "message"), BAD, ids=[m[:30] for _, m in BAD])
def test_bad_coefficients_are_one_line_errors(over: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        ModelConfig(**{**TINY, "arch": "midpoint", **over})
    (err,) = info.value.errors()  # type: ignore[attr-defined]
    assert "\n" not in err["msg"]


def test_a_draw_width_below_one_keeps_a_nonzero() -> None:
    with pytest.raises(ValueError, match="a_width"):
        ModelConfig(**TINY, arch="midpoint", a_draw="pm1_uniform", a_width=1.0)


# --- the equation check ---------------------------------------------------------------------


class Stub(nn.Module):
    """A block whose branches are tanh of fixed linear maps (its own in every layer)."""

    def __init__(self, d: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        for name in ("wf", "wa", "wm"):
            w = torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5
            setattr(self, name, nn.Parameter(w))

    def f(self, p: torch.Tensor) -> torch.Tensor:
        return torch.tanh(p @ self.wf)

    def attn_branch(self, p: torch.Tensor) -> torch.Tensor:
        return torch.tanh(p @ self.wa)

    def mlp_branch(self, q: torch.Tensor) -> torch.Tensor:
        return torch.tanh(q @ self.wm)


def stubbed(arch: str, **over: Any) -> tuple[nn.Module, list[Stub]]:
    model = make_model(arch, torch.float64, **over)
    stubs = [Stub(TINY["d_model"], 100 + i) for i in range(len(model.blocks))]
    swap = {id(b): s for b, s in zip(model.blocks, stubs, strict=True)}
    model.steps = [(scheme, swap[id(b)]) for scheme, b in model.steps]
    model.blocks = nn.ModuleList(stubs)
    return model, stubs


def by_hand(arch: str, cfg: ModelConfig, stubs: list[Stub], x: torch.Tensor) -> list[torch.Tensor]:
    """The final pair of states, from the paper's recurrences written out here."""
    h, L = cfg.step_size, cfg.n_layers
    if arch == "hamiltonian":  # q_l = a q_{l-1} + h A_l(p_{l-1}); p_l = b p_{l-1} + h M_l(q_l)
        a, b = cfg.ham_a, cfg.ham_b
        carry = 1.0 if cfg.ham_carry else 0.0  # plus (1 - a) p_{l-1} and (1 - b) q_l
        q, p = x, x
        for s in stubs:
            q = a * q + h * s.attn_branch(p) + carry * (1 - a) * p
            p = b * p + h * s.mlp_branch(q) + carry * (1 - b) * q
        return [q, p]
    prev, cur = x, x  # p_{-1} = p_0 = x ...
    if cfg.init_state == "euler":  # ... or p_0 = p_{-1} + h f_0(p_{-1}) with layer 0's block
        cur = x + h * stubs[0].f(x)
    coefs = cfg.midpoint_coefficients()
    for i in range(L):
        f = stubs[i].f(cur)
        if arch == "leapfrog":  # p_{l+1} = 2 p_l - p_{l-1} + h^2 f(p_l)
            nxt = 2 * cur - prev + h * h * f
        elif coefs[i] is None:  # p_{l+1} = p_{l-1} + 2h f(p_l)
            nxt = prev + 2 * h * f
        else:  # p_{l+1} = a_l p_{l-1} + (1 - a_l) p_l + h f(p_l)
            a = coefs[i]
            nxt = a * prev + (1 - a) * cur + h * f
        prev, cur = cur, nxt
    return [prev, cur]


EQUATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "midpoint-plain": ("midpoint", {"n_layers": 4, "step_size": 0.7}),
    "midpoint-a": ("midpoint", {"n_layers": 4, "a": -0.8, "step_size": 0.7}),
    "midpoint-list": ("midpoint", {"n_layers": 4, "a_layers": [0.7, -1.3, 1.4, -0.6]}),
    "midpoint-list-euler": (
        "midpoint",
        {"n_layers": 3, "a_layers": [0.6, -1.1, 1.45], "init_state": "euler", "step_size": 0.3},
    ),
    "midpoint-draw": ("midpoint", {"n_layers": 5, "a_draw": "pm1_uniform", "step_size": 0.6}),
    "leapfrog": ("leapfrog", {"n_layers": 4, "step_size": 0.6}),
    "leapfrog-euler": ("leapfrog", {"n_layers": 3, "step_size": 0.6, "init_state": "euler"}),
    "hamiltonian-default": ("hamiltonian", {"n_layers": 3}),
    "hamiltonian-ab": ("hamiltonian", {"n_layers": 3, "ham_a": 0.8, "ham_b": 1.3}),
    "hamiltonian-ab1-negative": ("hamiltonian", {"n_layers": 3, "ham_a": -2.0, "ham_b": -0.5}),
}


@pytest.mark.parametrize("name", EQUATIONS)
def test_forward_and_gradients_follow_the_recurrence_written_by_hand(name: str) -> None:
    arch, over = EQUATIONS[name]
    model, stubs = stubbed(arch, **over)
    cfg = model.config
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 6, TINY["d_model"], dtype=torch.float64, generator=g)
    want = by_hand(arch, cfg, stubs, x)
    with torch.no_grad():  # the plain path
        got = model.run_stack(x)
    for w, o in zip(want, got, strict=True):
        torch.testing.assert_close(o, w, rtol=1e-13, atol=1e-13)
    # the Function (forward without grad, backward rebuilding the states by the inverse)
    weights = [torch.randn(x.shape, dtype=torch.float64, generator=g) for _ in range(2)]
    model.reversible_backprop = True
    leaf = x.clone().requires_grad_()
    got = model.run_stack(leaf)
    for w, o in zip(want, got, strict=True):
        torch.testing.assert_close(o.detach(), w, rtol=1e-13, atol=1e-13)
    assert type(got[1].grad_fn).__name__ == "ReversibleFunctionBackward"
    params = [leaf, *(p for s in stubs for p in s.parameters())]
    loss = sum((w * o).sum() for w, o in zip(weights, got, strict=True))
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    leaf_ref = x.clone().requires_grad_()
    ref_loss = sum(
        (w * o).sum() for w, o in zip(weights, by_hand(arch, cfg, stubs, leaf_ref), strict=True)
    )
    refs = torch.autograd.grad(ref_loss, [leaf_ref, *params[1:]], allow_unused=True)
    used = 0
    for i, (gr, gw) in enumerate(zip(grads, refs, strict=True)):
        assert (gr is None) == (gw is None), i  # a branch the scheme does not use: no gradient
        if gw is not None:
            used += 1
            assert rel(gr, gw) < 1e-12, (i, rel(gr, gw))
    assert used == 1 + len(stubs) * (1 if arch != "hamiltonian" else 2)


@dataclass(frozen=True)
class Recurrence(TwoStep):
    """``TwoStep``'s general recurrence p_{l+1} = a p_{l-1} + c p_l + s f(p_l), at coefficients
    no shipped scheme has (midpoint and leapfrog take only some of its branches)."""

    a: float
    c: float
    s: float

    @property
    def coefficients(self) -> tuple[float, float, float]:
        return self.a, self.c, self.s


@pytest.mark.parametrize(
    ("a", "c", "s"),
    [(2.0, 0.5, 0.3), (-2.0, 0.0, 0.7), (1.0, 0.5, 0.3), (-1.0, 0.0, 1.0), (0.5, 0.0, 1.0)],
)
def test_the_general_two_step_recurrence(a: float, c: float, s: float) -> None:
    """Forward (plain path and the Function), every inverse step, and the gradients of the input
    and of every block against the recurrence written out here."""
    model, stubs = stubbed("midpoint", n_layers=3)
    model.steps = [(Recurrence(a, c, s), block) for _, block in model.steps]
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 5, TINY["d_model"], dtype=torch.float64, generator=g)

    def by_hand(x: torch.Tensor) -> list[torch.Tensor]:
        prev, cur = x, x
        for stub in stubs:
            prev, cur = cur, a * prev + c * cur + s * stub.f(cur)
        return [prev, cur]

    want = by_hand(x)
    with torch.no_grad():
        states = [(x, x)]
        for scheme, block in model.steps:
            states.append(scheme.forward_step(states[-1], block))
        for i, (scheme, block) in enumerate(model.steps):
            for r, t in zip(scheme.inverse_step(states[i + 1], block), states[i], strict=True):
                torch.testing.assert_close(r, t, rtol=1e-12, atol=1e-12)
        for w, o in zip(want, model.run_stack(x), strict=True):
            torch.testing.assert_close(o, w, rtol=1e-13, atol=1e-13)
    weights = [torch.randn(x.shape, dtype=torch.float64, generator=g) for _ in range(2)]
    leaf = x.clone().requires_grad_()
    got = model.run_stack(leaf)
    assert type(got[1].grad_fn).__name__ == "ReversibleFunctionBackward"
    params = [leaf, *(p for stub in stubs for p in stub.parameters())]
    loss = sum((w * o).sum() for w, o in zip(weights, got, strict=True))
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    ref_leaf = x.clone().requires_grad_()
    ref = by_hand(ref_leaf)
    ref_loss = sum((w * o).sum() for w, o in zip(weights, ref, strict=True))
    refs = torch.autograd.grad(ref_loss, [ref_leaf, *params[1:]], allow_unused=True)
    for i, (gr, gw) in enumerate(zip(grads, refs, strict=True)):
        assert (gr is None) == (gw is None), i  # wa, wm: the two-step schemes evaluate f only
        if gw is not None:
            assert rel(gr, gw) < 1e-12, (i, rel(gr, gw))


class PassThrough(nn.Module):
    """A block whose branches hand their input back. Autograd's VJP of such a branch is the
    incoming gradient itself, not a new tensor: a backward step that scaled or added to it in
    place would change a gradient it still needs (``schemes.scaled``'s ``keep``)."""

    def f(self, p: torch.Tensor) -> torch.Tensor:
        return p

    attn_branch = mlp_branch = f


PASS_THROUGH: dict[str, tuple[str, dict[str, Any]]] = {
    "midpoint-2h-not-1": ("midpoint", {"n_layers": 3, "step_size": 0.7}),
    "midpoint-a": ("midpoint", {"n_layers": 3, "a_layers": [0.7, -1.3, 1.4], "step_size": 0.6}),
    "leapfrog": ("leapfrog", {"n_layers": 3, "step_size": 0.6}),
    "hamiltonian-h1": ("hamiltonian", {"n_layers": 2, "ham_a": 0.8, "ham_b": 1.3}),
    "hamiltonian-h-carry": (
        "hamiltonian",
        {"n_layers": 2, "ham_a": 0.8, "ham_b": 1.3, "step_size": 0.6, "ham_carry": True},
    ),
    "hamiltonian-h1-carry": (
        "hamiltonian",
        {"n_layers": 2, "ham_a": 0.8, "ham_b": 1.3, "ham_carry": True},
    ),
}


# With s = 1 (2h = 1, h = 1 with a set, h^2 = 1) scaled(jg, 1) is jg, which for a branch that
# passes its gradient through is g_{l+1} itself: both slots would hold one tensor and the next
# step would write it in place (relative error 0.6 before TwoStep.backward_step copied it).
PASS_THROUGH_S1: dict[str, tuple[str, dict[str, Any]]] = {
    "midpoint-2h-1": ("midpoint", {"n_layers": 3, "step_size": 0.5}),
    "midpoint-a-h1": ("midpoint", {"n_layers": 3, "a_layers": [0.7, -1.3, 1.4]}),
    "leapfrog-h1": ("leapfrog", {"n_layers": 3}),
}


@pytest.mark.parametrize("slot", [0, 1])
@pytest.mark.parametrize(
    "name",
    [*PASS_THROUGH, *PASS_THROUGH_S1],
)
def test_a_branch_that_passes_its_gradient_through_is_not_changed_in_place(
    name: str, slot: int
) -> None:
    """The Function's input gradient against the recurrence by hand, with branches that return
    their input and a loss on one slot of the final state (the other slot's gradient is None:
    the steps take their ``g is None`` paths)."""
    arch, over = {**PASS_THROUGH, **PASS_THROUGH_S1}[name]
    model = make_model(arch, torch.float64, **over)
    passes = [PassThrough() for _ in model.blocks]
    swap = {id(b): s for b, s in zip(model.blocks, passes, strict=True)}
    model.steps = [(scheme, swap[id(b)]) for scheme, b in model.steps]
    model.blocks = nn.ModuleList(passes)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 5, TINY["d_model"], dtype=torch.float64, generator=g)
    w = torch.randn(x.shape, dtype=torch.float64, generator=g)
    leaf = x.clone().requires_grad_()
    out = model.run_stack(leaf)
    assert type(out[slot].grad_fn).__name__ == "ReversibleFunctionBackward"
    (got,) = torch.autograd.grad((w * out[slot]).sum(), leaf)
    ref_leaf = x.clone().requires_grad_()
    ref = by_hand(arch, model.config, passes, ref_leaf)  # type: ignore[arg-type]
    (want,) = torch.autograd.grad((w * ref[slot]).sum(), ref_leaf)
    assert rel(got, want) < 1e-12, rel(got, want)


# --- the result row --------------------------------------------------------------------------

SUITE = """
name: coefs
defaults:
  model: {vocab_size: 32, d_model: 16, n_heads: 2, max_seq_len: 16, n_layers: 3}
  data: {batch_size: 2, seq_len: 16}
matrix:
  arch: [midpoint]
cases:
  - {name: list, arch: midpoint, a_layers: [0.5, -1.2, 1]}
  - {name: draw, arch: midpoint, a_draw: pm1_uniform, a_seed: 4}
  - {name: ham, arch: hamiltonian, ham_a: 2.0, ham_b: 0.5}
  - {name: base, arch: baseline}
metrics: [throughput]
"""


def test_rows_carry_the_coefficients_and_the_readout(tmp_path: Path) -> None:
    cases = {c.name: c for c in load_suite(write_suite(tmp_path, SUITE)).cases}
    rows = {
        n: caserun._row(
            c,
            0,
            run_id="r",
            host={},
            status="ok",
            error=None,
            columns={},
            wall_time_s=0.0,
        )
        for n, c in cases.items()
    }
    for n, row in rows.items():
        results.write_row(row, tmp_path / "out" / f"{n}.parquet")
    df = results.load(tmp_path / "out").set_index("case")
    assert list(df.loc["list", "model.a_layers"]) == [0.5, -1.2, 1.0]
    assert df.loc["draw", "model.a_draw"] == "pm1_uniform" and df.loc["draw", "model.a_seed"] == 4
    assert (df.loc["ham", "model.ham_a"], df.loc["ham", "model.ham_b"]) == (2.0, 0.5)
    readout = {k: None if pd.isna(v) else v for k, v in df["readout"].items()}
    assert readout == {
        "arch=midpoint": "last",
        "list": "last",
        "draw": "last",
        "ham": "mean",
        "base": None,
    }
    # settings left at their defaults keep the hashes that cases had before they existed
    plain = cases["arch=midpoint"]
    new = {"a_layers", "a_draw", "a_width", "a_seed", "ham_a", "ham_b"}
    sections = plain.sections()
    sections["model"] = {k: v for k, v in sections["model"].items() if k not in new}
    assert config_hash(sections, plain.metrics) == plain.config_hash
    assert len({c.config_hash for c in cases.values()}) == len(cases)


def test_bad_coefficients_in_a_suite_name_the_case(tmp_path: Path) -> None:
    path = write_suite(tmp_path, SUITE.replace("a_layers: [0.5, -1.2, 1]", "a_layers: [0.5, 0, 1]"))
    with pytest.raises(Exception, match=r"cases\[0\] \('list'\): model: a_layers\[1\] is 0.0"):
        load_suite(path)


# --- memory ----------------------------------------------------------------------------------

COEFFICIENT_MEMORY = [
    ("midpoint", {"a_layers": [0.6, -1.3]}),
    ("midpoint", {"a_draw": "pm1_uniform"}),
    ("hamiltonian", {"ham_a": 2.0, "ham_b": 0.7}),
]


@pytest.mark.parametrize(
    ("arch", "over"), COEFFICIENT_MEMORY, ids=[f"{a}{o}" for a, o in COEFFICIENT_MEMORY]
)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_coefficients_do_not_change_the_planned_or_traced_peak(
    arch: str, over: dict[str, Any], dtype: str
) -> None:
    """The planner ignores the coefficients; a real step's traced peak agrees (within the one
    (B, T, C) slot by which a step's peak moves between runs, ``tests/test_plan.py``)."""
    from test_plan import _traced_peak, config

    from revbench.plan.dims import dims_of
    from revbench.plan.replay import replay_step

    kw = config(arch, d_model=32, max_seq_len=64, vocab_size=64)
    shape, train = {"batch_size": 4, "seq_len": 64}, {"dtype": dtype, "device": "cpu"}
    D = dims_of(kw, shape, train)
    assert replay_step(dims_of({**kw, **over}, shape, train)).peak == replay_step(D).peak
    plain, with_coefficients = (
        _traced_peak(kw, 4, 64, dtype),
        _traced_peak({**kw, **over}, 4, 64, dtype),
    )
    assert abs(with_coefficients - plain) <= D.slot, (with_coefficients - plain) / D.slot


PER_LAYER_MEMORY = """
name: per_layer_memory
defaults:
  model: {vocab_size: 64, d_model: 32, n_heads: 2, max_seq_len: 32, n_layers: 2}
  data: {batch_size: 2, seq_len: 32}
  train: {device: cpu, threads: 1}
measure: {warmup: 0, steps: 1, budget: 64MiB, max_size: 4, trial_steps: 1}
cases:
  - {name: list, arch: midpoint, a_layers: [0.6, -1.3]}
metrics: [peak_memory, max_batch_size]
"""


def test_cpu_memory_measures_a_model_with_per_layer_coefficients(tmp_path: Path) -> None:
    """CPU memory processes warm the runtime with a one-layer copy of the case; with
    ``a_layers`` that copy keeps the first layer's coefficient (it failed validation with
    every coefficient and one layer), and the planner's replay of it likewise."""
    from conftest import run_rows

    cfg = ModelConfig(arch="midpoint", n_layers=3, a_layers=[0.6, -1.3, 1.2])
    assert cfg.one_layer_settings() == {"n_layers": 1, "a_layers": [0.6]}
    assert ModelConfig(arch="midpoint", n_layers=3).one_layer_settings() == {"n_layers": 1}
    (row,) = run_rows(tmp_path, PER_LAYER_MEMORY)
    assert row["status"] == "ok", row["error"]
    assert row["peak_mem_delta_bytes"] > 0 and row["predicted_peak_bytes"] > 0
    assert row["max_batch_size"] >= 1


def test_a_validation_error_leaves_its_message_in_the_row_not_pydantics_help_url() -> None:
    from revbench.errors import failure_line

    with pytest.raises(Exception) as info:
        ModelConfig(arch="midpoint", n_layers=1, a_layers=[0.6, -1.3])
    line = failure_line(info.value)
    assert line == (
        "ValidationError: a_layers has 2 entries but n_layers is 1; give one coefficient per layer"
    )
    assert failure_line(RuntimeError("first\nsecond")) == "second"
    assert failure_line(ValueError()) == "ValueError"
