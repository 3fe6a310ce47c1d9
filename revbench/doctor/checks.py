"""The doctor's checks, one generator per group; each yields ``Check`` outcomes.

A check compares something revbench measures with a known answer on the device under test;
see the package docstring for what each group proves and why.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from revbench.doctor.base import (
    BUDGET_MARGIN,
    CLOCK_RATIO,
    CLOCK_ROUNDS,
    EVENTS_RATIO,
    GRAD_REL_TOL,
    MFU_RANGE,
    MIB,
    Check,
    Context,
    Sizes,
    dtype_name,
    memory_tolerance,
    mib,
    sci,
    within,
)
from revbench.doctor.probe import run_probe

# --- env -----------------------------------------------------------------------------------


def check_env(device: Any, sizes: Sizes, ctx: Context) -> Iterator[Check]:
    import torch

    from revbench.measure.device import git_commit

    versions = (
        f"torch {torch.__version__}, CUDA {torch.version.cuda or '-'}, "
        f"Python {sys.version.split()[0]}, revbench {_revbench_version()}"
    )
    yield Check(
        "env", "versions", "info", measured=versions, detail=f"commit {git_commit() or '-'}"
    )
    t0 = time.perf_counter()
    ok = float((torch.ones(4, device=device) * 2).sum().item()) == 8.0
    info = ctx.device_columns
    measured = f"{info['device_name']}, {mib(info['device_memory_bytes'])}"
    if device.type == "cuda":
        measured += f", compute capability {info['compute_capability']}"
    yield Check(
        "env",
        "device computes",
        "pass" if ok else "fail",
        measured=measured,
        expected="2 * ones(4) sums to 8",
        seconds=time.perf_counter() - t0,
    )
    if device.type != "cuda":
        yield Check("env", "NVML names the same GPU", "skip", detail="no CUDA device")
        return
    yield nvml_check(device)


def nvml_check(device: Any) -> Check:
    """NVML, found by torch's PCI bus id, must name the GPU torch computes on (same name and,
    where torch exposes it, same UUID); the detail says how CUDA and NVML order devices."""
    import torch

    props = torch.cuda.get_device_properties(device)
    bus = f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
    order = os.environ.get("CUDA_DEVICE_ORDER", "FASTEST_FIRST (unset)")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)")
    where = f"bus {bus}; CUDA_DEVICE_ORDER={order}; CUDA_VISIBLE_DEVICES={visible}"
    if torch.cuda.device_count() > 1 and order != "PCI_BUS_ID":
        where += "; several GPUs and no PCI_BUS_ID order: torch's indices may not be NVML's"
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as e:
        return Check("env", "NVML names the same GPU", "fail", detail=f"NVML: {e}; {where}")
    try:
        handle = pynvml.nvmlDeviceGetHandleByPciBusId(bus)
        name = pynvml.nvmlDeviceGetName(handle)
        name = name.decode() if isinstance(name, bytes) else str(name)
        uuid = pynvml.nvmlDeviceGetUUID(handle)
        uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
        total = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
    except Exception as e:
        return Check("env", "NVML names the same GPU", "fail", detail=f"NVML: {e}; {where}")
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
    torch_uuid = str(getattr(props, "uuid", "") or "")
    ours, theirs = _uuid_hex(torch_uuid), _uuid_hex(uuid)
    if len(ours) == 32:  # torch gives the bare UUID, NVML "GPU-" and the same digits
        ok = name == props.name and ours == theirs
    else:  # an older torch, or one that prints it otherwise: the name has to do
        ok = name == props.name
        where += "; torch gives no comparable UUID"
    return Check(
        "env",
        "NVML names the same GPU",
        "pass" if ok else "fail",
        measured=f"NVML: {name}, {mib(total)}, {uuid}",
        expected=f"torch: {props.name}, {mib(props.total_memory)}, {torch_uuid or 'no uuid'}",
        detail=where,
    )


def _uuid_hex(text: str) -> str:
    """The 32 hex digits of a GPU UUID (``GPU-8c39d7b3-...`` or ``8c39d7b3-...``)."""
    return re.sub(r"[^0-9a-f]", "", text.lower().removeprefix("gpu-"))


def _revbench_version() -> str:
    import revbench

    return revbench.__version__


# --- memory --------------------------------------------------------------------------------


def check_memory(device: Any, sizes: Sizes, ctx: Context) -> Iterator[Check]:
    yield memory_probe_check(device, sizes)
    yield reduction_scratch_check(device)
    yield from budget_checks(device, sizes, ctx)


SCRATCH_SHAPES = ((8192, 2048), (8192, 512), (4096, 1536), (16384, 768), (512, 768))
"""(rows, columns) of the column sums ``reduction_scratch_check`` measures: a GELU MLP's and an
attention's bias gradients at 8k and 16k tokens, and one too small to need a global buffer."""


def reduction_scratch_check(device: Any) -> Check:
    """CUDA: the scratch a bias gradient's column sum borrows from the caching allocator (the
    planner's ``column_sum_buffer_bytes``, a port of PyTorch's reduction launch configuration)
    equals what ``max_memory_allocated`` sees, to the byte, for each of ``SCRATCH_SHAPES`` on
    this card's multiprocessors; not applicable on CPU (no such buffer)."""
    if device.type != "cuda":
        return Check("memory", "reduction scratch as planned", "skip", detail="CUDA only")
    import torch

    from revbench.plan.dims import column_sum_scratch_bytes, cuda_charge

    t0 = time.perf_counter()
    props = torch.cuda.get_device_properties(device)
    sms, threads = props.multi_processor_count, props.max_threads_per_multi_processor

    got, want = [], []
    for rows, cols in SCRATCH_SHAPES:
        x = torch.ones(rows, cols, device=device, dtype=torch.bfloat16)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        y = x.sum(0)  # what autograd's sum_to does to a Linear's bias gradient
        torch.cuda.synchronize(device)
        got.append(torch.cuda.max_memory_allocated(device) - before - cuda_charge(2 * cols))
        want.append(column_sum_scratch_bytes(rows, cols, 4, sms, threads))
        del x, y
    shapes = ", ".join(f"{r}x{c}" for r, c in SCRATCH_SHAPES)
    return Check(
        "memory",
        "reduction scratch as planned",
        "pass" if got == want else "fail",
        measured=" / ".join(mib(g) for g in got),
        expected=" / ".join(mib(w) for w in want),
        detail=f"bf16 column sums of {shapes}; {sms} multiprocessors x {threads} threads",
        columns={"peak_mem_delta_bytes": max(got), "activation_bytes": max(want)},
        config={"train.device": device.type},
        seconds=time.perf_counter() - t0,
    )


def memory_probe_check(device: Any, sizes: Sizes) -> Check:
    t0 = time.perf_counter()
    nbytes = [m * MIB for m in sizes.probe_mib]
    res = run_probe(device, nbytes)
    expected = sum(nbytes)
    measured = res["peak"] - res["before"]
    tol = memory_tolerance(device.type, len(nbytes), expected)
    ok = abs(measured - expected) <= tol and res["allocated"] == expected
    detail = f"method {res['method']}"
    if device.type == "cuda":
        detail += f"; reserved peak {mib(res['reserved'])}, NVML process {mib(res['nvml'])}"
    elif res.get("mmap_threshold") != "65536":
        ok, detail = False, detail + "; MALLOC_MMAP_THRESHOLD_ did not reach the child"
    return Check(
        "memory",
        "known allocations measured",
        "pass" if ok else "fail",
        measured=mib(measured),
        expected=f"{mib(expected)} ± {mib(tol)}",
        detail=detail,
        columns={
            "peak_mem_bytes": res["peak"],
            "peak_mem_delta_bytes": measured,
            "runtime_mem_bytes": res["before"],
            "activation_bytes": expected,
            "peak_mem_reserved_bytes": res.get("reserved"),
            "nvml_process_mem_bytes": res.get("nvml"),
            "memory_method": res["method"],
        },
        config={"train.device": device.type},
        seconds=time.perf_counter() - t0,
    )


def budget_checks(device: Any, sizes: Sizes, ctx: Context) -> Iterator[Check]:
    """One trial of the max-batch search (``min_size == max_size``) at three budgets: none (its
    footprint F), ``BUDGET_MARGIN[0] * F`` (must be refused), ``BUDGET_MARGIN[1] * F`` (must be
    accepted); every trial a fresh process started by the runner, as in a real search."""
    from revbench.caserun import run_case
    from revbench.suite import load_suite

    t0 = time.perf_counter()
    batch = sizes.budget_data["batch_size"]
    path = ctx.suite_file(
        "doctor_budget",
        model={"block": "gpt2", "max_seq_len": sizes.budget_data["seq_len"]} | sizes.budget_model,
        data=sizes.budget_data,
        train={"device": device.type, "dtype": dtype_name(device.type), "seed": 0},
        measure={
            "min_size": batch,
            "max_size": batch,
            "headroom": 0.0,
            "trial_steps": 1,
            "timeout_s": 300,
        },
        cases=[{"name": "budget trial", "arch": "baseline"}],
        metrics=["max_batch_size"],
    )
    case = load_suite(path).cases[0]

    def trial(budget: int | None) -> tuple[dict[str, Any], dict[str, Any]]:
        variant = case.with_settings(budget=None if budget is None else f"{budget}B")
        row = run_case(variant, 0, run_id=ctx.run_id, host=ctx.host)
        if row["status"] != "ok" or not row.get("search_trial_list"):
            raise RuntimeError(f"budget trial failed: {row['status']}: {row['error']}")
        return row, row["search_trial_list"][0]

    _, free = trial(None)
    footprint = free["peak_bytes"]
    if not free["fits"] or not footprint:
        raise RuntimeError(f"the trial does not fit the whole device: {free}")
    config = {
        "train.device": device.type,
        "train.dtype": dtype_name(device.type),
        "model.arch": "baseline",
        "data.batch_size": batch,
    }
    for name, margin, should_fit in (
        ("budget refuses a trial above it", BUDGET_MARGIN[0], False),
        ("budget accepts a trial below it", BUDGET_MARGIN[1], True),
    ):
        budget = int(footprint * margin)
        _, t = trial(budget)
        ok = bool(t["fits"]) == should_fit
        verdict = "fits" if t["fits"] else "refused" + (" (oom)" if t["status"] == "oom" else "")
        yield Check(
            "memory",
            name,
            "pass" if ok else "fail",
            measured=f"{verdict}, footprint {mib(t['peak_bytes'])}",
            expected=f"{'fits' if should_fit else 'refused'} under {mib(budget)} "
            f"({margin:.0%} of the unbudgeted footprint {mib(footprint)})",
            detail=f"batch {batch}; each trial a fresh process",
            columns={
                "budget_bytes": budget,
                "search_trials": 1,
                "search_trial_list": [dict(t)],
                "peak_mem_bytes": footprint,
            },
            config=config,
            seconds=time.perf_counter() - t0,
        )
        t0 = time.perf_counter()


# --- timing --------------------------------------------------------------------------------


def check_timing(device: Any, sizes: Sizes, ctx: Context) -> Iterator[Check]:
    import torch

    from revbench.measure.flops import peak_tflops
    from revbench.measure.timer import synchronize, time_calls

    dname = dtype_name(device.type)
    dtype = getattr(torch, dname)
    n, calls = sizes.matmul_n, sizes.timed_calls
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    c = torch.empty(n, n, device=device, dtype=dtype)

    def matmul() -> None:
        torch.mm(a, b, out=c)

    t0 = time.perf_counter()
    timed = time_calls(matmul, calls, warmup=3, device=device)
    flops = 2 * n**3
    rate = flops / timed.median / 1e12
    peak = peak_tflops(ctx.device_columns["device_name"], dname) if device.type == "cuda" else None
    config = {"train.device": device.type, "train.dtype": dname}
    columns = {
        "step_time_s_median": timed.median,
        "step_time_s_p10": timed.p10,
        "step_time_s_p90": timed.p90,
        "timed_steps": len(timed.times),
        "model_flops_per_step": flops,
        "hardware_flops_per_step": flops,
        "model_tflops_per_s": rate,
        "peak_tflops": peak,
        "mfu": rate / peak if peak else None,
    }
    what = f"{n}x{n}x{n} {dname} matmul"
    if peak:
        frac = rate / peak
        status = "pass" if within(frac, MFU_RANGE) else "fail"
        expected = f"{MFU_RANGE[0]:.0%}-{MFU_RANGE[1]:.0%} of {peak:g} TFLOP/s"
        measured = f"{rate:,.1f} TFLOP/s ({frac:.0%})"
    else:
        status, expected = "info", "no peak in the GPU table for this device"
        measured = f"{rate:,.3f} TFLOP/s"
    yield Check(
        "timing",
        "matmul rate against peak",
        status,
        measured=measured,
        expected=expected,
        detail=f"{what}, median of {calls} calls ({timed.method})",
        columns=columns,
        config=config,
        seconds=time.perf_counter() - t0,
    )

    # The host clock around the same calls with one synchronisation at the end, beside the
    # timer, in CLOCK_ROUNDS rounds. A wrong timer (a missing synchronisation) is wrong in every
    # round; another process on a shared CPU machine slows down some rounds, and the clock's mean
    # over calls more than the timer's median. So the round that agrees best is the verdict: it
    # passes only when at least one round agrees, which a systematic error never does.
    t0 = time.perf_counter()
    ratios, hosts, timers = [], [], []
    for _ in range(CLOCK_ROUNDS):
        timers.append(time_calls(matmul, calls, device=device).median)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(calls):
            matmul()
        synchronize(device)
        hosts.append((time.perf_counter() - start) / calls)
        ratios.append(timers[-1] / hosts[-1])
    i = min(range(len(ratios)), key=lambda k: abs(math.log(ratios[k])))
    ratio = ratios[i]
    yield Check(
        "timing",
        "timer agrees with the host clock",
        "pass" if within(ratio, CLOCK_RATIO) else "fail",
        measured=f"timer {timers[i] * 1e3:.3f} ms, clock {hosts[i] * 1e3:.3f} ms (x{ratio:.2f})",
        expected=f"ratio {CLOCK_RATIO[0]}-{CLOCK_RATIO[1]}",
        detail=f"{what}; the best-agreeing of {CLOCK_ROUNDS} rounds of {calls} calls (ratios "
        f"{', '.join(f'{r:.2f}' for r in ratios)}), the clock's between two synchronisations",
        columns={
            "step_time_s_median": hosts[i],
            "timed_steps": calls,
            "model_flops_per_step": flops,
        },
        config=config,
        seconds=time.perf_counter() - t0,
    )

    if device.type != "cuda":
        yield Check("timing", "CUDA events agree", "skip", detail="no CUDA device")
        return
    t0 = time.perf_counter()
    events = time_calls(matmul, calls, warmup=1, device=device, cuda_events=True)
    ratio = events.median / timed.median
    yield Check(
        "timing",
        "CUDA events agree",
        "pass" if within(ratio, EVENTS_RATIO) else "fail",
        measured=f"events {events.median * 1e3:.3f} ms (x{ratio:.2f})",
        expected=f"host+sync {timed.median * 1e3:.3f} ms, ratio {EVENTS_RATIO[0]}-"
        f"{EVENTS_RATIO[1]}",
        detail=what,
        columns={
            "step_time_s_median": events.median,
            "step_time_s_p10": events.p10,
            "step_time_s_p90": events.p90,
            "timed_steps": calls,
            "model_flops_per_step": flops,
            "model_tflops_per_s": flops / events.median / 1e12,
        },
        config=config,
        seconds=time.perf_counter() - t0,
    )


# --- exactness -----------------------------------------------------------------------------

TINY = {"vocab_size": 64, "d_model": 32, "n_heads": 4, "max_seq_len": 32}
EXACT_OVERRIDES: dict[str, dict[str, Any]] = {
    "revffn": {"revffn_query": "x2", "n_experts": 4, "top_k": 2},
}
"""Settings under which an architecture's reversible backward is exact (RevFFN's default,
cross-branch mode rebuilds X1 by fixed-point iteration: approximate by design)."""


def reversible_archs() -> list[str]:
    from revbench.models import ARCHITECTURES
    from revbench.models.config import is_reversible

    return [a for a in ARCHITECTURES.names() if is_reversible(a)]


def _expert_settings(arch: str) -> dict[str, Any]:
    """MoE settings for the architectures built around experts (tiny: 4 experts, top-2)."""
    from revbench.models import ARCHITECTURES

    if ARCHITECTURES.get(arch).moe_block:
        return {"n_experts": 4, "top_k": 2}
    return {}


def _grads(model: Any, ids: Any, reversible: bool) -> tuple[Any, dict[str, Any]]:
    model.reversible_backprop = reversible
    model.zero_grad(set_to_none=True)
    out = model(ids, labels=ids)
    loss = out.loss if out.aux_loss is None else out.loss + out.aux_loss
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def _rel(a: Any, b: Any) -> float:
    import torch

    den = torch.linalg.vector_norm(b)
    num = torch.linalg.vector_norm(a - b)
    return float(num / den) if den > 0 else float(num)


def gradient_error(cfg: Any, device: Any, seed: int = 0) -> tuple[float, float, float]:
    """(loss relative error, largest per-parameter gradient relative error, global gradient
    cosine) between reversible backprop and ordinary autograd, float64, same weights."""
    import torch

    from revbench.models import build_model

    torch.manual_seed(seed)
    model = build_model(cfg).to(device=device, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(cfg.vocab_size, (2, 16), generator=gen).to(device)
    loss_r, g_r = _grads(model, ids, reversible=True)
    loss_p, g_p = _grads(model, ids, reversible=False)
    if g_r.keys() != g_p.keys():
        raise RuntimeError(f"parameters with gradients differ: {sorted(g_r.keys() ^ g_p.keys())}")
    flat_r = torch.cat([g_r[n].flatten() for n in g_p])
    flat_p = torch.cat([g_p[n].flatten() for n in g_p])
    cos = float(flat_r @ flat_p / (flat_r.norm() * flat_p.norm()))
    return _rel(loss_r, loss_p), max(_rel(g_r[n], g_p[n]) for n in g_p), cos


def check_exactness(device: Any, sizes: Sizes, ctx: Context) -> Iterator[Check]:
    from revbench.models import ModelConfig

    for arch in reversible_archs():
        for block in sizes.blocks:
            settings = {**TINY, "arch": arch, "block": block, "n_layers": 3}
            settings |= _expert_settings(arch) | EXACT_OVERRIDES.get(arch, {})
            t0 = time.perf_counter()
            loss_err, grad_err, cos = gradient_error(ModelConfig(**settings), device)
            mode = f" ({settings['revffn_query']})" if "revffn_query" in settings else ""
            yield Check(
                "exactness",
                f"{arch}{mode} {block} float64 grads",
                "pass" if grad_err < GRAD_REL_TOL and loss_err < GRAD_REL_TOL else "fail",
                measured=f"grad {sci(grad_err)}, loss {sci(loss_err)}",
                expected=f"< {GRAD_REL_TOL:.0e}",
                detail="reversible backprop vs model.reversible_backprop = False",
                columns={"grad_rel_err_max": grad_err, "grad_cosine": cos},
                config=_model_config(settings, device, "float64"),
                seconds=time.perf_counter() - t0,
            )
    if "revffn" in reversible_archs():  # the paper's mode: approximate, shown for reference
        settings = {**TINY, "arch": "revffn", "n_layers": 3, **_expert_settings("revffn")}
        t0 = time.perf_counter()
        loss_err, grad_err, cos = gradient_error(ModelConfig(**settings), device)
        yield Check(
            "exactness",
            "revffn (x1) float64 grads",
            "info",
            measured=f"grad {sci(grad_err)}, loss {sci(loss_err)}",
            expected="approximate (fixed-point inverse)",
            columns={"grad_rel_err_max": grad_err, "grad_cosine": cos},
            config=_model_config(settings, device, "float64"),
            seconds=time.perf_counter() - t0,
        )
    yield from drift_checks(device, sizes)


def drift_checks(device: Any, sizes: Sizes) -> Iterator[Check]:
    """Reconstruction error of the rebuilt states in float32 and bf16 autocast: printed, not
    judged (it grows with depth and is what the ``reconstruction`` metric studies); only a
    non-finite error fails."""
    import torch

    from revbench.models import ModelConfig, build_model, reconstruction_errors

    for dtype in ("float32", "bfloat16"):
        for arch in reversible_archs():
            settings = {**TINY, "d_model": 64, "arch": arch, "n_layers": sizes.drift_layers}
            settings |= _expert_settings(arch)
            t0 = time.perf_counter()
            torch.manual_seed(0)
            model = build_model(ModelConfig(**settings)).to(device)
            gen = torch.Generator().manual_seed(1)
            ids = torch.randint(settings["vocab_size"], (2, 32), generator=gen).to(device)
            autocast = (
                torch.autocast(device.type, dtype=torch.bfloat16)
                if dtype == "bfloat16"
                else contextlib.nullcontext()
            )
            with autocast:
                errors = [float(e) for e in reconstruction_errors(model, ids)]
            worst = max(errors) if errors else 0.0
            yield Check(
                "exactness",
                f"{arch} {dtype} reconstruction drift",
                "info" if all(math.isfinite(e) for e in errors) else "fail",
                measured=f"max {sci(worst)} over {len(errors)} layers",
                expected="finite (printed for reference)",
                columns={"recon_rel_err_max": worst, "recon_rel_err_per_layer": errors},
                config=_model_config(settings, device, dtype),
                seconds=time.perf_counter() - t0,
            )


def _model_config(settings: dict[str, Any], device: Any, dtype: str) -> dict[str, Any]:
    return {
        **{f"model.{k}": v for k, v in settings.items()},
        "train.device": device.type,
        "train.dtype": dtype,
    }


# --- suite ---------------------------------------------------------------------------------


def check_suite(device: Any, sizes: Sizes, ctx: Context) -> Iterator[Check]:
    from revbench.models import ARCHITECTURES
    from revbench.runner import run_suite

    t0 = time.perf_counter()
    cases = [
        {"name": f"{arch} n_layers={n}", "arch": arch, "n_layers": n, **_expert_settings(arch)}
        for arch in ARCHITECTURES.names()
        for n in sizes.suite_depths
    ]
    seq = sizes.suite_data["seq_len"]
    path = ctx.suite_file(
        "doctor_mini",
        model={"block": "gpt2", "max_seq_len": seq, **sizes.suite_model},
        data=sizes.suite_data,
        train={"device": device.type, "dtype": dtype_name(device.type), "seed": 0},
        measure={"warmup": 1, "steps": 3, "timeout_s": 300},
        cases=cases,
        metrics=list(sizes.suite_metrics),
    )
    report = run_suite(path, ctx.out_dir, quiet=False, console=ctx.console)
    bad = [f"{r['case']}: {r['status']} {r['error'] or ''}".strip() for r in report.failed]
    yield Check(
        "suite",
        f"every architecture through the runner ({', '.join(sizes.suite_metrics)})",
        "fail" if bad else "pass",
        measured=f"{len(report.rows) - len(bad)}/{len(report.rows)} rows ok",
        expected=f"{len(cases)}/{len(cases)} ok",
        detail="; ".join(bad)[:300] or f"rows in {report.out_dir}",
        config={"train.device": device.type, "train.dtype": dtype_name(device.type)},
        seconds=time.perf_counter() - t0,
    )
    if len(sizes.suite_depths) > 1 and not bad:
        yield depth_check(report.rows, sizes.suite_depths)


def depth_check(rows: list[dict[str, Any]], depths: Sequence[int]) -> Check:
    """Reversible models keep no per-layer activations, so their saved-activation bytes must not
    grow with depth, while the baseline's must: a cheap end-to-end test of the memory breakdown
    and of the reversible backward being the one that runs."""
    lo, hi = min(depths), max(depths)
    act = {(r["model.arch"], r["model.n_layers"]): r.get("activation_bytes") for r in rows}
    grew = []
    for arch in reversible_archs():
        a, b = act.get((arch, lo)), act.get((arch, hi))
        if a is None or b is None or b > a * 1.05 + 65536:
            grew.append(f"{arch} {mib(a)} -> {mib(b)}")
    base_lo, base_hi = act.get(("baseline", lo)), act.get(("baseline", hi))
    base_grows = base_lo is not None and base_hi is not None and base_hi > base_lo
    ok = not grew and base_grows
    detail = "grew: " + ", ".join(grew) if grew else ""
    if not base_grows:
        detail += " baseline did not grow"
    return Check(
        "suite",
        f"activations flat in depth ({lo} -> {hi} layers)",
        "pass" if ok else "fail",
        measured=f"baseline {mib(base_lo)} -> {mib(base_hi)}",
        expected="reversible: flat; baseline: grows",
        detail=detail.strip(),
    )


CHECKS: dict[str, Callable[[Any, Sizes, Context], Iterator[Check]]] = {
    "env": check_env,
    "memory": check_memory,
    "timing": check_timing,
    "exactness": check_exactness,
    "suite": check_suite,
}
"""Check groups in run order (``GROUPS``): cheap and fundamental first, the mini suite last."""
