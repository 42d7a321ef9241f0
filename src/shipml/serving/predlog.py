"""The prediction log: every answered prediction, append-only, under .shipml/predictions/.

Each server process appends JSON lines to its own file (no locks between workers), with one
``write`` system call per record made *before* the response is sent: once a client has its
answer, the record is in the operating system's page cache, so it survives the server being
killed (SIGKILL included). That call takes microseconds; the expensive part, ``fsync`` to the
disk (which only a power loss or kernel crash would need), runs in a background thread every
``fsync_interval`` seconds and never on the request path. A record cut short by a crash mid-write
is at most the file's last line; readers skip it.

Layout: ``predictions/YYYY-MM-DD/<pid>-<start>.jsonl`` (predictions) and
``predictions/feedback/YYYY-MM-DD/<pid>-<start>.jsonl`` (labels sent to /feedback). A batch is
one record: its predictions and confidences a list each, its probabilities one object per row as
the answer gave them (``probability_rows``), its inputs a list per column or, where the request
came in the strict form (every row an object of the model's columns), the request itself
(``request``); ``read_predictions`` and ``recent_predictions`` give one record per row.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

FEEDBACK = "feedback"
# JSON as json.dumps(record, separators=(",", ":"), default=str) writes it, but faster (a
# 1,000-row batch is one record) and NaN as null, which every JSON reader accepts.
_ENCODE = msgspec.json.Encoder(enc_hook=str).encode


class _Appender:
    """One process's append-only JSON-lines file for one day, with background fsync."""

    def __init__(self, folder: Path, fsync_interval: float) -> None:
        self.folder = folder
        self.fsync_interval = fsync_interval
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._day = ""
        self._dirty = False
        self._tag = f"{os.getpid()}-{int(time.time() * 1000)}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sync_loop, name="shipml-predlog", daemon=True)
        self._thread.start()

    def _open(self, day: str) -> int:
        if self._fd is not None:
            os.close(self._fd)
        folder = self.folder / day
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self._tag}.jsonl"
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._day = day
        return self._fd

    def write(self, record: dict[str, Any]) -> None:
        line = _ENCODE(record) + b"\n"
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        with self._lock:
            fd = self._fd if day == self._day and self._fd is not None else self._open(day)
            os.write(fd, line)  # one call: the whole line reaches the page cache or none of it
            self._dirty = True

    def _sync_loop(self) -> None:
        while not self._stop.wait(self.fsync_interval):
            self.sync()

    def sync(self) -> None:
        with self._lock:
            fd, dirty = self._fd, self._dirty
            self._dirty = False
        if fd is not None and dirty:
            # OSError: closed by a day change in between; the next round syncs the new file.
            with contextlib.suppress(OSError):
                os.fsync(fd)

    def close(self) -> None:
        self._stop.set()
        self.sync()
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class PredictionLog:
    """Appends predictions and feedback for one server process."""

    def __init__(self, folder: Path, fsync_interval: float = 1.0) -> None:
        self.folder = folder
        self._predictions = _Appender(folder, fsync_interval)
        self._feedback = _Appender(folder / FEEDBACK, fsync_interval)

    def prediction(self, record: dict[str, Any]) -> None:
        self._predictions.write(record)

    def feedback(self, record: dict[str, Any]) -> None:
        self._feedback.write(record)

    def close(self) -> None:
        self._predictions.close()
        self._feedback.close()


def _records(files: list[Path]) -> Iterator[dict[str, Any]]:
    for path in files:
        with path.open("rb") as handle:
            for line in handle:
                if not line.endswith(b"\n"):
                    break  # a record cut short by a crash: only ever the last line
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue


def read_predictions(folder: Path) -> Iterator[dict[str, Any]]:
    """Every logged prediction, one record per row, file by file (each file in the order it was
    written). A batch is logged column-wise in one record; here it becomes one record per row,
    with request id '<batch id>-<row>' as /predict/batch answered it."""
    if not folder.is_dir():
        return
    files = sorted(p for p in folder.glob("*/*.jsonl") if p.parent.parent == folder)
    for record in _records([p for p in files if p.parent.name != FEEDBACK]):
        if "rows" not in record:
            yield record
            continue
        yield from _rows_of(record)


def _rows_of(batch: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A batch's record as one record per row. Its inputs are a list per column (``inputs``) or
    the request as it came (``request``: ``{"instances": [row object, ...]}``, the strict form);
    its probabilities a list per class (``probabilities``) or an object per row
    (``probability_rows``, as the answer gave them)."""
    confidence = batch.get("confidence")
    columns: dict[str, list[Any]] | None = batch.get("inputs")
    instances: list[Any] = [] if columns is not None else batch["request"]["instances"]
    by_class: dict[str, list[Any]] | None = batch.get("probabilities")
    by_row: list[Any] | None = batch.get("probability_rows")
    for i in range(int(batch["rows"])):
        if by_row is not None:
            probabilities = by_row[i]
        elif by_class is not None:
            probabilities = {k: v[i] for k, v in by_class.items()}
        else:
            probabilities = None
        yield {
            "request_id": f"{batch['request_id']}-{i}",
            "inputs": instances[i] if columns is None else {c: v[i] for c, v in columns.items()},
            "prediction": batch["prediction"][i],
            "confidence": None if confidence is None else confidence[i],
            "probabilities": probabilities,
            "time": batch["time"],
            "model_version": batch["model_version"],
            "latency_ms": batch["latency_ms"],
            "batch": batch["request_id"],
        }


def read_feedback(folder: Path) -> Iterator[dict[str, Any]]:
    """Every label sent to /feedback."""
    root = folder / FEEDBACK
    if not root.is_dir():
        return iter(())
    return _records(sorted(root.glob("*/*.jsonl")))


def _lines_backwards(path: Path, block: int = 1 << 16) -> Iterator[bytes]:
    """Complete lines of a file, last first (a final line cut short by a crash is skipped)."""
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        position = handle.tell()
        tail = b""
        first = True
        while position > 0:
            step = min(block, position)
            position -= step
            handle.seek(position)
            data = handle.read(step) + tail
            lines = data.split(b"\n")
            tail = lines[0]
            complete = lines[1:]
            if first:  # what follows the last newline is an unfinished record
                complete = complete[:-1]
                first = False
            yield from (line for line in reversed(complete) if line)
        if tail and not first:
            yield tail


def _prediction_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [p for p in folder.glob("*/*.jsonl") if p.parent.name != FEEDBACK]


def recent_predictions(
    folder: Path, rows: int | None = None, since: float | None = None
) -> list[dict[str, Any]]:
    """The latest ``rows`` logged predictions (and/or those logged at or after ``since``, a Unix
    time), oldest first, one record per row. Each file is read from its end, so the cost follows
    the rows asked for, not the size of the log."""
    picked: list[dict[str, Any]] = []
    for path in _prediction_files(folder):
        taken = 0
        for line in _lines_backwards(path):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if since is not None and float(record.get("time", 0.0)) < since:
                break
            expanded = list(_rows_of(record)) if "rows" in record else [record]
            picked.extend(expanded)
            taken += len(expanded)
            if rows is not None and taken >= rows:
                break
    picked.sort(key=lambda r: float(r.get("time", 0.0)))
    return picked[-rows:] if rows is not None else picked


def latest_labels(folder: Path) -> dict[str, Any]:
    """request id -> the last label sent to /feedback for it."""
    return {str(r["request_id"]): r.get("label") for r in read_feedback(folder)}
