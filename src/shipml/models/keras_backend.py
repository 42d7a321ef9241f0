"""Keras's backend, and the user's build_model file: imported, checked, with clear errors.

Keras reads its backend from ``KERAS_BACKEND`` once, at first import: :func:`ensure_backend`
sets it (torch by default) before anything imports Keras, the user's file included.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from shipml.errors import ConfigError

_BACKEND_PACKAGES = {"torch": "torch", "jax": "jax", "tensorflow": "tensorflow"}
_BUILD_HINT = "define `build_model(n_features, n_outputs, task)` returning a `keras.Model`"
_modules: dict[tuple[str, int], ModuleType] = {}  # (path, mtime) -> executed user module
# While a registered model file is read: the folder a build_model file must be in to be imported.
_CODE_ROOT: ContextVar[Path | None] = ContextVar("shipml_build_model_root", default=None)


@contextmanager
def user_code_only_under(root: Path) -> Iterator[None]:
    """While a model file from the registry is loaded, import a network's build_model file (to
    find its custom layers) only from inside ``root``, the project's folder: the path is written
    in the model file, and a crafted file could otherwise name any Python file on the machine."""
    token = _CODE_ROOT.set(Path(root).resolve())
    try:
        yield
    finally:
        _CODE_ROOT.reset(token)


def ensure_backend(name: str = "torch") -> None:
    """Make Keras use backend ``name``; ConfigError if Keras runs another or it is missing."""
    if name not in _BACKEND_PACKAGES:
        raise ConfigError(
            f"Unknown Keras backend {name!r}", hint=f"use one of {', '.join(_BACKEND_PACKAGES)}"
        )
    if "keras" in sys.modules:
        current = sys.modules["keras"].backend.backend()
        if current != name:
            raise ConfigError(
                f"Keras is already running with the {current!r} backend, not {name!r}",
                hint="Keras picks its backend once per process: use one backend per run",
            )
        return
    if importlib.util.find_spec(_BACKEND_PACKAGES[name]) is None:
        raise ConfigError(
            f"The Keras backend {name!r} needs the {_BACKEND_PACKAGES[name]!r} package",
            hint=f"pip install {_BACKEND_PACKAGES[name]}, or use backend: torch",
        )
    os.environ["KERAS_BACKEND"] = name


def keras_module(backend: str) -> Any:
    ensure_backend(backend)
    import keras

    return keras


@contextmanager
def torch_threads(backend: str, n_threads: int | None) -> Iterator[None]:
    """torch's thread count for the block when Keras runs on torch (see shipml.models.torch_net)."""
    if backend != "torch":
        yield
        return
    from shipml.models.torch_net import torch_threads as on_torch

    with on_torch(n_threads):
        yield


def load_user_module(path: str | os.PathLike[str]) -> ModuleType:
    """Import the user's Python file (cached while it is unchanged); ConfigError on any problem."""
    file = Path(path).expanduser()
    file = file if file.is_absolute() else Path.cwd() / file
    if not file.is_file():
        raise ConfigError(
            f"build_model file {file} does not exist", hint=f"fix the path, or {_BUILD_HINT}"
        )
    if file.suffix != ".py":
        raise ConfigError(f"build_model file {file} is not a .py file", hint=_BUILD_HINT)
    root = _CODE_ROOT.get()
    if root is not None and not file.resolve().is_relative_to(root):
        raise ConfigError(
            f"the model file names a build_model file outside the project folder {root} "
            f"({file}): shipml will not import it",
            hint="keep the build_model file inside the project's folder, and retrain",
        )
    key = (str(file), file.stat().st_mtime_ns)
    if key in _modules:
        return _modules[key]
    name = "shipml_user_model_" + hashlib.sha1(str(file).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ConfigError(f"build_model file {file} cannot be imported", hint=_BUILD_HINT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # classes defined there must be findable by module name
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        del sys.modules[name]
        where = f" (line {exc.lineno})" if isinstance(exc, SyntaxError) else ""
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ConfigError(
            f"build_model file {file} failed to import{where}: {type(exc).__name__}: {first}",
            hint="run `python " + str(file) + "` to see the full error",
        ) from None
    _modules[key] = module
    return module


def user_model(keras: Any, path: str, n_features: int, n_outputs: int, task: str) -> Any:
    """The user's network from build_model(n_features, n_outputs, task), checked: a keras.Model
    that takes n_features inputs and gives n_outputs (probabilities for a classifier)."""
    module = load_user_module(path)
    file = module.__file__
    fn: Callable[..., Any] | None = getattr(module, "build_model", None)
    if not callable(fn):
        raise ConfigError(f"build_model file {file} has no build_model function", hint=_BUILD_HINT)
    try:
        model = fn(n_features, n_outputs, task)
    except Exception as exc:
        raise ConfigError(
            f"build_model in {file} raised {type(exc).__name__}: {exc}",
            hint=f"it is called as build_model({n_features}, {n_outputs}, {task!r})",
        ) from None
    if not isinstance(model, keras.Model):
        raise ConfigError(
            f"build_model in {file} returned {type(model).__name__}, not a keras.Model",
            hint="return the model, e.g. `return keras.Model(inputs, outputs)`",
        )
    try:
        out = keras.ops.convert_to_numpy(model(np.zeros((2, n_features), np.float32)))
    except Exception as exc:
        raise ConfigError(
            f"The model from {file} does not take {n_features} input features: {exc}",
            hint=f"its input shape must be ({n_features},): use the n_features argument",
        ) from None
    if out.shape != (2, n_outputs):
        got = "(" + ", ".join(["batch", *map(str, out.shape[1:])]) + ")"
        raise ConfigError(
            f"The model from {file} outputs shape {got}, expected (batch, {n_outputs})",
            hint="its last layer must have n_outputs units: Dense(n_outputs)",
        )
    if task == "classification" and not np.allclose(out.sum(axis=1), 1, atol=1e-3):
        raise ConfigError(
            f"The model from {file} does not output class probabilities",
            hint='end it with Dense(n_outputs, activation="softmax")',
        )
    return model
