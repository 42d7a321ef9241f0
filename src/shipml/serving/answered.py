"""Which request ids were answered: read from the prediction log files, so that it holds across
the workers of a server and across restarts (/feedback takes labels for answered ids only).

A request id's first ``PREFIX_LENGTH`` characters name the process that gave it, and that
process's log files carry the prefix in their names: a lookup reads only those files, each once
and then from where it was left (the records written since). Records are read as the server
writes them (``{"request_id": ..., "rows": n, ...}`` for a batch): the id and the row count
come from the line's first bytes, without parsing it; a line written otherwise is parsed.
Ids are kept as one bit per counter value of a prefix (the counter runs from 0), batches with
their row counts.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from shipml.serving.predlog import PREFIX_LENGTH

_ID = re.compile(rf"^([0-9a-f]{{{PREFIX_LENGTH}}})([0-9a-f]{{12}})(?:-([0-9]{{1,9}}))?$")
_START = b'{"request_id":"'
_ID_END = len(_START) + PREFIX_LENGTH + 12
_ROWS = b'","rows":'


@dataclass
class _Process:
    """The ids one process answered, as read so far from its files."""

    offsets: dict[Path, int] = field(default_factory=dict)
    seen: bytearray = field(default_factory=bytearray)
    batches: dict[int, int] = field(default_factory=dict)  # counter -> rows

    def add(self, counter: int, rows: int | None) -> None:
        if counter >> 3 >= len(self.seen):
            self.seen.extend(bytes((counter >> 3) + 1 - len(self.seen) + 1024))
        self.seen[counter >> 3] |= 1 << (counter & 7)
        if rows is not None:
            self.batches[counter] = rows

    def has(self, counter: int, row: int | None) -> bool:
        if counter >> 3 >= len(self.seen) or not self.seen[counter >> 3] >> (counter & 7) & 1:
            return False
        if row is None:
            return counter not in self.batches
        return row < self.batches.get(counter, 0)

    def read(self, path: Path) -> None:
        """The complete records of ``path`` past what was read of it before."""
        start = self.offsets.get(path, 0)
        with path.open("rb") as handle:
            handle.seek(start)
            data = handle.read()
        end = data.rfind(b"\n") + 1
        self.offsets[path] = start + end
        for line in data[:end].split(b"\n"):
            if not line.startswith(_START) or line[_ID_END : _ID_END + 1] != b'"':
                if line.strip():  # written otherwise (by hand, by an older version)
                    self._parsed(line)
            elif line.startswith(_ROWS, _ID_END):  # a batch, as the server writes it
                tail = line[_ID_END + len(_ROWS) : _ID_END + len(_ROWS) + 12]
                self.add(int(line[_ID_END - 12 : _ID_END], 16), int(tail.split(b",", 1)[0]))
            elif b'"rows":' in line:  # perhaps a batch with its keys in another order
                self._parsed(line)
            else:
                self.add(int(line[_ID_END - 12 : _ID_END], 16), None)

    def _parsed(self, line: bytes) -> None:
        try:
            record = json.loads(line)
            found = _ID.match(str(record.get("request_id", "")))
        except (ValueError, AttributeError):
            return
        if found and found.group(3) is None:
            rows = record.get("rows")
            self.add(int(found.group(2), 16), int(rows) if isinstance(rows, int) else None)


class AnsweredIds:
    """Answers whether a request id (``<id>`` of /predict, ``<id>-<row>`` of /predict/batch)
    is in the prediction log under ``folder``. Thread-safe; call it off the event loop (a first
    look at a large file reads it)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._processes: dict[str, _Process] = {}
        self._lock = threading.Lock()

    def __contains__(self, request_id: object) -> bool:
        found = _ID.match(request_id) if isinstance(request_id, str) else None
        if found is None:
            return False
        prefix, counter = found.group(1), int(found.group(2), 16)
        row = None if found.group(3) is None else int(found.group(3))
        with self._lock:
            known = self._processes.get(prefix)
            if known is not None and known.has(counter, row):
                return True
            files = sorted(self.folder.glob(f"*/{prefix}-*.jsonl"))
            if not files:
                return False
            if known is None:
                known = self._processes[prefix] = _Process()
            for path in files:
                try:
                    known.read(path)
                except OSError:
                    continue  # removed by retention meanwhile
            return known.has(counter, row)
