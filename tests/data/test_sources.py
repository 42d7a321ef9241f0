"""Reading CSV / Parquet files and SQL sources, and the table fingerprint."""

from __future__ import annotations

import importlib.util
import io
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy

from shipml.config import DataConfig
from shipml.data.sources import (
    fingerprint,
    iter_table_file,
    load_table,
    mask_url,
    read_table_file,
)
from shipml.errors import DataError, DataSourceError, ShipmlError


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "age": [31, 45, 28, 52],
            "city": ["Paris", "Rome", "Paris", "Oslo"],
            "income": [41.5, 52.0, 38.25, 61.0],
            "churned": ["no", "yes", "no", "yes"],
        }
    )


def _assert_user_error(err: ShipmlError, *needles: str) -> None:
    assert err.hint, "every user-facing error carries a hint"
    assert "\n" not in err.message
    for needle in needles:
        assert needle in err.message


# --- files ---------------------------------------------------------------------------------------


def test_reads_csv(tmp_path: Path, frame: pd.DataFrame) -> None:
    path = tmp_path / "train.csv"
    frame.to_csv(path, index=False)
    pd.testing.assert_frame_equal(read_table_file(path), frame)
    pd.testing.assert_frame_equal(read_table_file(str(path)), frame)


@pytest.mark.parametrize("name", ["train.tsv", "train.txt"])
def test_reads_tab_separated(tmp_path: Path, frame: pd.DataFrame, name: str) -> None:
    path = tmp_path / name
    frame.to_csv(path, index=False, sep="\t")
    pd.testing.assert_frame_equal(read_table_file(path), frame)


def test_reads_comma_separated_txt(tmp_path: Path, frame: pd.DataFrame) -> None:
    path = tmp_path / "train.txt"
    frame.to_csv(path, index=False)
    pd.testing.assert_frame_equal(read_table_file(path), frame)


def test_reads_semicolon_csv(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_text("age;city\n31;Paris\n45;Rome\n", encoding="utf-8")
    df = read_table_file(path)
    assert list(df.columns) == ["age", "city"]
    assert df["age"].tolist() == [31, 45]


def test_reads_gzipped_csv(tmp_path: Path, frame: pd.DataFrame) -> None:
    path = tmp_path / "train.csv.gz"
    frame.to_csv(path, index=False, compression="gzip")
    pd.testing.assert_frame_equal(read_table_file(path), frame)


@pytest.mark.parametrize("name", ["train.parquet", "train.pq", "TRAIN.PARQUET"])
def test_reads_parquet(tmp_path: Path, frame: pd.DataFrame, name: str) -> None:
    path = tmp_path / name
    frame.to_parquet(path, index=False)
    pd.testing.assert_frame_equal(read_table_file(path), frame)


def test_strips_column_names(tmp_path: Path) -> None:
    path = tmp_path / "spaces.csv"
    path.write_text(" age ,city  ,\tincome\n1,a,2.5\n2,b,3.5\n", encoding="utf-8")
    assert list(read_table_file(path).columns) == ["age", "city", "income"]


def test_strips_parquet_column_names(tmp_path: Path) -> None:
    path = tmp_path / "spaces.parquet"
    pd.DataFrame({" a": [1], "b ": [2]}).to_parquet(path)
    assert list(read_table_file(path).columns) == ["a", "b"]


def test_duplicate_column_after_strip(tmp_path: Path) -> None:
    path = tmp_path / "dup.csv"
    path.write_text("age, age\n1,2\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_table_file(path)
    _assert_user_error(info.value, "dup.csv", "'age'")


@pytest.mark.parametrize("name", ["data.csv", "data.csv.gz", "data.tsv"])
def test_a_header_naming_a_column_twice_is_refused(tmp_path: Path, name: str) -> None:
    # pandas would read the second 'duration' as 'duration.1', silently.
    sep = "\t" if name.endswith(".tsv") else ","
    text = sep.join(["id", "duration", "age", "duration"]) + "\n" + sep.join("1234") + "\n"
    path = tmp_path / name
    frame = pd.read_csv(io.StringIO(text), sep=sep, header=None)
    frame.to_csv(path, sep=sep, index=False, header=False)
    with pytest.raises(DataError) as err:
        read_table_file(path)
    _assert_user_error(err.value, name, "'duration'", "columns 2 and 4")
    with pytest.raises(DataError) as err:
        list(iter_table_file(path))
    _assert_user_error(err.value, "'duration'", "columns 2 and 4")


def test_a_column_named_like_pandas_renames_duplicates_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("duration,duration.1,y\n1,2,3\n")
    assert list(read_table_file(path).columns) == ["duration", "duration.1", "y"]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    with pytest.raises(DataError) as info:
        read_table_file(path)
    _assert_user_error(info.value, "not found", str(path))


def test_directory(tmp_path: Path) -> None:
    folder = tmp_path / "data.csv"
    folder.mkdir()
    with pytest.raises(DataError) as info:
        read_table_file(folder)
    _assert_user_error(info.value, str(folder), "folder")


@pytest.mark.parametrize("name", ["train.xlsx", "train.json", "train"])
def test_unknown_extension(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_table_file(path)
    _assert_user_error(info.value, name, "unknown file type")
    assert "Parquet" in (info.value.hint or "")


@pytest.mark.parametrize("content", ["", "\n\n\n"])
def test_empty_csv(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_table_file(path)
    _assert_user_error(info.value, "empty.csv", "empty")


def test_header_only_csv(tmp_path: Path) -> None:
    path = tmp_path / "header.csv"
    path.write_text("age,city,churned\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_table_file(path)
    _assert_user_error(info.value, "header.csv", "no rows")


def test_parquet_without_rows(tmp_path: Path) -> None:
    path = tmp_path / "none.parquet"
    pd.DataFrame({"a": pd.Series([], dtype="int64")}).to_parquet(path)
    with pytest.raises(DataError) as info:
        read_table_file(path)
    _assert_user_error(info.value, "none.parquet", "no rows")


@pytest.mark.parametrize("name", ["garbage.csv", "garbage.parquet", "garbage.csv.gz"])
def test_binary_garbage(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(DataError) as info:
        read_table_file(path)
    _assert_user_error(info.value, name)


def test_not_utf8_is_read_and_a_wrong_data_encoding_is_named(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("name,n\nJosé,1\n".encode("latin-1"))
    df = read_table_file(path)
    assert df["name"].tolist() == ["José"]
    assert df.attrs["encoding"] == "cp1252"
    with pytest.raises(DataError) as info:
        read_table_file(path, encoding="utf-8")
    _assert_user_error(info.value, "latin.csv", "not utf-8 text")
    assert "data.encoding" in (info.value.hint or "")


def test_ragged_csv(tmp_path: Path) -> None:
    path = tmp_path / "ragged.csv"
    path.write_text("a,b\n1,2\n3,4,5,6\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_table_file(path)
    _assert_user_error(info.value, "ragged.csv", "line 3")


def test_load_table_resolves_relative_path(tmp_path: Path, frame: pd.DataFrame) -> None:
    (tmp_path / "data").mkdir()
    frame.to_csv(tmp_path / "data" / "train.csv", index=False)
    df = load_table(DataConfig(path="data/train.csv"), base_dir=tmp_path)
    pd.testing.assert_frame_equal(df, frame)


def test_load_table_absolute_path(tmp_path: Path, frame: pd.DataFrame) -> None:
    path = tmp_path / "train.parquet"
    frame.to_parquet(path)
    df = load_table(DataConfig(path=str(path)), base_dir=Path("/nonexistent"))
    pd.testing.assert_frame_equal(df, frame)


def test_load_table_missing_file_names_resolved_path(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_table(DataConfig(path="missing.csv"), base_dir=tmp_path)
    _assert_user_error(info.value, str(tmp_path / "missing.csv"))


# --- SQL -----------------------------------------------------------------------------------------


@pytest.fixture
def sqlite_db(tmp_path: Path, frame: pd.DataFrame) -> Path:
    path = tmp_path / "shop.db"
    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    try:
        frame.to_sql("customers", engine, index=False)
    finally:
        engine.dispose()
    return path


def test_sqlite_query(sqlite_db: Path, frame: pd.DataFrame) -> None:
    source = DataConfig(url=f"sqlite:///{sqlite_db}", query="SELECT * FROM customers")
    df = load_table(source, base_dir=Path("/nonexistent"))
    pd.testing.assert_frame_equal(df, frame)


def test_sqlite_query_with_where(sqlite_db: Path) -> None:
    source = DataConfig(
        url=f"sqlite:///{sqlite_db}", query="SELECT age, churned FROM customers WHERE age > 30"
    )
    df = load_table(source, base_dir=sqlite_db.parent)
    assert list(df.columns) == ["age", "churned"]
    assert df["age"].tolist() == [31, 45, 52]


def test_sqlite_relative_path_resolves_against_base_dir(sqlite_db: Path) -> None:
    source = DataConfig(url="sqlite:///shop.db", query="SELECT * FROM customers")
    assert len(load_table(source, base_dir=sqlite_db.parent)) == 4


def test_sqlite_column_names_are_stripped(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with sqlite3.connect(path) as conn:
        conn.execute('CREATE TABLE t (" a " INTEGER, b TEXT)')
        conn.execute("INSERT INTO t VALUES (1, 'x')")
    df = load_table(DataConfig(url=f"sqlite:///{path}", query="SELECT * FROM t"), tmp_path)
    assert list(df.columns) == ["a", "b"]


def test_sqlite_file_missing(tmp_path: Path) -> None:
    source = DataConfig(url="sqlite:////nonexistent/dir/x.db", query="SELECT 1")
    with pytest.raises(DataSourceError) as info:
        load_table(source, base_dir=tmp_path)
    _assert_user_error(info.value, "/nonexistent/dir/x.db")
    assert not Path("/nonexistent/dir/x.db").exists()


def test_sqlite_relative_file_missing_does_not_create_it(tmp_path: Path) -> None:
    source = DataConfig(url="sqlite:///nope.db", query="SELECT 1")
    with pytest.raises(DataSourceError):
        load_table(source, base_dir=tmp_path)
    assert not (tmp_path / "nope.db").exists()


def test_postgres_cannot_connect_hides_password(tmp_path: Path) -> None:
    source = DataConfig(url="postgresql://u:secret@127.0.0.1:1/db", query="SELECT 1")
    with pytest.raises(DataSourceError) as info:
        load_table(source, base_dir=tmp_path)
    err = info.value
    assert "secret" not in err.message
    assert "secret" not in str(err)
    assert "secret" not in (err.hint or "")
    assert "127.0.0.1" in err.message
    assert err.__cause__ is None
    assert err.__suppress_context__
    _assert_user_error(err)
    if importlib.util.find_spec("psycopg2") or importlib.util.find_spec("psycopg"):
        assert "cannot connect" in err.message


def test_missing_driver_hint(tmp_path: Path) -> None:
    if importlib.util.find_spec("MySQLdb"):
        pytest.skip("mysqlclient is installed here")
    source = DataConfig(url="mysql://u:secret@127.0.0.1:1/db", query="SELECT 1")
    with pytest.raises(DataSourceError) as info:
        load_table(source, base_dir=tmp_path)
    assert "secret" not in info.value.message
    assert "not installed" in info.value.message
    assert "pip install" in (info.value.hint or "")


def test_malformed_url(tmp_path: Path) -> None:
    source = DataConfig(url="not a url:secret@", query="SELECT 1")
    with pytest.raises(DataSourceError) as info:
        load_table(source, base_dir=tmp_path)
    assert "secret" not in info.value.message
    _assert_user_error(info.value, "not a valid database URL")


def test_unknown_dialect(tmp_path: Path) -> None:
    source = DataConfig(url="nosuchdb://u:secret@host/db", query="SELECT 1")
    with pytest.raises(DataSourceError) as info:
        load_table(source, base_dir=tmp_path)
    assert "secret" not in info.value.message
    _assert_user_error(info.value, "unknown database type")


def test_query_with_colon_in_a_literal(sqlite_db: Path) -> None:
    query = "SELECT age, 'note :x' AS note FROM customers"
    df = load_table(DataConfig(url=f"sqlite:///{sqlite_db}", query=query), sqlite_db.parent)
    assert df["note"].iloc[0] == "note :x"


def test_bad_query(sqlite_db: Path) -> None:
    source = DataConfig(url=f"sqlite:///{sqlite_db}", query="SELECT * FROM no_such_table")
    with pytest.raises(DataSourceError) as info:
        load_table(source, base_dir=sqlite_db.parent)
    _assert_user_error(info.value, "data.query failed", "no_such_table")
    assert "Background on this error" not in info.value.message


def test_query_syntax_error(sqlite_db: Path) -> None:
    source = DataConfig(url=f"sqlite:///{sqlite_db}", query="SELEKT oops")
    with pytest.raises(DataSourceError) as info:
        load_table(source, base_dir=sqlite_db.parent)
    _assert_user_error(info.value, "data.query failed")


def test_empty_query_result(sqlite_db: Path) -> None:
    source = DataConfig(url=f"sqlite:///{sqlite_db}", query="SELECT * FROM customers WHERE 1 = 0")
    with pytest.raises(DataSourceError) as info:
        load_table(source, base_dir=sqlite_db.parent)
    _assert_user_error(info.value, "no rows")


def test_statement_without_result(sqlite_db: Path) -> None:
    source = DataConfig(url=f"sqlite:///{sqlite_db}", query="DELETE FROM customers WHERE 1 = 0")
    with pytest.raises(DataSourceError) as info:
        load_table(source, base_dir=sqlite_db.parent)
    _assert_user_error(info.value, "no result table")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:secret@db:5432/x", "postgresql://u:***@db:5432/x"),
        ("sqlite:///a.db", "sqlite:///a.db"),
        ("weird url://u:secret@host", "weird url://***@host"),
        ("not a url:secret@host", "***@host"),
    ],
)
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown


# --- fingerprint ---------------------------------------------------------------------------------


def test_fingerprint_is_stable(frame: pd.DataFrame) -> None:
    first = fingerprint(frame)
    assert len(first) == 64
    assert fingerprint(frame.copy()) == first
    assert fingerprint(frame.set_axis([10, 11, 12, 13])) == first


def test_fingerprint_survives_a_file_round_trip(tmp_path: Path, frame: pd.DataFrame) -> None:
    frame.to_parquet(tmp_path / "a.parquet")
    frame.to_csv(tmp_path / "a.csv", index=False)
    assert fingerprint(read_table_file(tmp_path / "a.parquet")) == fingerprint(frame)
    assert fingerprint(read_table_file(tmp_path / "a.csv")) == fingerprint(frame)


def test_fingerprint_sees_changes(frame: pd.DataFrame) -> None:
    base = fingerprint(frame)
    changed = frame.copy()
    changed.loc[0, "age"] = 32
    assert fingerprint(changed) != base
    assert fingerprint(frame.rename(columns={"age": "years"})) != base
    assert fingerprint(frame.astype({"age": "float64"})) != base
    assert fingerprint(frame.iloc[:3]) != base
    assert fingerprint(frame.iloc[::-1]) != base


def test_fingerprint_unhashable_cells() -> None:
    df = pd.DataFrame({"tags": [["a"], ["b", "c"]]})
    assert fingerprint(df) == fingerprint(df.copy())


def test_a_postgres_url_gets_the_driver_shipml_installs(tmp_path: Path) -> None:
    from shipml.data.sources import resolve_sql_url

    for given in ("postgresql://u:pw@db:5432/x", "postgres://u:pw@db:5432/x"):
        assert resolve_sql_url(given, tmp_path) == "postgresql+psycopg2://u:pw@db:5432/x"
    assert resolve_sql_url("postgresql+psycopg2://db/x", tmp_path) == "postgresql+psycopg2://db/x"
