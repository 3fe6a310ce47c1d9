#!/usr/bin/env bash
# The GPU validation kit: prove revbench's CUDA paths in one short run and bring back its rows.
#
#   bash benchmarks/gpu/run.sh OUTDIR [--device cuda|cpu] [--tiny] [--full-doctor]
#                                     [--commit SHA] [--wheels DIR] [--budget-s SECONDS]
#
# Offline: installs the wheels prepare.sh downloaded (--wheels, default .whl) with pip
# --no-index --no-deps into a scratch folder, puts it and this source tree on PYTHONPATH, then
# runs, each stage under its own time limit and all of them inside --budget-s (default 450 s,
# so the kit ends inside 8 minutes on one H100):
#   1. revbench doctor --device DEVICE --quick (every check; --full-doctor for the longer mini
#      suite),
#   2. benchmarks/gpu/max_batch_budget.yaml (GPT-2-small max batch, baseline vs midpoint, under
#      an emulated 8 GiB budget, then throughput at each one's max batch),
#   3. revbench/suites/gpu_validation.yaml (depth sweep at d_model 512, 16 and 32 layers, bf16;
#      MoE and RevFFN at half Qwen1.5-MoE width: peak memory and throughput) in the time left.
# A stage that fails or runs out of time is recorded and the next one still runs; finished rows
# are kept (every row is written atomically as it completes).
#
# OUTDIR receives at most 5 files, none in sub-folders (the device tool brings back at most 8,
# two folders deep): kit.tar.gz (every parquet row under results/, every stage's log,
# summary.txt, doctor.txt, env.txt), summary.txt (stage outcomes and the rows' headline
# figures), doctor.txt (the doctor's table), env.txt (GPU, driver, packages). Exit code 0 when
# every stage succeeded, 1 otherwise, 2 on bad arguments.
#
# --tiny shrinks both suites to tiny shapes (benchmarks/gpu/tiny.py) and runs the doctor's quick
# checks without its mini suite, so that the whole kit runs on a CPU in a couple of minutes
# (tests/test_gpu_kit.py does that with --device cpu).
set -uo pipefail

usage() {
    echo "usage: bash benchmarks/gpu/run.sh OUTDIR [--device cuda|cpu] [--tiny] [--full-doctor]" \
        "[--commit SHA] [--wheels DIR] [--budget-s SECONDS]" >&2
    exit 2
}

[ $# -ge 1 ] || usage
case $1 in -*) usage ;; esac
OUT=$1
shift
DEVICE=cuda
TINY=0
FULL_DOCTOR=0
COMMIT=""
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WHEELS=$ROOT/.whl
BUDGET=450
while [ $# -gt 0 ]; do
    case $1 in
    --device) [ $# -ge 2 ] || usage; DEVICE=$2; shift 2 ;;
    --tiny) TINY=1; shift ;;
    --full-doctor) FULL_DOCTOR=1; shift ;;
    --commit) [ $# -ge 2 ] || usage; COMMIT=$2; shift 2 ;;
    --wheels) [ $# -ge 2 ] || usage; WHEELS=$2; shift 2 ;;
    --budget-s) [ $# -ge 2 ] || usage; BUDGET=$2; shift 2 ;;
    *) usage ;;
    esac
done
case $DEVICE in cuda | cpu) ;; *) echo "run.sh: --device must be cuda or cpu" >&2; exit 2 ;; esac
case $BUDGET in '' | *[!0-9]*) echo "run.sh: --budget-s must be a whole number" >&2; exit 2 ;; esac

PY=${PYTHON:-python3}
T0=$SECONDS
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/revbench-kit.XXXXXX")
mkdir -p "$WORK/logs" "$WORK/results"
export PYTHONUNBUFFERED=1 CUDA_DEVICE_ORDER=PCI_BUS_ID
STATUS=()
FAILED=0

say() { echo "[kit $((SECONDS - T0))s] $*"; }

# stage NAME CAP_SECONDS COMMAND...: run under min(CAP, time left), log to logs/NAME.log.
stage() {
    local name=$1 cap=$2 left limit start rc
    shift 2
    left=$((BUDGET - (SECONDS - T0) - 10))
    limit=$((cap < left ? cap : left))
    if [ "$limit" -lt 20 ]; then
        STATUS+=("$name: skipped, ${left}s of the budget left")
        FAILED=1
        say "$name: skipped (no time left)"
        return
    fi
    say "$name: start (limit ${limit}s)"
    start=$SECONDS
    timeout -k 15 "$limit" "$@" >"$WORK/logs/$name.log" 2>&1
    rc=$?
    local what="rc $rc"
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && what="timed out after ${limit}s (rows so far kept)"
    STATUS+=("$name: $what, $((SECONDS - start))s")
    [ $rc -eq 0 ] || FAILED=1
    say "$name: $what"
    tail -n 40 "$WORK/logs/$name.log"
}

# --- install (offline) ---------------------------------------------------------------------
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$WORK/site" "$WHEELS"/*.whl >"$WORK/logs/install.log" 2>&1; then
        export PYTHONPATH="$ROOT:$WORK/site${PYTHONPATH#"$ROOT"}"
        STATUS+=("install: $(compgen -G "$WHEELS/*.whl" | wc -l) wheels from $WHEELS")
    else
        STATUS+=("install: pip could not install $WHEELS (see logs/install.log); using what is here")
    fi
else
    STATUS+=("install: no wheels in $WHEELS; using the packages already here")
fi
if ! "$PY" -c "import torch, numpy, pandas, pyarrow, pydantic, yaml, rich, psutil, pynvml" \
    >>"$WORK/logs/install.log" 2>&1; then
    echo "run.sh: revbench's requirements do not import (logs in $WORK/logs/install.log);" \
        "run benchmarks/gpu/prepare.sh where PyPI is reachable and carry .whl" >&2
    tail -n 5 "$WORK/logs/install.log" >&2
    exit 1
fi
if "$PY" -c "import liger_kernel.transformers" >>"$WORK/logs/install.log" 2>&1; then
    LIGER="liger-kernel imports"
else
    LIGER="liger-kernel does not import here (optional; see logs/install.log)"
fi

{
    echo "kit started $(date -u +%Y-%m-%dT%H:%M:%SZ), device $DEVICE, tiny $TINY"
    "$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', \
torch.__version__, '| CUDA', torch.version.cuda, '| cuda available', torch.cuda.is_available())"
    echo "$LIGER"
    command -v nvidia-smi >/dev/null && nvidia-smi
    "$PY" -m pip list 2>/dev/null | grep -iE \
        '^(torch|triton|numpy|pandas|pyarrow|pydantic|rich|psutil|nvidia-ml-py|liger)' || true
} >"$WORK/env.txt" 2>&1
say "environment: $(sed -n 2p "$WORK/env.txt")"

# --- stages --------------------------------------------------------------------------------
SUITE=$ROOT/revbench/suites/gpu_validation.yaml
MAX_BATCH=$ROOT/benchmarks/gpu/max_batch_budget.yaml
DOCTOR=(--quick)
[ $FULL_DOCTOR -eq 1 ] && DOCTOR=()
if [ $TINY -eq 1 ]; then
    "$PY" "$ROOT/benchmarks/gpu/tiny.py" "$SUITE" "$WORK/gpu_validation_tiny.yaml" --device "$DEVICE"
    "$PY" "$ROOT/benchmarks/gpu/tiny.py" "$MAX_BATCH" "$WORK/max_batch_tiny.yaml" --device "$DEVICE"
    SUITE=$WORK/gpu_validation_tiny.yaml
    MAX_BATCH=$WORK/max_batch_tiny.yaml
    DOCTOR=(--quick --only env,memory,timing,exactness)
fi

# The max-batch searches before the suite: a search stopped midway loses its case, while the
# suite stopped at its limit keeps every case it finished (the most wanted ones come first).
stage doctor 180 "$PY" -m revbench.cli doctor --device "$DEVICE" --out "$WORK/results" "${DOCTOR[@]}"
cp "$WORK/logs/doctor.log" "$WORK/doctor.txt"
stage max_batch 200 "$PY" -m revbench.cli run "$MAX_BATCH" --out "$WORK/results"
stage suite 600 "$PY" -m revbench.cli run "$SUITE" --out "$WORK/results"

# --- provenance, summary, pack --------------------------------------------------------------
# --commit is the truth when given: the device tool's copy of the tree carries the .git of the
# session's first commit, not of the tree it sends, so revbench reads an older commit there
# (with +dirty); --replace overwrites it. Without --commit and without .git: .whl/SOURCE.
if [ -n "$COMMIT" ]; then
    STATUS+=("provenance: --commit $COMMIT; $("$PY" "$ROOT/benchmarks/gpu/kit.py" stamp \
        "$WORK/results" "$COMMIT" --replace 2>&1 | tail -n 1)")
elif ! git -C "$ROOT" rev-parse HEAD >/dev/null 2>&1; then
    if [ -f "$WHEELS/SOURCE" ]; then
        COMMIT=$(sed -n 's/^commit //p' "$WHEELS/SOURCE")
        grep -q '^dirty' "$WHEELS/SOURCE" && COMMIT="$COMMIT+dirty"
    fi
    if [ -n "$COMMIT" ]; then
        STATUS+=("provenance: no .git here; $("$PY" "$ROOT/benchmarks/gpu/kit.py" stamp \
            "$WORK/results" "$COMMIT" 2>&1 | tail -n 1)")
    else
        STATUS+=("provenance: no .git here and no --commit: rows have no git_commit")
    fi
fi
{
    echo "revbench GPU validation kit, $(date -u +%Y-%m-%dT%H:%M:%SZ), device $DEVICE, tiny $TINY," \
        "$((SECONDS - T0))s of a ${BUDGET}s budget"
    printf '  %s\n' "${STATUS[@]}"
    echo "  $LIGER"
    echo
    "$PY" "$ROOT/benchmarks/gpu/kit.py" summary "$WORK/results" 2>&1
} >"$WORK/summary.txt"
tar czf "$OUT/kit.tar.gz" -C "$WORK" results logs summary.txt doctor.txt env.txt
cp "$WORK/summary.txt" "$WORK/doctor.txt" "$WORK/env.txt" "$OUT/"
cat "$WORK/summary.txt"
say "done: $OUT (kit.tar.gz, summary.txt, doctor.txt, env.txt); work folder $WORK"
exit $FAILED
