"""Keeping the prediction log sound and within bounds: torn last lines cut at start, a probe of
whether the log folder takes writes, and retention (days kept, bytes kept).

A file a live server process writes is held under an exclusive ``flock`` (predlog._Appender):
whatever is locked is left alone here, so several workers, and a server started beside a
running one, never cut or delete a file that is being written.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

log = logging.getLogger("shipml.serving")

PROBE_BYTES = 4096
_TAIL = 1 << 16


def log_files(folder: Path) -> Iterator[Path]:
    """Every JSON-lines file of the log: predictions/<day>/*.jsonl, feedback/<day>/*.jsonl."""
    for pattern in ("*/*.jsonl", "feedback/*/*.jsonl"):
        yield from folder.glob(pattern)


@contextlib.contextmanager
def _unlocked(path: Path, flags: int) -> Iterator[int | None]:
    """The file open with ``flags`` and exclusively locked, or None where another process
    holds it (or it is gone)."""
    try:
        fd = os.open(path, flags)
    except OSError:
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield None
            return
        yield fd
    finally:
        os.close(fd)


def _torn_tail(fd: int, size: int) -> int:
    """Where the last complete line ends (0 when there is none)."""
    position = size
    while position > 0:
        step = min(_TAIL, position)
        position -= step
        data = os.pread(fd, step, position)
        cut = data.rfind(b"\n")
        if cut >= 0:
            return position + cut + 1
    return 0


def repair(folder: Path) -> int:
    """Cut the torn last line (a record a crash cut short) off every log file that no live
    process writes, so that nothing is ever appended to it; returns the files repaired."""
    repaired = 0
    for path in log_files(folder):
        with _unlocked(path, os.O_RDWR) as fd:
            if fd is None:
                continue
            size = os.fstat(fd).st_size
            if not size or os.pread(fd, 1, size - 1) == b"\n":
                continue
            keep = _torn_tail(fd, size)
            try:
                os.ftruncate(fd, keep)
            except OSError as err:
                log.warning("cannot cut the torn last line of %s: %s", path, err)
                continue
            log.warning("cut a torn last record (%d bytes) off %s", size - keep, path)
            repaired += 1
    return repaired


def probe(folder: Path, tag: str) -> str | None:
    """None when ``folder`` takes a small write (a file written, then removed), else why not."""
    path = folder / f".probe-{tag}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            written = os.write(fd, b"\0" * PROBE_BYTES)
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
        if written < PROBE_BYTES:
            return "the prediction log cannot be written (No space left on device)"
    except OSError as err:
        log.warning("the prediction log under %s cannot be written: %s", folder, err)
        return f"the prediction log cannot be written ({err.strerror or type(err).__name__})"
    return None


@dataclass(frozen=True)
class Retention:
    """What the log keeps: files of the last ``days`` days (UTC day folders), and at most
    ``max_bytes`` in all (oldest files first out). Files being written are never removed, so
    the log may pass ``max_bytes`` by up to one file per server process."""

    days: int | None
    max_bytes: int | None
    every_s: float = 60.0

    def apply(self, folder: Path, now: float | None = None) -> list[Path]:
        """Remove what is past retention; returns the files removed."""
        if self.days is None and self.max_bytes is None:
            return []
        files = []
        for path in log_files(folder):
            with contextlib.suppress(OSError):
                stat = path.stat()
                files.append((stat.st_mtime, stat.st_size, path))
        files.sort()
        oldest_kept = ""
        if self.days is not None:
            today = datetime.fromtimestamp(time.time() if now is None else now, UTC)
            oldest_kept = (today - timedelta(days=self.days - 1)).strftime("%Y-%m-%d")
        total = sum(size for _, size, _ in files)
        removed = []
        for _, size, path in files:
            expired = path.parent.name < oldest_kept
            if not expired and (self.max_bytes is None or total <= self.max_bytes):
                continue
            with _unlocked(path, os.O_RDONLY) as fd:
                if fd is None:
                    continue
                with contextlib.suppress(FileNotFoundError):  # another worker's round took it
                    path.unlink()
            total -= size
            removed.append(path)
        for day in {path.parent for path in removed}:
            with contextlib.suppress(OSError):
                day.rmdir()  # only when empty
        return removed
