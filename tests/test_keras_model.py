"""Model behaviour: the Keras estimators learn, stop, persist and explain bad build_model files."""

from __future__ import annotations

import copy
import importlib.util
import itertools
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skops.io as sio
from sklearn.base import clone
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from shipml.errors import ConfigError
from shipml.models.keras_backend import ensure_backend
from shipml.models.keras_model import KerasClassifier, KerasRegressor

if importlib.util.find_spec("keras") is None or importlib.util.find_spec("torch") is None:
    pytest.skip("needs the deep extra (keras, torch)", allow_module_level=True)

SMALL: dict[str, Any] = {
    "hidden_layer_sizes": (16,),
    "max_epochs": 30,
    "learning_rate": 1e-2,
    "batch_size": 32,
    "patience": 5,
    "random_state": 0,
}


def _scaled_split(loader: Any, stratify: bool) -> tuple[np.ndarray, ...]:
    X, y = loader(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(
        X, y, test_size=0.2, random_state=0, stratify=y if stratify else None
    )
    scaler = StandardScaler().fit(X_tr)
    return scaler.transform(X_tr), scaler.transform(X_te), y_tr, y_te


@pytest.fixture(scope="module")
def cancer() -> tuple[np.ndarray, ...]:
    X_tr, X_te, y_tr, y_te = _scaled_split(load_breast_cancer, stratify=True)
    labels = np.array(["benign", "malignant"], dtype=object)  # string labels, as users have
    return X_tr, X_te, labels[y_tr], labels[y_te]


@pytest.fixture(scope="module")
def classifier(cancer: tuple[np.ndarray, ...]) -> KerasClassifier:
    X_tr, _, y_tr, _ = cancer
    return KerasClassifier(random_state=0).fit(X_tr, y_tr)


@pytest.fixture(scope="module")
def diabetes() -> tuple[np.ndarray, ...]:
    return _scaled_split(load_diabetes, stratify=False)


def _write(tmp_path: Path, source: str, name: str = "net.py") -> Path:
    path = tmp_path / name
    path.write_text(source)
    return path


def test_importing_shipml_does_not_import_keras() -> None:
    code = "import shipml.models.keras_model, sys; assert 'keras' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_builtin_network_learns_breast_cancer(
    classifier: KerasClassifier, cancer: tuple[np.ndarray, ...]
) -> None:
    _, X_te, _, y_te = cancer
    assert classifier.score(X_te, y_te) > 0.93
    assert list(classifier.classes_) == ["benign", "malignant"]
    proba = classifier.predict_proba(X_te)
    assert proba.shape == (len(X_te), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1, atol=1e-5)
    assert classifier.n_features_in_ == 30


def test_builtin_network_learns_diabetes(diabetes: tuple[np.ndarray, ...]) -> None:
    X_tr, X_te, y_tr, y_te = diabetes
    model = KerasRegressor(batch_size=64, learning_rate=3e-3, random_state=0).fit(X_tr, y_tr)
    assert model.score(X_te, y_te) > 0.3
    assert abs(model.predict(X_te).mean() - y_te.mean()) < 30  # predictions in y units


def test_history_has_the_torch_mlp_shape(classifier: KerasClassifier) -> None:
    rows = classifier.history_
    assert len(rows) == classifier.n_epochs_
    assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
    assert set(rows[0]) == {"epoch", "train_loss", "val_loss", "val_score", "learning_rate"}
    assert rows[0]["learning_rate"] == 1e-3
    assert all(0 <= r["val_score"] <= 1 for r in rows)


def test_history_without_validation(diabetes: tuple[np.ndarray, ...]) -> None:
    import torch

    X_tr, _, y_tr, _ = diabetes
    threads = torch.get_num_threads()
    model = KerasRegressor(**{**SMALL, "max_epochs": 3, "validation_fraction": 0.0})
    rows = model.fit(X_tr, y_tr).history_
    assert torch.get_num_threads() == threads  # n_threads applies during fit only
    assert len(rows) == 3
    assert all(r["val_loss"] is None and r["val_score"] is None for r in rows)


def test_early_stopping_restores_the_best_epoch(cancer: tuple[np.ndarray, ...]) -> None:
    X_tr, X_te, y_tr, _ = cancer
    params = {**SMALL, "max_epochs": 200, "patience": 3, "lr_patience": None}
    stopped = KerasClassifier(**params).fit(X_tr, y_tr)
    assert stopped.stopped_early_ and stopped.n_epochs_ < 200
    val_losses = [r["val_loss"] for r in stopped.history_]
    assert stopped.best_epoch_ == int(np.argmin(val_losses)) + 1
    assert stopped.n_epochs_ == stopped.best_epoch_ + 3
    # The same run cut at the best epoch has exactly the weights early stopping restored.
    cut = KerasClassifier(**{**params, "max_epochs": stopped.best_epoch_, "patience": None})
    cut.fit(X_tr, y_tr)
    np.testing.assert_allclose(cut.predict_proba(X_te), stopped.predict_proba(X_te), rtol=1e-6)


def test_reduce_lr_on_plateau_lowers_the_learning_rate(diabetes: tuple[np.ndarray, ...]) -> None:
    X_tr, _, y_tr, _ = diabetes
    params = {**SMALL, "lr_patience": 1, "lr_factor": 0.5, "patience": None, "max_epochs": 25}
    rates = [r["learning_rate"] for r in KerasRegressor(**params).fit(X_tr, y_tr).history_]
    assert rates[0] == 1e-2
    assert min(rates) < 1e-2
    assert all(b <= a for a, b in itertools.pairwise(rates))
    assert all(np.isclose(r, 1e-2 * 0.5 ** round(np.log2(1e-2 / r)), rtol=1e-6) for r in rates)


def test_same_random_state_same_predictions(cancer: tuple[np.ndarray, ...]) -> None:
    X_tr, X_te, y_tr, _ = cancer
    first = KerasClassifier(**SMALL).fit(X_tr, y_tr)
    again = clone(first).fit(X_tr, y_tr)
    np.testing.assert_array_equal(first.predict_proba(X_te), again.predict_proba(X_te))


def test_round_trips_give_identical_predictions(
    classifier: KerasClassifier, cancer: tuple[np.ndarray, ...]
) -> None:
    X_te = cancer[1]
    expected = classifier.predict_proba(X_te)
    data = sio.dumps(classifier)
    assert sio.get_untrusted_types(data=data) == ["shipml.models.keras_model.KerasClassifier"]
    restored = sio.loads(data, trusted=["shipml.models.keras_model.KerasClassifier"])
    for twin in (restored, copy.deepcopy(classifier), pickle.loads(pickle.dumps(classifier))):
        np.testing.assert_array_equal(twin.predict_proba(X_te), expected)
        assert twin.history_ == classifier.history_
    assert "model_" not in classifier.__getstate__()  # no Keras object in the saved state


def test_regressor_skops_round_trip(diabetes: tuple[np.ndarray, ...]) -> None:
    X_tr, X_te, y_tr, _ = diabetes
    model = KerasRegressor(**{**SMALL, "max_epochs": 3}).fit(X_tr, y_tr)
    data = sio.dumps(model)
    assert sio.get_untrusted_types(data=data) == ["shipml.models.keras_model.KerasRegressor"]
    restored = sio.loads(data, trusted=["shipml.models.keras_model.KerasRegressor"])
    np.testing.assert_array_equal(restored.predict(X_te), model.predict(X_te))


def test_save_keras_writes_a_native_file(
    classifier: KerasClassifier, diabetes: tuple[np.ndarray, ...], tmp_path: Path
) -> None:
    import keras

    X_tr, X_te, y_tr, _ = diabetes
    regressor = KerasRegressor(**{**SMALL, "max_epochs": 3}).fit(X_tr, y_tr)
    loaded = keras.models.load_model(regressor.save_keras(tmp_path / "reg.keras"))
    # The regressor's file predicts in the target's units, not standardised ones.
    np.testing.assert_allclose(
        loaded.predict(X_te, verbose=0)[:, 0], regressor.predict(X_te), rtol=1e-5
    )
    with pytest.raises(ValueError, match=r"\.keras"):
        classifier.save_keras(tmp_path / "model.h5")


USER_NET = """
import keras

def build_model(n_features, n_outputs, task):
    inputs = keras.Input(shape=(n_features,))
    x = keras.layers.Dense(8, activation="relu", name="user_hidden")(inputs)
    activation = "softmax" if task == "classification" else None
    outputs = keras.layers.Dense(n_outputs, activation=activation, name=f"user_{task}")(x)
    model = keras.Model(inputs, outputs)
    if task == "regression":
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mean_absolute_error")
    return model
"""


def test_user_build_model_is_used(
    tmp_path: Path, cancer: tuple[np.ndarray, ...], diabetes: tuple[np.ndarray, ...]
) -> None:
    path = _write(tmp_path, USER_NET)
    X_tr, _, y_tr, _ = cancer
    clf = KerasClassifier(**{**SMALL, "max_epochs": 2}, build_model=str(path)).fit(X_tr, y_tr)
    names = [layer.name for layer in clf.model_.layers]
    assert "user_hidden" in names and "user_classification" in names
    assert type(clf.model_.optimizer).__name__ == "Adam"  # uncompiled: shipml compiles it
    X_tr, _, y_tr, _ = diabetes
    reg = KerasRegressor(**{**SMALL, "max_epochs": 2}, build_model=str(path)).fit(X_tr, y_tr)
    assert "user_regression" in [layer.name for layer in reg.model_.layers]
    assert type(reg.model_.optimizer).__name__ == "SGD"  # compiled by the user: kept
    assert reg.model_.loss == "mean_absolute_error"


def test_relative_build_model_path_resolves_against_cwd(
    tmp_path: Path, diabetes: tuple[np.ndarray, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(tmp_path, USER_NET)
    monkeypatch.chdir(tmp_path)
    X_tr, _, y_tr, _ = diabetes
    model = KerasRegressor(**{**SMALL, "max_epochs": 1}, build_model="net.py").fit(X_tr, y_tr)
    assert "user_hidden" in [layer.name for layer in model.model_.layers]


CUSTOM_LAYERS = """
import keras

@keras.saving.register_keras_serializable(package="tests")
class Registered(keras.layers.Layer):
    def call(self, x):
        return x * 2.0

class Unregistered(keras.layers.Layer):
    def call(self, x):
        return x - 1.0

def build_model(n_features, n_outputs, task):
    inputs = keras.Input(shape=(n_features,))
    x = Unregistered()(Registered()(inputs))
    return keras.Model(inputs, keras.layers.Dense(n_outputs)(x))
"""


def test_custom_layers_survive_a_round_trip(
    tmp_path: Path, diabetes: tuple[np.ndarray, ...]
) -> None:
    path = _write(tmp_path, CUSTOM_LAYERS, "custom.py")
    X_tr, X_te, y_tr, _ = diabetes
    model = KerasRegressor(**{**SMALL, "max_epochs": 2}, build_model=str(path)).fit(X_tr, y_tr)
    sio.dump(model, tmp_path / "model.skops")
    np.save(tmp_path / "X.npy", X_te)
    # A fresh process, as `shipml serve` is: no backend chosen, the user's module not imported.
    code = (
        "import numpy as np, skops.io as sio, sys\n"
        "m = sio.load(sys.argv[1], trusted=['shipml.models.keras_model.KerasRegressor'])\n"
        "np.save(sys.argv[2], m.predict(np.load(sys.argv[3])))\n"
    )
    args = [tmp_path / "model.skops", tmp_path / "pred.npy", tmp_path / "X.npy"]
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    subprocess.run([sys.executable, "-c", code, *map(str, args)], check=True, env=env)
    np.testing.assert_array_equal(np.load(tmp_path / "pred.npy"), model.predict(X_te))


BAD_FILES = {
    "missing": (None, "does not exist"),
    "not_python": ("def build_model(a, b, c): pass", "is not a .py file"),
    "import_fails": (
        "import keras\nraise RuntimeError('no GPU here')",
        "RuntimeError: no GPU here",
    ),
    "syntax_error": ("def build_model(:\n", "SyntaxError"),
    "no_function": ("import keras\n", "has no build_model function"),
    "raises": ("def build_model(a, b, c):\n    return 1 / 0", "ZeroDivisionError"),
    "wrong_type": (
        "def build_model(a, b, c):\n    return 'a model'",
        "returned str, not a keras.Model",
    ),
    "wrong_outputs": (
        "import keras\ndef build_model(n, k, task):\n"
        "    i = keras.Input((n,))\n    return keras.Model(i, keras.layers.Dense(k + 2)(i))",
        r"shape \(batch, 3\), expected \(batch, 1\)",
    ),
    "wrong_inputs": (
        "import keras\ndef build_model(n, k, task):\n"
        "    i = keras.Input((n + 3,))\n    return keras.Model(i, keras.layers.Dense(k)(i))",
        "does not take 10 input features",
    ),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_build_model_files_raise_config_error(
    case: str, tmp_path: Path, diabetes: tuple[np.ndarray, ...]
) -> None:
    source, message = BAD_FILES[case]
    path = tmp_path / (f"{case}.txt" if case == "not_python" else f"{case}.py")
    if source is not None:
        path.write_text(source)
    X_tr, _, y_tr, _ = diabetes
    with pytest.raises(ConfigError, match=message) as info:
        KerasRegressor(**{**SMALL, "max_epochs": 1}, build_model=str(path)).fit(X_tr, y_tr)
    assert str(path) in info.value.message
    assert info.value.hint and info.value.exit_code == 2


def test_classifier_model_must_output_probabilities(
    tmp_path: Path, cancer: tuple[np.ndarray, ...]
) -> None:
    source = (
        "import keras\ndef build_model(n, k, task):\n"
        "    i = keras.Input((n,))\n    return keras.Model(i, keras.layers.Dense(k)(i))"
    )
    path = _write(tmp_path, source, "logits.py")
    X_tr, _, y_tr, _ = cancer
    with pytest.raises(ConfigError, match="class probabilities") as info:
        KerasClassifier(**SMALL, build_model=str(path)).fit(X_tr, y_tr)
    assert "softmax" in (info.value.hint or "")


def test_ensure_backend_explains_what_is_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    import keras

    assert keras.backend.backend() == "torch"
    ensure_backend("torch")  # already running torch: fine
    with pytest.raises(ConfigError, match="already running with the 'torch' backend"):
        ensure_backend("jax")
    with pytest.raises(ConfigError, match="Unknown Keras backend"):
        ensure_backend("theano")
    monkeypatch.delitem(sys.modules, "keras")  # as if keras were not imported yet
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    with pytest.raises(ConfigError, match="needs the 'jax' package"):
        ensure_backend("jax")


@pytest.mark.slow
@parametrize_with_checks([KerasClassifier(**SMALL), KerasRegressor(**SMALL)])
def test_sklearn_estimator_contract(estimator: Any, check: Any) -> None:
    check(estimator)
