"""The results store: schema, atomic writes, tolerant loading."""

from __future__ import annotations

import datetime as dt
import warnings
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from revbench import results
from revbench.errors import ResultsError


def row(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "schema_version": results.SCHEMA_VERSION,
        "suite": "s",
        "case": "c",
        "case_index": 0,
        "config_hash": "abc",
        "repeat": 0,
        "run_id": "r",
        "timestamp_utc": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
        "model.n_layers": 4,
        "peak_mem_bytes": 123,
        "status": "ok",
    }
    return {**base, **over}


def test_every_column_has_a_unique_name_and_metric_units_are_named() -> None:
    names = [c.name for c in results.columns()]
    assert len(names) == len(set(names))
    for c in results.columns():
        if c.unit == "bytes":
            assert c.name.endswith("_bytes"), c.name
        if c.unit == "s":
            assert "_s" in c.name, c.name


def test_write_then_load_round_trip_with_types(tmp_path: Path) -> None:
    results.write_row(row(), tmp_path / "s" / "a.parquet")
    results.write_row(
        row(case="d", peak_mem_bytes=None, status="oom", error="boom"), tmp_path / "s" / "b.parquet"
    )
    df = results.load(tmp_path)
    assert list(df["case"]) == ["c", "d"]
    # a null metric stays null (not 0), a value comes back exactly, in the schema's int64 column
    assert pd.isna(df.loc[1, "peak_mem_bytes"]) and df.loc[1, "error"] == "boom"
    assert df.loc[0, "peak_mem_bytes"] == 123 and pd.isna(df.loc[0, "error"])
    assert pq.read_schema(tmp_path / "s" / "b.parquet").field("peak_mem_bytes").type == pa.int64()
    assert list(tmp_path.joinpath("s").iterdir()) != []
    assert not [p for p in tmp_path.rglob(".*")]  # no temp files left behind


def test_write_rejects_columns_outside_the_schema(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="outside schema"):
        results.write_row(row(peak_memory_gb=1.0), tmp_path / "x.parquet")
    assert not list(tmp_path.iterdir())


def _torn_writer(real):  # type: ignore[no-untyped-def]
    """pq.write_table that writes half of the real file's bytes, then fails (disk full)."""

    def write(table: pa.Table, where: object, **kw: object) -> None:
        sink = pa.BufferOutputStream()
        real(table, sink, **kw)
        data = sink.getvalue().to_pybytes()
        where.write(data[: len(data) // 2])  # type: ignore[attr-defined]
        where.flush()  # type: ignore[attr-defined]
        raise OSError(28, "No space left on device")

    return write


def test_a_write_failing_halfway_leaves_the_old_state_never_a_torn_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import warnings

    folder = tmp_path / "s"
    results.write_row(row(case="old"), folder / "a.parquet")
    monkeypatch.setattr(results.pq, "write_table", _torn_writer(pq.write_table))
    with pytest.raises(OSError, match="No space"):
        results.write_row(row(case="new"), folder / "a.parquet")  # replacing a row
    with pytest.raises(OSError, match="No space"):
        results.write_row(row(case="new"), folder / "b.parquet")  # a new row
    monkeypatch.undo()
    assert sorted(p.name for p in folder.iterdir()) == ["a.parquet"]  # no temp file, no b
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a damaged file would be a ResultsWarning
        df = results.load(tmp_path)
    assert list(df["case"]) == ["old"]
    results.write_row(row(case="new"), folder / "a.parquet")  # and a whole write replaces it
    assert list(results.load(tmp_path)["case"]) == ["new"]


def test_load_skips_corrupt_and_foreign_files_with_a_warning(tmp_path: Path) -> None:
    results.write_row(row(), tmp_path / "good.parquet")
    good = (tmp_path / "good.parquet").read_bytes()
    (tmp_path / "truncated.parquet").write_bytes(good[: len(good) // 2])
    (tmp_path / "garbage.parquet").write_bytes(b"not parquet at all")
    pq.write_table(pa.table({"x": [1]}), tmp_path / "foreign.parquet")
    with pytest.warns(results.ResultsWarning) as record:
        df = results.load(tmp_path)
    assert len(df) == 1
    messages = " ".join(str(w.message) for w in record)
    assert "truncated.parquet" in messages and "garbage.parquet" in messages
    assert "foreign.parquet: not a revbench results file" in messages


def test_load_empty_folder_and_missing_path(tmp_path: Path) -> None:
    df = results.load(tmp_path)
    assert df.empty and "peak_mem_bytes" in df.columns
    with pytest.raises(ResultsError, match="no such results file or folder"):
        results.load(tmp_path / "nope")


def test_schema_doc_is_current() -> None:
    doc = Path(__file__).parent.parent / "docs" / "results-schema.md"
    assert results.schema_markdown() in doc.read_text(), (
        "docs/results-schema.md is stale: regenerate it with `revbench schema`"
    )


def test_a_row_that_fits_is_stored_as_it_is() -> None:
    ok = row()
    assert results.writable_row(ok) is ok
    full = {**dict.fromkeys(results.arrow_schema().names), **row()}  # every column
    assert results.writable_row(full) is full


def test_a_value_of_the_wrong_type_alone_makes_an_error_row() -> None:
    out = results.writable_row(row(tokens_per_s="fast"))
    assert out["status"] == "error" and "tokens_per_s" not in out
    assert out["error"].endswith(": tokens_per_s")


def test_values_that_do_not_fit_are_dropped_and_named_in_an_error_row(tmp_path: Path) -> None:
    """A value past its column's range, one of the wrong type and a column outside the schema:
    the row keeps every other value, becomes an error row naming the three, and stores."""
    bad = row(peak_mem_bytes=2**70, tokens_per_s="fast", not_a_column=1, search_trials=3)
    out = results.writable_row(bad)
    v = results.SCHEMA_VERSION
    assert out["status"] == "error"
    assert out["error"] == (
        f"could not store 3 value(s) of the schema v{v}: not_a_column, peak_mem_bytes, tokens_per_s"
    )
    assert not {"peak_mem_bytes", "tokens_per_s", "not_a_column"} & set(out)
    assert out["search_trials"] == 3 and out["model.n_layers"] == 4 and out["case"] == "c"
    assert bad["status"] == "ok" and bad["peak_mem_bytes"] == 2**70  # the input is left alone
    results.write_row(out, tmp_path / "r.parquet")
    (back,) = results.load(tmp_path).to_dict("records")
    assert back["status"] == "error" and back["search_trials"] == 3


def test_the_dropped_values_join_the_rows_own_error_and_only_five_are_named() -> None:
    v = results.SCHEMA_VERSION
    for n, named in ((5, "x0, x1, x2, x3, x4"), (6, "x0, x1, x2, x3, x4, ...")):
        extra = {f"x{i}": i for i in range(n)}
        out = results.writable_row(row(status="oom", error="boom", **extra))
        assert out["error"] == f"could not store {n} value(s) of the schema v{v}: {named}; boom"
        assert out["status"] == "error" and not set(extra) & set(out)


def test_rows_go_into_new_folders_and_load_reads_no_hidden_file_or_folder(tmp_path: Path) -> None:
    results.write_row(row(), tmp_path / "out" / "suite" / "a.parquet")  # two new folders
    results.write_row(row(case="hidden"), tmp_path / "out" / "suite" / ".b.parquet")
    (tmp_path / "out" / "suite" / "c.parquet").mkdir()  # a folder named like a row
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither is a damaged file to warn about
        df = results.load(tmp_path / "out")
    assert list(df["case"]) == ["c"]


def test_rows_come_back_in_time_order_with_a_fresh_index(tmp_path: Path) -> None:
    """Files are read in name order; the frame is in time-stamp order, indexed 0..n-1."""
    day = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    for name, case, hour in (("a", "late", 3), ("b", "early", 1), ("c", "middle", 2)):
        ts = day + dt.timedelta(hours=hour)
        results.write_row(row(case=case, timestamp_utc=ts), tmp_path / f"{name}.parquet")
    df = results.load(tmp_path)
    assert list(df["case"]) == ["early", "middle", "late"]
    assert list(df.index) == [0, 1, 2]
    assert df.loc[0, "case"] == "early"


def test_an_older_file_is_read_into_this_schemas_types(tmp_path: Path) -> None:
    """A file of an older schema version whose integer column was narrower, with a column this
    schema does not have: read next to a current file, its values are cast to this schema's
    type and the unknown column is kept."""
    results.write_row(row(case="new"), tmp_path / "new.parquet")
    table = pq.read_table(tmp_path / "new.parquet")
    i = table.schema.get_field_index("peak_mem_bytes")
    old = table.set_column(i, "peak_mem_bytes", pa.array([7], pa.int32()))
    old = old.set_column(table.schema.get_field_index("case"), "case", pa.array(["old"]))
    old = old.append_column("retired_metric", pa.array([1.5]))
    old = old.replace_schema_metadata({b"revbench.schema_version": b"1"})
    pq.write_table(old, tmp_path / "old.parquet")
    alone = results.load(tmp_path / "old.parquet")
    assert str(alone["peak_mem_bytes"].dtype) == "int64" and alone["peak_mem_bytes"][0] == 7
    df = results.load(tmp_path).set_index("case")
    assert str(df["peak_mem_bytes"].dtype) == "int64"
    assert df.loc["old", "peak_mem_bytes"] == 7 and df.loc["new", "peak_mem_bytes"] == 123
    assert df.loc["old", "retired_metric"] == 1.5 and pd.isna(df.loc["new", "retired_metric"])


def test_a_row_with_an_unknown_status_is_skipped_naming_it(tmp_path: Path) -> None:
    results.write_row(row(), tmp_path / "good.parquet")
    table = pq.read_table(tmp_path / "good.parquet")
    i = table.schema.get_field_index("status")
    for name, status in (("odd", "weird"), ("long", "x" * 50)):
        odd = table.set_column(i, "status", pa.array([status]))
        pq.write_table(odd, tmp_path / f"{name}.parquet")
    with pytest.warns(results.ResultsWarning) as record:
        df = results.load(tmp_path)
    assert len(df) == 1
    messages = sorted(str(w.message) for w in record)
    assert messages[0].endswith(f"long.parquet: unknown status {'x' * 40!r}")
    assert messages[1].endswith("odd.parquet: unknown status 'weird'")
