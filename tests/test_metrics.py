"""Metrics against scikit-learn on small hand-made inputs, and the metric registry."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.metrics import get_scorer

from shipml.config import CLASSIFICATION_METRICS, REGRESSION_METRICS
from shipml.errors import ConfigError
from shipml.evaluation.metrics import (
    METRICS,
    classification_metrics,
    classification_report_dict,
    confusion,
    cv_value,
    default_metric,
    is_better,
    regression_metrics,
    scoring_for,
)

CLASSIFICATION_KEYS = {
    "accuracy",
    "balanced_accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
    "roc_auc",
    "log_loss",
}


def test_binary_with_string_labels() -> None:
    classes = ["no", "yes"]
    y_true = np.array(["no", "no", "yes", "yes", "yes", "no"])
    y_pred = np.array(["no", "yes", "yes", "no", "yes", "no"])
    p_yes = np.array([0.1, 0.6, 0.8, 0.4, 0.9, 0.3])
    proba = np.column_stack([1 - p_yes, p_yes])
    got = classification_metrics(y_true, y_pred, proba, classes)
    assert set(got) == CLASSIFICATION_KEYS
    assert all(type(v) is float for v in got.values())
    assert got["accuracy"] == pytest.approx(4 / 6)
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y_true == "yes", p_yes))
    assert got["roc_auc"] == pytest.approx(8 / 9)  # 8 of 9 (pos, neg) pairs ranked right
    assert got["log_loss"] == pytest.approx(skm.log_loss(y_true, proba, labels=classes))
    assert got["f1_macro"] == pytest.approx(2 / 3)
    assert got["precision_weighted"] == pytest.approx(2 / 3)
    assert got["balanced_accuracy"] == pytest.approx(2 / 3)


def test_binary_roc_auc_uses_the_second_class() -> None:
    classes = ["yes", "no"]  # proba columns follow this order
    y_true = np.array(["yes", "no", "yes", "no"])
    p_no = np.array([0.2, 0.9, 0.1, 0.7])
    proba = np.column_stack([1 - p_no, p_no])
    got = classification_metrics(y_true, y_true, proba, classes)
    assert got["roc_auc"] == 1.0
    assert got["accuracy"] == 1.0


def test_multiclass_matches_sklearn() -> None:
    classes = ["barbera", "barolo", "grignolino"]
    y_true = np.array(["barolo", "barbera", "grignolino", "barolo", "grignolino", "barbera"])
    y_pred = np.array(["barolo", "barolo", "grignolino", "barolo", "barbera", "barbera"])
    proba = np.array(
        [
            [0.1, 0.8, 0.1],
            [0.4, 0.5, 0.1],
            [0.1, 0.1, 0.8],
            [0.2, 0.7, 0.1],
            [0.5, 0.1, 0.4],
            [0.6, 0.2, 0.2],
        ]
    )
    got = classification_metrics(y_true, y_pred, proba, classes)
    assert got["roc_auc"] == pytest.approx(
        skm.roc_auc_score(y_true, proba, multi_class="ovr", average="macro", labels=classes)
    )
    assert got["log_loss"] == pytest.approx(skm.log_loss(y_true, proba, labels=classes))
    assert got["f1_macro"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    assert got["recall_macro"] == pytest.approx(skm.recall_score(y_true, y_pred, average="macro"))
    assert got["f1_weighted"] == pytest.approx(skm.f1_score(y_true, y_pred, average="weighted"))
    assert got["accuracy"] == pytest.approx(4 / 6)


def test_multiclass_roc_auc_with_a_class_absent_from_y_true() -> None:
    classes = [0, 1, 2]
    y_true = np.array([0, 1, 0, 1])
    proba = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.3, 0.3, 0.4]])
    got = classification_metrics(y_true, y_true, proba, classes)
    expected = np.mean([skm.roc_auc_score(y_true == c, proba[:, c]) for c in (0, 1)])
    assert got["roc_auc"] == pytest.approx(expected)
    assert "log_loss" in got


def test_roc_auc_skipped_with_one_class_and_without_proba() -> None:
    y = np.array(["a", "a", "a"])
    proba = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4]])
    got = classification_metrics(y, y, proba, ["a", "b"])
    assert "roc_auc" not in got
    assert "log_loss" in got
    got = classification_metrics(y, y, None, ["a", "b"])
    assert "roc_auc" not in got and "log_loss" not in got
    assert got["accuracy"] == 1.0


def test_zero_division_gives_zero() -> None:
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([0, 0, 0, 0])  # class 1 never predicted
    got = classification_metrics(y_true, y_pred, None, [0, 1])
    assert got["precision_macro"] == pytest.approx(0.25)  # (0.5 + 0) / 2


def test_regression_metrics() -> None:
    y_true = np.array([3.0, -0.5, 2.0, 7.0])
    y_pred = np.array([2.5, 0.0, 2.0, 8.0])
    got = regression_metrics(y_true, y_pred)
    assert set(got) == {"rmse", "mae", "r2", "wape", "mape"}
    assert all(type(v) is float for v in got.values())
    assert got["rmse"] == pytest.approx(math.sqrt((0.25 + 0.25 + 0 + 1) / 4))
    assert got["mae"] == pytest.approx(0.5)
    assert got["r2"] == pytest.approx(skm.r2_score(y_true, y_pred))
    assert got["mape"] == pytest.approx((0.5 / 3 + 0.5 / 0.5 + 0 + 1 / 7) / 4)
    assert got["wape"] == pytest.approx((0.5 + 0.5 + 0 + 1) / (3 + 0.5 + 2 + 7))


def test_confusion_and_report_are_json_ready() -> None:
    classes = ["cat", "dog", "eel"]
    y_true = np.array(["cat", "dog", "dog", "eel", "cat"])
    y_pred = np.array(["cat", "dog", "cat", "eel", "dog"])
    got = confusion(y_true, y_pred, classes)
    assert got == {"labels": classes, "matrix": [[1, 1, 0], [1, 1, 0], [0, 0, 1]]}
    report = classification_report_dict(y_true, y_pred, classes)
    assert report["cat"]["precision"] == pytest.approx(0.5)
    assert report["eel"]["f1-score"] == 1.0
    assert report["accuracy"] == pytest.approx(0.6)
    assert report["macro avg"]["support"] == 5
    json.dumps(report)
    json.dumps(confusion(np.array([1, 2]), np.array([1, 1]), [np.int64(1), np.int64(2)]))


def test_report_keys_are_strings_for_numeric_classes() -> None:
    report = classification_report_dict(np.array([0, 1, 1]), np.array([0, 1, 0]), [0, 1])
    assert {"0", "1", "accuracy", "macro avg", "weighted avg"} == set(report)


def test_registry_matches_config_and_sklearn() -> None:
    assert set(METRICS) == set(CLASSIFICATION_METRICS) | set(REGRESSION_METRICS)
    for name, spec in METRICS.items():
        assert spec.name == name
        assert spec.task == ("classification" if name in CLASSIFICATION_METRICS else "regression")
        get_scorer(spec.sklearn_scoring)  # a real scikit-learn scorer
        assert spec.greater_is_better == (not spec.sklearn_scoring.startswith("neg_"))
    get_scorer(scoring_for("roc_auc", 3))


def test_scoring_for() -> None:
    assert scoring_for("roc_auc", 2) == "roc_auc"
    assert scoring_for("roc_auc", None) == "roc_auc"
    assert scoring_for("roc_auc", 3) == "roc_auc_ovr"
    assert scoring_for("log_loss", 3) == "neg_log_loss"
    assert scoring_for("rmse", None) == "neg_root_mean_squared_error"
    with pytest.raises(ConfigError, match="unknown metric 'auc'"):
        scoring_for("auc", 2)


def test_default_metric() -> None:
    assert default_metric("classification", 2) == "roc_auc"
    assert default_metric("classification", 5) == "f1_macro"
    assert default_metric("regression", None) == "rmse"
    with pytest.raises(ConfigError):
        default_metric("clustering", None)


def test_cv_value_and_is_better() -> None:
    assert cv_value("rmse", -1.5) == 1.5
    assert cv_value("log_loss", -0.3) == 0.3
    assert cv_value("roc_auc", 0.9) == 0.9
    assert cv_value("r2", -0.2) == -0.2  # r2 is not a neg_ score
    assert is_better("roc_auc", 0.9, 0.8)
    assert not is_better("roc_auc", 0.8, 0.9)
    assert is_better("rmse", 1.0, 2.0)
    assert not is_better("rmse", 2.0, 1.0)
    assert not is_better("mae", 1.0, 1.0)
    assert is_better("r2", 0.1, float("nan"))
    assert not is_better("r2", float("nan"), 0.1)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_one_metric_alone_has_the_value_it_has_among_all(name: str) -> None:
    # The search and the ensemble ask for one or a few metrics per fold: the same numbers.
    rng = np.random.default_rng(4)
    if METRICS[name].task == "classification":
        classes = ["a", "b", "c"]
        y = rng.choice(classes, 200)
        proba = rng.dirichlet([1, 1, 1], 200)
        predictions = np.asarray(classes)[proba.argmax(axis=1)]
        every = classification_metrics(y, predictions, proba, classes)
        alone = classification_metrics(y, predictions, proba, classes, only=(name,))
    else:
        y = rng.normal(10, 3, 200)
        guess = y + rng.normal(0, 1, 200)
        every, alone = regression_metrics(y, guess), regression_metrics(y, guess, only=(name,))
    assert alone[name] == every[name]
    assert set(alone) <= {
        name,
        *(f"{k}_{name.split('_')[-1]}" for k in ("precision", "recall", "f1")),
    }
    assert len(alone) < len(every)


def _random_fold(rng: np.random.Generator, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A validation fold's labels and probabilities, with what breaks naive formulas: classes
    absent from the labels or never predicted, tied scores, probabilities of exactly 0 and 1."""
    n = int(rng.integers(1, 40))
    k = len(classes)
    present = rng.choice(k, size=int(rng.integers(1, k + 1)), replace=False)
    y = classes[rng.choice(present, size=n)]
    proba = rng.dirichlet(np.full(k, float(rng.choice([0.3, 1.0, 5.0]))), size=n)
    if rng.random() < 0.4:  # coarse scores: ties in the ranks, ties in the argmax
        proba = np.round(proba, 1)
        proba[:, -1] = 1 - proba[:, :-1].sum(axis=1)
        proba = np.clip(proba, 0.0, 1.0)
        proba /= proba.sum(axis=1, keepdims=True)
    if rng.random() < 0.2:  # a confident model: some rows all on one class
        rows = rng.random(n) < 0.5
        proba[rows] = np.eye(k)[rng.integers(0, k, rows.sum())]
    return y, proba


@pytest.mark.parametrize(
    "classes",
    [
        np.array([0, 1]),
        np.array(["no", "yes"]),
        np.array([1, 2, 3]),
        np.array(["a", "b", "c", "d"]),
    ],
    ids=["binary-int", "binary-str", "three", "four-str"],
)
def test_fold_metrics_fast_path_equals_scikit_learn(classes: np.ndarray) -> None:
    # The cross-validation loop scores folds from confusion counts and ranks, not through
    # scikit-learn; every metric must come out as scikit-learn computes it.
    from shipml.evaluation.metrics import fold_classification_metrics

    names = tuple(sorted(CLASSIFICATION_KEYS))
    rng = np.random.default_rng(7)
    for _ in range(200):
        y, proba = _random_fold(rng, classes)
        fast = fold_classification_metrics(y, proba, classes, names)
        slow = classification_metrics(y, classes[proba.argmax(axis=1)], proba, list(classes))
        assert set(fast) == set(slow) & set(names)
        for name, value in fast.items():
            assert value == pytest.approx(slow[name], rel=1e-12, abs=1e-12), (name, y, proba)


def test_fold_metrics_fast_path_hands_unknown_labels_to_scikit_learn() -> None:
    from shipml.evaluation.metrics import fold_classification_metrics

    classes = np.array([2, 1])  # not sorted: no fast path, the same values
    y, proba = np.array([1, 2, 2]), np.array([[0.2, 0.8], [0.9, 0.1], [0.6, 0.4]])
    fast = fold_classification_metrics(y, proba, classes, ("accuracy", "roc_auc"))
    slow = classification_metrics(y, classes[proba.argmax(axis=1)], proba, [2, 1])
    assert fast == {"accuracy": slow["accuracy"], "roc_auc": slow["roc_auc"]}


def test_fold_metrics_fast_path_leaves_labels_it_cannot_place_to_scikit_learn() -> None:
    from shipml.evaluation.metrics import fold_classification_metrics

    classes = np.array([1, 2])
    y = np.array([1, 3, 2])  # 3 is not a class the model knows
    proba = np.array([[0.7, 0.3], [0.4, 0.6], [0.2, 0.8]])
    fast = fold_classification_metrics(y, proba, classes, ("accuracy", "f1_macro"))
    only = ("accuracy", "f1_macro")
    slow = classification_metrics(y, classes[proba.argmax(axis=1)], proba, [1, 2], only=only)
    assert fast == slow
    assert fast["accuracy"] == 2 / 3
