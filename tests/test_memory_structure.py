"""Memory structure: reversible models keep O(1) activations in depth, the baseline O(L).

Two views (docs/measurement.md): bytes autograd saves for backward (``SavedTensors``, exact and
allocator-free), and the process high-water mark of a fresh child with large allocations forced
onto mmap, so freed tensors leave the resident set.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import pytest
import torch
from tinymodels import make_model, saved_bytes, token_batch

from revbench.measure.memory import SavedTensors

SHAPE = {"vocab_size": 64, "d_model": 32, "n_heads": 2, "max_seq_len": 64}


@functools.cache  # the same model's bytes serve several tests
def saved(n_layers: int, arch: str, **overrides: object) -> int:
    model = make_model(arch, shape=SHAPE, n_layers=n_layers, **overrides)
    return saved_bytes(model, token_batch(64, 4, 64, seed=0))


@pytest.fixture(scope="module")
def baseline_growth() -> int:
    return saved(32, arch="baseline") - saved(4, arch="baseline")


# Measured (batch 4 x seq 64, d_model 32, fp32), bytes at 4 -> 32 layers: baseline
# 2,258,404 -> 17,110,500; checkpointed baseline 267,748 -> 1,185,252; midpoint and leapfrog
# 169,444 both; hamiltonian and revnet 202,212 both (the two final states plus head and loss).
@pytest.mark.parametrize("arch", ["midpoint", "leapfrog", "hamiltonian", "revnet"])
def test_reversible_saved_bytes_flat_in_depth(arch: str, baseline_growth: int) -> None:
    growth = saved(32, arch=arch) - saved(4, arch=arch)
    assert baseline_growth > 10 * saved(4, arch=arch)  # activations dominate the setup
    assert abs(growth) < 0.1 * baseline_growth


def test_baseline_saved_bytes_linear_and_checkpointing_between(baseline_growth: int) -> None:
    b4, b8 = saved(4, arch="baseline"), saved(8, arch="baseline")
    assert b8 - b4 == pytest.approx(baseline_growth / 7, rel=0.01)  # same bytes per layer
    ckpt = saved(32, arch="baseline", checkpointing=True) - saved(
        4, arch="baseline", checkpointing=True
    )
    flat = saved(32, arch="midpoint") - saved(4, arch="midpoint")
    assert flat < ckpt < 0.25 * baseline_growth  # block inputs only: one (B, T, C) per layer


def test_saved_tensors_counts_custom_functions_dedups_and_excludes() -> None:
    class Keep(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):  # type: ignore[override]
            ctx.save_for_backward(x, x[1:])  # a view: same storage, counted once
            return x.clone()

        @staticmethod
        def backward(ctx, g):  # type: ignore[override]
            return g

    w = torch.nn.Parameter(torch.ones(100, dtype=torch.float64))
    x = torch.ones(100, dtype=torch.float64, requires_grad=True)
    with SavedTensors([w]) as saved:
        (Keep.apply(x) * w).sum().backward()  # mul saves w (excluded) and Keep's output
    assert saved.bytes == 100 * 8 + 100 * 8  # x, and the clone that mul saves


class _Wrapper(torch.Tensor):
    """A storage-less wrapper subclass, as FSDP2's sharded DTensor parameters are; asking it
    for a storage is a failure this test sees (a real DTensor raises a C++ error, whose cost
    grew the measured peak of every FSDP2 step)."""

    @staticmethod
    def __new__(cls, inner: torch.Tensor) -> _Wrapper:
        return torch.Tensor._make_wrapper_subclass(cls, inner.shape, dtype=inner.dtype)

    def __init__(self, inner: torch.Tensor) -> None:
        self.inner = inner

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        raise AssertionError(f"{func} dispatched on a storage-less wrapper")

    def untyped_storage(self) -> torch.UntypedStorage:
        raise AssertionError("a storage-less wrapper was asked for its storage")


def test_saved_tensors_looks_parameters_up_without_asking_wrappers_for_storage() -> None:
    """``exclude_now`` parameters that are wrapper subclasses (FSDP2's DTensors outside their
    block) are keyed by identity, never asked for a storage, at every saved tensor."""
    shards = [_Wrapper(torch.zeros(4, 4)) for _ in range(3)]
    w = torch.ones(8, dtype=torch.float64, requires_grad=True)
    x = torch.ones(8, dtype=torch.float64, requires_grad=True)
    with SavedTensors([], exclude_now=lambda: [w, *shards]) as saved:
        (x * w).sum().backward()  # mul saves x (counted) and w (looked up now: excluded)
    assert saved.bytes == 8 * 8


SHAPES = r"""
import json, torch
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS"))
torch.manual_seed(0)
w = torch.randn(512, 128, requires_grad=True)
x0 = torch.randn(1024, 128)
def step(m):
    x = x0[:m].clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = torch.nn.functional.linear(x, w)
    y.float().sum().backward()
step(7)
r0 = rss()
for m in range(100, 160):  # 60 row counts, as an MoE expert sees from step to step
    step(m)
print(json.dumps(rss() - r0))
"""


@pytest.mark.slow
def test_memory_processes_do_not_keep_a_kernel_per_matmul_shape() -> None:
    """oneDNN and ideep cache a compiled kernel per bf16 matmul shape (~0.8 MiB each); the
    memory metrics' environment holds both caches to one entry, so 60 shapes through one
    linear leave the resident set where it was. Without that environment they grow it (by
    ~100 MiB here; only where this CPU's oneDNN compiles per shape is that part asserted)."""
    from revbench.measure.metrics import METRICS

    def growth(env: dict[str, str]) -> int:
        out = subprocess.run(
            [sys.executable, "-c", SHAPES], env=env, capture_output=True, text=True, check=True
        )
        return json.loads(out.stdout)

    plain = {k: v for k, v in os.environ.items() if not k.startswith(("ONEDNN_", "LRU_CACHE_"))}
    capped = growth({**plain, **METRICS.get("peak_memory").env})
    assert capped < 15 * 2**20, capped
    cached = growth({**plain, "MALLOC_MMAP_THRESHOLD_": "65536"})
    if cached > 30 * 2**20:
        assert capped < cached / 4, (capped, cached)


RSS_READERS = r"""
import torch
from revbench.measure.memory import read_peak_rss, read_rss, reset_peak_rss
mib = 2**20
reset = reset_peak_rss()
before = read_rss()
x = torch.ones(32 * mib, dtype=torch.float32)  # 128 MiB, touched (glibc mmaps it)
during = read_rss()
del x  # munmap: resident memory falls, the high-water mark stays
after, peak = read_rss(), read_peak_rss()
assert during - before >= 120 * mib, (before, during)
assert during - after >= 120 * mib, (during, after)
assert peak >= during - 8 * mib  # the kernel's counters lag by a few pages
if reset:  # a reset mark restarts from what is resident now, below the old peak
    assert reset_peak_rss()
    assert after - 16 * mib <= read_peak_rss() <= read_rss() + 16 * mib
    assert read_peak_rss() < peak - 100 * mib
"""


def test_rss_readers() -> None:
    """The readers see a 128 MiB buffer come and go, the high-water mark keep it and a reset
    drop it; in a fresh process (a long test process's heap may hand the buffer back from
    memory that is already resident)."""
    import subprocess
    import sys

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    r = subprocess.run([sys.executable, "-c", RSS_READERS], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]


CHILD = r"""
import json, sys, torch
from revbench.measure.memory import read_peak_rss, read_rss, reset_peak_rss
from revbench.models import ModelConfig, build_model
torch.set_num_threads(1)
torch.manual_seed(0)
cfg = ModelConfig(arch=sys.argv[1], n_layers=int(sys.argv[2]), vocab_size=64, d_model=64,
                  n_heads=2, max_seq_len=256)
model = build_model(cfg)
ids = torch.randint(64, (8, 256))
base = read_rss()  # parameters included
reset = reset_peak_rss()
model(ids, labels=ids).loss.backward()
grad = sum(p.grad.nbytes for p in model.parameters() if p.grad is not None)
print(json.dumps({"reset": reset, "peak_delta": read_peak_rss() - base - grad}))
"""


def peak_delta(arch: str, n_layers: int) -> int:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    r = subprocess.run(
        [sys.executable, "-c", CHILD, arch, str(n_layers)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    out = json.loads(r.stdout)
    if not out["reset"]:
        pytest.skip("no /proc/self/clear_refs: VmHWM cannot be reset here")
    return out["peak_delta"]


# Measured (batch 8 x seq 256, d_model 64, fp32, one fwd+bwd, minus param and grad bytes), peak
# RSS growth over the memory before the step, 4 -> 32 layers: baseline 47.7 -> 269.8 MiB
# (+222 MiB, ~7.9 MiB per layer); midpoint 30.2 -> 30.9 MiB (+0.6 MiB, 0.3% of that growth).
@pytest.mark.slow
def test_peak_rss_of_reversible_flat_in_depth() -> None:
    base = peak_delta("baseline", 32) - peak_delta("baseline", 4)
    rev = peak_delta("midpoint", 32) - peak_delta("midpoint", 4)
    assert base > 100 * 2**20
    assert abs(rev) < 0.1 * base, (rev, base)
