"""The prediction log on real files: records whole or not at all (a short write is cut back),
rotation by size, retention by days and bytes that never touches a file being written, and a
torn last line cut off at start."""

from __future__ import annotations

import json
import os
import resource
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from shipml.serving.answered import AnsweredIds
from shipml.serving.logkeeping import Retention, log_files, repair
from shipml.serving.predlog import LogUnavailable, PredictionLog, read_predictions


def _record(log: PredictionLog, size: int = 100, **extra: Any) -> dict[str, Any]:
    return {"request_id": log.ids.new(), "inputs": {"text": "x" * size}, "time": 1.0, **extra}


def _lines(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), "a torn last line"
    return [json.loads(line) for line in data.splitlines()]


def test_files_rotate_at_the_size_given(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, rotate_bytes=4096)
    written = [_record(log) for _ in range(100)]
    written.append(_record(log, size=10_000))  # larger than a file: a file of its own
    written.append(_record(log))
    for record in written:
        log.prediction(record)
    log.close()
    files = sorted(log_files(tmp_path))
    assert len(files) >= 4
    sizes = sorted(f.stat().st_size for f in files)
    assert sizes[-1] > 10_000 and all(size <= 4096 for size in sizes[:-1])
    assert all(f.name.startswith(log.ids.prefix) for f in files)
    logged = [r["request_id"] for r in read_predictions(tmp_path)]
    assert logged == [r["request_id"] for r in written]


def test_a_short_write_is_cut_back_and_nothing_is_answered(tmp_path: Path) -> None:
    # A file size limit makes the kernel write part of a record, then refuse the rest
    # (EFBIG), as a full disk does with ENOSPC; Python ignores the SIGXFSZ that comes with it.
    log = PredictionLog(tmp_path)
    first = _record(log)
    log.prediction(first)
    (path,) = log_files(tmp_path)
    size = path.stat().st_size
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 50, hard))
    try:
        with pytest.raises(LogUnavailable, match="cannot be written"):
            log.prediction(_record(log, size=500))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert path.stat().st_size == size  # cut back to the record's start
    assert log.failure is not None and "cannot be written" in log.failure
    last = _record(log)
    log.prediction(last)  # the next record lands on a whole line
    assert log.failure is None
    log.close()
    assert [r["request_id"] for r in _lines(path)] == [first["request_id"], last["request_id"]]


def test_a_torn_last_line_is_cut_at_start_unless_a_live_process_writes_it(
    tmp_path: Path,
) -> None:
    day = tmp_path / datetime.now(UTC).strftime("%Y-%m-%d")
    day.mkdir()
    crashed = day / "0123456789abcdef0123-000000.jsonl"
    crashed.write_bytes(b'{"request_id":"a"}\n{"request_id":"b"}\n{"request_id":"c","inp')
    live = PredictionLog(tmp_path)
    live.prediction(_record(live))
    (live_file,) = [p for p in log_files(tmp_path) if p.name.startswith(live.ids.prefix)]
    assert crashed.read_bytes() == b'{"request_id":"a"}\n{"request_id":"b"}\n'  # cut at start
    with live_file.open("ab") as handle:  # as if the live process were mid-record
        handle.write(b'{"request_id":"partial')
    assert repair(tmp_path) == 0  # held by the live process: not touched
    assert live_file.read_bytes().endswith(b'"partial')
    live.close()
    assert repair(tmp_path) == 1  # its process is gone: now it is cut
    assert len(_lines(live_file)) == 1


def test_retention_removes_old_days_and_the_oldest_bytes_never_a_live_file(
    tmp_path: Path,
) -> None:
    old_day = tmp_path / "2001-01-01"
    old_day.mkdir()
    (old_day / "aaaaaaaaaaaaaaaaaaaa-000000.jsonl").write_text('{"request_id":"x"}\n')
    (tmp_path / "feedback" / "2001-01-01").mkdir(parents=True)
    (tmp_path / "feedback" / "2001-01-01" / "a-000000.jsonl").write_text("{}\n")
    dead = PredictionLog(tmp_path, rotate_bytes=4096)  # a process that wrote and ended
    for _ in range(40):
        dead.prediction(_record(dead))
    dead.close()
    dead_files = sorted(p for p in log_files(tmp_path) if p.name.startswith(dead.ids.prefix))
    for age, path in enumerate(reversed(dead_files)):  # oldest first by modification time
        os.utime(path, (1e9 - age, 1e9 - age))
    live = PredictionLog(tmp_path)
    live.prediction(_record(live, size=20_000))
    (live_file,) = [p for p in log_files(tmp_path) if p.name.startswith(live.ids.prefix)]
    removed = Retention(days=30, max_bytes=5000).apply(tmp_path)
    assert not old_day.exists() and not (tmp_path / "feedback" / "2001-01-01").exists()
    assert live_file.exists()  # over the bound by itself, but being written
    assert set(dead_files) <= set(removed)  # every file past the bound, oldest first
    live.prediction(_record(live))
    live.close()
    assert len(_lines(live_file)) == 2
    # Off: nothing is removed.
    assert Retention(days=None, max_bytes=None).apply(tmp_path) == []


def test_answered_ids_are_read_from_the_files_of_the_process_that_gave_them(
    tmp_path: Path,
) -> None:
    index = AnsweredIds(tmp_path)
    one, other = PredictionLog(tmp_path, rotate_bytes=4096), PredictionLog(tmp_path)
    single = [_record(one) for _ in range(50)]
    for record in single:
        one.prediction(record)
    batch = _record(other, rows=3, prediction=["a", "b", "c"])
    other.prediction(batch)
    assert all(r["request_id"] in index for r in single)
    assert f"{batch['request_id']}-2" in index and f"{batch['request_id']}-3" not in index
    assert batch["request_id"] not in index and f"{single[0]['request_id']}-0" not in index
    late = _record(one)
    assert late["request_id"] not in index  # given, not yet logged
    one.prediction(late)
    assert late["request_id"] in index  # read on from where the index left the file
    assert "not an id" not in index and "f" * 32 not in index
    one.close()
    other.close()
