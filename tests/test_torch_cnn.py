"""The PyTorch CNN classifier on scikit-learn's bundled 8×8 digits: accuracy, augmentation,
reproducibility, image shapes, scikit-learn's estimator checks and persistence without pickle."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import numpy as np
import pytest
import skops.io as sio
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from shipml.features import trusted_types_for
from shipml.models.torch_cnn import (
    ConvNetwork,
    TorchCNNClassifier,
    infer_image_shape,
    shift_and_rotate,
)

# Small and fast, but trained enough to meet the checks' score thresholds honestly. The
# checks' tables have a few columns: image_shape=None folds them into a strip or a square.
FAST: dict[str, Any] = {
    "image_shape": None,
    "conv_channels": (8,),
    "dense_units": 16,
    "dropout": 0.1,
    "max_epochs": 20,
    "patience": 5,
    "batch_size": 32,
    "learning_rate": 1e-2,
    "random_state": 0,
}
QUICK: dict[str, Any] = {
    "conv_channels": (8, 16),
    "dense_units": 32,
    "dropout": 0.2,
    "learning_rate": 3e-3,
    "batch_size": 64,
    "max_epochs": 5,
}


@parametrize_with_checks([TorchCNNClassifier(**FAST)])
def test_sklearn_estimator_checks(estimator: Any, check: Any) -> None:
    check(estimator)


@pytest.fixture(scope="module")
def digits() -> list[np.ndarray]:
    """1,797 8×8 images, values 0-16, as rows of 64 pixels; a stratified 80/20 split."""
    X, y = load_digits(return_X_y=True)
    return train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)


def test_digits_accuracy_with_defaults(digits: list[np.ndarray]) -> None:
    X_train, X_test, y_train, y_test = digits
    model = TorchCNNClassifier(random_state=0).fit(X_train, y_train)
    assert model.score(X_test, y_test) >= 0.97
    assert model.image_shape_ == (8, 8, 1) and model.n_features_in_ == 64
    proba = model.predict_proba(X_test)
    assert proba.shape == (len(X_test), 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    # Early stopping kept the epoch with the lowest validation loss.
    assert model.stopped_early_ and model.n_epochs_ < model.max_epochs
    val_losses = [row["val_loss"] for row in model.history_]
    assert model.best_epoch_ == int(np.argmin(val_losses)) + 1
    assert set(model.history_[0]) == {"epoch", "train_loss", "val_loss", "val_score"} | {
        "learning_rate"
    }


def test_augmentation_changes_training(digits: list[np.ndarray]) -> None:
    X_train, X_test, y_train, y_test = digits
    plain = TorchCNNClassifier(augment=False, random_state=0, **QUICK).fit(X_train, y_train)
    shifted = TorchCNNClassifier(augment=True, random_state=0, **QUICK).fit(X_train, y_train)
    assert not np.array_equal(plain.predict_proba(X_test), shifted.predict_proba(X_test))
    # Five epochs of shifted digits already classify most unshifted test digits.
    assert shifted.score(X_test, y_test) > 0.85


def _is_a_shift_of(out: np.ndarray, image: np.ndarray) -> bool:
    """Whether ``out`` is ``image`` shifted by at most one pixel each way, edge pixels
    repeated into the gap."""
    padded = np.pad(image, 1, mode="edge")
    shifts = [padded[dy : dy + 8, dx : dx + 8] for dy in range(3) for dx in range(3)]
    return any(np.allclose(out, shifted, atol=1e-4) for shifted in shifts)


def test_shifts_move_whole_pixels_and_keep_the_digit(digits: list[np.ndarray]) -> None:
    images = torch.from_numpy(digits[0][:200].astype(np.float32)).reshape(-1, 1, 8, 8)
    moved = shift_and_rotate(images, (1, 1), 0.0, torch.Generator().manual_seed(0))
    # Whole-pixel shifts of the same digit, so the same label holds; one draw in nine is (0, 0).
    pairs = list(zip(moved[:, 0].numpy(), images[:, 0].numpy(), strict=True))
    assert all(_is_a_shift_of(out, image) for out, image in pairs)
    assert 5 < sum(np.allclose(out, image, atol=1e-4) for out, image in pairs) < 50


def test_augmentation_shifts_about_half_of_each_training_batch(
    digits: list[np.ndarray],
) -> None:
    X_train, _, y_train, _ = digits
    model = TorchCNNClassifier(random_state=0, **QUICK).fit(X_train, y_train)
    batch = torch.from_numpy(X_train[:200].astype(np.float32))
    original = batch.clone()
    moved = model._augment(batch, torch.Generator().manual_seed(0))
    assert torch.equal(batch, original) and moved.shape == batch.shape
    pairs = list(zip(moved.reshape(-1, 8, 8).numpy(), batch.reshape(-1, 8, 8).numpy(), strict=True))
    assert all(_is_a_shift_of(out, image) for out, image in pairs)
    unchanged = sum(np.allclose(out, image, atol=1e-4) for out, image in pairs)
    assert 80 < unchanged < 150  # half left alone, and a ninth of the other half drew (0, 0)
    no_shift = clone(model).set_params(max_shift=0).fit(X_train[:100], y_train[:100])
    assert torch.equal(no_shift._augment(batch, torch.Generator()), batch)


def test_small_rotations_keep_the_image_close(digits: list[np.ndarray]) -> None:
    images = torch.from_numpy(digits[0][:100].astype(np.float32)).reshape(-1, 1, 8, 8)
    rotated = shift_and_rotate(images, (0, 0), 10.0, torch.Generator().manual_seed(0))
    assert not torch.equal(rotated, images)
    for a, b in zip(images.flatten(1).numpy(), rotated.flatten(1).numpy(), strict=True):
        assert np.corrcoef(a, b)[0, 1] > 0.8


def test_same_seed_same_model_and_global_random_state_untouched(
    digits: list[np.ndarray],
) -> None:
    X_train, X_test, y_train, _ = digits
    kwargs = {**QUICK, "max_rotation": 5.0}
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    first = TorchCNNClassifier(random_state=7, **kwargs).fit(X_train, y_train)
    again = TorchCNNClassifier(random_state=7, **kwargs).fit(X_train, y_train)
    np.testing.assert_array_equal(first.predict_proba(X_test), again.predict_proba(X_test))
    assert first.history_ == again.history_
    assert torch.equal(torch_state, torch.get_rng_state())
    assert np.array_equal(numpy_state[1], np.random.get_state()[1])
    other = TorchCNNClassifier(random_state=8, **kwargs).fit(X_train, y_train)
    assert not np.array_equal(first.predict_proba(X_test), other.predict_proba(X_test))


def test_a_wrong_image_shape_is_a_clear_error(digits: list[np.ndarray]) -> None:
    X_train, _, y_train, _ = digits
    with pytest.raises(ValueError, match=r"image_shape=\(8, 8, 3\).*192.*X has 64 features"):
        TorchCNNClassifier(image_shape=(8, 8, 3)).fit(X_train, y_train)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("image_shape", (8, 8)),
        ("conv_channels", (32, 0)),
        ("dense_units", 0),
        ("dropout", 1.0),
        ("max_shift", -1),
        ("max_rotation", 90.0),
    ],
)
def test_invalid_parameters_are_named(name: str, value: Any, digits: list[np.ndarray]) -> None:
    X_train, _, y_train, _ = digits
    with pytest.raises(ValueError, match=f"invalid {name}="):
        TorchCNNClassifier(**{name: value}).fit(X_train, y_train)


def test_image_shape_none_infers_a_square_or_a_strip(digits: list[np.ndarray]) -> None:
    assert infer_image_shape(64) == (8, 8, 1)
    assert infer_image_shape(1) == (1, 1, 1)
    assert infer_image_shape(10) == (1, 10, 1)
    X_train, _, y_train, _ = digits
    model = TorchCNNClassifier(image_shape=None, max_epochs=1).fit(X_train[:200], y_train[:200])
    assert model.image_shape_ == (8, 8, 1)


def test_rows_are_read_as_height_width_channels() -> None:
    network = ConvNetwork((2, 3, 4), (4,), True, 8, 2, 0.0)
    rows = torch.arange(2 * 2 * 3 * 4, dtype=torch.float32).reshape(2, -1)
    images = network.images(rows)
    assert images.shape == (2, 4, 2, 3)  # (n, channels, height, width)
    for h, w, c in [(0, 0, 0), (0, 0, 3), (0, 2, 1), (1, 0, 2), (1, 2, 3)]:
        assert images[1, c, h, w] == rows[1, (h * 3 + w) * 4 + c]


def test_multichannel_images_and_a_lone_last_row() -> None:
    rng = np.random.default_rng(0)
    X = rng.random((41, 4 * 4 * 3))
    y = (X[:, 0::3].mean(axis=1) > X[:, 1::3].mean(axis=1)).astype(int)
    # 41 rows, no validation, batches of 8: the last batch, one image, joins the one before.
    model = TorchCNNClassifier(
        image_shape=(4, 4, 3), batch_size=8, validation_fraction=0, max_epochs=2, random_state=0
    ).fit(X, y)
    assert model.n_epochs_ == 2 and model.predict(X).shape == (41,)


def test_tiny_batches_train(digits: list[np.ndarray]) -> None:
    X_train, _, y_train, _ = digits
    # Batches of two: often neither image is drawn for augmentation, sometimes one is.
    model = TorchCNNClassifier(batch_size=2, max_epochs=1, dense_units=8, random_state=0)
    assert model.fit(X_train[:40], y_train[:40]).n_epochs_ == 1


def test_column_standardised_pixels_train_too(digits: list[np.ndarray]) -> None:
    X_train, X_test, y_train, y_test = digits
    scaler = StandardScaler().fit(X_train)
    # The input batch norm copes with any column scaling; shifts still help a little.
    model = TorchCNNClassifier(random_state=0, **QUICK).fit(scaler.transform(X_train), y_train)
    assert model.score(scaler.transform(X_test), y_test) > 0.85


def test_skops_deepcopy_pickle_and_clone(digits: list[np.ndarray]) -> None:
    X_train, X_test, y_train, _ = digits
    model = TorchCNNClassifier(random_state=0, **QUICK).fit(X_train, y_train)
    expected = model.predict_proba(X_test)

    state = model.__getstate__()
    assert not any(isinstance(v, torch.Tensor | torch.nn.Module) for v in state.values())
    assert all(isinstance(v, np.ndarray) for v in state["_network_weights"].values())

    data = sio.dumps(model)
    untrusted = sio.get_untrusted_types(data=data)
    assert untrusted == ["shipml.models.torch_cnn.TorchCNNClassifier"]
    loaded = sio.loads(data, trusted=trusted_types_for(untrusted))
    for restored in (loaded, copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        np.testing.assert_array_equal(restored.predict_proba(X_test), expected)
        assert restored.history_ == model.history_ and restored.image_shape_ == (8, 8, 1)
    assert hasattr(model, "network_")  # getting the state left the model whole

    fresh = clone(model)
    assert fresh.get_params() == model.get_params() and not hasattr(fresh, "network_")
