"""Faults of the machine are recognised behind whatever wrapped them (real OS and SQLite errors,
no root needed: /dev/full always reports a full disk)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from shipml.errors import EnvironmentFault, environment_fault, half_written


def _caught(action: object) -> BaseException:
    try:
        action()  # type: ignore[operator]
    except Exception as err:
        return err
    raise AssertionError("no error")


def test_a_full_disk_is_named_with_its_path_even_when_wrapped() -> None:
    def write() -> None:
        with open("/dev/full", "w") as handle:
            handle.write("x" * 10_000)
            handle.flush()

    def wrapped() -> None:
        try:
            write()
        except OSError as err:
            raise RuntimeError("logging the artifact failed") from err

    fault = environment_fault(_caught(wrapped), path=Path("/data/out.csv"))
    assert isinstance(fault, EnvironmentFault)
    assert fault.message == "/data/out.csv: no space left on the device"
    assert fault.exit_code == 2
    assert environment_fault(_caught(lambda: 1 / 0)) is None


def test_a_read_only_sqlite_store_is_recognised_from_its_message(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    with closing(sqlite3.connect(db)) as con:
        con.execute("CREATE TABLE runs (status TEXT)")
        con.commit()

    def update() -> None:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            try:
                con.execute("INSERT INTO runs VALUES ('FAILED')")
            except sqlite3.OperationalError as err:  # as MLflow re-raises it: the text only
                raise ValueError(f"(sqlite3.OperationalError) {err}") from None

    fault = environment_fault(_caught(update), store=tmp_path)
    assert fault is not None and fault.message == f"{tmp_path}: the MLflow store is read-only"


def test_only_a_file_inside_the_store_counts_as_half_written(tmp_path: Path) -> None:
    inside = tmp_path / ".shipml" / "artifacts" / "model.skops"
    full = OSError(28, "No space left on device", "/tmp/scratch/model.skops", None, str(inside))
    assert half_written(full, tmp_path / ".shipml") == inside
    assert half_written(full, tmp_path / "elsewhere") is None
    denied = OSError(13, "Permission denied", str(inside))
    assert half_written(denied, tmp_path / ".shipml") is None


@pytest.mark.parametrize("errno_", [13, 30])
def test_read_only_and_forbidden_paths_are_faults(errno_: int) -> None:
    fault = environment_fault(OSError(errno_, "no", "/srv/p/.shipml/reports"))
    assert fault is not None and fault.message.startswith("/srv/p/.shipml/reports: ")


def test_a_store_another_command_holds_is_a_fault_that_says_to_wait(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    with closing(sqlite3.connect(db, isolation_level=None)) as holder:
        holder.execute("CREATE TABLE runs (status TEXT)")
        holder.execute("BEGIN EXCLUSIVE")  # another command's write transaction

        def update() -> None:
            with closing(sqlite3.connect(db, timeout=0.1)) as con:
                con.execute("INSERT INTO runs VALUES ('FAILED')")

        fault = environment_fault(_caught(update), store=tmp_path)
        holder.execute("ROLLBACK")
    assert fault is not None and "another command held the MLflow store" in fault.message
    assert fault.hint is not None and "let the other command finish" in fault.hint
