"""Where the deploy exports write: a folder checked up front, files written whole or not at all."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from shipml.errors import ConfigError


def check_out(out: Path, what: str) -> None:
    """A user error when ``out`` is a file; checked before any work, so nothing is left."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file", f"choose a folder for the {what}")


def out_folder(out: Path, what: str) -> Path:
    """``out``, created with its parents; a user error when it is a file or cannot be made."""
    check_out(out, what)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create the folder {out}: {err.strerror or err}") from None
    return out


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` to a temporary name beside ``path`` and rename it: a failure never leaves
    half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the image's user must read what is copied
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_files(files: dict[Path, str], what: str) -> list[Path]:
    """Write every file; an OS error (a read-only folder, a full disk) is a user error."""
    try:
        return [write_text(path, text) for path, text in files.items()]
    except OSError as err:
        folder = next(iter(files)).parent if files else Path()
        raise ConfigError(
            f"cannot write the {what} under {folder}: {err.strerror or err}"
        ) from None
