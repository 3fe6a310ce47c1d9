"""Helpers of the GPU validation kit (prepare.sh, run.sh): check the wheels, stamp, summarise.

``python benchmarks/gpu/kit.py check-wheels [DIR]``
    The wheels in DIR (default .whl) are exactly wheels.txt's, one version each, fit the device
    tool's carry limit, and together with the GPU machine's packages (machine-packages.txt)
    satisfy every requirement of revbench (pyproject.toml) and of every carried wheel, with
    markers evaluated for CPython 3.12 on Linux x86-64. Exit 1 with one line per problem.
``python benchmarks/gpu/kit.py stamp RESULTS COMMIT [--replace]``
    Fill ``git_commit`` of the rows under RESULTS that have none (a copy of the working tree
    without .git: revbench cannot read the commit there); with ``--replace``, also overwrite
    every other commit (a copy whose .git is older than its tree: the device tool's copy holds
    the .git of the session's first commit, so revbench reads that commit there, ``+dirty``).
    Rows are rewritten atomically through revbench.results.write_row.
``python benchmarks/gpu/kit.py summary RESULTS``
    A short text summary of the rows: per suite, every case's status and headline figures.
"""

from __future__ import annotations

import re
import sys
import zipfile
from pathlib import Path
from typing import Any

KIT = Path(__file__).resolve().parent
ROOT = KIT.parent.parent
MAX_WHEEL_BYTES = 60 * 2**20
"""The device tool carries at most 64 MiB of working tree, the repository itself included."""
TARGET_ENV = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "implementation_version": "3.12.3",
    "platform_python_implementation": "CPython",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "sys_platform": "linux",
    "os_name": "posix",
    "extra": "",
}
"""The GPU machine's interpreter, for evaluating requirement markers."""


def normalize(name: str) -> str:
    """PEP 503 name: lower case, runs of -_. as one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _lines(path: Path) -> list[str]:
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


def machine_packages() -> set[str]:
    """Names of the packages already on the GPU machine."""
    return {normalize(n) for n in _lines(KIT / "machine-packages.txt")}


def wanted_wheels() -> dict[str, str]:
    """wheels.txt: normalised name -> pinned version."""
    out = {}
    for line in _lines(KIT / "wheels.txt"):
        name, _, version = line.partition("==")
        out[normalize(name)] = version.strip()
    return out


def runtime_requirements() -> list[str]:
    """revbench's runtime requirements (pyproject.toml ``project.dependencies``)."""
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return list(data["project"]["dependencies"])


def wheel_metadata(path: Path) -> tuple[str, str, list[str]]:
    """(name, version, Requires-Dist lines) of a wheel file."""
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode("utf-8", "replace")
    head = text.split("\n\n", 1)[0]
    fields: dict[str, list[str]] = {}
    for line in head.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            fields.setdefault(key, []).append(value.strip())
    return fields["Name"][0], fields["Version"][0], fields.get("Requires-Dist", [])


def check_wheels(folder: Path) -> list[str]:
    """Problems with the wheel folder (empty when it is ready to carry)."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    problems = []
    wanted = wanted_wheels()
    wheels = sorted(folder.glob("*.whl"))
    found: dict[str, list[tuple[str, list[str]]]] = {}
    for w in wheels:
        name, version, requires = wheel_metadata(w)
        found.setdefault(normalize(name), []).append((version, requires))
    for name, versions in found.items():
        if len(versions) > 1:
            problems.append(f"{name}: {len(versions)} versions in {folder}; keep one")
        if name not in wanted:
            problems.append(f"{name}: in {folder} but not in wheels.txt")
    for name, version in wanted.items():
        if name not in found:
            problems.append(f"{name}=={version}: missing from {folder} (run prepare.sh)")
        elif found[name][0][0] != version:
            problems.append(f"{name}: {found[name][0][0]} in {folder}, wheels.txt pins {version}")
    size = sum(w.stat().st_size for w in wheels)
    if size > MAX_WHEEL_BYTES:
        problems.append(f"{folder}: {size / 2**20:.1f} MiB of wheels, over {MAX_WHEEL_BYTES}")
    there = machine_packages()
    carried = {n: Version(v[0][0]) for n, v in found.items()}
    needs = [("revbench", r) for r in runtime_requirements()]
    needs += [(n, r) for n, v in found.items() for r in v[0][1]]
    for who, text in needs:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(TARGET_ENV):
            continue  # an extra, or another platform
        name = normalize(req.name)
        if name in carried:
            if req.specifier and not req.specifier.contains(carried[name], prereleases=True):
                problems.append(f"{who} needs {text}; the kit carries {name} {carried[name]}")
        elif name not in there:
            problems.append(f"{who} needs {text}: neither on the GPU machine nor carried")
    return problems


# --- rows ----------------------------------------------------------------------------------


def _row_files(results: Path) -> list[Path]:
    return sorted(p for p in results.rglob("*.parquet") if not p.name.startswith("."))


def stamp(results: Path, commit: str, *, replace: bool = False) -> int:
    """Fill the empty ``git_commit`` of every row under ``results`` (``replace``: every one
    that is not ``commit``); returns how many rows changed."""
    import pyarrow.parquet as pq

    from revbench.results import write_row

    n = 0
    for f in _row_files(results):
        row = pq.read_table(f).to_pylist()[0]
        if not row.get("git_commit") or (replace and row["git_commit"] != commit):
            row["git_commit"] = commit
            write_row(row, f)
            n += 1
    return n


SUMMARY_COLUMNS = {
    "case": "case",
    "status": "status",
    "peak_mem_delta_bytes": "train MiB",
    "predicted_peak_bytes": "planned MiB",
    "activation_bytes": "act MiB",
    "step_time_s_median": "step s",
    "tokens_per_s": "tokens/s",
    "mfu": "MFU",
    "max_batch_size": "max batch",
    "predicted_max_batch_size": "planned",
    "search_trials": "trials",
    "max_batch_tokens_per_s": "tok/s at max",
    "error": "error",
}


def _cell(col: str, v: Any) -> str:
    import numpy as np
    import pandas as pd

    if v is None or (not isinstance(v, (list, tuple, np.ndarray)) and pd.isna(v)):
        return ""
    if col.endswith("_bytes"):
        return f"{v / 2**20:,.1f}"
    if col == "step_time_s_median":
        return f"{v:.4f}"
    if col == "mfu":
        return f"{v:.1%}"
    if isinstance(v, float):
        return f"{v:,.0f}"
    return str(v)[:90]


def _planner_error(g: Any) -> str | None:
    """How far the memory planner was from the measured footprints (|error| median, max)."""
    if "predicted_peak_bytes" not in g or "peak_mem_delta_bytes" not in g:
        return None
    both = g.dropna(subset=["predicted_peak_bytes", "peak_mem_delta_bytes"])
    if both.empty:
        return None
    err = (both["predicted_peak_bytes"] / both["peak_mem_delta_bytes"] - 1).abs()
    return f"  planner: |error| median {err.median():.1%}, max {err.max():.1%} ({len(err)} rows)"


def summary(results: Path) -> str:
    """Per suite (the doctor's checks apart): every row's status and headline figures."""
    import warnings

    from revbench.results import load

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = load(results) if results.exists() else None
    if df is None or df.empty:
        return f"no result rows under {results}\n"
    lines = []
    first = {k: _cell(k, v) or "-" for k, v in df.iloc[0].items()}
    lines.append(
        f"device {first['device_name']} ({first['device_type']}), torch {first['torch_version']}"
        f", driver {first['driver_version']}, CUDA {first['cuda_version']}, "
        f"commit {first['git_commit']}"
    )
    for suite, g in df.groupby("suite", sort=False):
        ok = int((g["status"] == "ok").sum())
        lines.append(f"\n## {suite}: {ok}/{len(g)} rows ok")
        if suite == "doctor":
            bad = g[g["status"] != "ok"]
            lines += [f"  FAIL {r.case}: {r.error}" for r in bad.itertuples()]
            continue
        cols = [c for c in SUMMARY_COLUMNS if c in g and (c == "case" or g[c].notna().any())]
        table = [[SUMMARY_COLUMNS[c] for c in cols]]
        for _, r in g.sort_values("case_index").iterrows():
            table.append([_cell(c, r[c]) for c in cols])
        widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
        for row in table:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        planned = _planner_error(g)
        if planned:
            lines.append(planned)
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if argv[:1] == ["check-wheels"] and len(argv) <= 2:
        problems = check_wheels(Path(argv[1]) if len(argv) > 1 else ROOT / ".whl")
        for p in problems:
            print(f"kit: {p}", file=sys.stderr)
        return 1 if problems else 0
    if argv[:1] == ["stamp"] and len(argv) in (3, 4) and argv[3:] in ([], ["--replace"]):
        n = stamp(Path(argv[1]), argv[2], replace=argv[3:] == ["--replace"])
        print(f"stamped {n} rows with commit {argv[2]}")
        return 0
    if argv[:1] == ["summary"] and len(argv) == 2:
        print(summary(Path(argv[1])), end="")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
