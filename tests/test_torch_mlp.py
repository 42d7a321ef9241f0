"""The PyTorch MLP estimators: scikit-learn's estimator checks, the training loop's behaviour
(early stopping, learning-rate schedule, dropout, class weights, reproducibility), accuracy on
real data and persistence without pickle."""

from __future__ import annotations

import copy
import itertools
import pickle
from typing import Any

import numpy as np
import pytest
import skops.io as sio
import torch
from sklearn.base import clone
from sklearn.datasets import load_breast_cancer, load_diabetes, make_classification
from sklearn.metrics import recall_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from shipml.features import trusted_types_for
from shipml.models.torch_mlp import TorchMLPClassifier, TorchMLPRegressor

# Small and fast, but trained enough to meet the checks' score thresholds honestly.
FAST: dict[str, Any] = {
    "hidden_layer_sizes": (16,),
    "max_epochs": 20,
    "patience": 5,
    "batch_size": 32,
    "learning_rate": 1e-2,
    "random_state": 0,
}


@parametrize_with_checks([TorchMLPClassifier(**FAST), TorchMLPRegressor(**FAST)])
def test_sklearn_estimator_checks(estimator: Any, check: Any) -> None:
    check(estimator)


def _scaled_split(X: np.ndarray, y: np.ndarray, seed: int, stratify: bool) -> list[np.ndarray]:
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, random_state=seed, stratify=y if stratify else None
    )
    scaler = StandardScaler().fit(X_train)
    return [scaler.transform(X_train), scaler.transform(X_test), y_train, y_test]


@pytest.fixture(scope="module")
def cancer() -> list[np.ndarray]:
    X, y = load_breast_cancer(return_X_y=True)
    return _scaled_split(X, y, 0, stratify=True)


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    """An easy three-class problem: the validation loss bottoms out within a few dozen epochs."""
    return make_classification(
        n_samples=600, n_features=10, n_informative=5, n_classes=3, flip_y=0.05, random_state=0
    )


def test_breast_cancer_accuracy(cancer: list[np.ndarray]) -> None:
    X_train, X_test, y_train, y_test = cancer
    model = TorchMLPClassifier(random_state=0).fit(X_train, y_train)
    assert model.score(X_test, y_test) > 0.95
    proba = model.predict_proba(X_test)
    assert proba.shape == (len(X_test), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_diabetes_r2() -> None:
    X, y = load_diabetes(return_X_y=True)
    X_train, X_test, y_train, y_test = _scaled_split(X, y, 2, stratify=False)
    model = TorchMLPRegressor(random_state=0).fit(X_train, y_train)
    assert model.score(X_test, y_test) > 0.4
    # The target is standardised inside: predictions come back on the original scale.
    assert model.target_mean_ == pytest.approx(y_train.mean())
    assert abs(model.predict(X_test).mean() - y_test.mean()) < 0.25 * y_test.std()


def test_early_stopping_stops_and_restores_the_best_epoch(blobs: tuple) -> None:
    X, y = blobs
    params = {"max_epochs": 300, "patience": 5, "min_delta": 0.0, "random_state": 0}
    model = TorchMLPClassifier(**params).fit(X, y)
    assert model.stopped_early_ and model.n_epochs_ < 300
    val_losses = [row["val_loss"] for row in model.history_]
    assert model.best_epoch_ == int(np.argmin(val_losses)) + 1
    assert model.n_epochs_ == model.best_epoch_ + 5
    # Training is deterministic, so a run cut off at the best epoch ends with that epoch's
    # weights (its validation loss is the best in history_). The early-stopped model trained
    # five epochs more: it predicts exactly as the cut-off run only if it restored them.
    at_best = TorchMLPClassifier(**{**params, "max_epochs": model.best_epoch_}).fit(X, y)
    assert at_best.history_[-1]["val_loss"] == min(val_losses)
    np.testing.assert_array_equal(model.predict_proba(X), at_best.predict_proba(X))


def test_reduce_lr_on_plateau_lowers_the_learning_rate(blobs: tuple) -> None:
    X, y = blobs
    model = TorchMLPClassifier(
        learning_rate=1e-2, lr_patience=1, lr_factor=0.5, patience=100, max_epochs=40
    ).fit(X, y)
    rates = [row["learning_rate"] for row in model.history_]
    assert rates[0] == 1e-2 and min(rates) < 1e-2
    assert all(b <= a for a, b in itertools.pairwise(rates))
    assert all(np.log2(1e-2 / r) == pytest.approx(round(np.log2(1e-2 / r))) for r in rates)
    # The first cut follows two epochs (lr_patience + 1) without a new best validation loss.
    first = next(i for i, r in enumerate(rates) if r < 1e-2)
    losses = [row["val_loss"] for row in model.history_]
    best_before = min(losses[: first - 2])
    assert min(losses[first - 2 : first]) >= best_before - model.min_delta


def test_dropout_changes_training_but_not_prediction(cancer: list[np.ndarray]) -> None:
    X_train, X_test, y_train, _ = cancer
    kwargs = {"max_epochs": 5, "random_state": 0}
    without = TorchMLPClassifier(dropout=0.0, **kwargs).fit(X_train, y_train)
    with_ = TorchMLPClassifier(dropout=0.3, **kwargs).fit(X_train, y_train)
    assert not np.array_equal(without.predict_proba(X_test), with_.predict_proba(X_test))
    # Inference runs without dropout: predictions repeat exactly.
    np.testing.assert_array_equal(with_.predict_proba(X_test), with_.predict_proba(X_test))


def test_same_seed_same_model_and_global_random_state_untouched(blobs: tuple) -> None:
    X, y = blobs
    kwargs = {"max_epochs": 10, "batch_norm": True, "dropout": 0.2}
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    first = TorchMLPClassifier(random_state=7, **kwargs).fit(X, y).predict_proba(X)
    again = TorchMLPClassifier(random_state=7, **kwargs).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(first, again)
    assert torch.equal(torch_state, torch.get_rng_state())
    assert np.array_equal(numpy_state[1], np.random.get_state()[1])
    other = TorchMLPClassifier(random_state=8, **kwargs).fit(X, y).predict_proba(X)
    assert not np.array_equal(first, other)
    fresh = [TorchMLPClassifier(**kwargs).fit(X, y).predict_proba(X) for _ in range(2)]
    assert not np.array_equal(*fresh)


def test_balanced_class_weight_raises_rare_class_recall() -> None:
    X, y = make_classification(
        n_samples=2000, n_features=10, weights=[0.95], class_sep=0.5, random_state=1
    )
    X_train, X_test, y_train, y_test = _scaled_split(X, y, 0, stratify=True)
    recalls = {
        weight: recall_score(
            y_test,
            TorchMLPClassifier(class_weight=weight, max_epochs=30, random_state=0)
            .fit(X_train, y_train)
            .predict(X_test),
        )
        for weight in (None, "balanced")
    }
    assert recalls["balanced"] > recalls[None] + 0.2


def test_without_validation_trains_every_epoch(blobs: tuple) -> None:
    X, y = blobs
    model = TorchMLPClassifier(validation_fraction=0, max_epochs=7, random_state=0).fit(X, y)
    assert (model.n_epochs_, model.best_epoch_, model.stopped_early_) == (7, 7, False)
    assert all(row["val_loss"] is None and row["val_score"] is None for row in model.history_)
    assert [row["epoch"] for row in model.history_] == list(range(1, 8))


def test_history_and_string_labels(blobs: tuple) -> None:
    X, y = blobs
    labels = np.array(["low", "mid", "high"], dtype=object)[y]
    model = TorchMLPClassifier(max_epochs=3, random_state=0).fit(X, labels)
    assert list(model.classes_) == ["high", "low", "mid"]
    assert set(model.predict(X)) <= set(labels)
    row = model.history_[0]
    assert set(row) == {"epoch", "train_loss", "val_loss", "val_score", "learning_rate"}
    assert 0 <= row["val_score"] <= 1 and row["learning_rate"] == model.learning_rate
    assert model.history_[-1]["epoch"] == 3 and None not in model.history_[-1].values()


def test_threads_are_restored() -> None:
    X, y = make_classification(n_samples=100, n_features=5, random_state=0)
    before = torch.get_num_threads()
    other = 1 if before > 1 else 2
    model = TorchMLPClassifier(n_threads=other, max_epochs=2, random_state=0).fit(X, y)
    assert torch.get_num_threads() == before
    model.predict(X)
    assert torch.get_num_threads() == before


def test_batch_norm_with_a_lone_last_row() -> None:
    X, y = make_classification(n_samples=41, n_features=5, random_state=0)
    # 41 rows, no validation, batches of 8: the last batch would be one row.
    model = TorchMLPRegressor(batch_norm=True, batch_size=8, validation_fraction=0, max_epochs=2)
    assert model.fit(X, y.astype(float)).n_epochs_ == 2


@pytest.mark.parametrize(
    ("name", "value"),
    [("activation", "swish"), ("dropout", 1.0), ("lr_factor", 1.0), ("hidden_layer_sizes", (0,))],
)
def test_invalid_parameters_are_named(name: str, value: Any) -> None:
    X, y = make_classification(n_samples=50, n_features=4, random_state=0)
    with pytest.raises(ValueError, match=f"invalid {name}="):
        TorchMLPClassifier(**{name: value}).fit(X, y)


@pytest.mark.parametrize("estimator", [TorchMLPClassifier, TorchMLPRegressor])
def test_skops_deepcopy_pickle_and_clone(estimator: type, blobs: tuple) -> None:
    X, y = blobs
    model = estimator(batch_norm=True, max_epochs=3, random_state=0).fit(X, y)
    predict = model.predict_proba if hasattr(model, "predict_proba") else model.predict
    expected = predict(X)

    state = model.__getstate__()
    assert not any(isinstance(v, torch.Tensor | torch.nn.Module) for v in state.values())
    assert all(isinstance(v, np.ndarray) for v in state["_network_weights"].values())

    data = sio.dumps(model)
    untrusted = sio.get_untrusted_types(data=data)
    assert untrusted == [f"shipml.models.torch_mlp.{estimator.__name__}"]
    loaded = sio.loads(data, trusted=trusted_types_for(untrusted))
    for restored in (loaded, copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        method = "predict_proba" if hasattr(model, "predict_proba") else "predict"
        np.testing.assert_array_equal(getattr(restored, method)(X), expected)
        assert restored.history_ == model.history_
    assert hasattr(model, "network_")  # getting the state left the model whole

    fresh = clone(model)
    assert fresh.get_params() == model.get_params() and not hasattr(fresh, "network_")
