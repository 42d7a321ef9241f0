"""Errors a user can act on. Each carries a one-line fix hint and maps to an exit code."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class ShipmlError(Exception):
    """Base of every error shipml raises on purpose; the CLI prints it as one line, no traceback."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(ShipmlError):
    """shipml.yaml is missing, unreadable, or does not match the config schema."""


class DataError(ShipmlError):
    """A data file or table is missing, unreadable, empty, or does not fit what is expected."""


class DataSourceError(DataError):
    """A SQL source cannot be reached or its query fails."""


class ValidationFailed(DataError):
    """Data validation found fatal problems; ``report`` holds every finding."""

    def __init__(self, message: str, hint: str | None = None, report: object = None) -> None:
        super().__init__(message, hint)
        self.report = report


class InputSchemaError(DataError):
    """Input to a model (predict, evaluate) does not match the model's input schema."""


class RegistryError(ShipmlError):
    """A model version or alias does not exist, or the registry cannot be used."""


class TrainingError(ShipmlError):
    """Training could not produce a model (for example, every candidate failed)."""


class ClusterError(ShipmlError):
    """A compute cluster (Ray) cannot be reached or cannot run shipml's tasks."""


class GateFailed(ShipmlError):
    """A check the user asked to fail on did fail (gate, drift)."""

    exit_code = 1


class EnvironmentFault(ShipmlError):
    """The machine, not the input, stopped the work: a full disk, a read-only folder, a store
    that cannot be written. The message names the path and the cause."""


# errno -> the cause as a user reads it
_FAULT_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
# What SQLite (through MLflow and SQLAlchemy, which may keep only the message) says for them.
_SQLITE_FAULTS = {
    "attempt to write a readonly database": "the MLflow store is read-only",
    "database or disk is full": "no space left on the device",
    "unable to open database file": "the MLflow store cannot be opened",
    "disk i/o error": "a disk I/O error",
    "database is locked": "another command held the MLflow store past the wait for it",
}


def _chain(err: BaseException) -> list[BaseException]:
    """``err`` and every exception behind it: __cause__, __context__, and a wrapped driver
    error's ``orig`` (SQLAlchemy's), each once."""
    seen: list[BaseException] = []
    todo = [err]
    while todo:
        current = todo.pop(0)
        if any(current is s for s in seen):
            continue
        seen.append(current)
        for nxt in (current.__cause__, current.__context__, getattr(current, "orig", None)):
            if isinstance(nxt, BaseException):
                todo.append(nxt)
    return seen


def environment_fault(
    err: BaseException, path: Path | None = None, store: Path | None = None
) -> EnvironmentFault | None:
    """The EnvironmentFault behind ``err``, or None when the machine is not to blame: an OSError
    for a full disk or a read-only or forbidden path anywhere in its chain, or SQLite saying the
    same. The message names ``path`` (what the caller was writing), else the file the OSError
    names, else ``store`` (the tracking store, which SQLite's messages do not name)."""
    chain = _chain(err)
    for link in chain:
        if isinstance(link, OSError) and link.errno in _FAULT_ERRNOS:
            where = path or link.filename2 or link.filename or store  # a copy's destination
            cause = _FAULT_ERRNOS[link.errno]
            return _fault(f"{where}: {cause}" if where else cause, link.errno)
    for link in chain:
        text = str(link).lower()
        for phrase, cause in _SQLITE_FAULTS.items():
            if phrase in text:
                where = store or path
                return _fault(f"{where}: {cause}" if where else cause, None)
    return None


@contextmanager
def faults_named(path: Path) -> Iterator[None]:
    """Inside, an OSError of a full disk or a read-only or forbidden folder becomes an
    EnvironmentFault naming ``path`` (the file the user asked for, not a temporary one)."""
    try:
        yield
    except OSError as err:
        fault = environment_fault(err, path=path)
        if fault is None:
            raise
        raise fault from None


def half_written(err: BaseException, inside: Path) -> Path | None:
    """The file under ``inside`` whose write ran out of space in ``err``'s chain (a copy names
    its destination second), which holds only part of what was meant: removing it frees the
    space it took."""
    for link in _chain(err):
        if isinstance(link, OSError) and link.errno in (errno.ENOSPC, errno.EDQUOT):
            for name in (link.filename2, link.filename):
                if name and Path(name).resolve().is_relative_to(inside.resolve()):
                    return Path(name)
    return None


def _fault(message: str, code: int | None) -> EnvironmentFault:
    if "another command held" in message:
        return EnvironmentFault(message, "let the other command finish, then run this one again")
    if code in (errno.ENOSPC, errno.EDQUOT) or "space" in message:
        return EnvironmentFault(message, "free some space there, then run the command again")
    return EnvironmentFault(message, "make it writable, then run the command again")
