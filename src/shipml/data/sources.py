"""Reading the training table: CSV / Parquet files and SQL queries, plus a content fingerprint."""

from __future__ import annotations

import codecs
import gzip
import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pandas as pd

from shipml.config import DataConfig
from shipml.errors import DataError, DataSourceError

CSV_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".txt.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
_PATH_HINT = "check `data.path` in shipml.yaml (relative paths start at the config file's folder)"

# Python package that provides the default DBAPI driver of each SQLAlchemy dialect.
_DRIVER_PACKAGES = {
    "psycopg2": "psycopg2-binary",
    "psycopg": "'psycopg[binary]'",
    "MySQLdb": "mysqlclient",
    "pymysql": "pymysql",
    "pyodbc": "pyodbc",
    "oracledb": "oracledb",
    "cx_Oracle": "oracledb",
    "asyncpg": "asyncpg",
    "pg8000": "pg8000",
}
_DIALECT_PACKAGES = {
    "postgresql": "psycopg2-binary (or: pip install 'shipml[postgres]')",
    "mysql": "mysqlclient (or use mysql+pymysql:// with pymysql)",
    "mariadb": "mysqlclient",
    "mssql": "pyodbc",
    "oracle": "oracledb",
}


def _first_line(text: object, limit: int = 200) -> str:
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _file_kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    return None


AUTO_ENCODING = "auto"
_UTF8_NAMES = frozenset({"utf-8", "utf8", "utf-8-sig", "ascii"})
_SAMPLE_BYTES = 1 << 20  # what the detector looks at; the chosen codec then reads the whole file


def _open_bytes(path: Path) -> IO[bytes]:
    if path.name.lower().endswith(".gz"):
        return gzip.GzipFile(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def _decodes(path: Path, encoding: str) -> bool:
    """Whether the whole file is valid text in ``encoding`` (read in blocks)."""
    decoder = codecs.getincrementaldecoder(encoding)()
    try:
        with _open_bytes(path) as handle:
            while block := handle.read(_SAMPLE_BYTES):
                decoder.decode(block)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


_WORD = re.compile(r"[^\W\d_]+")


def _western(text: str) -> bool:
    """Whether text decoded as Windows-1252 reads as a Western language: its words with
    accents mostly hold plain letters too (José, Zürich, été), where Cyrillic, Greek or Arabic
    bytes read that way give longer words of accented letters only (Ìîñêâà)."""
    accented = [w for w in _WORD.findall(text) if not w.isascii()]
    odd = sum(len(w) >= 4 and not any(c.isascii() for c in w) for w in accented)
    return odd <= len(accented) / 2


def detect_encoding(path: str | Path) -> str:
    """The text encoding of a CSV file: UTF-8 (``utf-8-sig`` with a byte-order mark), UTF-16
    with a byte-order mark, else Windows-1252 (what Excel writes "CSV" in, in Western locales;
    Latin-1's printable characters and €) where the text reads as a Western language, else
    charset-normalizer's guess, else Latin-1, which reads any bytes.

    charset-normalizer is not asked first: on short tables of names and numbers it often names
    a neighbouring codec (cp1250, cp775, even an Arabic one) that reads the accents wrong.
    """
    path = Path(path)
    with _open_bytes(path) as handle:
        sample = handle.read(_SAMPLE_BYTES)
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    if _decodes(path, "utf-8"):
        return "utf-8"
    if _western(sample.decode("cp1252", errors="replace")) and _decodes(path, "cp1252"):
        return "cp1252"
    # (imported here: it adds tens of milliseconds to every command, and only files that are
    # not UTF-8 need it)
    import charset_normalizer

    # Its candidates, best first; a Windows code page first of all (what Excel writes).
    guesses = [str(match.encoding) for match in charset_normalizer.from_bytes(sample)]
    for guess in sorted(guesses, key=lambda name: not name.startswith("cp125")):
        if _decodes(path, guess):
            return guess
    return "latin-1"


def not_utf8(encoding: str | None) -> str | None:
    """``encoding`` where it is worth saying (not UTF-8 or ASCII), else None."""
    if encoding is None or encoding.lower().replace("_", "-") in _UTF8_NAMES:
        return None
    return encoding


def file_encoding(path: Path, encoding: str = AUTO_ENCODING) -> str:
    """The encoding a CSV file is read with: ``encoding``, or the detected one for "auto"."""
    return detect_encoding(path) if encoding == AUTO_ENCODING else encoding


def _csv_separator(path: Path, encoding: str = "utf-8") -> str:
    """Tab for .tsv. Otherwise comma (pandas' default), unless the header line has no comma but
    has tabs or semicolons (as spreadsheet programs in many locales write CSV)."""
    name = path.name.lower()
    if name.endswith((".tsv", ".tsv.gz")):
        return "\t"
    if name.endswith(".gz"):
        return ","
    try:
        with path.open(encoding=encoding, errors="replace") as handle:
            header = handle.readline()
    except OSError:
        return ","
    if "," not in header:
        if "\t" in header:
            return "\t"
        if ";" in header:
            return ";"
    return ","


def _clean_columns(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """Strip surrounding whitespace from column names; refuse duplicates that creates."""
    names = [c.strip() if isinstance(c, str) else c for c in df.columns]
    seen: set[object] = set()
    for name in names:
        if name in seen:
            raise DataError(
                f"{where}: column '{name}' appears more than once",
                "rename or drop the duplicate column",
            )
        seen.add(name)
    out = df.copy(deep=False)
    out.columns = pd.Index(names)
    return out


def _checked_kind(path: Path, from_config: bool = False) -> str:
    """The file's kind; a missing file or a folder is an error whose hint points where the path
    came from: `data.path` in shipml.yaml, or the command line."""
    if not path.exists():
        raise DataError(
            f"data file not found: {path}",
            _PATH_HINT if from_config else "check the file name and folder",
        )
    if path.is_dir():
        raise DataError(
            f"{path} is a folder, not a data file",
            f"{'point `data.path` at' if from_config else 'give'} a CSV or Parquet file",
        )
    kind = _file_kind(path)
    if kind is None:
        raise DataError(
            f"{path}: unknown file type '{''.join(path.suffixes) or '(none)'}'",
            "use a CSV (.csv, .tsv, .txt, .csv.gz) or Parquet (.parquet, .pq) file",
        )
    return kind


@contextmanager
def _reading(path: Path, kind: str, encoding: str = "utf-8") -> Iterator[None]:
    """Turn the errors of reading a data file into DataErrors that name the file and the fix."""
    try:
        yield
    except pd.errors.EmptyDataError:
        raise DataError(
            f"{path}: the file is empty (no columns)", "give a file with a header row and data rows"
        ) from None
    except UnicodeError as err:
        where = f" (byte {err.start})" if isinstance(err, UnicodeDecodeError) else ""
        raise DataError(
            f"{path}: not {encoding} text{where}: cannot read it as CSV",
            "set data.encoding in shipml.yaml to the file's encoding (e.g. cp1252), or to auto",
        ) from None
    except pd.errors.ParserError as err:
        raise DataError(
            f"{path}: cannot parse as CSV ({_first_line(err)})",
            "check the separator and quoting; every row needs as many fields as the header",
        ) from None
    except EOFError:  # a compressed file cut short: click would print a bare "Aborted."
        raise DataError(
            f"{path}: the compressed file is cut short (it ends before its data does)",
            "copy or download the file again",
        ) from None
    except (ValueError, OSError) as err:  # pyarrow's ArrowInvalid/ArrowIOError, gzip errors, ...
        what = "Parquet" if kind == "parquet" else "CSV"
        raise DataError(
            f"{path}: cannot read it as {what} ({_first_line(err)})",
            f"check that the file is a valid {what} file",
        ) from None
    except Exception as err:  # any other pyarrow error (ArrowException is not always a ValueError)
        if type(err).__module__.startswith("pyarrow"):
            raise DataError(
                f"{path}: cannot read it as Parquet ({_first_line(err)})",
                "check that the file is a valid Parquet file",
            ) from None
        raise


def _csv_header_duplicates(path: Path, sep: str, encoding: str) -> None:
    """Refuse a CSV whose header names a column twice: pandas would read the second as
    ``name.1`` and the user's config would silently point at only one of them."""
    header = pd.read_csv(
        path, sep=sep, header=None, nrows=1, dtype=str, keep_default_na=False, encoding=encoding
    )
    names = [str(v).strip() for v in header.iloc[0]] if len(header) else []
    seen: dict[str, int] = {}
    for position, name in enumerate(names, start=1):
        if name in seen:
            raise DataError(
                f"{path}: column '{name}' appears more than once in the header "
                f"(columns {seen[name]} and {position})",
                "rename or drop the duplicate column",
            )
        seen[name] = position


def _checked_frame(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    if df.shape[1] == 0:
        raise DataError(
            f"{path}: the file has no columns", "give a file with a header row and data rows"
        )
    if len(df) == 0:
        raise DataError(f"{path}: the file has a header but no rows", "add data rows to the file")
    return _clean_columns(df, str(path))


def read_table_file(
    path: str | Path, from_config: bool = False, encoding: str = AUTO_ENCODING
) -> pd.DataFrame:
    """Read a CSV (.csv, .tsv, .txt, optionally .gz) or Parquet (.parquet, .pq) file;
    ``from_config``: the path is shipml.yaml's `data.path` (for the error's hint). A CSV is
    read in ``encoding`` ("auto": see ``detect_encoding``); the one used is in
    ``df.attrs["encoding"]``."""
    path = Path(path)
    kind = _checked_kind(path, from_config)
    used = encoding
    with _reading(path, kind, encoding):
        if kind == "parquet":
            df = pd.read_parquet(path)
        else:
            used = file_encoding(path, encoding)
            sep = _csv_separator(path, used)
            df = pd.read_csv(path, sep=sep, low_memory=False, encoding=used)
            _csv_header_duplicates(path, sep, used)
    df = _checked_frame(df, path)
    if kind == "csv":
        df.attrs["encoding"] = used
    return df


def iter_table_file(
    path: str | Path, chunk_rows: int = 200_000, encoding: str = AUTO_ENCODING
) -> Iterator[pd.DataFrame]:
    """The rows of a CSV or Parquet file in chunks of at most ``chunk_rows``, so a file of any
    size is read in bounded memory; the same checks and messages as ``read_table_file`` (a
    CSV's encoding is in each chunk's ``attrs["encoding"]``)."""
    path = Path(path)
    kind = _checked_kind(path)
    used = encoding
    with _reading(path, kind, encoding):
        batches: Iterable[pd.DataFrame]
        if kind == "parquet":
            import pyarrow.parquet as pq

            batches = (
                batch.to_pandas()
                for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows)
            )
        else:
            used = file_encoding(path, encoding)
            sep = _csv_separator(path, used)
            _csv_header_duplicates(path, sep, used)
            batches = pd.read_csv(
                path, sep=sep, low_memory=False, chunksize=chunk_rows, encoding=used
            )
        first = True
        for chunk in batches:
            out = _checked_frame(chunk, path) if first else _clean_columns(chunk, str(path))
            if kind == "csv":
                out.attrs["encoding"] = used
            yield out
            first = False
        if first:
            raise DataError(
                f"{path}: the file has a header but no rows", "add data rows to the file"
            )


# --- SQL ---------------------------------------------------------------------------------------

_BIND = re.compile(r"(?<![:\w\\]):(\w+)(?!:)")  # what sqlalchemy.text() takes for a bind parameter
_BACKGROUND = re.compile(r"\s*\(Background on this error at: [^)]*\)")


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, safe to print."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:
        return _mask_unparsed(url)
    return parsed.render_as_string(hide_password=True) if parsed.password is not None else url


def _mask_unparsed(url: str) -> str:
    """For a URL SQLAlchemy cannot parse: hide everything between the scheme and the last '@'."""
    if "@" not in url:
        return url
    scheme = url.split("://", 1)[0] + "://" if "://" in url else ""
    return f"{scheme}***@{url.rsplit('@', 1)[1]}"


def _url_password(url: str) -> str | None:
    from sqlalchemy.engine import make_url

    try:
        password = make_url(url).password
    except Exception:
        return None
    return str(password) if password else None


def _scrub(text: str, password: str | None) -> str:
    return text.replace(password, "***") if password else text


def _db_message(err: BaseException) -> str:
    """The database's own one-line message, without SQLAlchemy's statement dump and link."""
    orig = getattr(err, "orig", None)
    text = str(orig if orig is not None else err)
    return _first_line(_BACKGROUND.sub("", text))


def _literal_colons(query: str) -> str:
    """Escape ``:name`` so sqlalchemy.text() does not read it as a bind parameter (shipml passes
    none): a query like ``WHERE note = 'see :x'`` then runs as written."""
    return _BIND.sub(r"\\:\1", query)


def _resolve_sqlite(url: str, base_dir: Path) -> str:
    """Make a relative SQLite file path relative to base_dir; refuse a database file that is
    missing (SQLite would silently create an empty one)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:
        return url
    if parsed.get_backend_name() != "sqlite":
        return url
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return url
    db_path = Path(database).expanduser()
    if not db_path.is_absolute():
        db_path = base_dir / db_path
    if not db_path.is_file():
        raise DataSourceError(
            f"SQLite database file not found: {db_path} (data.url {mask_url(url)})",
            "check the path in `data.url`; relative paths start at the config file's folder",
        )
    return parsed.set(database=str(db_path)).render_as_string(hide_password=False)


def _default_driver(url: str) -> str:
    """SQLAlchemy 2.1 maps a bare postgresql:// (or postgres://) to psycopg (v3); shipml's
    postgres extra installs psycopg2. Use psycopg2 when only it is installed."""
    import importlib.util

    from sqlalchemy.engine import make_url

    if url.startswith("postgres://"):  # the short spelling (Heroku's), refused by SQLAlchemy
        url = "postgresql://" + url[len("postgres://") :]
    try:
        parsed = make_url(url)
    except Exception:
        return url
    if parsed.drivername != "postgresql":
        return url
    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2"):
        return parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    return url


def resolve_sql_url(url: str, base_dir: Path) -> str:
    """The URL shipml connects to: relative SQLite paths resolved against base_dir (a missing
    SQLite file raises DataSourceError), and postgresql:// served by psycopg2 when psycopg (v3),
    SQLAlchemy 2.1's default driver, is not installed."""
    return _default_driver(_resolve_sqlite(url, Path(base_dir)))


def _read_sql(
    url: str, query: str, base_dir: Path, past: tuple[str, Any] | None = None
) -> pd.DataFrame:
    """The rows of ``query``; with ``past=(column, value)`` only those whose ``column`` is
    greater than ``value`` (the database filters them: a watermark)."""
    import sqlalchemy
    from sqlalchemy import exc

    shown = mask_url(url)
    password = _url_password(url)
    url = resolve_sql_url(url, base_dir)
    try:
        engine = sqlalchemy.create_engine(url)
    except exc.NoSuchModuleError as err:
        raise DataSourceError(
            f"data.url {shown}: unknown database type ({_first_line(err)})",
            "use a SQLAlchemy URL such as postgresql://user:password@host:5432/dbname",
        ) from None
    except exc.ArgumentError:
        raise DataSourceError(
            f"data.url {shown}: not a valid database URL",
            "use a SQLAlchemy URL such as postgresql://user:password@host:5432/dbname "
            "or sqlite:///file.db",
        ) from None
    except ImportError as err:
        module = getattr(err, "name", None) or ""
        scheme = shown.split(":", 1)[0]
        package = _DIALECT_PACKAGES.get(scheme) if "+" not in scheme else None
        package = package or _DRIVER_PACKAGES.get(module.split(".")[0], module or "the driver")
        raise DataSourceError(
            f"data.url {shown}: the database driver '{module or '?'}' is not installed",
            f"pip install {package}",
        ) from None
    try:
        try:
            conn = engine.connect()
        except exc.SQLAlchemyError as err:
            raise DataSourceError(
                f"cannot connect to {shown}: {_scrub(_db_message(err), password)}",
                "check host, port, database name, user and password in `data.url`, "
                "and that the database server is running",
            ) from None
        with conn:
            sql, params = _literal_colons(query), None
            if past is not None and past[1] is not None:
                column = engine.dialect.identifier_preparer.quote(past[0])
                inner = sql.strip().rstrip(";")
                sql = f"SELECT * FROM ({inner}) AS shipml_source WHERE {column} > :shipml_mark"
                params = {"shipml_mark": past[1]}
            try:
                df = pd.read_sql_query(sqlalchemy.text(sql), conn, params=params)
            except exc.ResourceClosedError:
                raise DataSourceError(
                    f"data.query on {shown} returned no result table",
                    "give a SELECT query in `data.query`",
                ) from None
            except exc.SQLAlchemyError as err:
                raise DataSourceError(
                    f"data.query failed on {shown}: {_scrub(_db_message(err), password)}",
                    "fix `data.query` (try it in a SQL client first)",
                ) from None
    finally:
        engine.dispose()
    if df.shape[1] == 0 or len(df) == 0:
        if past is not None and past[1] is not None:
            raise DataSourceError(
                f"data.query on {shown} returned no rows past the watermark "
                f"{past[0]} > {past[1]!r}",
                "there is nothing new to retrain on yet; run again when new rows arrive",
            )
        raise DataSourceError(
            f"data.query on {shown} returned no rows",
            "check the query's WHERE clause and that the table has data",
        )
    return _clean_columns(df, f"data.query on {shown}")


def load_table(source: DataConfig, base_dir: Path, target: str = "label") -> pd.DataFrame:
    """Load the training table from a file (relative to base_dir), an image folder or .npz
    (one row per image: pixel columns and ``target``; the ImageSpec in ``df.attrs["image"]``),
    or a SQL query. ``data.date_format`` goes along in ``df.attrs["date_format"]``."""
    if source.path:
        path = Path(source.path).expanduser()
        if not path.is_absolute():
            path = Path(base_dir) / path
        from shipml.data import images

        if images.is_image_source(path):
            if path.suffix.lower() == ".npz":
                df, spec = images.read_npz(path, target)
            else:
                settings = source.images
                df, spec = images.read_image_folder(
                    path, target, settings.size, settings.channels, settings.on_mismatch
                )
            df.attrs["image"] = spec.to_dict()
            return df
        df = read_table_file(path, from_config=True, encoding=source.encoding)
    elif not source.url or not source.query:
        raise DataSourceError(
            "data: give 'path', or 'url' and 'query'", "fix the `data` section of shipml.yaml"
        )
    else:
        df = _read_sql(source.url, source.query, Path(base_dir))
    return _with_date_format(df, source)


def _with_date_format(df: pd.DataFrame, source: DataConfig) -> pd.DataFrame:
    if source.date_format is not None:  # read by shipml.data.infer.infer_schema
        df.attrs["date_format"] = source.date_format
    return df


def read_data_file(path: str | Path, source: DataConfig) -> pd.DataFrame:
    """A table file given in place of the configured source (`train --data`, `retrain
    --data`, `evaluate`, `reproduce --data`), read as ``data.path`` is: in ``data.encoding``,
    its text dates in ``data.date_format``."""
    return _with_date_format(read_table_file(path, encoding=source.encoding), source)


def read_sql_past(source: DataConfig, base_dir: Path, column: str, value: Any) -> pd.DataFrame:
    """The rows of the SQL source whose ``column`` is past ``value`` (all rows when None)."""
    if not source.url or not source.query:
        raise DataSourceError(
            "data.watermark_column needs a SQL source", "give data.url and data.query"
        )
    return _with_date_format(
        _read_sql(source.url, source.query, Path(base_dir), (column, value)), source
    )


def fingerprint(df: pd.DataFrame) -> str:
    """A sha256 hex digest of the table's content, column names and dtypes (not the index)."""
    digest = hashlib.sha256()
    header = [[str(c), str(t)] for c, t in zip(df.columns, df.dtypes, strict=True)]
    digest.update(json.dumps(header).encode("utf-8"))
    try:
        hashed = pd.util.hash_pandas_object(df, index=False)
    except TypeError:  # unhashable cells (lists, dicts): hash their text form
        hashed = pd.util.hash_pandas_object(df.astype(str), index=False)
    digest.update(str(len(df)).encode("ascii"))
    digest.update(hashed.to_numpy().tobytes())
    return digest.hexdigest()
