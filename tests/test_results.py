"""The results store: schema, atomic writes, tolerant loading."""

from __future__ import annotations

import datetime as dt
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
