"""Cross-validate candidate model families inside a time budget and rank them in a leaderboard."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.model_selection import RepeatedKFold, RepeatedStratifiedKFold, TimeSeriesSplit

from shipml.config import FeaturesConfig
from shipml.data.schema import Schema
from shipml.features import build_model_pipeline
from shipml.models.catalog import Family
from shipml.training.ensemble import greedy_ensemble
from shipml.training.leaderboard import CandidateResult, Leaderboard, fold_metrics, fold_output

EventHandler = Callable[..., None]
SMALL_TABLE_ROWS = 1000

CLASSIFICATION_CV_METRICS = ("roc_auc", "accuracy", "balanced_accuracy", "f1_macro", "log_loss")
REGRESSION_CV_METRICS = ("rmse", "mae", "r2")


def cv_metrics(task: str, primary: str) -> tuple[str, ...]:
    """The metrics computed on every fold: the primary one first."""
    pool = CLASSIFICATION_CV_METRICS if task == "classification" else REGRESSION_CV_METRICS
    return (primary, *[m for m in pool if m != primary])


def folds_for(
    schema: Schema, y: pd.Series, cv: int, seed: int, ordered: bool
) -> RepeatedKFold | RepeatedStratifiedKFold | TimeSeriesSplit:
    """Stratified folds for classification, shuffled k-fold for regression, forward in time."""
    if ordered:
        return TimeSeriesSplit(n_splits=cv)
    # On small tables one k-fold pass is a noisy judge of which model is best: repeat it.
    repeats = 3 if len(y) < SMALL_TABLE_ROWS else 1
    if schema.task == "classification":
        smallest = int(y.value_counts().min())
        k = max(2, min(cv, smallest))
        return RepeatedStratifiedKFold(n_splits=k, n_repeats=repeats, random_state=seed)
    return RepeatedKFold(n_splits=cv, n_repeats=repeats, random_state=seed)


def run_candidates(
    families: list[Family],
    X: pd.DataFrame,
    y: pd.Series,
    schema: Schema,
    features: FeaturesConfig,
    metric: str,
    cv: int,
    seed: int,
    deadline: float,
    ordered: bool = False,
    on_event: EventHandler | None = None,
) -> Leaderboard:
    """Cross-validate each family in order. Baselines always run; the others run while the
    budget allows, and a candidate is stopped early when its remaining folds and its refit would
    not finish before ``deadline`` (a ``time.monotonic()`` value)."""
    emit = on_event or (lambda *a, **k: None)
    metrics = cv_metrics(schema.task, metric)
    splitter = folds_for(schema, y, cv, seed, ordered)
    splits = list(splitter.split(X, y))
    # Every classifier sorts its labels the same way, so probability columns line up across
    # candidates (the ensemble relies on it).
    classes = np.unique(y.to_numpy()) if schema.task == "classification" else None
    results: list[CandidateResult] = []
    for family in families:
        estimator = family.build(seed)
        result = CandidateResult(
            family.name, family.description, family.baseline, _plain_params(estimator)
        )
        results.append(result)
        if not family.baseline and time.monotonic() >= deadline:
            result.status, result.reason = "skipped", "time budget used up"
            emit("candidate_done", result=result, folds=len(splits), metric=metric)
            continue
        emit("candidate_start", name=family.name, folds=len(splits))
        started = time.monotonic()
        for i, (train_idx, valid_idx) in enumerate(splits):
            pipeline = build_model_pipeline(schema, features, clone(estimator))
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    pipeline.fit(X.iloc[train_idx], y.iloc[train_idx])
                    output = fold_output(pipeline, X.iloc[valid_idx], schema.task)
                    scores = fold_metrics(y.iloc[valid_idx], output, classes, metrics)
            except Exception as err:  # a failing family must not end the whole training
                result.status = "failed"
                result.reason = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
                break
            result.fold_outputs.append(output)
            for m, v in scores.items():
                result.fold_scores.setdefault(m, []).append(v)
            emit("fold_done", name=family.name, fold=i + 1, score=scores[metric])
            elapsed = time.monotonic() - started
            per_fold = elapsed / (i + 1)
            left = len(splits) - (i + 1)
            if not family.baseline and time.monotonic() + per_fold * (left + 1.25) > deadline:
                if left:
                    result.status = "stopped"
                    result.reason = f"time budget: stopped after {i + 1}/{len(splits)} folds"
                else:
                    result.status = "stopped"
                    result.reason = "time budget: no time left to refit it"
                break
        result.fit_seconds = time.monotonic() - started
        emit("candidate_done", result=result, folds=len(splits), metric=metric)
    ensemble = greedy_ensemble(results, [y.iloc[v] for _, v in splits], classes, metric, metrics)
    if ensemble is not None:
        refit = sum(r.fit_seconds / len(splits) for r in results if r.name in ensemble.members)
        if time.monotonic() + 1.25 * refit > deadline:
            ensemble.status, ensemble.reason = "skipped", "time budget: no time left to refit it"
        results.append(ensemble)
        emit("candidate_done", result=ensemble, folds=len(splits), metric=metric)
    return Leaderboard(metric=metric, metrics=metrics, results=results)


def _plain_params(estimator: Any) -> dict[str, Any]:
    params = estimator.get_params(deep=False)
    return {k: v for k, v in params.items() if isinstance(v, int | float | str | bool | type(None))}
