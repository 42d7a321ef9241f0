"""A tabular multilayer perceptron in PyTorch, as scikit-learn estimators, on numeric inputs
(shipml's preprocessor one-hot encodes, scales and imputes first).

Training (shared with the other networks, see ``shipml.models.torch_net``): AdamW on shuffled
mini-batches, a validation split (stratified for classes where possible), early stopping on the
validation loss that restores the best epoch's weights, ReduceLROnPlateau, dropout, optional
batch norm. All randomness comes from ``random_state`` through a local ``torch.Generator``: the
global random state is left alone and the same ``random_state`` gives bit-identical
predictions. A fitted model's state holds no torch object (weights as NumPy arrays), so it
pickles, deep-copies and saves with skops.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.base import RegressorMixin
from sklearn.utils.validation import validate_data
from torch import nn

from shipml.models.torch_net import (
    ACTIVATIONS,
    Network,
    TorchNetClassifier,
    TorchNetEstimator,
)

__all__ = ["TorchMLPClassifier", "TorchMLPRegressor"]


class _TorchMLPBase(TorchNetEstimator):
    """The parameters and network both MLP estimators share (the loop is TorchNetEstimator's)."""

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

    def _param_rules(self) -> dict[str, bool]:
        sizes = self.hidden_layer_sizes
        return {
            "hidden_layer_sizes": isinstance(sizes, Sequence)
            and all(isinstance(s, int | np.integer) and s > 0 for s in sizes),
            "activation": self.activation in ACTIVATIONS,
            "dropout": 0 <= self.dropout < 1,
            **super()._param_rules(),
        }

    def _architecture_for(self, n_inputs: int, n_outputs: int) -> dict[str, Any]:
        return {
            "n_inputs": n_inputs,
            "hidden": tuple(int(s) for s in self.hidden_layer_sizes),
            "n_outputs": n_outputs,
            "activation": self.activation,
            "batch_norm": bool(self.batch_norm),
            "dropout": float(self.dropout),
        }

    def _build_network(self) -> nn.Module:
        return Network(**self._architecture)

    def _uses_batch_norm(self) -> bool:
        return bool(self.batch_norm)


class TorchMLPClassifier(TorchNetClassifier, _TorchMLPBase):
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

    def _target_tensor(self, targets: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(targets, dtype=np.float32).reshape(-1, 1))

    def _score(self, outputs: torch.Tensor, targets: torch.Tensor) -> float | None:
        total = float(((targets - targets.mean()) ** 2).sum())
        if total == 0:  # R² is undefined on a constant (or one-row) validation target
            return None
        return 1.0 - float(((targets - outputs) ** 2).sum()) / total

    def predict(self, X: Any) -> np.ndarray:
        """Predicted targets, on the original scale."""
        return self._outputs(X)[:, 0].numpy() * self.target_scale_ + self.target_mean_
