"""Cross-validation results: one candidate's fold scores, and the leaderboard that ranks them."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from shipml.evaluation.metrics import METRICS, fold_classification_metrics, regression_metrics

Status = Literal["ok", "failed", "skipped", "stopped", "pruned"]


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
    members: dict[str, int] = field(default_factory=dict)  # ensemble members and weights
    fold_outputs: list[np.ndarray] = field(default_factory=list, repr=False)
    family: str = ""  # the catalog family ("" for the ensemble)
    trial: int = 0  # 0: the family's default hyperparameters; then search trials in order
    config: dict[str, Any] = field(default_factory=dict)  # what Family.build was given
    started_s: float = 0.0  # seconds into the search when it started
    fold_models: list[Any] = field(default_factory=list, repr=False)
    stack_inputs: list[str] = field(default_factory=list)  # the second layer's first-layer inputs

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

    def makeup(self, result: CandidateResult) -> list[tuple[str, int]]:
        """An ensemble's members (a second layer's inputs) counted by family, the family with
        the most weight first: [("catboost", 3), ("lightgbm", 2), ...]."""
        family_of = {r.name: r.family or r.name for r in self.results}
        members = result.members or dict.fromkeys(result.stack_inputs, 1)
        weight: dict[str, float] = {}
        count: dict[str, int] = {}
        for name, w in members.items():
            family = family_of.get(name, name)
            weight[family] = weight.get(family, 0.0) + w
            count[family] = count.get(family, 0) + 1
        return [(f, count[f]) for f in sorted(weight, key=lambda f: -weight[f])]

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
                "members": dict(r.members),
                "stack_inputs": list(r.stack_inputs),
                "family": r.family,
                "trial": r.trial,
                "config": dict(r.config),
                "fit_seconds": round(r.fit_seconds, 3),
            }
            for m in self.metrics:
                row[f"{m}_mean"] = r.mean(m) if m in r.fold_scores else None
                row[f"{m}_std"] = r.std(m) if m in r.fold_scores else None
            rows.append(row)
        return sorted(rows, key=lambda row: (row["rank"] is None, row["rank"] or 0))


def fold_output(estimator: Any, X: pd.DataFrame, task: str) -> np.ndarray:
    """What a fitted candidate says about a validation fold: class probabilities (columns in
    ``classes_`` order) for classification, predictions for regression."""
    if task == "classification":
        return np.asarray(estimator.predict_proba(X), dtype=float)
    return np.asarray(estimator.predict(X), dtype=float)


def fold_metrics(
    y: pd.Series, output: np.ndarray, classes: np.ndarray | None, metrics: tuple[str, ...]
) -> dict[str, float]:
    """Every CV metric of one fold from its output (see fold_output)."""
    if classes is not None:
        values = fold_classification_metrics(y, output, classes, metrics)
    else:
        values = regression_metrics(y, output, only=metrics)
    return {m: float(values.get(m, math.nan)) for m in metrics}
