"""Hostile input, generated: suite documents, YAML text, raw bytes and parquet tables.

The promises under test: a suite file either validates or gets one line (``SuiteError``, exit 2)
naming the file; nothing raises anything else, nothing hangs, nothing grows without bound; a
results folder holding any file still loads (the file is skipped with a warning naming it).
"""

from __future__ import annotations

import io
import math
import time
import tracemalloc
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from revbench import limits, results
from revbench.cli import main
from revbench.errors import SuiteError
from revbench.settings import FIELDS
from revbench.suite import load_suite

# Generated examples are checked in-process; each must finish well inside the deadline.
FAST = settings(
    max_examples=int(__import__("os").environ.get("HOSTILE_EXAMPLES", 60)),
    deadline=5000,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

SECTION_OF = {k: s for k, (s, _) in FIELDS.items()}
NASTY_TEXT = st.sampled_from(
    ["", "..", "../x", "a/b", "[/]", "[bold]x", "\x00", "\n", "é", "x" * 500, "baseline"]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 2, -1, 2**31, 2**63, 2**64]),
    st.floats(allow_nan=True, allow_infinity=True),
    NASTY_TEXT,
    st.text(max_size=20),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
KEYS = st.integers(0, 4).flatmap(
    lambda i: st.text(max_size=12) if i == 0 else st.sampled_from(sorted(FIELDS))
)
# Plausible values weigh more (one_of picks a branch uniformly), so that generated suites get
# past the first field and probe the cross-field checks, the expansion and the case names.
PLAUSIBLE = st.sampled_from(
    [
        1,
        2,
        4,
        8,
        16,
        32,
        64,
        128,
        0.5,
        1e-3,
        True,
        False,
        "baseline",
        "midpoint",
        "revffn",
        "moe",
        "float32",
        "bfloat16",
        "cpu",
        "ddp",
        "none",
        "llama",
        "24GiB",
        "lm",
        "euler",
    ]
)
VALUE = st.integers(0, 3).flatmap(lambda i: VALUES if i == 0 else PLAUSIBLE)


def settings_map(section: str | None = None, max_size: int = 4) -> st.SearchStrategy[dict]:
    """Settings of ``section`` (any section when None), sometimes an unknown key."""
    own = sorted(k for k, s in SECTION_OF.items() if section in (None, s)) or sorted(FIELDS)
    keys = st.integers(0, 5).flatmap(
        lambda i: st.text(max_size=12) if i == 0 else st.sampled_from(own)
    )
    return st.dictionaries(keys, VALUE, max_size=max_size)


@st.composite
def suite_documents(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly well-formed suites with hostile values in any field."""
    doc: dict[str, Any] = {
        # mostly well-formed name and metrics (hypothesis does not pick one_of's branches
        # uniformly), so that most examples reach the settings, expansion and cases
        "name": "gen" if draw(st.integers(0, 9)) else draw(st.one_of(NASTY_TEXT, SCALARS)),
        "metrics": ["peak_memory"]
        if draw(st.integers(0, 9))
        else draw(
            st.lists(st.one_of(st.sampled_from(["throughput", "nope"]), SCALARS), max_size=3)
        ),
    }
    if draw(st.booleans()):
        doc["defaults"] = {
            sec: draw(settings_map(sec))
            for sec in draw(st.lists(st.sampled_from(["model", "data", "train", "x"]), max_size=3))
        }
    if draw(st.booleans()):
        doc["measure"] = draw(settings_map("measure"))
    if draw(st.booleans()):
        doc["matrix"] = draw(
            st.dictionaries(KEYS, st.one_of(st.lists(VALUE, max_size=4), SCALARS), max_size=3)
        )
    if draw(st.booleans()):
        doc["cases"] = draw(
            st.lists(
                st.one_of(
                    settings_map(),
                    st.fixed_dictionaries(
                        {"name": st.one_of(NASTY_TEXT, SCALARS), "seed": PLAUSIBLE}
                    ),
                    SCALARS,
                ),
                max_size=3,
            )
        )
    if draw(st.booleans()):
        doc[draw(st.sampled_from(["resources", "max_case_runs", "description", "extra"]))] = draw(
            VALUES
        )
    return doc


def check_loads_or_refuses(path: Path) -> None:
    """load_suite either returns a suite or raises a one-line SuiteError naming the file."""
    start = time.monotonic()
    try:
        suite = load_suite(path)
    except SuiteError as e:
        msg = str(e)
        assert "\n" not in msg, msg
        assert msg.startswith(str(path)), msg
        assert len(msg) < 1200, f"unbounded error message ({len(msg)} chars)"
    else:
        out = path.parent / "out"
        for case in suite.cases:  # whatever validated stays inside --out
            assert case.name and "\x00" not in case.name
        folder = (out / suite.name).resolve()
        assert folder.parent == out.resolve()
    assert time.monotonic() - start < 5


@FAST
@given(doc=suite_documents())
def test_generated_suite_documents_validate_or_get_one_line(tmp_path: Path, doc: dict) -> None:
    path = tmp_path / "gen.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    check_loads_or_refuses(path)


@FAST
@given(text=st.text(max_size=400))
def test_generated_yaml_text_validates_or_gets_one_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "gen.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    check_loads_or_refuses(path)


@FAST
@given(data=st.binary(max_size=400))
def test_generated_bytes_validate_or_get_one_line(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "gen.yaml"
    path.write_bytes(data)
    check_loads_or_refuses(path)


@settings(max_examples=25, deadline=20000, suppress_health_check=[HealthCheck.too_slow])
@given(doc=suite_documents())
def test_dry_run_exits_0_or_2_and_writes_nothing(doc: dict, tmp_path_factory: Any) -> None:
    tmp = tmp_path_factory.mktemp("dry")
    path = tmp / "gen.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    sink = io.StringIO()
    with redirect_stdout(sink), redirect_stderr(sink):
        code = main(["run", str(path), "--dry-run", "--out", str(tmp / "out")])
    assert code in (0, 2), sink.getvalue()[-500:]
    assert not (tmp / "out").exists()


# --- bounded reading: alias bombs, nesting, sizes, big matrices ---------------------------------


@settings(max_examples=20, deadline=10000)
@given(
    levels=st.integers(3, 12),
    fanout=st.integers(2, 12),
    field=st.sampled_from(["description", "defaults", "matrix", "cases", "metrics", "resources"]),
)
def test_alias_bombs_are_refused_fast_in_bounded_memory(
    tmp_path_factory: Any, levels: int, fanout: int, field: str
) -> None:
    lines = ["a0: &a0 [" + ", ".join(["x"] * fanout) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * fanout) + "]")
    text = "\n".join(lines) + f"\nname: p\nmetrics: [peak_memory]\n{field}: *a{levels - 1}\n"
    path = tmp_path_factory.mktemp("bomb") / "bomb.yaml"
    path.write_text(text)
    tracemalloc.start()
    start = time.monotonic()
    try:
        with pytest.raises(SuiteError) as info:
            load_suite(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - start < 5
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB to refuse a bomb"
    expanded = sum(fanout**k for k in range(levels + 1))
    if expanded > limits.MAX_YAML_NODES:
        assert "aliases are expanded" in str(info.value)


def test_bounded_reading_classes(tmp_path: Path) -> None:
    """One example of each non-generated class: deep nesting, an oversized file, a FIFO,
    /dev/zero, a folder, Latin-1 and UTF-16 text, a recursive anchor, a duplicate key."""
    cases = {
        "deep.yaml": ("name: p\nmetrics: [x]\nd: " + "[" * 5000 + "]" * 5000, "nesting deeper"),
        "big.yaml": ("#" * (limits.MAX_SUITE_BYTES + 1), "larger than a suite may be"),
        "latin1.yaml": ("name: caf\xe9".encode("latin-1"), "not UTF-8 text"),
        "utf16.yaml": ("name: p".encode("utf-16"), "not UTF-8|NUL byte"),
        "rec.yaml": ("name: p\nmetrics: [x]\nd: &a [*a]\n", "recursive anchor"),
        "dup.yaml": ("name: p\nname: q\nmetrics: [x]\n", "duplicate key 'name' at line 2"),
    }
    for name, (body, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(body if isinstance(body, bytes) else body.encode())
        with pytest.raises(SuiteError, match=message):
            load_suite(path)
    fifo = tmp_path / "fifo.yaml"
    import os

    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero"), tmp_path):
        start = time.monotonic()
        with pytest.raises(SuiteError, match=r"not a regular file|is a folder"):
            load_suite(path)
        assert time.monotonic() - start < 1


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        (
            {
                k: list(range(1, 11))
                for k in ("warmup", "steps", "seed", "threads", "trial_steps", "min_size")
            },
            "expands to 1,000,000 case runs",
        ),
        (
            {
                k: list(range(1, 11))
                for k in (
                    "warmup",
                    "steps",
                    "seed",
                    "threads",
                    "trial_steps",
                    "min_size",
                    "max_size",
                    "batch_size",
                    "seq_len",
                )
            },
            "expands to 1,000,000,000 case runs",
        ),
    ],
)
def test_huge_matrices_are_counted_not_expanded(tmp_path: Path, matrix: dict, message: str) -> None:
    doc = {"name": "m", "metrics": ["peak_memory"], "matrix": matrix}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(doc))
    start = time.monotonic()
    with pytest.raises(SuiteError, match=message):
        load_suite(path)
    assert time.monotonic() - start < 1
    for code, extra in ((2, []), (2, ["--dry-run"])):
        assert main(["run", str(path), "--out", str(tmp_path / "o"), *extra]) == code


def test_the_case_run_limit_can_be_raised(tmp_path: Path) -> None:
    doc = {"name": "m", "metrics": ["peak_memory"], "matrix": {"seed": list(range(30))}}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({**doc, "measure": {"repeats": 5}, "max_case_runs": 100}))
    with pytest.raises(SuiteError, match=r"expands to 150 case runs .* max_case_runs \(100\)"):
        load_suite(path)
    assert len(load_suite(path, max_case_runs=150).cases) == 30
    out = str(tmp_path / "o")
    assert main(["run", str(path), "--out", out, "--dry-run", "--max-case-runs", "150"]) == 0
    assert main(["run", str(path), "--out", out, "--dry-run"]) == 2


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("lr", math.inf, "must be a finite number"),
        ("step_size", math.nan, "must be (a finite number|greater than 0)"),
        ("timeout_s", math.inf, "must be a finite number"),
        ("repeats", 2147483648, "must be at most 1,000"),
        ("seed", 2**63, "must be at most 9,223,372,036,854,775,807"),
        ("n_layers", 10**9, "must be at most 10,000"),
        ("batch_size", 2**40, "must be at most"),
        ("budget", "0GiB", "memory size above 0"),
        ("budget", "99999999999TiB", "memory size above 0"),
        ("task_data", "missing.csv", "no such file"),
        ("nproc_per_node", 4096, "this machine runs at most"),
    ],
)
def test_numbers_are_range_checked(tmp_path: Path, setting: str, value: Any, message: str) -> None:
    doc: dict[str, Any] = {"name": "r", "metrics": ["peak_memory"], "cases": [{setting: value}]}
    if setting == "task_data":
        doc["cases"][0]["task"] = "lm"
    if setting == "nproc_per_node":
        doc["cases"][0].update(parallel="ddp", device="cpu")
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(SuiteError, match=message):
        load_suite(path)


def test_min_size_above_max_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        yaml.safe_dump(
            {"name": "s", "metrics": ["max_batch_size"], "measure": {"min_size": 9, "max_size": 3}}
        )
    )
    with pytest.raises(SuiteError, match=r"min_size \(9\) exceeds max_size \(3\)"):
        load_suite(path)


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "a/b", "a" * 101, "[/]"])
def test_suite_names_cannot_leave_out(tmp_path: Path, name: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": name, "metrics": ["peak_memory"]}))
    with pytest.raises(SuiteError, match="name: must be 1 to 100 letters"):
        load_suite(path)


def test_case_names_print_as_text_and_stay_inside_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = ["../../escape", "[/]", "[bold red]loud[/]", "a/b\\c"]
    doc = {
        "name": "n",
        "metrics": ["peak_memory"],
        "cases": [{"name": n, "seed": i} for i, n in enumerate(names)],
    }
    path = tmp_path / "n.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["run", str(path), "--dry-run", "--out", str(tmp_path / "o")]) == 0
    shown = capsys.readouterr().out
    for n in names:
        assert n in shown
    for bad in ("a\x00b", "line\nbreak", ""):
        path.write_text(yaml.safe_dump({**doc, "cases": [{"name": bad}]}))
        with pytest.raises(SuiteError, match=r"cases\[0\]\.name"):
            load_suite(path)


# --- results readers: any file in the folder ----------------------------------------------------

COLUMN_TYPES = {
    "int": pa.int64(),
    "str": pa.string(),
    "float": pa.float64(),
    "ts_naive": pa.timestamp("us"),
    "ts_utc": pa.timestamp("us", tz="UTC"),
    "bool": pa.bool_(),
}


@st.composite
def parquet_tables(draw: st.DrawFn) -> pa.Table:
    """Tables shaped like revbench rows, with columns dropped, retyped or nulled and any
    schema version in the metadata."""
    names = draw(
        st.lists(
            st.sampled_from(
                [*results.REQUIRED, "peak_mem_bytes", "tokens_per_s", "model.n_layers", "zzz"]
            ),
            unique=True,
            max_size=12,
        )
    )
    n = draw(st.integers(0, 3))
    arrays, fields = [], []
    for name in names:
        kind = draw(st.sampled_from(sorted(COLUMN_TYPES)))
        typ = COLUMN_TYPES[kind]
        if kind == "int":
            values = draw(
                st.lists(
                    st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), min_size=n, max_size=n
                )
            )
        elif kind == "str":
            values = draw(
                st.lists(
                    st.one_of(st.none(), st.sampled_from(["ok", "oom", "error", "x", "0"])),
                    min_size=n,
                    max_size=n,
                )
            )
        elif kind == "float":
            values = draw(st.lists(st.one_of(st.none(), st.floats()), min_size=n, max_size=n))
        elif kind == "bool":
            values = draw(st.lists(st.one_of(st.none(), st.booleans()), min_size=n, max_size=n))
        else:
            values = [None if draw(st.booleans()) else 1_700_000_000_000_000 for _ in range(n)]
        arrays.append(pa.array(values, type=typ))
        fields.append(pa.field(name, typ))
    version = draw(st.one_of(st.none(), st.sampled_from([b"1", b"2", b"3", b"99", b"x"])))
    meta = {b"revbench.schema_version": version} if version is not None else None
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=meta))


@settings(max_examples=60, deadline=5000, suppress_health_check=[HealthCheck.too_slow])
@given(tables=st.lists(parquet_tables(), min_size=1, max_size=3), junk=st.binary(max_size=64))
def test_results_load_skips_what_it_cannot_read_and_never_raises(
    tmp_path_factory: Any, tables: list[pa.Table], junk: bytes
) -> None:
    folder = tmp_path_factory.mktemp("res")
    for i, t in enumerate(tables):
        pq.write_table(t, folder / f"t{i}.parquet")
    (folder / "junk.parquet").write_bytes(junk)
    (folder / "dir.parquet").mkdir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = results.load(folder)
    skipped = {str(w.message).split(":")[0].removeprefix("skipping ") for w in caught}
    assert str(folder / "junk.parquet") in skipped or not junk
    for col in results.REQUIRED:
        assert col in df.columns
        if col in ("repeat", "config_hash", "status", "timestamp_utc"):
            assert not df[col].isna().any()
    assert set(df["status"]) <= set(results.STATUSES)
    if len(df):
        assert str(df["timestamp_utc"].dt.tz) == "UTC"


def test_results_readers_skip_each_damaged_class_with_a_warning(tmp_path: Path) -> None:
    """A real row loads; the same row with a newer schema, a missing column, a tz-naive time
    stamp or a null repeat is skipped with a warning naming the file and why."""
    from revbench.analysis.compare import compare_paths

    good = _real_row()
    results.write_row(good, tmp_path / "good.parquet")
    table = pq.read_table(tmp_path / "good.parquet")
    meta = table.schema.metadata
    damaged = {
        "newer": (
            table.replace_schema_metadata({**meta, b"revbench.schema_version": b"99"}),
            "newer revbench",
        ),
        "missing": (table.drop(["config_hash"]), "missing required column"),
        "naive": (
            table.set_column(
                table.schema.get_field_index("timestamp_utc"),
                "timestamp_utc",
                table.column("timestamp_utc").cast(pa.timestamp("us")),
            ),
            "not a UTC timestamp",
        ),
        "nullrep": (
            table.set_column(
                table.schema.get_field_index("repeat"), "repeat", pa.array([None], pa.int32())
            ),
            "null repeat",
        ),
    }
    for name, (t, _) in damaged.items():
        pq.write_table(t, tmp_path / f"{name}.parquet")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = results.load(tmp_path)
    assert len(df) == 1
    text = "\n".join(str(w.message) for w in caught)
    for name, (_, why) in damaged.items():
        assert f"{name}.parquet: " in text and why in text
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert compare_paths(tmp_path, tmp_path).matched == 1


def _real_row() -> dict[str, Any]:
    import datetime as dt

    from revbench.case import Case
    from revbench.caserun import _row

    case = Case.from_dict(
        {"suite": "s", "name": "c", "index": 0, "metrics": ["x"]}
        | {"model": {}, "data": {}, "train": {"seed": 0}, "measure": {"repeats": 1}}
    )
    row = _row(case, 0, run_id="r", host={}, status="ok", error=None, columns={}, wall_time_s=1.0)
    row = {k: v for k, v in row.items() if k in results.arrow_schema().names}
    row["timestamp_utc"] = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    return row
