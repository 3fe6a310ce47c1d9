#!/usr/bin/env bash
# Prepare the GPU validation kit on a machine with PyPI access (no GPU needed).
#
#   bash benchmarks/gpu/prepare.sh [DIR]        (DIR: default .whl at the repository root)
#
# Downloads into DIR the wheels the GPU machine lacks (benchmarks/gpu/wheels.txt), built for
# that machine: CPython 3.12, manylinux x86-64, binary wheels only, no dependencies resolved
# (each one is named in wheels.txt; kit.py check-wheels proves the set complete against the
# machine's own packages, machine-packages.txt). Wheels of the listed packages already in DIR
# are replaced, so DIR never holds two versions of one (pip's offline install would stop).
# Also writes DIR/SOURCE, the commit the kit was prepared from, which run.sh stamps into rows
# when the GPU machine's copy of the tree has no .git. DIR is git-ignored (/.whl/).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DIR=${1:-$ROOT/.whl}
PY=${PYTHON:-python3}
mkdir -p "$DIR"

mapfile -t REQS < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$ROOT/benchmarks/gpu/wheels.txt" | grep -v '^$')
for req in "${REQS[@]}"; do
    name=${req%%==*}
    # wheel file names spell the project with underscores, any case
    pattern=$(echo "$name" | tr 'A-Z' 'a-z' | sed 's/[-_.]\+/[-_.]/g')
    find "$DIR" -maxdepth 1 -iregex ".*/${pattern}-[^-]*-.*\.whl" -delete
done

PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux1_x86_64; do
    PLATFORMS+=(--platform "$p")
done
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${PLATFORMS[@]}" -d "$DIR" "${REQS[@]}"

{
    echo "commit $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
    if [ -n "$(git -C "$ROOT" status --porcelain -- revbench 2>/dev/null)" ]; then
        echo "dirty revbench/ has uncommitted changes"
    fi
    echo "prepared $(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >"$DIR/SOURCE"

"$PY" "$ROOT/benchmarks/gpu/kit.py" check-wheels "$DIR"
du -sh "$DIR" | sed 's/^/kit: wheels ready, /'
ls -1 "$DIR"/*.whl | sed 's/^/  /'
