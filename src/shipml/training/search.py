"""Cross-validate candidate model families inside a time budget and rank them in a leaderboard."""

from __future__ import annotations

import math
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.model_selection import KFold, StratifiedKFold, TimeSeriesSplit

from shipml.config import FeaturesConfig
from shipml.data.schema import Schema
from shipml.evaluation.metrics import METRICS, classification_metrics, regression_metrics
from shipml.features import build_model_pipeline
from shipml.models.catalog import Family

Status = Literal["ok", "failed", "skipped", "stopped"]
EventHandler = Callable[..., None]

CLASSIFICATION_CV_METRICS = ("roc_auc", "accuracy", "balanced_accuracy", "f1_macro", "log_loss")
REGRESSION_CV_METRICS = ("rmse", "mae", "r2")


@dataclass
class CandidateResult:
    """One family's cross-validation: scores per fold for every metric, or why it did not run."""

    name: str
    description: str
    baseline: bool
    params: dict[str, Any]
    fold_scores: dict[str, list[float]] = field(default_factory=dict)
    fit_seconds: float = 0.0
    status: Status = "ok"
    reason: str = ""

    def mean(self, metric: str) -> float:
        values = self.fold_scores.get(metric) or [math.nan]
        return float(statistics.fmean(values))

    def std(self, metric: str) -> float:
        values = self.fold_scores.get(metric) or []
        return float(statistics.pstdev(values)) if len(values) > 1 else 0.0

    def summary(self) -> dict[str, float]:
        out = {}
        for metric in self.fold_scores:
            out[f"cv_{metric}_mean"] = self.mean(metric)
            out[f"cv_{metric}_std"] = self.std(metric)
        out["fit_seconds"] = self.fit_seconds
        return out


@dataclass
class Leaderboard:
    """Every candidate's result, ranked by the project's metric."""

    metric: str
    metrics: tuple[str, ...]
    results: list[CandidateResult]

    def ranked(self) -> list[CandidateResult]:
        done = [r for r in self.results if r.status == "ok" and not math.isnan(r.mean(self.metric))]
        sign = 1.0 if METRICS[self.metric].greater_is_better else -1.0
        return sorted(done, key=lambda r: -sign * r.mean(self.metric))

    @property
    def best(self) -> CandidateResult | None:
        ranked = self.ranked()
        return ranked[0] if ranked else None

    def to_records(self) -> list[dict[str, Any]]:
        rank = {id(r): i + 1 for i, r in enumerate(self.ranked())}
        rows = []
        for r in self.results:
            row: dict[str, Any] = {
                "rank": rank.get(id(r)),
                "model": r.name,
                "baseline": r.baseline,
                "status": r.status,
                "reason": r.reason,
                "fit_seconds": round(r.fit_seconds, 3),
            }
            for m in self.metrics:
                row[f"{m}_mean"] = r.mean(m) if m in r.fold_scores else None
                row[f"{m}_std"] = r.std(m) if m in r.fold_scores else None
            rows.append(row)
        return sorted(rows, key=lambda row: (row["rank"] is None, row["rank"] or 0))


def cv_metrics(task: str, primary: str) -> tuple[str, ...]:
    """The metrics computed on every fold: the primary one first."""
    pool = CLASSIFICATION_CV_METRICS if task == "classification" else REGRESSION_CV_METRICS
    return (primary, *[m for m in pool if m != primary])


def folds_for(
    schema: Schema, y: pd.Series, cv: int, seed: int, ordered: bool
) -> KFold | StratifiedKFold | TimeSeriesSplit:
    """Stratified folds for classification, shuffled k-fold for regression, forward in time."""
    if ordered:
        return TimeSeriesSplit(n_splits=cv)
    if schema.task == "classification":
        smallest = int(y.value_counts().min())
        return StratifiedKFold(n_splits=max(2, min(cv, smallest)), shuffle=True, random_state=seed)
    return KFold(n_splits=cv, shuffle=True, random_state=seed)


def _score_all(
    estimator: Any, X: pd.DataFrame, y: pd.Series, metrics: tuple[str, ...], task: str
) -> dict[str, float]:
    """Every CV metric from one prediction pass over the validation fold."""
    if task == "classification":
        classes = list(estimator.classes_)
        proba = estimator.predict_proba(X)
        predictions = np.asarray(classes, dtype=object)[proba.argmax(axis=1)]
        values = classification_metrics(y, predictions, proba, classes)
    else:
        values = regression_metrics(y, estimator.predict(X))
    return {m: float(values.get(m, math.nan)) for m in metrics}


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
                    scores = _score_all(
                        pipeline, X.iloc[valid_idx], y.iloc[valid_idx], metrics, schema.task
                    )
            except Exception as err:  # a failing family must not end the whole training
                result.status = "failed"
                result.reason = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
                break
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
    return Leaderboard(metric=metric, metrics=metrics, results=results)


def _plain_params(estimator: Any) -> dict[str, Any]:
    params = estimator.get_params(deep=False)
    return {k: v for k, v in params.items() if isinstance(v, int | float | str | bool | type(None))}
