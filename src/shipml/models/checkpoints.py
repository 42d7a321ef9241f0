"""Checkpoints of network fits, so an interrupted training run resumes instead of starting over.

While a ``checkpointing(directory)`` block is active, every network fit saves its full training
state (weights, optimizer, learning-rate schedule, early-stopping counters, random generator,
history) to ``directory/<key>.pt`` as it trains, at most every ``every_s`` seconds, and once
more when it finishes. The key is a digest of the estimator's class, its parameters and the
exact arrays it is fitted on, so a checkpoint is only ever picked up by the same fit.

With ``resume=True`` a fit whose key has a finished checkpoint loads it instead of training,
and one with a checkpoint from mid-way goes on from that epoch. Because the whole state is
restored, a resumed fit ends with the same weights, bit for bit, as one never interrupted.

Files are written to a temporary name and renamed into place: a process killed mid-write
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SUFFIX = ".pt"
FORMAT = 1


@dataclass
class CheckpointStore:
    """One training run's checkpoints, and what it did with them."""

    directory: Path
    every_s: float = 5.0
    resume: bool = False
    loaded: int = 0  # finished fits loaded instead of trained
    continued: list[int] = field(default_factory=list)  # epochs mid-way fits went on from
    saved: int = 0

    def key(self, estimator: Any, *arrays: np.ndarray) -> str:
        """A digest of the fit: estimator class and parameters, and the arrays' bytes."""
        digest = hashlib.blake2b(digest_size=16)
        digest.update(
            f"{FORMAT}:{type(estimator).__module__}.{type(estimator).__qualname__}".encode()
        )
        params = estimator.get_params(deep=False)
        for name in sorted(params):
            if name in {"verbose", "n_threads"}:  # do not change the fitted weights
                continue
            digest.update(f"|{name}={params[name]!r}".encode())
        for array in arrays:
            array = np.ascontiguousarray(array)
            digest.update(f"|{array.dtype.str}{array.shape}".encode())
            digest.update(array.data)  # C-contiguous: hashed in place, no copy
        return digest.hexdigest()

    def path(self, key: str) -> Path:
        return self.directory / f"{key}{SUFFIX}"

    def load(self, key: str) -> dict[str, Any] | None:
        """The saved state of fit ``key`` when resuming and one exists, else None."""
        import torch

        path = self.path(key)
        if not self.resume or not path.is_file():
            return None
        try:
            state: dict[str, Any] = torch.load(path, weights_only=True)
        except Exception:  # a file cut short by a crash before the rename cannot exist,
            return None  # but a damaged disk can: train from scratch rather than fail
        if state.get("format") != FORMAT:
            return None
        if state.get("finished"):
            self.loaded += 1
        else:
            self.continued.append(int(state["epoch"]))
        return state

    def due(self, last_saved: float) -> bool:
        return time.monotonic() - last_saved >= self.every_s

    def save(self, key: str, state: dict[str, Any]) -> None:
        """Write ``state`` for fit ``key`` atomically (temporary file, then rename)."""
        import torch

        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.path(key)
        partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        torch.save({**state, "format": FORMAT}, partial)
        os.replace(partial, target)
        self.saved += 1

    def files(self) -> list[Path]:
        return sorted(self.directory.glob(f"*{SUFFIX}")) if self.directory.is_dir() else []

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


_ACTIVE: ContextVar[CheckpointStore | None] = ContextVar("shipml_checkpoints", default=None)


def active() -> CheckpointStore | None:
    """The store of the enclosing ``checkpointing`` block, if any."""
    return _ACTIVE.get()


@contextmanager
def activated(store: CheckpointStore | None) -> Iterator[CheckpointStore | None]:
    """Network fits inside the block checkpoint to ``store`` (None: they do not)."""
    token = _ACTIVE.set(store)
    try:
        yield store
    finally:
        _ACTIVE.reset(token)


def checkpointing(
    directory: str | os.PathLike[str], every_s: float = 5.0, resume: bool = False
) -> AbstractContextManager[CheckpointStore | None]:
    """Checkpoint every network fit inside the block to ``directory``; with ``resume``, pick
    up the fits already checkpointed there."""
    return activated(CheckpointStore(Path(directory), every_s=every_s, resume=resume))
