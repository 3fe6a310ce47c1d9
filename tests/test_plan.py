"""The memory planner: each term against what PyTorch really does, and the whole against a run.

* parameters: ``parameter_shapes`` equals ``model.parameters()``;
* saved activations: ``saved.activations`` equals what the saved-tensor hooks count
  (``SavedTensors``, the ``activation_bytes`` column), exactly, for every registered
  architecture, both block styles, float32 / bf16 autocast / float64, and the head variants;
* the step's peak: the replay equals a live-tensor trace of the real step (``LiveBytes``) to
  rounding in float32 (2%) and closely under bf16 autocast;
* the prediction: within 10% of the measured ``peak_mem_delta_bytes`` through the runner;
* the max-batch search from the prediction: exact, in a handful of trials.
"""

from __future__ import annotations

import dataclasses
import gc
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import run_rows, write_suite
from livebytes import LiveBytes

from revbench import results
from revbench.cli import main
from revbench.gpus import by_name
from revbench.measure.batch import Trial, predicted_largest, search_guided
from revbench.measure.memory import SavedTensors
from revbench.models import ARCHITECTURES, ModelConfig, build_model
from revbench.plan import predict_dims
from revbench.plan.dims import cublas_workspace_bytes, dims_of
from revbench.plan.params import parameter_shapes
from revbench.plan.replay import replay_step
from revbench.plan.saved import activations, total

ARCHS = ARCHITECTURES.names()
TINY = {"vocab_size": 61, "d_model": 24, "n_heads": 2, "n_layers": 2, "max_seq_len": 16, "d_ff": 40}


def config(arch: str, **over: Any) -> dict[str, Any]:
    kw = {**TINY, "arch": arch, **over}
    if ARCHITECTURES.get(arch).needs_experts or over.get("shared_expert"):
        kw.setdefault("n_experts", 4)
        kw.setdefault("top_k", 2)
    return kw


VARIANTS = [
    {},
    {"block": "llama"},
    {"tie_embeddings": False, "n_kv_heads": 1},
    {"head_chunk_tokens": 5},
    {"block": "llama", "shared_expert": True, "norm_topk_prob": False},
    {"revffn_adapters": "pair"},
    {"head_impl": "inplace"},
]


def _applies(arch: str, variant: dict[str, Any]) -> bool:
    """The shared expert only where there are experts, the adapter pair only with adapters."""
    facts = ARCHITECTURES.get(arch)
    if variant.get("shared_expert") and arch not in ("moe", "revffn"):
        return False
    return not variant.get("revffn_adapters") or facts.adapters


# every architecture with every variant that applies to it
PAIRS = [(a, v) for a in ARCHS for v in VARIANTS if _applies(a, v)]
PAIR_IDS = [f"{a}-{','.join(v) or 'default'}" for a, v in PAIRS]


@pytest.mark.parametrize(("arch", "over"), PAIRS, ids=PAIR_IDS)
def test_parameter_shapes_are_the_models(arch: str, over: dict[str, Any]) -> None:
    cfg = ModelConfig(**config(arch, **over))
    assert sorted(parameter_shapes(cfg)) == sorted(p.numel() for p in build_model(cfg).parameters())


def _saved_bytes(kw: dict[str, Any], dtype: str, B: int = 2, T: int = 8) -> int:
    torch.manual_seed(0)
    model = build_model(ModelConfig(**kw))
    if dtype == "float64":
        model = model.double()
    ids = torch.randint(kw["vocab_size"], (B, T))
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    with SavedTensors(model.parameters()) as saved, amp:
        out = model(ids, labels=ids)
        loss = out.loss if out.aux_loss is None else out.loss + out.aux_loss
        saved.include_kept(loss)
    return saved.bytes


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
@pytest.mark.parametrize(("arch", "over"), PAIRS, ids=PAIR_IDS)
def test_saved_activations_term_by_term_equal_the_hooks(
    arch: str, dtype: str, over: dict[str, Any]
) -> None:
    kw = config(arch, **over)
    D = dims_of(kw, {"batch_size": 2, "seq_len": 8}, {"dtype": dtype, "device": "cpu"})
    assert total(activations(D)) == _saved_bytes(kw, dtype)


def test_checkpointing_saves_block_inputs_only() -> None:
    for arch in ("baseline", "moe"):
        kw = config(arch, checkpointing=True)
        D = dims_of(kw, {"batch_size": 2, "seq_len": 8}, {"device": "cpu"})
        assert total(activations(D)) == _saved_bytes(kw, "float32")


def _traced_peak(kw: dict[str, Any], B: int, T: int, dtype: str) -> int:
    """Peak of the tensors a real training step (forward, backward, AdamW) creates."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(**kw))
    opt = torch.optim.AdamW(model.parameters())
    ids = torch.randint(kw["vocab_size"], (B, T))
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def step() -> None:
        with amp:
            out = model(ids, labels=ids)
            loss = out.loss if out.aux_loss is None else out.loss + out.aux_loss
        del out
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # the optimizer state exists, as in a measured step
    gc.collect()
    gc.disable()  # no collection of garbage cycles in the middle of the traced step
    try:
        with LiveBytes() as live:
            step()
    finally:
        gc.enable()
    return live.peak


REPLAYED = [(a, b) for a in ARCHS for b in ("gpt2", "llama")]
REPLAYED += [("baseline+ckpt", "gpt2"), ("revffn+pair", "llama")]  # +pair: revffn_adapters pair
REPLAYED += [("moe+ckpt", "llama")]  # the recompute's peak holds MoE.forward's gathered tokens
# +inplace: head_impl inplace at a vocabulary where the head's buffers are the peak
REPLAYED += [("baseline+inplace", "gpt2"), ("midpoint+inplace", "gpt2")]
# +sliced: recompute_chunk_seqs 1 (4 sequences: slices of one)
REPLAYED += [(f"{a}+sliced", "gpt2") for a in ("midpoint", "revnet", "revffn")]
REPLAYED += [("leapfrog+sliced", "llama")]


@pytest.mark.parametrize(("arch", "block"), REPLAYED, ids=[f"{a}-{b}" for a, b in REPLAYED])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_replay_follows_a_live_tensor_trace(arch: str, block: str, dtype: str) -> None:
    name, _, variant = arch.partition("+")
    kw = config(
        name,
        block=block,
        checkpointing=variant == "ckpt",
        d_model=32,
        max_seq_len=64,
        vocab_size=4096 if variant == "inplace" else 64,
        **({"revffn_adapters": "pair"} if variant == "pair" else {}),
        **({"head_impl": "inplace"} if variant == "inplace" else {}),
        **({"recompute_chunk_seqs": 1} if variant == "sliced" else {}),
    )
    D = dims_of(kw, {"batch_size": 4, "seq_len": 64}, {"dtype": dtype, "device": "cpu"})
    replayed = replay_step(D, allocator=False).peak - 8 * D.N  # the ids existed before
    traced = _traced_peak(kw, 4, 64, dtype)
    # Measured: within 0.7% for most cases in float32. The real step itself varies between
    # processes by up to one (B, T, C) tensor in some cases (the traced peak of revnet and
    # hamiltonian moved by exactly one slot between runs), and under autocast a few casts and
    # RevFFN's adapters are approximated: the bound is a few percent plus one slot.
    bound = 0.02 if dtype == "float32" else 0.06
    assert abs(replayed - traced) <= bound * traced + D.slot, replayed / traced - 1


SUITE = """
name: planned
defaults:
  model: {vocab_size: 512, d_model: 128, n_heads: 4, max_seq_len: 128, n_layers: 2}
  data: {batch_size: 8, seq_len: 128}
  train: {device: cpu, threads: 1}
measure: {warmup: 1, steps: 1}
matrix:
  arch: [baseline, midpoint, revnet]
cases:
  - {name: ckpt, arch: baseline, checkpointing: true}
  - {name: llama-bf16, arch: midpoint, block: llama, dtype: bfloat16}
  - {name: chunked, arch: midpoint, head_chunk_tokens: 128}
  - {name: inplace-sliced, arch: midpoint, head_impl: inplace, recompute_chunk_seqs: 2}
metrics: [peak_memory]
"""


def test_predictions_are_within_ten_percent_of_measured_peaks(tmp_path: Path) -> None:
    suite = write_suite(tmp_path, SUITE)
    assert main(["run", str(suite), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    df = results.load(tmp_path / "r")
    err = (df["predicted_peak_bytes"] - df["peak_mem_delta_bytes"]) / df["peak_mem_delta_bytes"]
    assert len(err) == 7 and err.notna().all()
    assert (err.abs() < 0.10).all(), dict(zip(df["case"], err.round(3), strict=True))


def test_ddp_buckets_are_there_before_the_step() -> None:
    """DDP's reducer keeps its flat gradient buckets from the wrap on, so the baseline's
    cross-entropy buffers at the start of the backward come on top of them: the planned DDP
    peak is the single-process one plus the buckets, at the same place. (Booked at the first
    gradient instead, after the head's buffers were gone, they left DDP's baseline 4-7% under
    what parallel.yaml measured.)"""
    model = {"vocab_size": 512, "d_model": 64, "n_heads": 4, "max_seq_len": 64, "n_layers": 2}
    data = {"batch_size": 4, "seq_len": 64}
    alone = predict_dims(dims_of(model, data, {"device": "cpu"}))
    D = dims_of(model, data, {"device": "cpu", "parallel": "ddp", "nproc_per_node": 2})
    ddp = predict_dims(D)
    assert ddp.peak_at == alone.peak_at == "backward: log-softmax grad"
    assert ddp.peak_bytes == alone.peak_bytes + D.charge(ddp.grad_bytes)


FSDP_SUITE = """
name: planned_fsdp
defaults:
  model: {vocab_size: 512, d_model: 128, n_heads: 4, max_seq_len: 128, n_layers: 8}
  data: {batch_size: 8, seq_len: 128}
  train: {device: cpu, threads: 1, parallel: fsdp, nproc_per_node: 2}
measure: {warmup: 1, steps: 1, timeout_s: 180}
cases:
  - {name: midpoint, arch: midpoint}
  - {name: ckpt, arch: baseline, checkpointing: true}
metrics: [peak_memory]
"""


@pytest.mark.slow
def test_fsdp_predictions_are_within_ten_percent_of_measured_peaks(tmp_path: Path) -> None:
    """FSDP2 on 2 gloo ranks (the parallel suite's shapes): the planner's per-rank peak, gloo's
    staged collectives included, against the largest rank's measured one (seen: -0.4..+2.2%;
    -16.7% for midpoint while counting saved tensors raised an error at every one)."""
    rows = run_rows(tmp_path, FSDP_SUITE)
    assert [r["status"] for r in rows] == ["ok", "ok"], [r["error"] for r in rows]
    err = {r["case"]: r["predicted_peak_bytes"] / r["peak_mem_delta_bytes"] - 1 for r in rows}
    assert all(abs(e) < 0.10 for e in err.values()), err


def test_predicted_max_batch_is_the_largest_that_fits() -> None:
    D = dims_of(config("midpoint"), {"batch_size": 1, "seq_len": 16}, {"device": "cpu"})

    def peak(b: int) -> int:
        return predict_dims(D.with_batch(b)).peak_bytes

    limit = peak(37) + 1
    best = predicted_largest(peak, limit, start=1, cap=4096)
    assert best >= 37 and peak(best) <= limit < peak(best + 1)


@pytest.mark.parametrize("error", [0.0, 0.03, -0.03, 0.05, -0.05])
def test_guided_search_is_exact_in_few_trials_when_the_prediction_is_close(error: float) -> None:
    rng = random.Random(0)
    for _ in range(20):
        fixed, per = rng.uniform(50, 500), rng.uniform(1, 50)
        limit = rng.uniform(1000, 100000)

        def truth(b: int, fixed: float = fixed, per: float = per) -> float:
            return fixed + per * b

        def try_size(b: int, limit: float = limit) -> Trial:
            return Trial(b, truth(b) <= limit, int(truth(b)), "ok")

        res = search_guided(
            try_size, lambda b: int(truth(b) * (1 + error)), limit, start=1, cap=1 << 20
        )
        want = int((limit - fixed) // per)
        assert res.best == want
        assert len(res.trials) <= 4, [t.size for t in res.trials]


def test_plan_command_prints_every_case_and_refuses_unknown_gpus(
    capsys: pytest.CaptureFixture[str],
) -> None:
    suite = str(Path(__file__).parent.parent / "revbench" / "suites" / "quickstart.yaml")
    assert main(["plan", suite, "--gpu", "H100-80GB,A100-40GB", "--memory", "1GiB"]) == 0
    out = capsys.readouterr().out
    assert "max batch H100-80GB" in out.replace("\n", " ") or "H100-80GB" in out
    assert out.count("n_layers=8") >= 5
    assert main(["plan", suite, "--gpu", "H99"]) == 2
    err = capsys.readouterr().err
    assert "unknown GPU 'H99'" in err and "H100-80GB" in err and len(err.splitlines()) == 1
    assert main(["plan", suite, "--memory", "lots"]) == 2
    assert "--memory" in capsys.readouterr().err


# --- CUDA terms and the measured GPU rows ---------------------------------------------------

REFERENCE = Path(__file__).resolve().parent.parent / "revbench" / "data" / "reference"


def test_cublas_workspace_follows_pytorchs_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert cublas_workspace_bytes((9, 0)) == 32 * 2**20  # measured on the H100: +32 MiB
    assert cublas_workspace_bytes((8, 0)) == 8 * 2**20 + 128 * 2**10  # :4096:2:16:8
    assert cublas_workspace_bytes((9, 0), ":4096:2:16:8") == 8 * 2**20 + 128 * 2**10
    assert cublas_workspace_bytes((8, 0), ":4096:8") == 32 * 2**20
    assert cublas_workspace_bytes((8, 0), "nonsense") == 8 * 2**20 + 128 * 2**10  # torch warns
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    assert cublas_workspace_bytes((9, 0)) == 128 * 2**10


def test_cuda_plans_hold_one_cublas_workspace_per_thread() -> None:
    """The forward's thread and autograd's device thread each have a workspace: after a first
    step both exist before the step, in a first step the second comes with the backward."""
    model = {"vocab_size": 512, "d_model": 64, "n_heads": 4, "max_seq_len": 64, "n_layers": 2}
    data = {"batch_size": 4, "seq_len": 64}
    # the same multiprocessors, another capability: only the workspaces differ
    h100_as_ampere = dataclasses.replace(by_name("H100-80GB"), capability=(8, 0))
    for measure, n in (({"warmup": 1, "steps": 2}, 2), ({"warmup": 0, "steps": 1}, 1)):
        hopper = dims_of(model, data, {"device": "cuda"}, measure, gpu=by_name("H100-80GB"))
        older = dims_of(model, data, {"device": "cuda"}, measure, gpu=h100_as_ampere)
        assert hopper.cublas_workspace - older.cublas_workspace == 24 * 2**20 - 128 * 2**10
        a, b = replay_step(hopper), replay_step(older)
        assert a.marks["backward"] - b.marks["backward"] == n * (24 * 2**20 - 128 * 2**10)
        assert a.peak - b.peak == 2 * (24 * 2**20 - 128 * 2**10)  # the peak is in the backward
    assert dims_of(model, data, {"device": "cpu"}).cublas_workspace == 0


def test_bias_gradient_sums_borrow_the_reduction_buffer_measured_on_the_h200() -> None:
    """On CUDA autograd sums a Linear's bias gradient over its rows with PyTorch's reduction
    kernel, which stages partial sums in a global buffer: traced on an H200 (132
    multiprocessors) at 8,192 rows, 128 MiB for the 2,048 columns of a GELU MLP's fc and 32 MiB
    for the 512 of its proj, the recomputed MLP backward's peak. The planner books it there on
    CUDA, not on CPU and not for Linears without a bias."""
    from revbench.plan.dims import column_sum_buffer_bytes

    MiB = 2**20
    assert column_sum_buffer_bytes(8192, 2048, 4, 132, 2048) == (128 * MiB, 64)
    assert column_sum_buffer_bytes(8192, 512, 4, 132, 2048) == (32 * MiB, 16)
    assert column_sum_buffer_bytes(512, 768, 4, 132, 2048) == (0, 0)  # one block per column
    # fewer multiprocessors, fewer blocks per column: an A100's 108
    assert column_sum_buffer_bytes(8192, 2048, 4, 108, 2048) == (108 * MiB, 64)
    model = {"vocab_size": 512, "d_model": 512, "n_heads": 8, "max_seq_len": 1024}
    data, measure = {"batch_size": 8, "seq_len": 1024}, {"warmup": 1, "steps": 2}
    train = {"device": "cuda", "dtype": "bfloat16"}
    h200 = by_name("H200")
    for arch in ("baseline", "midpoint"):
        m = model | {"arch": arch, "n_layers": 4}
        D = dims_of(m, data, train, measure, gpu=h200)
        tl = replay_step(D)
        assert tl.where == "backward: mlp fc bias grad sum's buffer", tl.where
        assert D.bias_grad_scratch(D.N, D.F) == 128 * MiB + 512
        cpu = dims_of(m, data, train | {"device": "cpu"}, measure)
        assert cpu.bias_grad_scratch(D.N, D.F) == 0 and "bias" not in replay_step(cpu).where
    llama = dims_of(model | {"block": "llama", "n_layers": 4}, data, train, measure, gpu=h200)
    assert not llama.qkv_bias and "bias" not in replay_step(llama).where


def _reference_cases(suite_file: Path, rows: Any) -> list[tuple[Any, float]]:
    from revbench.suite import load_suite

    cases = {c.name: c for c in load_suite(suite_file).cases}
    return [(cases[r.case], r) for r in rows.itertuples()]


@pytest.mark.parametrize(
    ("folder", "card", "n_max_batch"),
    [("nvidia-h100-80gb-hbm3", "H100-80GB", 5), ("nvidia-h200", "H200", 6)],
)
def test_cuda_predictions_are_within_five_percent_of_the_gpu_rows(
    monkeypatch: pytest.MonkeyPatch, folder: str, card: str, n_max_batch: int
) -> None:
    """The GPU validation kit's rows measured on an H100 and an H200
    (revbench/data/reference): every peak within 5% of the planner's (seen on both: -2.9..-0.2%,
    median -2.2%; without the bias gradients' reduction buffers -8.3..-1.0%, without the cuBLAS
    workspaces too -13.7..-5.0%); every max-batch trial's footprint within 5%, and the largest
    batch within 5% (or one)."""
    from revbench.plan import predict, predict_max_batch

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)  # the kit ran without it
    gpu = by_name(card)
    df = results.load(REFERENCE / folder)
    peaks = df[(df["suite"] == "gpu_validation") & (df["status"] == "ok")]
    assert len(peaks) == 14
    suites = REFERENCE.parent.parent / "suites"
    err = {
        c.name: predict(c, gpu=gpu).peak_bytes / r.peak_mem_delta_bytes - 1
        for c, r in _reference_cases(suites / "gpu_validation.yaml", peaks)
    }
    assert all(abs(e) < 0.05 for e in err.values()), err
    mb = df[(df["suite"] == "gpu_validation_max_batch") & (df["status"] == "ok")]
    assert len(mb) == n_max_batch
    kit = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu" / "max_batch_budget.yaml"
    trial_err, found = {}, {}
    for c, r in _reference_cases(kit, mb):
        sec = c.sections()
        D = dims_of(sec["model"], sec["data"], sec["train"], {"warmup": 0, "steps": 1}, gpu=gpu)
        for t in r.search_trial_list:  # every trial that fitted has its measured footprint
            if t["fits"]:
                planned = predict_dims(D.with_batch(t["size"])).peak_bytes
                trial_err[f"{c.name} @ {t['size']}"] = planned / t["peak_bytes"] - 1
        found[c.name] = (predict_max_batch(c, 8 * 2**30, gpu=gpu), int(r.max_batch_size))
    # trials seen: -1.2..+0.7% on both cards (the in-place head's -1.1 and -0.7%). The budget
    # caps what the allocator reserves, which fragmentation makes more than the tensors' bytes,
    # so the largest batch found is a little below the planned one at large batches (150
    # against 153; the in-place head's 60 against 63)
    assert trial_err and all(abs(e) < 0.05 for e in trial_err.values()), trial_err
    assert all(abs(p - f) <= max(1, 0.05 * f) for p, f in found.values()), found


def test_planning_never_imports_torch() -> None:
    """``revbench plan`` answers in milliseconds without torch (and CUDA): a planner module that
    imports a model module would pull it in (head.py's constant once did)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from revbench.plan import predict_dims\n"
        "from revbench.plan.dims import dims_of\n"
        "m = {'vocab_size': 64, 'd_model': 16, 'n_heads': 2, 'n_layers': 2, 'arch': 'midpoint',\n"
        "     'head_impl': 'inplace', 'recompute_chunk_seqs': 1}\n"
        "predict_dims(dims_of(m, {'batch_size': 2, 'seq_len': 8}, {'device': 'cuda'}))\n"
        "assert 'torch' not in sys.modules, 'the planner imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_heap_keeps_its_high_water_mark() -> None:
    """CPU: tensors below malloc's mmap threshold come from the heap, whose touched pages stay
    resident after they are freed; a warm step starts with the heap at its own peak."""
    from revbench.plan.timeline import Timeline

    tl = Timeline(heap=65536)
    small = [tl.new(40_000, "small") for _ in range(5)]  # 200,000 heap bytes
    tl.drop(*small)
    big = tl.new(1_000_000, "big")
    assert tl.live == 1_000_000 and tl.peak == 1_200_000 and tl.where == "forward: big"
    tl.drop(big)
    assert tl.small_peak == 200_000 and tl.resident() == 200_000
    warm = Timeline(heap=65536, heap_floor=200_000)
    warm.new(1_000_000, "big")
    assert warm.peak == 1_200_000
    plain = Timeline()  # no heap (CUDA, or a trace of live tensors): the peak of the sum
    for _ in range(5):
        plain.temp(40_000, "small")
    plain.new(1_000_000, "big")
    assert plain.peak == 1_000_000


def test_the_warm_up_leaves_heap_that_the_step_reuses() -> None:
    """CPU: the measurement's warm-up (one step of a one-layer copy, then freed) leaves its
    small tensors' heap free and resident in the baseline; the step's heap costs only what
    goes beyond it, never less than nothing. CUDA has no such term."""
    from revbench.plan.params import charged
    from revbench.plan.replay import warm_up_heap
    from revbench.plan.timeline import Timeline

    tl = Timeline(heap=65536, heap_free=150_000)
    small = [tl.new(40_000, "small") for _ in range(5)]  # 200,000 heap bytes: 50,000 new
    assert tl.resident() == 50_000  # no mapped tensor; the heap beyond the free 150,000
    big = tl.new(1_000_000, "big")
    tl.drop(*small, big)
    assert tl.peak == 1_050_000 and tl.resident() == 50_000
    roomy = Timeline(heap=65536, heap_free=1_000_000)
    roomy.temp(40_000, "small")
    assert roomy.peak == 0

    kw = {**MOE_SHAPE, "arch": "revffn"}
    D = dims_of(kw, {"batch_size": 8, "seq_len": 256}, {"dtype": "bfloat16", "device": "cpu"})
    one = dataclasses.replace(D, cfg=dataclasses.replace(D.cfg, n_layers=1), warm_optimizer=False)
    free = warm_up_heap(D)
    assert free == replay_step(one, charged(one, "params"), heap_floor=False).small_peak
    assert 0 < free < replay_step(D, heap_floor=False).small_peak  # one layer's casts of eight
    plain = replay_step(D)
    assert plain.heap_free == free
    assert replay_step(dataclasses.replace(D, device="cuda")).heap_free == 0


MOE_SHAPE = {"block": "llama", "vocab_size": 512, "d_model": 128, "n_heads": 4, "d_ff": 128,
             "max_seq_len": 256, "n_layers": 8, "n_experts": 8, "top_k": 2,
             "shared_expert": True}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["moe+ckpt", "revffn"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_moe_replays_follow_a_live_tensor_trace_at_the_moe_suite_shape(
    arch: str, dtype: str
) -> None:
    """moe.yaml's shape, against live tensors. Seen: moe+ckpt exact to 0.04% in both dtypes
    (it was -2.5% in bf16 while the recompute stopped at the shared expert's projection,
    whose output the gate product saves, and made the output gradient's bf16 copy after the
    recompute instead of before it; -7.5% while the replay freed ``MoE.forward``'s gathered
    tokens early); revffn -0.2% (float32) and -0.25% (bf16; it was -1.1% while the replay freed
    the VJP's bf16 copy of the gradient early, +15% while its adapters' bf16 outputs were planned
    as float32)."""
    name, _, variant = arch.partition("+")
    kw = {**MOE_SHAPE, "arch": name, "checkpointing": variant == "ckpt"}
    D = dims_of(kw, {"batch_size": 8, "seq_len": 256}, {"dtype": dtype, "device": "cpu"})
    replayed = replay_step(D, allocator=False).peak - 8 * D.N
    traced = _traced_peak(kw, 8, 256, dtype)
    bound = 0.005 if name == "moe" else 0.02
    assert abs(replayed / traced - 1) < bound, replayed / traced - 1
