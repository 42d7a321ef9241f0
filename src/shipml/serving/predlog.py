"""The prediction log: every answered prediction, append-only, under .shipml/predictions/.

Each server process appends JSON lines to its own file (no locks between workers), *before* the
response is sent: once a client has its answer, the record is whole in the operating system's
page cache, so it survives the server being killed (SIGKILL included). A record is written by
``write`` calls until every byte is in (a full disk may take part of one); when one fails, the
file is cut back to the record's start, the prediction is not answered (503) and the log is
marked unhealthy until a probe finds it writable again (/ready says so meanwhile). ``fsync`` to
the disk (which only a power loss or kernel crash would need) runs in a background thread every
``fsync_interval`` seconds, never on the request path; a record cut short by such a crash is at
most a file's last line: readers skip it and the next server's start cuts it off
(``logkeeping.repair``).

Layout: ``predictions/YYYY-MM-DD/<prefix>-<n>.jsonl`` (predictions) and
``predictions/feedback/YYYY-MM-DD/<prefix>-<n>.jsonl`` (labels sent to /feedback), where
``<prefix>`` is the first 20 characters of every request id the process gives (so the file of an
answered id is found by its name, ``answered.AnsweredIds``) and ``n`` counts the process's files
(a new one each day and each ``rotate_bytes``). A process holds an exclusive ``flock`` on the
file it writes, so that no other process repairs or deletes it. A batch is one record: its
predictions and confidences a list each, its probabilities one object per row as the answer
gave them (``probability_rows``), its inputs a list per column or, where the request came in the
strict form (every row an object of the model's columns), the request itself (``request``);
``read_predictions`` and ``recent_predictions`` give one record per row.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from shipml.serving import logkeeping

log = logging.getLogger("shipml.serving")

FEEDBACK = "feedback"
PREFIX_LENGTH = 20  # the characters of a request id that name its process (and its files)
ROTATE_BYTES = 64 * 1024 * 1024
# JSON as json.dumps(record, separators=(",", ":"), default=str) writes it, but faster (a
# 1,000-row batch is one record) and NaN as null, which every JSON reader accepts.
_ENCODE = msgspec.json.Encoder(enc_hook=str).encode


class LogUnavailable(Exception):
    """A record could not be written: ``reason`` is for the client (no server paths)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RequestIds:
    """Request ids: 80 random bits for this process, then a counter (32 hex digits, as a uuid4
    has; unique across workers and restarts without a system call per request)."""

    def __init__(self) -> None:
        self.prefix = uuid.uuid4().hex[:PREFIX_LENGTH]
        self._counter = itertools.count()

    def new(self) -> str:
        return f"{self.prefix}{next(self._counter) & 0xFFFFFFFFFFFF:012x}"


class _Appender:
    """One process's append-only JSON-lines files (one per day and per ``rotate_bytes``), with
    background fsync."""

    def __init__(self, folder: Path, tag: str, rotate_bytes: int) -> None:
        self.folder = folder
        self.tag = tag
        self.rotate_bytes = rotate_bytes
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._day = ""
        self._size = 0
        self._dirty = False
        self._files = itertools.count()
        self._retired: list[int] = []  # files done with: synced and closed by ``sync``

    def _open(self, day: str) -> int:
        if self._fd is not None:  # (its fsync is not for the request path: ``sync`` does it)
            self._retired.append(self._fd)
            self._fd = None
        folder = self.folder / day
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.tag}-{next(self._files):06d}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        # Held while the file is written: no other process repairs or deletes it meanwhile.
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._fd, self._day, self._size = fd, day, os.fstat(fd).st_size
        return fd

    def _drop(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def write(self, record: dict[str, Any]) -> None:
        """Append one record whole, or raise LogUnavailable with the file as it was."""
        line = _ENCODE(record) + b"\n"
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        with self._lock:
            try:
                fd = self._fd
                if (
                    fd is None
                    or day != self._day
                    or (self._size and self._size + len(line) > self.rotate_bytes)
                ):
                    fd = self._open(day)
            except OSError as err:
                raise _unavailable(err, self.folder) from None
            start, done = self._size, 0
            view = memoryview(line)
            try:
                while done < len(line):  # a full disk may take part of a record
                    written = os.write(fd, view[done:])
                    if written <= 0:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    done += written
            except OSError as err:
                self._cut(fd, start)
                raise _unavailable(err, self.folder) from None
            self._size = start + done
            self._dirty = True

    def _cut(self, fd: int, start: int) -> None:
        """Take a partly written record back out; where that fails, leave the file (its torn
        last line is skipped by readers and cut at the next start) for a new one."""
        try:
            os.ftruncate(fd, start)
        except OSError:
            self._drop()

    def sync(self) -> None:
        with self._lock:
            fd, dirty = self._fd, self._dirty
            retired, self._retired = self._retired, []
            self._dirty = False
        for old in retired:
            with contextlib.suppress(OSError):
                os.fsync(old)
            os.close(old)
        if fd is not None and dirty:
            # OSError: closed after a failed write in between; the next round syncs the next.
            with contextlib.suppress(OSError):
                os.fsync(fd)

    def close(self) -> None:
        self.sync()
        with self._lock:
            self._drop()


def _unavailable(err: OSError, folder: Path) -> LogUnavailable:
    reason = err.strerror or type(err).__name__
    log.error("the prediction log under %s cannot be written: %s", folder, err)
    return LogUnavailable(f"the prediction log cannot be written ({reason})")


class PredictionLog:
    """Appends predictions and feedback for one server process, keeps the log within its
    retention (``logkeeping.Retention``) and knows whether it can be written."""

    def __init__(
        self,
        folder: Path,
        fsync_interval: float = 1.0,
        rotate_bytes: int = ROTATE_BYTES,
        retention: logkeeping.Retention | None = None,
        ids: RequestIds | None = None,
    ) -> None:
        self.folder = folder
        self.fsync_interval = fsync_interval
        self.ids = ids or RequestIds()
        self.retention = retention
        self._predictions = _Appender(folder, self.ids.prefix, rotate_bytes)
        self._feedback = _Appender(folder / FEEDBACK, self.ids.prefix, rotate_bytes)
        self.failure: str | None = None  # why the last write failed, until a probe succeeds
        self._probed = 0.0
        self._stop = threading.Event()
        with contextlib.suppress(OSError):
            folder.mkdir(parents=True, exist_ok=True)
        logkeeping.repair(folder)
        self.failure = logkeeping.probe(folder, self.ids.prefix)
        self._thread = threading.Thread(target=self._loop, name="shipml-predlog", daemon=True)
        self._thread.start()

    def prediction(self, record: dict[str, Any]) -> None:
        self._write(self._predictions, record)

    def feedback(self, record: dict[str, Any]) -> None:
        self._write(self._feedback, record)

    def _write(self, appender: _Appender, record: dict[str, Any]) -> None:
        try:
            appender.write(record)
        except LogUnavailable as err:
            self.failure = err.reason
            raise
        if self.failure is not None:
            self.failure = None

    def health(self, every: float = 0.5) -> str | None:
        """None while the log can be written, else why not. After a failed write, a probe
        (at most every ``every`` seconds) tells when it can be again."""
        if self.failure is None:
            return None
        now = time.monotonic()
        if now - self._probed >= every:
            self._probed = now
            if logkeeping.probe(self.folder, self.ids.prefix) is None:
                self.failure = None
        return self.failure

    def _loop(self) -> None:
        kept = 0.0
        while not self._stop.wait(self.fsync_interval):
            self._predictions.sync()
            self._feedback.sync()
            if self.retention is not None and time.monotonic() - kept >= self.retention.every_s:
                kept = time.monotonic()
                try:
                    self.retention.apply(self.folder)
                except OSError as err:
                    log.warning("prediction log retention: %s", err)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
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
    """request id -> the last label sent to /feedback for it (by the time it was recorded:
    the workers and runs of a server write files of their own)."""
    latest: dict[str, tuple[float, Any]] = {}
    for record in read_feedback(folder):
        key, when = str(record["request_id"]), float(record.get("time") or 0.0)
        if key not in latest or when >= latest[key][0]:
            latest[key] = (when, record.get("label"))
    return {key: label for key, (_, label) in latest.items()}
