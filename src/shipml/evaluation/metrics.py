"""Classification and regression metrics, and the registry of metrics training can optimize."""

from __future__ import annotations

import math
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.stats
from sklearn import metrics as skm

from shipml.errors import ConfigError


@dataclass(frozen=True)
class MetricSpec:
    """A metric training can optimize: its task, direction and scikit-learn scoring name."""

    name: str
    task: Literal["classification", "regression"]
    greater_is_better: bool
    sklearn_scoring: str


METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec("roc_auc", "classification", True, "roc_auc"),
        MetricSpec("accuracy", "classification", True, "accuracy"),
        MetricSpec("balanced_accuracy", "classification", True, "balanced_accuracy"),
        MetricSpec("f1_macro", "classification", True, "f1_macro"),
        MetricSpec("f1_weighted", "classification", True, "f1_weighted"),
        MetricSpec("precision_macro", "classification", True, "precision_macro"),
        MetricSpec("recall_macro", "classification", True, "recall_macro"),
        MetricSpec("log_loss", "classification", False, "neg_log_loss"),
        MetricSpec("rmse", "regression", False, "neg_root_mean_squared_error"),
        MetricSpec("mae", "regression", False, "neg_mean_absolute_error"),
        MetricSpec("r2", "regression", True, "r2"),
        MetricSpec("mape", "regression", False, "neg_mean_absolute_percentage_error"),
    )
}


def metric_spec(metric: str) -> MetricSpec:
    """The spec of ``metric``; ConfigError if it is unknown."""
    try:
        return METRICS[metric]
    except KeyError:
        raise ConfigError(
            f"unknown metric '{metric}'", f"use one of: {', '.join(METRICS)}"
        ) from None


def scoring_for(metric: str, n_classes: int | None = None) -> str:
    """The scikit-learn ``scoring`` string for ``metric``; multiclass ROC AUC is one-vs-rest."""
    spec = metric_spec(metric)
    if metric == "roc_auc" and n_classes is not None and n_classes > 2:
        return "roc_auc_ovr"
    return spec.sklearn_scoring


def default_metric(task: str, n_classes: int | None = None) -> str:
    """roc_auc for binary classification, f1_macro for multiclass, rmse for regression."""
    if task == "regression":
        return "rmse"
    if task == "classification":
        return "f1_macro" if n_classes is not None and n_classes > 2 else "roc_auc"
    raise ConfigError(f"unknown task '{task}'", "use 'classification' or 'regression'")


def cv_value(metric: str, raw_score: float) -> float:
    """A scikit-learn CV score as the metric's own value (``neg_*`` scores negated back)."""
    spec = metric_spec(metric)
    value = float(raw_score)
    return -value if spec.sklearn_scoring.startswith("neg_") else value


def is_better(metric: str, a: float, b: float) -> bool:
    """Whether value ``a`` of ``metric`` beats ``b``; NaN never beats, and anything beats NaN."""
    spec = metric_spec(metric)
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    return a > b if spec.greater_is_better else a < b


def _plain(value: Any) -> Any:
    """numpy scalars as Python ones, for JSON."""
    return value.item() if isinstance(value, np.generic) else value


def _auc(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[Any]) -> float | None:
    present = [c for c in classes if np.any(y_true == c)]
    if len(present) < 2:
        return None
    if len(classes) == 2:
        return float(skm.roc_auc_score(y_true == classes[1], proba[:, 1]))
    if len(present) == len(classes):
        return float(
            skm.roc_auc_score(
                y_true, proba, multi_class="ovr", average="macro", labels=list(classes)
            )
        )
    # Some classes are absent from y_true: average one-vs-rest AUC over the classes present.
    scores = [
        skm.roc_auc_score(y_true == c, proba[:, i]) for i, c in enumerate(classes) if c in present
    ]
    return float(np.mean(scores))


def classification_metrics(
    y_true: Any,
    y_pred: Any,
    proba: np.ndarray | None,
    classes: list[Any],
    only: Collection[str] | None = None,
) -> dict[str, float]:
    """Accuracy, balanced accuracy, precision/recall/F1 (macro, weighted), ROC AUC, log loss
    (or, given ``only``, just those: the same values, without the cost of the rest).

    ``proba`` columns follow ``classes``. ``roc_auc`` is left out when ``y_true`` has a single
    class, ``roc_auc`` and ``log_loss`` when ``proba`` is None.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    result: dict[str, float] = {}

    def wanted(*names: str) -> bool:
        return only is None or any(name in only for name in names)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if wanted("accuracy"):
            result["accuracy"] = float(skm.accuracy_score(y_true, y_pred))
        if wanted("balanced_accuracy"):
            result["balanced_accuracy"] = float(skm.balanced_accuracy_score(y_true, y_pred))
        for average in ("macro", "weighted"):
            if not wanted(*(f"{k}_{average}" for k in ("precision", "recall", "f1"))):
                continue
            p, r, f, _ = skm.precision_recall_fscore_support(
                y_true, y_pred, average=average, zero_division=0
            )
            result[f"precision_{average}"] = float(p)
            result[f"recall_{average}"] = float(r)
            result[f"f1_{average}"] = float(f)
        if proba is not None:
            proba = np.asarray(proba, dtype=float)
            auc = _auc(y_true, proba, classes) if wanted("roc_auc") else None
            if auc is not None:
                result["roc_auc"] = auc
            if wanted("log_loss"):
                result["log_loss"] = float(skm.log_loss(y_true, proba, labels=list(classes)))
    return result


def rank_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC from the ranks (Mann-Whitney U, ties at their average rank): roc_auc_score's
    value, ties included."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    ranks = scipy.stats.rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _class_indices(y: np.ndarray, classes: np.ndarray) -> np.ndarray | None:
    """Each label's position in ``classes`` (sorted, as scikit-learn's are); None where that
    does not hold or a label is not among them."""
    k = len(classes)
    try:
        if k < 2 or not bool(np.all(classes[:-1] < classes[1:])):
            return None
        truth = np.searchsorted(classes, y)
        if np.any(truth >= k) or np.any(classes[np.minimum(truth, k - 1)] != y):
            return None
    except TypeError:  # labels that do not compare with the classes
        return None
    return truth


def fold_classification_metrics(
    y_true: Any, proba: np.ndarray, classes: np.ndarray, only: Collection[str]
) -> dict[str, float]:
    """``classification_metrics(y_true, classes[proba.argmax(1)], proba, classes, only)`` for
    the cross-validation loop: the same values (tests compare them on random folds) from the
    confusion counts, the ranks and the true class's probability, without scikit-learn's checks
    on every call. A search on a small table scores thousands of folds and the ensemble
    thousands of mixes, at milliseconds each through scikit-learn; this takes tens of
    microseconds. Labels outside sorted ``classes`` go to classification_metrics itself."""
    y = np.asarray(y_true)
    classes = np.asarray(classes)
    k = len(classes)
    proba = np.asarray(proba, dtype=float)
    truth = _class_indices(y, classes)
    if truth is None or len(y) == 0 or proba.shape != (len(y), k):
        return classification_metrics(y, classes[proba.argmax(axis=1)], proba, list(classes), only)
    predicted = proba.argmax(axis=1)
    counts = np.bincount(truth * k + predicted, minlength=k * k).reshape(k, k)
    hits = np.diag(counts).astype(float)
    actual, called = counts.sum(axis=1).astype(float), counts.sum(axis=0).astype(float)
    seen = (actual + called) > 0  # scikit-learn's labels: those in y_true or y_pred

    def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.divide(a, b, out=np.zeros_like(a), where=b > 0)  # zero_division=0

    result: dict[str, float] = {}
    if "accuracy" in only:
        result["accuracy"] = float(hits.sum() / len(y))
    if "balanced_accuracy" in only:
        result["balanced_accuracy"] = float(np.mean(hits[actual > 0] / actual[actual > 0]))
    per_label = {
        "precision": ratio(hits, called),
        "recall": ratio(hits, actual),
        "f1": ratio(2 * hits, actual + called),
    }
    for name, values in per_label.items():
        if f"{name}_macro" in only:
            result[f"{name}_macro"] = float(np.mean(values[seen]))
        if f"{name}_weighted" in only:
            result[f"{name}_weighted"] = float(np.average(values[seen], weights=actual[seen]))
    if "roc_auc" in only:
        present = np.flatnonzero(actual > 0)
        if len(present) >= 2:
            columns = [1] if k == 2 else present
            result["roc_auc"] = float(np.mean([rank_auc(truth == c, proba[:, c]) for c in columns]))
    if "log_loss" in only:
        eps = np.finfo(float).eps
        picked = np.clip(proba[np.arange(len(y)), truth], eps, 1 - eps)
        result["log_loss"] = float(-np.mean(np.log(picked)))
    return {m: result[m] for m in only if m in result}


# MAPE divides each error by its true value: a true value at or near zero makes that row's
# percentage as large as it likes (scikit-learn divides a zero by 2.2e-16, so one zero in a
# count target prints MAPE in the quadrillions) and that one row decides the mean. Below this
# share of the mean absolute true value a true value counts as near zero, and MAPE is left out:
# a number that means nothing is worse than none. WAPE (the absolute errors summed over the
# true values summed, a percentage of the total) is defined wherever the total is not zero,
# zeros and all, and is what demand and count forecasts report instead; it is always given.
NEAR_ZERO_SHARE = 1e-3


def mape_defined(y_true: Any) -> bool:
    """Whether MAPE means something on these true values: none is at or near zero (within
    ``NEAR_ZERO_SHARE`` of their mean absolute value), and none is missing."""
    y = np.abs(np.asarray(y_true, dtype="float64"))
    if len(y) == 0 or not np.all(np.isfinite(y)):
        return False
    return bool(np.min(y) > NEAR_ZERO_SHARE * np.mean(y))


def wape(y_true: Any, y_pred: Any) -> float:
    """Weighted absolute percentage error: sum |y - ŷ| / sum |y| (NaN when every true value is
    zero)."""
    y = np.asarray(y_true, dtype="float64")
    total = float(np.sum(np.abs(y)))
    errors = float(np.sum(np.abs(y - np.asarray(y_pred, dtype="float64"))))
    return errors / total if total > 0 else math.nan


def regression_metrics(
    y_true: Any, y_pred: Any, only: Collection[str] | None = None
) -> dict[str, float]:
    """RMSE, MAE, R², WAPE and MAPE (scikit-learn's mean_absolute_percentage_error), or
    ``only`` those. MAPE is left out where a true value is at or near zero (``mape_defined``),
    unless ``only`` asks for it by name (a search told to optimize it)."""
    functions: dict[str, Any] = {
        "rmse": skm.root_mean_squared_error,
        "mae": skm.mean_absolute_error,
        "r2": skm.r2_score,
        "wape": wape,
        "mape": skm.mean_absolute_percentage_error,
    }
    if only is None:
        if not mape_defined(y_true):
            del functions["mape"]
    else:
        functions = {name: f for name, f in functions.items() if name in only}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {name: float(function(y_true, y_pred)) for name, function in functions.items()}


def confusion(y_true: Any, y_pred: Any, classes: list[Any]) -> dict[str, Any]:
    """``{"labels": classes, "matrix": rows of true class, columns of predicted class}``."""
    matrix = skm.confusion_matrix(y_true, y_pred, labels=list(classes))
    return {
        "labels": [_plain(c) for c in classes],
        "matrix": [[int(v) for v in row] for row in matrix],
    }


def classification_report_dict(y_true: Any, y_pred: Any, classes: list[Any]) -> dict[str, Any]:
    """scikit-learn's classification report as a dict with string keys and plain numbers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = skm.classification_report(
            y_true,
            y_pred,
            labels=list(classes),
            target_names=[str(c) for c in classes],
            output_dict=True,
            zero_division=0,
        )
    assert isinstance(report, dict)
    return {
        str(key): (
            {str(k): _plain(v) for k, v in value.items()}
            if isinstance(value, dict)
            else _plain(value)
        )
        for key, value in report.items()
    }


def metric_value(
    metric: str,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    proba: np.ndarray | None = None,
    classes: Sequence[Any] = (),
) -> float:
    """One metric, computed alone (the bootstrap of the retraining gate calls it thousands of
    times); NaN where it is undefined on these rows (one class only, say)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if metric == "roc_auc":
            auc = None if proba is None else _auc(y_true, proba, classes)
            return math.nan if auc is None else auc
        if metric == "log_loss":
            if proba is None:
                return math.nan
            return float(skm.log_loss(y_true, proba, labels=list(classes)))
        if metric in ("f1_macro", "f1_weighted", "precision_macro", "recall_macro"):
            kind, average = metric.split("_")
            p, r, f, _ = skm.precision_recall_fscore_support(
                y_true, y_pred, average=average, zero_division=0
            )
            return float({"f1": f, "precision": p, "recall": r}[kind])
        scorers = {
            "accuracy": skm.accuracy_score,
            "balanced_accuracy": skm.balanced_accuracy_score,
            "rmse": skm.root_mean_squared_error,
            "mae": skm.mean_absolute_error,
            "r2": skm.r2_score,
            "mape": skm.mean_absolute_percentage_error,
        }
        return float(scorers[metric_spec(metric).name](y_true, y_pred))
