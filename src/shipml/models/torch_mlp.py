"""A tabular multilayer perceptron in PyTorch, as scikit-learn estimators, on numeric inputs
(shipml's preprocessor one-hot encodes, scales and imputes first).

Training: AdamW on shuffled mini-batches, a validation split (stratified for classes where
possible), early stopping on the validation loss that restores the best epoch's weights,
ReduceLROnPlateau, dropout, optional batch norm. All randomness comes from ``random_state``
through a local ``torch.Generator``: the global random state is left alone and the same
``random_state`` gives bit-identical predictions. A fitted model's state holds no torch object
(weights as NumPy arrays), so it pickles, deep-copies and saves with skops.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from shipml.models.torch_net import ACTIVATIONS, Network, as_tensor, batches, torch_threads

__all__ = ["TorchMLPClassifier", "TorchMLPRegressor"]

_Pair = tuple[torch.Tensor, torch.Tensor]  # (inputs, targets)
_PREDICT_CHUNK = 8192  # rows per forward pass at predict time: bounded memory on large tables


class _TorchMLPBase(BaseEstimator):
    """The parameters, training loop, prediction pass and persistence both estimators share."""

    def __init__(
        self,
        hidden_layer_sizes: Sequence[int] = (128, 64),
        activation: str = "relu",
        dropout: float = 0.1,
        batch_norm: bool = False,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 256,
        max_epochs: int = 200,
        validation_fraction: float = 0.1,
        patience: int = 10,
        lr_patience: int = 4,
        lr_factor: float = 0.5,
        min_delta: float = 1e-4,
        random_state: int | np.random.RandomState | None = None,
        n_threads: int = 1,
        verbose: int = 0,
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.dropout = dropout
        self.batch_norm = batch_norm
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.lr_patience = lr_patience
        self.lr_factor = lr_factor
        self.min_delta = min_delta
        self.random_state = random_state
        self.n_threads = n_threads
        self.verbose = verbose

    # The subclasses supply the loss, the targets as a tensor and the validation score.
    _loss_function: Callable[[], nn.Module]
    _target_tensor: Callable[[np.ndarray], torch.Tensor]
    _score: Callable[[torch.Tensor, torch.Tensor], float | None]

    def _check_params(self) -> None:
        sizes = self.hidden_layer_sizes
        rules = {
            "hidden_layer_sizes": isinstance(sizes, Sequence)
            and all(isinstance(s, int | np.integer) and s > 0 for s in sizes),
            "activation": self.activation in ACTIVATIONS,
            "dropout": 0 <= self.dropout < 1,
            "learning_rate": self.learning_rate > 0,
            "weight_decay": self.weight_decay >= 0,
            "batch_size": isinstance(self.batch_size, int | np.integer) and self.batch_size > 0,
            "max_epochs": isinstance(self.max_epochs, int | np.integer) and self.max_epochs > 0,
            "validation_fraction": 0 <= self.validation_fraction < 1,
            "patience": self.patience >= 1,
            "lr_patience": self.lr_patience >= 0,
            "lr_factor": 0 < self.lr_factor < 1,
            "min_delta": self.min_delta >= 0,
            "n_threads": isinstance(self.n_threads, int | np.integer) and self.n_threads > 0,
        }
        for name, ok in rules.items():
            if not ok:
                raise ValueError(f"{type(self).__name__}: invalid {name}={getattr(self, name)!r}")

    def _split(
        self, X: np.ndarray, targets: np.ndarray, seed: int, stratify: np.ndarray | None
    ) -> tuple[_Pair, _Pair | None]:
        """(inputs, targets) tensors for training and for validation (None without)."""
        if not self.validation_fraction:
            return (as_tensor(X), self._targetas_tensor(targets)), None
        if stratify is not None:
            n_val = math.ceil(self.validation_fraction * len(X))
            n_classes = len(np.unique(stratify))
            # Stratifying needs two rows per class and room for every class on both sides.
            if np.bincount(stratify).min() < 2 or min(n_val, len(X) - n_val) < n_classes:
                stratify = None
        X_train, X_val, t_train, t_val = train_test_split(
            X, targets, test_size=self.validation_fraction, random_state=seed, stratify=stratify
        )
        return (
            (as_tensor(X_train), self._targetas_tensor(t_train)),
            (as_tensor(X_val), self._targetas_tensor(t_val)),
        )

    def _fit(
        self, X: np.ndarray, targets: np.ndarray, n_outputs: int, stratify: np.ndarray | None
    ) -> None:
        self._check_params()
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        generator = torch.Generator().manual_seed(seed)
        train, val = self._split(X, targets, seed, stratify)
        self._architecture = {
            "n_inputs": X.shape[1],
            "hidden": tuple(int(s) for s in self.hidden_layer_sizes),
            "n_outputs": n_outputs,
            "activation": self.activation,
            "batch_norm": bool(self.batch_norm),
            "dropout": float(self.dropout),
        }
        with torch_threads(self.n_threads):
            network = Network(**self._architecture)
            network.initialise(generator)
            self._train(network, generator, train, val)
        self.network_ = network.eval()

    def _train(
        self,
        network: Network,
        generator: torch.Generator,
        train: _Pair,
        val: _Pair | None,
    ) -> None:
        optimizer = torch.optim.AdamW(
            network.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            factor=self.lr_factor,
            patience=self.lr_patience,
            threshold=self.min_delta,
            threshold_mode="abs",
        )
        loss_fn = self._loss_function()
        Xt, tt = train
        batch_size = min(int(self.batch_size), len(Xt))
        history: list[dict[str, Any]] = []
        best_loss = reference = math.inf
        best_state: dict[str, torch.Tensor] | None = None
        best_epoch, wait, stopped = 0, 0, False
        for epoch in range(1, int(self.max_epochs) + 1):
            network.train()
            order = torch.randperm(len(Xt), generator=generator)
            total = 0.0
            for batch in batches(order, batch_size, self.batch_norm):
                optimizer.zero_grad()
                loss = loss_fn(network(Xt[batch], generator), tt[batch])
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
            row: dict[str, Any] = {
                "epoch": epoch,
                "train_loss": total / len(Xt),  # with dropout on, as Keras reports it
                "val_loss": None,
                "val_score": None,
                "learning_rate": float(optimizer.param_groups[0]["lr"]),
            }
            if val is not None:
                network.eval()
                with torch.no_grad():
                    outputs = network(val[0])
                    row["val_loss"] = float(loss_fn(outputs, val[1]))
                row["val_score"] = self._score(outputs, val[1])
            history.append(row)
            if self.verbose:
                print(", ".join(f"{k} {v:.4g}" for k, v in row.items() if v is not None))
            monitored = row["train_loss"] if val is None else row["val_loss"]
            scheduler.step(monitored)  # on the training loss when there is no validation split
            if val is None:
                best_epoch = epoch
                continue
            if monitored < best_loss:  # the weights kept are the lowest validation loss seen
                best_loss, best_epoch = monitored, epoch
                best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
            if monitored < reference - self.min_delta:  # patience restarts on real progress
                reference, wait = monitored, 0
            else:
                wait += 1
                if wait >= self.patience:
                    stopped = True
                    break
        if best_state is not None:
            network.load_state_dict(best_state)
        self.history_ = history
        self.n_epochs_ = len(history)
        self.best_epoch_ = best_epoch
        self.stopped_early_ = stopped

    def _outputs(self, X: Any) -> torch.Tensor:
        """The network's raw outputs for ``X`` in inference mode, as float64."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float32, reset=False)
        with torch_threads(self.n_threads), torch.no_grad():
            Xt = as_tensor(X)
            return torch.cat([self.network_(c) for c in Xt.split(_PREDICT_CHUNK)]).double()

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False  # deterministic given random_state (bit-identical)
        return tags

    def __getstate__(self) -> dict[str, Any]:
        # A copy: on Python >= 3.11 object.__getstate__ hands back the live __dict__ itself.
        state = dict(super().__getstate__())
        network = state.pop("network_", None)
        if network is not None:
            state["_network_weights"] = {
                name: tensor.detach().cpu().numpy().copy()
                for name, tensor in network.state_dict().items()
            }
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        weights = state.pop("_network_weights", None)
        super().__setstate__(state)
        if weights is not None:
            network = Network(**self._architecture)
            network.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
            self.network_ = network.eval()


class TorchMLPClassifier(ClassifierMixin, _TorchMLPBase):
    """An MLP classifier: softmax cross-entropy over one output per class (binary included).

    ``class_weight="balanced"`` (or a {label: weight} dict) weights the cross-entropy, in
    training and in the validation loss that early stopping watches. The validation score in
    ``history_`` is accuracy.
    """

    def __init__(
        self,
        hidden_layer_sizes: Sequence[int] = (128, 64),
        activation: str = "relu",
        dropout: float = 0.1,
        batch_norm: bool = False,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 256,
        max_epochs: int = 200,
        validation_fraction: float = 0.1,
        patience: int = 10,
        lr_patience: int = 4,
        lr_factor: float = 0.5,
        min_delta: float = 1e-4,
        random_state: int | np.random.RandomState | None = None,
        n_threads: int = 1,
        verbose: int = 0,
        class_weight: str | dict[Any, float] | None = None,
    ) -> None:
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes,
            activation=activation,
            dropout=dropout,
            batch_norm=batch_norm,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            batch_size=batch_size,
            max_epochs=max_epochs,
            validation_fraction=validation_fraction,
            patience=patience,
            lr_patience=lr_patience,
            lr_factor=lr_factor,
            min_delta=min_delta,
            random_state=random_state,
            n_threads=n_threads,
            verbose=verbose,
        )
        self.class_weight = class_weight

    def fit(self, X: Any, y: Any) -> TorchMLPClassifier:
        """Train on ``X`` (numeric, n_samples × n_features) and class labels ``y``."""
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self.classes_, encoded = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"{type(self).__name__} needs at least 2 classes in y, got 1 class")
        self._class_weights = None
        if self.class_weight is not None:
            weights = compute_class_weight(self.class_weight, classes=self.classes_, y=y)
            self._class_weights = np.asarray(weights, dtype=np.float32)
        self._fit(X, encoded, len(self.classes_), stratify=encoded)
        return self

    def _loss_function(self) -> nn.Module:
        weight = None if self._class_weights is None else torch.from_numpy(self._class_weights)
        return nn.CrossEntropyLoss(weight=weight)

    def _targetas_tensor(self, targets: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(targets, dtype=np.int64))

    def _score(self, outputs: torch.Tensor, targets: torch.Tensor) -> float | None:
        return float((outputs.argmax(dim=1) == targets).double().mean())

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, (n_samples, n_classes), columns in ``classes_`` order."""
        return torch.softmax(self._outputs(X), dim=1).numpy()

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class label of each row."""
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(axis=1)]


class TorchMLPRegressor(RegressorMixin, _TorchMLPBase):
    """An MLP regressor: MSE on the target standardised with the training mean and standard
    deviation (``target_mean_``, ``target_scale_``), undone in ``predict``. The validation score
    in ``history_`` is R²."""

    def fit(self, X: Any, y: Any) -> TorchMLPRegressor:
        """Train on ``X`` (numeric, n_samples × n_features) and a numeric target ``y``."""
        X, y = validate_data(self, X, y, dtype=np.float32, y_numeric=True)
        y = np.asarray(y, dtype=np.float64)
        self.target_mean_ = float(y.mean())
        scale = float(y.std())
        self.target_scale_ = scale if scale > 0 else 1.0
        self._fit(X, (y - self.target_mean_) / self.target_scale_, 1, stratify=None)
        return self

    def _loss_function(self) -> nn.Module:
        return nn.MSELoss()

    def _targetas_tensor(self, targets: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(targets, dtype=np.float32).reshape(-1, 1))

    def _score(self, outputs: torch.Tensor, targets: torch.Tensor) -> float | None:
        total = float(((targets - targets.mean()) ** 2).sum())
        if total == 0:  # R² is undefined on a constant (or one-row) validation target
            return None
        return 1.0 - float(((targets - outputs) ** 2).sum()) / total

    def predict(self, X: Any) -> np.ndarray:
        """Predicted targets, on the original scale."""
        return self._outputs(X)[:, 0].numpy() * self.target_scale_ + self.target_mean_
