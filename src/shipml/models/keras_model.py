"""Keras 3 networks as scikit-learn estimators: a built-in Dense/Dropout net or the user's own.

Keras is imported lazily (``import shipml`` never imports it) and reads its backend from
``KERAS_BACKEND`` once, at first import: :func:`ensure_backend` sets it (torch by default).

Process-wide state, unlike the torch MLP: ``random_state`` calls ``keras.utils.set_random_seed``,
which seeds Python's ``random``, NumPy's global generator and torch for the whole process (the
same ``random_state`` then gives identical predictions). ``n_threads`` sets torch's thread count
during fit and predict only; torch's default (every core) runs small networks ~10x slower on a
busy machine.

Persistence: the fitted network is held as the bytes of its ``.keras`` file, so pickle, deepcopy
and skops need no Keras object. A network with custom layers needs its build_model file at load
time (where it was at training): its layers are looked up there if Keras cannot find them.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from shipml.errors import ConfigError
from shipml.models import checkpoints
from shipml.models.keras_backend import (
    keras_module,
    load_user_module,
    torch_threads,
    user_model,
)


class _KerasEstimator(BaseEstimator):
    """Shared fit/predict/persistence; subclasses say how the target is encoded and scored."""

    _task: ClassVar[str]
    _loss: ClassVar[str]

    def __init__(
        self,
        build_model: str | None = None,
        hidden_layer_sizes: tuple[int, ...] = (128, 64),
        dropout: float = 0.1,
        learning_rate: float = 1e-3,
        batch_size: int = 256,
        max_epochs: int = 200,
        validation_fraction: float = 0.1,
        patience: int | None = 10,
        lr_patience: int | None = 4,
        lr_factor: float = 0.5,
        random_state: int | np.random.RandomState | None = None,
        n_threads: int | None = 1,
        verbose: int = 0,
        backend: str = "torch",
    ) -> None:
        self.build_model = build_model
        self.hidden_layer_sizes = hidden_layer_sizes
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.lr_patience = lr_patience
        self.lr_factor = lr_factor
        self.random_state = random_state
        self.n_threads = n_threads
        self.verbose = verbose
        self.backend = backend

    _y_numeric: ClassVar[bool] = False

    def _encode_target(self, y: np.ndarray) -> tuple[np.ndarray, int]:
        raise NotImplementedError

    def _score_outputs(self, out: np.ndarray, y: np.ndarray) -> float | None:
        raise NotImplementedError

    def _fit_class_weight(self, y: np.ndarray) -> dict[int, float] | None:
        return None

    def fit(self, X: Any, y: Any) -> _KerasEstimator:
        """Train with early stopping and learning-rate reduction on a held-out split."""
        keras = keras_module(self.backend)
        X, y = validate_data(self, X, y, dtype=(np.float64, np.float32), y_numeric=self._y_numeric)
        X = np.asarray(X, dtype=np.float32)
        target, n_outputs = self._encode_target(y)
        class_weight = self._fit_class_weight(target)
        rng = check_random_state(self.random_state)
        if self.random_state is not None:
            keras.utils.set_random_seed(int(rng.randint(0, 2**31 - 1)))
        x_tr, y_tr, val = self._split(X, target, rng)
        if val is not None and class_weight is not None:  # so val_loss measures what is trained
            val = (*val, np.array([class_weight[int(c)] for c in val[1]], np.float32))
        store = checkpoints.active()
        key = store.key(self, X, target) if store is not None else ""
        saved = store.load(key) if store is not None else None
        if saved is not None and saved["finished"]:  # this very fit finished before: load it
            self.model_ = self._load_model(_bytes_of(saved["model"]))
            self._finish(saved["history"], saved["best_epoch"], saved["stopped"], 0)
            return self
        if saved is not None:  # cut off mid-way: the network with its optimizer state
            model = self._load_model(_bytes_of(saved["model"]), compile=True)
        else:
            model = self._build(keras, X.shape[1], n_outputs)
        history: list[dict[str, Any]] = list(saved["history"]) if saved is not None else []
        monitor = "val_loss" if val is not None else "loss"
        callbacks = [_history_callback(keras, self, model, val, history)]
        stop = _resumable(keras.callbacks.EarlyStopping)(
            monitor=monitor, patience=self.patience or 0, restore_best_weights=True
        )
        plateau = None
        if self.patience is not None:
            callbacks.append(stop)
        # A learning-rate schedule in a user's compiled optimizer cannot be lowered on plateau.
        schedule = keras.optimizers.schedules.LearningRateSchedule
        fixed_lr = not isinstance(getattr(model.optimizer, "_learning_rate", None), schedule)
        if self.lr_patience is not None and fixed_lr:
            plateau = _resumable(keras.callbacks.ReduceLROnPlateau)(
                monitor=monitor, factor=self.lr_factor, patience=self.lr_patience
            )
            callbacks.append(plateau)
        start = 0
        if saved is not None:
            start = int(saved["epoch"])
            stop.resume_state = _restored(saved["early_stopping"])
            if plateau is not None and saved.get("plateau"):
                plateau.resume_state = _restored(saved["plateau"])
        if store is not None:
            callbacks.append(_checkpoint_callback(keras, store, key, model, history, stop, plateau))
        with torch_threads(self.backend, self.n_threads):
            model.fit(
                x_tr,
                y_tr,
                batch_size=self.batch_size,
                epochs=self.max_epochs,
                initial_epoch=start,
                verbose=self.verbose,
                callbacks=callbacks,
                validation_data=val,
                class_weight=class_weight,
            )
        self.model_ = model
        best = stop.best_epoch + 1 if stop.best_weights else len(history)
        self._finish(history, best, bool(stop.stopped_epoch > 0), start)
        if store is not None:
            store.save(
                key,
                {
                    "finished": True,
                    "epoch": len(history),
                    "model": _model_tensor(model),
                    "history": history,
                    "best_epoch": self.best_epoch_,
                    "stopped": self.stopped_early_,
                },
            )
        return self

    def _finish(self, history: list[dict[str, Any]], best: int, stopped: bool, start: int) -> None:
        self.history_ = history
        self.n_epochs_ = len(history)
        self.best_epoch_ = best
        self.stopped_early_ = stopped
        self.resumed_from_epoch_ = start

    def _split(
        self, X: np.ndarray, y: np.ndarray, rng: np.random.RandomState
    ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...] | None]:
        n_val = int(len(X) * self.validation_fraction)
        if n_val < 1 or len(X) - n_val < 1:
            return X, y, None
        stratify = None
        if self._task == "classification":
            counts = np.bincount(y)
            if counts.min() >= 2 and n_val >= len(counts):
                stratify = y
        x_tr, x_val, y_tr, y_val = train_test_split(
            X, y, test_size=n_val, random_state=rng, stratify=stratify
        )
        return x_tr, y_tr, (x_val, y_val)

    def _build(self, keras: Any, n_features: int, n_outputs: int) -> Any:
        if self.build_model is None:
            inputs = keras.Input(shape=(n_features,), name="features")
            x = inputs
            for i, units in enumerate(self.hidden_layer_sizes, start=1):
                x = keras.layers.Dense(units, activation="relu", name=f"hidden_{i}")(x)
                if self.dropout > 0:
                    x = keras.layers.Dropout(self.dropout, name=f"dropout_{i}")(x)
            activation = "softmax" if self._task == "classification" else None
            outputs = keras.layers.Dense(n_outputs, activation=activation, name="output")(x)
            model = keras.Model(inputs, outputs, name=f"shipml_{self._task}")
        else:
            model = user_model(keras, self.build_model, n_features, n_outputs, self._task)
        if not model.compiled:
            model.compile(optimizer=keras.optimizers.Adam(self.learning_rate), loss=self._loss)
        return model

    def _outputs(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        size = max(self.batch_size, 4096)
        with torch_threads(self.backend, self.n_threads):
            out = self.model_.predict(np.asarray(X, np.float32), batch_size=size, verbose=0)
        return np.asarray(out, dtype=np.float64)

    def save_keras(self, path: str | os.PathLike[str]) -> Path:
        """Write the fitted network as a native ``.keras`` file (regressors predict in y units)."""
        check_is_fitted(self, "model_")
        path = Path(path)
        if path.suffix != ".keras":
            raise ValueError(f"save_keras writes a .keras file, got {path.name!r}")
        self._export_model(keras_module(self.backend)).save(path)
        return path

    def _export_model(self, keras: Any) -> Any:
        return self.model_

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        model = state.pop("model_", None)
        if model is not None:  # skops and pickle hold the native .keras bytes, not Keras objects
            with tempfile.TemporaryDirectory() as tmp:
                model.save(Path(tmp) / "model.keras")
                data = (Path(tmp) / "model.keras").read_bytes()
            state["model_keras_bytes_"] = np.frombuffer(data, dtype=np.uint8).copy()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        data = state.pop("model_keras_bytes_", None)
        super().__setstate__(state)
        if data is not None:
            self.model_ = self._load_model(np.asarray(data, dtype=np.uint8).tobytes())

    def _load_model(self, data: bytes, compile: bool = False) -> Any:
        """Rebuild the network (``compile``: with its optimizer and that optimizer's state);
        custom layers come from the user's file if a first try fails."""
        keras = keras_module(self.backend)
        with tempfile.TemporaryDirectory() as tmp:
            file = Path(tmp) / "model.keras"
            file.write_bytes(data)
            try:
                return keras.models.load_model(file, compile=compile)
            except Exception as exc:
                if self.build_model is None:
                    raise
                first_error = exc
            try:
                module = load_user_module(self.build_model)
                custom = {
                    k: v
                    for k, v in vars(module).items()
                    if isinstance(v, type) and issubclass(v, keras.layers.Layer)
                }
                return keras.models.load_model(file, custom_objects=custom, compile=compile)
            except Exception as exc:
                detail = exc.message if isinstance(exc, ConfigError) else first_error
                raise ConfigError(
                    f"Cannot rebuild the Keras model built by {self.build_model}: {detail}",
                    hint="keep the build_model file in place; register custom layers with "
                    "@keras.saving.register_keras_serializable() and give them get_config()",
                ) from None


_CALLBACK_STATE = ("wait", "best", "best_epoch", "stopped_epoch", "cooldown_counter")


def _resumable(base: type) -> type:
    """A Keras callback class whose counters (and best weights) can be set back to a
    checkpoint's: ``on_train_begin`` resets them, so the saved state is applied after it."""

    class Resumable(base):  # type: ignore[misc, valid-type]
        resume_state: dict[str, Any] | None = None

        def on_train_begin(self, logs: Any = None) -> None:
            super().on_train_begin(logs)
            for name, value in (self.resume_state or {}).items():
                setattr(self, name, value)

    Resumable.__name__ = base.__name__
    return Resumable


def _callback_state(callback: Any) -> dict[str, Any]:
    import torch

    state: dict[str, Any] = {}
    for name in _CALLBACK_STATE:
        value = getattr(callback, name, None)
        if value is not None:
            state[name] = float(value) if name == "best" else int(value)
    weights = getattr(callback, "best_weights", None)
    if weights is not None:
        state["best_weights"] = [torch.from_numpy(np.array(w)) for w in weights]
    return state


def _restored(state: dict[str, Any]) -> dict[str, Any]:
    state = dict(state)
    if "best_weights" in state:
        state["best_weights"] = [w.numpy() for w in state["best_weights"]]
    return state


def _model_tensor(model: Any) -> Any:
    """The network's .keras file (with its optimizer state) as a uint8 tensor, which a
    weights-only checkpoint can hold."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        model.save(Path(tmp) / "model.keras")
        data = (Path(tmp) / "model.keras").read_bytes()
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _bytes_of(tensor: Any) -> bytes:
    return bytes(tensor.numpy().tobytes())


def _checkpoint_callback(
    keras: Any,
    store: checkpoints.CheckpointStore,
    key: str,
    model: Any,
    history: list[dict[str, Any]],
    stop: Any,
    plateau: Any,
) -> Any:
    """Saves the fit's state at the end of an epoch when the store says one is due."""
    last = [time.monotonic()]

    def end(epoch: int, logs: Any = None) -> None:
        if not store.due(last[0]) or getattr(model, "stop_training", False):
            return
        store.save(
            key,
            {
                "finished": False,
                "epoch": epoch + 1,
                "model": _model_tensor(model),
                "history": list(history),
                "early_stopping": _callback_state(stop),
                "plateau": _callback_state(plateau) if plateau is not None else {},
            },
        )
        last[0] = time.monotonic()

    return keras.callbacks.LambdaCallback(on_epoch_end=end)


def _history_callback(
    keras: Any, estimator: _KerasEstimator, model: Any, val: Any, history: list[dict[str, Any]]
) -> Any:
    """Append to ``history`` the same per-epoch rows as the torch MLP's ``history_``."""
    lr = [0.0]  # the rate used during the epoch: ReduceLROnPlateau changes it at the end

    def begin(epoch: int, logs: Any = None) -> None:
        rate = keras.ops.convert_to_numpy(model.optimizer.learning_rate)
        lr[0] = float(str(np.float32(rate)))  # 0.001, not 0.0010000000474974513

    def end(epoch: int, logs: Any = None) -> None:
        score = None
        if val is not None:  # one forward pass over the validation rows: cheap
            out = np.asarray(model.predict(val[0], batch_size=4096, verbose=0), np.float64)
            score = estimator._score_outputs(out, val[1])
        logs = logs or {}
        val_loss = None if logs.get("val_loss") is None else float(logs["val_loss"])
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": float(logs["loss"]),
                "val_loss": val_loss,
                "val_score": score,
                "learning_rate": lr[0],
            }
        )

    return keras.callbacks.LambdaCallback(on_epoch_begin=begin, on_epoch_end=end)


class KerasClassifier(ClassifierMixin, _KerasEstimator):
    """A Keras network over a softmax of the classes; ``class_weight``: None, "balanced" or dict.

    A user ``build_model`` must output class probabilities (end with a softmax over n_outputs).
    """

    _task = "classification"
    _loss = "sparse_categorical_crossentropy"

    def __init__(
        self,
        build_model: str | None = None,
        hidden_layer_sizes: tuple[int, ...] = (128, 64),
        dropout: float = 0.1,
        learning_rate: float = 1e-3,
        batch_size: int = 256,
        max_epochs: int = 200,
        validation_fraction: float = 0.1,
        patience: int | None = 10,
        lr_patience: int | None = 4,
        lr_factor: float = 0.5,
        random_state: int | np.random.RandomState | None = None,
        n_threads: int | None = 1,
        verbose: int = 0,
        backend: str = "torch",
        class_weight: str | dict[Any, float] | None = None,
    ) -> None:
        super().__init__(
            build_model=build_model,
            hidden_layer_sizes=hidden_layer_sizes,
            dropout=dropout,
            learning_rate=learning_rate,
            batch_size=batch_size,
            max_epochs=max_epochs,
            validation_fraction=validation_fraction,
            patience=patience,
            lr_patience=lr_patience,
            lr_factor=lr_factor,
            random_state=random_state,
            n_threads=n_threads,
            verbose=verbose,
            backend=backend,
        )
        self.class_weight = class_weight

    def _encode_target(self, y: np.ndarray) -> tuple[np.ndarray, int]:
        check_classification_targets(y)
        self.classes_, encoded = np.unique(y, return_inverse=True)
        return encoded.astype(np.int64), len(self.classes_)

    def _fit_class_weight(self, y: np.ndarray) -> dict[int, float] | None:
        if self.class_weight is None:
            return None
        weights = compute_class_weight(self.class_weight, classes=self.classes_, y=self.classes_[y])
        return {i: float(w) for i, w in enumerate(weights)}

    def _score_outputs(self, out: np.ndarray, y: np.ndarray) -> float:
        return float(np.mean(out.argmax(axis=1) == y))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, columns in the order of ``classes_``."""
        return self._outputs(X)

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class for each row."""
        proba = self._outputs(X)
        return self.classes_[proba.argmax(axis=1)]


class KerasRegressor(RegressorMixin, _KerasEstimator):
    """A Keras network trained with MSE on the standardised target (predictions in y units)."""

    _task = "regression"
    _loss = "mean_squared_error"
    _y_numeric = True

    def _encode_target(self, y: np.ndarray) -> tuple[np.ndarray, int]:
        y = np.asarray(y, dtype=np.float64)
        self.y_mean_ = float(y.mean())
        std = float(y.std())
        self.y_scale_ = std if std > 0 else 1.0
        return ((y - self.y_mean_) / self.y_scale_).astype(np.float32).reshape(-1, 1), 1

    def _score_outputs(self, out: np.ndarray, y: np.ndarray) -> float | None:
        total = float(np.sum((y - y.mean()) ** 2))  # R² does not change with standardisation
        return None if total == 0 else 1.0 - float(np.sum((y - out) ** 2)) / total

    def predict(self, X: Any) -> np.ndarray:
        """Predicted target values."""
        return self._outputs(X)[:, 0] * self.y_scale_ + self.y_mean_

    def _export_model(self, keras: Any) -> Any:
        inputs = keras.Input(shape=(self.n_features_in_,), name="features")
        scaled = keras.layers.Rescaling(self.y_scale_, offset=self.y_mean_, name="to_y_units")
        return keras.Model(inputs, scaled(self.model_(inputs)), name=self.model_.name)
