"""The PyTorch pieces shipml's networks share: seeded initialisation and dropout, thread
control, tensors from arrays, mini-batches, and ``TorchNetEstimator``, the scikit-learn base
with the one training loop (AdamW on shuffled mini-batches, a validation split, early stopping
that restores the best epoch's weights, ReduceLROnPlateau) and persistence with the weights as
NumPy arrays. ``TorchNetClassifier`` adds softmax classification on top.

All randomness comes from ``random_state`` through a local ``torch.Generator``: the global
random state is left alone and the same ``random_state`` gives bit-identical predictions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Self

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from shipml.models import checkpoints

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}

_Pair = tuple[torch.Tensor, torch.Tensor]  # (inputs, targets)


class Network(nn.Module):
    """Per hidden layer: linear, [batch norm], activation, dropout; then a linear output."""

    def __init__(
        self,
        n_inputs: int,
        hidden: Sequence[int],
        n_outputs: int,
        activation: str,
        batch_norm: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        blocks = []
        for width in hidden:
            # skip_init: no draw from torch's global generator; `initialise` fills the weights.
            layers: list[nn.Module] = [nn.utils.skip_init(nn.Linear, n_inputs, width)]
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(ACTIVATIONS[activation]())
            blocks.append(nn.Sequential(*layers))
            n_inputs = width
        self.hidden = nn.ModuleList(blocks)
        self.output = nn.utils.skip_init(nn.Linear, n_inputs, n_outputs)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for block in self.hidden:
            x = block(x)
            if self.training and self.dropout > 0:
                x = seeded_dropout(x, self.dropout, generator)
        return self.output(x)


def initialise(network: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default Linear and Conv2d initialisation, U(±1/√fan_in) for weights and
    biases, drawn from ``generator`` (build those layers with ``nn.utils.skip_init``)."""
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, nn.Linear | nn.Conv2d):
                bound = 1.0 / math.sqrt(module.weight[0].numel())  # fan_in
                module.weight.uniform_(-bound, bound, generator=generator)
                if module.bias is not None:
                    module.bias.uniform_(-bound, bound, generator=generator)


def seeded_dropout(x: torch.Tensor, rate: float, generator: torch.Generator | None) -> torch.Tensor:
    """Inverted dropout drawn from ``generator`` (nn.Dropout only draws from the global one)."""
    keep = 1.0 - rate
    mask = torch.rand(x.shape, generator=generator) < keep
    return x * mask.to(x.dtype) / keep


@contextmanager
def torch_threads(n_threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set for the block (None: left alone), then restored (it
    is process-wide). More threads than one rarely help small networks on two busy cores."""
    if n_threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def as_tensor(X: np.ndarray) -> torch.Tensor:
    # torch.from_numpy shares memory but warns on read-only arrays (memmaps): copy only then.
    return torch.from_numpy(np.require(X, dtype=np.float32, requirements=["C", "W"]))


def batches(order: torch.Tensor, batch_size: int, batch_norm: bool) -> list[torch.Tensor]:
    batches = list(order.split(batch_size))
    if batch_norm and len(batches) > 1 and len(batches[-1]) == 1:
        # Batch norm cannot train on one row: fold a lone last row into the batch before it.
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches


def is_int_at_least(value: Any, low: int) -> bool:
    """Whether ``value`` is an integer (Python or NumPy) no smaller than ``low``."""
    return isinstance(value, int | np.integer) and bool(value >= low)


class TorchNetEstimator(BaseEstimator):
    """The training loop, prediction pass and persistence of shipml's PyTorch estimators.

    Subclasses define ``__init__`` with the training parameters read here (learning_rate,
    weight_decay, batch_size, max_epochs, validation_fraction, patience, lr_patience,
    lr_factor, min_delta, random_state, n_threads, verbose) and the hooks below. A fitted
    model's state holds no torch object, so it pickles, deep-copies and saves with skops.
    """

    _predict_chunk = 8192  # rows per forward pass outside training: bounded memory
    _fused_optimizer = False  # torch's fused AdamW: faster, rounds differently from the loop

    learning_rate: float
    weight_decay: float
    batch_size: int
    max_epochs: int
    validation_fraction: float
    patience: int
    lr_patience: int
    lr_factor: float
    min_delta: float
    random_state: int | np.random.RandomState | None
    n_threads: int
    verbose: int

    # --- hooks -----------------------------------------------------------------------------
    def _param_rules(self) -> dict[str, bool]:
        """{parameter: whether its value is valid}; subclasses add their own."""
        return {
            "learning_rate": self.learning_rate > 0,
            "weight_decay": self.weight_decay >= 0,
            "batch_size": is_int_at_least(self.batch_size, 1),
            "max_epochs": is_int_at_least(self.max_epochs, 1),
            "validation_fraction": 0 <= self.validation_fraction < 1,
            "patience": self.patience >= 1,
            "lr_patience": self.lr_patience >= 0,
            "lr_factor": 0 < self.lr_factor < 1,
            "min_delta": self.min_delta >= 0,
            "n_threads": is_int_at_least(self.n_threads, 1),
        }

    def _architecture_for(self, n_inputs: int, n_outputs: int) -> dict[str, Any]:
        """The network's constructor arguments (plain Python values: they are persisted)."""
        raise NotImplementedError

    def _build_network(self) -> nn.Module:
        """An uninitialised network from ``self._architecture``; its forward takes
        ``(inputs, generator=None)``."""
        raise NotImplementedError

    def _uses_batch_norm(self) -> bool:
        return False

    def _augment(self, inputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A training batch, transformed (drawing from ``generator`` only); here unchanged."""
        return inputs

    def _loss_function(self) -> nn.Module:
        raise NotImplementedError

    def _target_tensor(self, targets: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def _score(self, outputs: torch.Tensor, targets: torch.Tensor) -> float | None:
        raise NotImplementedError

    # --- training --------------------------------------------------------------------------
    def _check_params(self) -> None:
        for name, ok in self._param_rules().items():
            if not ok:
                raise ValueError(f"{type(self).__name__}: invalid {name}={getattr(self, name)!r}")

    def _split(
        self, X: np.ndarray, targets: np.ndarray, seed: int, stratify: np.ndarray | None
    ) -> tuple[_Pair, _Pair | None]:
        """(inputs, targets) tensors for training and for validation (None without)."""
        if not self.validation_fraction:
            return (as_tensor(X), self._target_tensor(targets)), None
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
            (as_tensor(X_train), self._target_tensor(t_train)),
            (as_tensor(X_val), self._target_tensor(t_val)),
        )

    def _fit(
        self, X: np.ndarray, targets: np.ndarray, n_outputs: int, stratify: np.ndarray | None
    ) -> None:
        self._check_params()
        self._architecture = self._architecture_for(X.shape[1], n_outputs)
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        generator = torch.Generator().manual_seed(seed)
        store = checkpoints.active()
        key = store.key(self, X, targets) if store is not None else ""
        saved = store.load(key) if store is not None else None
        train, val = self._split(X, targets, seed, stratify)
        with torch_threads(self.n_threads):
            network = self._build_network()
            initialise(network, generator)
            if saved is not None and saved["finished"]:
                network.load_state_dict(saved["network"])
                self._finish(saved)
            else:
                self._train(network, generator, train, val, store, key, saved)
        self.network_ = network.eval()

    def _finish(self, loop: dict[str, Any]) -> None:
        self.history_ = loop["history"]
        self.n_epochs_ = len(loop["history"])
        self.best_epoch_ = loop["best_epoch"]
        self.stopped_early_ = loop["stopped"]
        self.resumed_from_epoch_ = loop.get("resumed_from_epoch", 0)

    def _train(
        self,
        network: nn.Module,
        generator: torch.Generator,
        train: _Pair,
        val: _Pair | None,
        store: checkpoints.CheckpointStore | None = None,
        key: str = "",
        saved: dict[str, Any] | None = None,
    ) -> None:
        """The epochs, from the first or, given ``saved`` (a checkpoint of this very fit), from
        the one after it: weights, optimizer, schedule, counters and random generator restored,
        so the result is the same as if training had never stopped."""
        optimizer = torch.optim.AdamW(
            network.parameters(),
            lr=self.learning_rate,
            weight_decay=self.weight_decay,
            fused=self._fused_optimizer or None,
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
        loop: dict[str, Any] = {
            "epoch": 0,
            "history": [],
            "best_loss": math.inf,
            "reference": math.inf,  # the loss patience measures progress against
            "best_state": None,
            "best_epoch": 0,
            "wait": 0,
            "stopped": False,
            "resumed_from_epoch": 0,
        }
        if saved is not None:
            network.load_state_dict(saved["network"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            generator.set_state(saved["generator"])
            loop.update({k: saved[k] for k in loop if k != "resumed_from_epoch"})
            loop["resumed_from_epoch"] = saved["epoch"]
        last_saved = time.monotonic()
        history: list[dict[str, Any]] = loop["history"]
        for epoch in range(loop["epoch"] + 1, int(self.max_epochs) + 1):
            network.train()
            order = torch.randperm(len(Xt), generator=generator)
            total = 0.0
            for batch in batches(order, batch_size, self._uses_batch_norm()):
                optimizer.zero_grad()
                inputs = self._augment(Xt[batch], generator)
                loss = loss_fn(network(inputs, generator), tt[batch])
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
                    outputs = self._forward(network, val[0])
                    row["val_loss"] = float(loss_fn(outputs, val[1]))
                row["val_score"] = self._score(outputs, val[1])
            history.append(row)
            loop["epoch"] = epoch
            if self.verbose:
                print(", ".join(f"{k} {v:.4g}" for k, v in row.items() if v is not None))
            monitored = row["train_loss"] if val is None else row["val_loss"]
            scheduler.step(monitored)  # on the training loss when there is no validation split
            if val is None:
                loop["best_epoch"] = epoch
            else:
                if monitored < loop["best_loss"]:  # the weights kept: lowest validation loss
                    loop["best_loss"], loop["best_epoch"] = monitored, epoch
                    loop["best_state"] = {
                        k: v.detach().clone() for k, v in network.state_dict().items()
                    }
                if monitored < loop["reference"] - self.min_delta:  # patience restarts on progress
                    loop["reference"], loop["wait"] = monitored, 0
                else:
                    loop["wait"] += 1
                    if loop["wait"] >= self.patience:
                        loop["stopped"] = True
                        break
            if store is not None and epoch < self.max_epochs and store.due(last_saved):
                store.save(
                    key,
                    {
                        **loop,
                        "finished": False,
                        "network": network.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "generator": generator.get_state(),
                    },
                )
                last_saved = time.monotonic()
        if loop["best_state"] is not None:
            network.load_state_dict(loop["best_state"])
        if store is not None:
            finished = {k: v for k, v in loop.items() if k != "best_state"}
            store.save(key, {**finished, "finished": True, "network": network.state_dict()})
        self._finish(loop)

    # --- prediction and persistence --------------------------------------------------------
    def _forward(self, network: nn.Module, Xt: torch.Tensor) -> torch.Tensor:
        return torch.cat([network(chunk) for chunk in Xt.split(self._predict_chunk)])

    def _outputs(self, X: Any) -> torch.Tensor:
        """The network's raw outputs for ``X`` in inference mode, as float64."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float32, reset=False)
        with torch_threads(self.n_threads), torch.no_grad():
            return self._forward(self.network_, as_tensor(X)).double()

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
            network = self._build_network()
            network.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
            self.network_ = network.eval()


class TorchNetClassifier(ClassifierMixin, TorchNetEstimator):
    """Softmax cross-entropy over one output per class (binary included).

    ``class_weight="balanced"`` (or a {label: weight} dict) weights the cross-entropy, in
    training and in the validation loss that early stopping watches. The validation score in
    ``history_`` is accuracy.
    """

    class_weight: str | dict[Any, float] | None

    def fit(self, X: Any, y: Any) -> Self:
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

    def _target_tensor(self, targets: np.ndarray) -> torch.Tensor:
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
