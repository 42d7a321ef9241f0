"""Model inspection for the report: permutation importance per raw input column, and learning
curves. Both score with the project's metric through its scikit-learn scoring string
(shipml.evaluation.metrics.scoring_for): higher is better, lower-is-better metrics negated."""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin

from shipml.evaluation.metrics import metric_spec, scoring_for

__all__ = [
    "LEARNING_FOLDS",
    "LEARNING_SIZES",
    "ImportanceTimeout",
    "learning_curve_scores",
    "permutation_importances",
]

LEARNING_FOLDS = 3
# Cells of shuffled copies predicted in one call (a float64 table of them: 32 MB); a table
# larger than this goes one copy at a time.
BATCH_CELLS = 4_000_000
LEARNING_SIZES = np.linspace(0.1, 1.0, 5)


def _n_classes(y: pd.Series, task: str) -> int | None:
    return int(y.nunique()) if task == "classification" else None


class _Replay(BaseEstimator):
    """Hands a scorer predictions made earlier, so one batched call serves many scorings."""

    def __init__(self, predicted: Any = None, proba: Any = None, classes: Any = None) -> None:
        self.predicted = predicted
        self.proba = proba
        self.classes = classes

    def fit(self, X: Any, y: Any = None) -> _Replay:
        return self

    def predict(self, X: Any) -> Any:
        return self.predicted

    def predict_proba(self, X: Any) -> Any:
        return self.proba

    @property
    def classes_(self) -> Any:
        return self.classes


class _ReplayClassifier(ClassifierMixin, _Replay):
    pass


class _ReplayRegressor(RegressorMixin, _Replay):
    pass


def permutation_importances(
    model: Any,
    X: pd.DataFrame,
    y: pd.Series,
    metric: str,
    task: str,
    n_repeats: int,
    seed: int,
    max_rows: int = 5000,
    seconds: float | None = None,
) -> pd.DataFrame:
    """Permutation importance of each column of ``X``, the raw model input, so a column the
    model one-hot encodes counts once. Columns feature, mean, std, most important first; in the
    metric's units, positive when shuffling the column makes the metric worse.

    The same procedure as scikit-learn's ``permutation_importance`` (shuffle one column, score,
    repeat), but shuffled copies of the table are stacked and predicted together: a model with a
    heavy per-call cost (an ensemble with a preprocessor per fold) scores hundreds of copies in
    the time of a few calls. A stack holds at most ``BATCH_CELLS`` cells (or one copy), so
    memory does not grow with columns x shuffles. Tables over ``max_rows`` rows are sampled
    first. With ``seconds``, ImportanceTimeout is raised once they pass."""
    from sklearn.metrics import get_scorer

    started = time.monotonic()
    if len(X) > max_rows:
        X, y = _sample(X, y, max_rows, task, seed)
    X = X.reset_index(drop=True)
    y = y.reset_index(drop=True)
    classifier = task == "classification"
    classes = model.classes_ if classifier else None
    scorer = get_scorer(scoring_for(metric, len(classes) if classes is not None else None))
    replay_class = _ReplayClassifier if classifier else _ReplayRegressor
    rng = np.random.RandomState(seed)
    n = len(X)
    # (column, permutation) per copy, None for the unshuffled table; drawn in scikit-learn's
    # order (each column's repeats in turn), lazily, so only a batch's worth is ever held.
    jobs: Iterator[tuple[Any, np.ndarray] | None] = itertools.chain(
        [None],
        ((column, rng.permutation(n)) for column in X.columns for _ in range(n_repeats)),
    )
    per_batch = max(1, BATCH_CELLS // max(n * X.shape[1], 1))
    scores: list[float] = []
    while batch := list(itertools.islice(jobs, per_batch)):
        if seconds is not None and scores and time.monotonic() - started > seconds:
            raise ImportanceTimeout(
                f"{len(X.columns)} columns x {n_repeats} shuffles took longer than the "
                f"{seconds:.0f} s the time budget left for them; a larger --time-budget "
                "includes them"
            )
        stacked = pd.concat([_shuffled(X, job) for job in batch], ignore_index=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            predicted = np.asarray(model.predict(stacked))
            proba = np.asarray(model.predict_proba(stacked)) if classifier else None
            del stacked
            for block in range(len(batch)):
                rows = slice(block * n, (block + 1) * n)
                replay = replay_class(
                    predicted[rows], None if proba is None else proba[rows], classes
                )
                scores.append(float(scorer(replay, X, y)))
    drops = scores[0] - np.asarray(scores[1:]).reshape(len(X.columns), n_repeats)
    table = pd.DataFrame(
        {
            "feature": [str(c) for c in X.columns],
            "mean": drops.mean(axis=1),
            "std": drops.std(axis=1),
        }
    )
    if table["mean"].isna().all():  # scikit-learn scores an undefined metric NaN, not an error
        raise ValueError(f"{metric} is undefined on these rows (a single class?)")
    return table.sort_values("mean", ascending=False, kind="mergesort").reset_index(drop=True)


class ImportanceTimeout(Exception):
    """Permutation importance ran past the seconds it was given."""


def _shuffled(X: pd.DataFrame, job: tuple[Any, np.ndarray] | None) -> pd.DataFrame:
    if job is None:
        return X
    column, order = job
    out = X.copy()
    out[column] = X[column].to_numpy()[order]
    return out


def _sample(X: pd.DataFrame, y: pd.Series, rows: int, task: str, seed: int) -> tuple[Any, Any]:
    from sklearn.model_selection import train_test_split

    if len(X) <= rows:
        return X, y
    counts = y.value_counts()
    stratify = y if task == "classification" and counts.min() >= 2 and rows >= len(counts) else None
    X_sample, _, y_sample, _ = train_test_split(
        X, y, train_size=rows, stratify=stratify, random_state=seed
    )
    return X_sample, y_sample


def learning_curve_scores(
    estimator: Any,
    X: pd.DataFrame,
    y: pd.Series,
    metric: str,
    task: str,
    max_rows: int,
    seed: int,
    seconds: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(training rows, training scores, validation scores), scores in the metric's own units
    (one column per fold), from refitting the unfitted ``estimator`` on growing subsets with
    3-fold CV (stratified for classification) on at most ``max_rows`` sampled rows.

    Sizes run smallest first; with ``seconds``, no larger size starts that would end past them,
    going by the last size's time scaled to the next size's rows (the curve then ends early: at
    least the smallest size is always scored)."""
    from sklearn.base import clone
    from sklearn.metrics import get_scorer
    from sklearn.model_selection import KFold, StratifiedKFold

    started = time.monotonic()
    X, y = _sample(X, y, max_rows, task, seed)
    stratified = task == "classification" and y.value_counts().min() >= LEARNING_FOLDS
    folds = StratifiedKFold if stratified else KFold
    splits = list(folds(LEARNING_FOLDS, shuffle=True, random_state=seed).split(X, y))
    scorer = get_scorer(scoring_for(metric, _n_classes(y, task)))
    rng = np.random.default_rng(seed)
    # Subsets are prefixes of a shuffled order: a table sorted by the target gives every class.
    orders = [rng.permutation(train) for train, _ in splits]
    smallest = min(len(order) for order in orders)
    sizes = sorted({max(2, round(float(share) * smallest)) for share in LEARNING_SIZES})
    done: list[int] = []
    train_scores: list[list[float]] = []
    valid_scores: list[list[float]] = []
    last_seconds = 0.0
    for size in sizes:
        if done and seconds is not None:
            expected = last_seconds * size / done[-1]  # fits grow at most with their rows
            if time.monotonic() - started + expected > seconds:
                break
        size_started = time.monotonic()
        row_train, row_valid = [], []
        for order, (_, valid) in zip(orders, splits, strict=True):
            subset = order[:size]
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model = clone(estimator).fit(X.iloc[subset], y.iloc[subset])
                    row_train.append(float(scorer(model, X.iloc[subset], y.iloc[subset])))
                    row_valid.append(float(scorer(model, X.iloc[valid], y.iloc[valid])))
            except Exception:  # a subset may lack a class: that point is left out
                row_train.append(np.nan)
                row_valid.append(np.nan)
        done.append(size)
        last_seconds = time.monotonic() - size_started
        train_scores.append(row_train)
        valid_scores.append(row_valid)
    sign = 1.0 if metric_spec(metric).greater_is_better else -1.0
    return np.asarray(done), sign * np.asarray(train_scores), sign * np.asarray(valid_scores)
