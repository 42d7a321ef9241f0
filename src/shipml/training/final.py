"""From the leaderboard's winner to the model that is registered: bag or refit, then threshold."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from shipml.config import FeaturesConfig
from shipml.data.schema import Schema
from shipml.evaluation.metrics import METRICS
from shipml.features import build_model_pipeline, build_preprocessor
from shipml.models.bagged import BaggedEnsemble
from shipml.models.catalog import CATALOG
from shipml.training.folds import FoldSet
from shipml.training.leaderboard import CandidateResult, Leaderboard


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b, 0 where b is 0 (scikit-learn's zero_division=0)."""
    return np.divide(a, b, out=np.zeros_like(a, dtype=float), where=b > 0)


def binary_scores(
    positive: np.ndarray, p1: np.ndarray, thresholds: np.ndarray
) -> dict[str, np.ndarray]:
    """Every threshold-dependent metric at every threshold at once, from confusion counts
    (the same values scikit-learn's metric functions give, without their per-call checks: the
    threshold search scores thousands of (threshold, fold) pairs)."""
    called = p1[None, :] >= thresholds[:, None]
    pos = positive[None, :]
    tp = (called & pos).sum(axis=1).astype(float)
    fp = (called & ~pos).sum(axis=1).astype(float)
    fn = (~called & pos).sum(axis=1).astype(float)
    tn = (~called & ~pos).sum(axis=1).astype(float)
    n, n_pos = float(len(p1)), float(positive.sum())
    recall = (_ratio(tp, tp + fn) + _ratio(tn, tn + fp)) / 2
    f1_pos, f1_neg = _ratio(2 * tp, 2 * tp + fp + fn), _ratio(2 * tn, 2 * tn + fn + fp)
    return {
        "accuracy": (tp + tn) / n,
        "balanced_accuracy": recall,
        "recall_macro": recall,
        "precision_macro": (_ratio(tp, tp + fp) + _ratio(tn, tn + fn)) / 2,
        "f1_macro": (f1_pos + f1_neg) / 2,
        "f1_weighted": (f1_pos * n_pos + f1_neg * (n - n_pos)) / n,
    }


THRESHOLD_METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "f1_macro")
THRESHOLD_METRICS += ("f1_weighted", "precision_macro", "recall_macro")


@dataclass
class ThresholdChoice:
    threshold: float
    metric: str  # what it was chosen for
    score: float  # mean out-of-fold score at the threshold
    score_at_half: float  # ... and at 0.5


def threshold_metric(metric: str, class_weight: str | None) -> str:
    """The configured metric when it depends on the threshold; otherwise balanced accuracy when
    classes are weighted (imbalanced data), else accuracy."""
    if metric in THRESHOLD_METRICS:
        return metric
    return "balanced_accuracy" if class_weight else "accuracy"


def choose_threshold(
    fold_outputs: list[np.ndarray], targets: list[pd.Series], classes: np.ndarray, metric: str
) -> ThresholdChoice:
    """The threshold on the second class's probability that maximizes the mean fold score of
    ``metric``; ties go to the threshold nearest 0.5."""
    pooled = np.concatenate([o[:, 1] for o in fold_outputs])
    candidates = np.unique(np.round(np.quantile(pooled, np.linspace(0.01, 0.99, 99)), 4))
    candidates = np.unique(np.clip(np.append(candidates, 0.5), 1e-6, 1 - 1e-6))
    per_fold = [
        binary_scores(np.asarray(y) == classes[1], o[:, 1], candidates)[metric]
        for o, y in zip(fold_outputs, targets, strict=True)
    ]
    means = np.mean(per_fold, axis=0)
    # Best score first, then nearest to 0.5.
    order = np.lexsort((np.abs(candidates - 0.5), -means))
    best = int(order[0])
    half = int(np.flatnonzero(candidates == 0.5)[0])
    return ThresholdChoice(float(candidates[best]), metric, float(means[best]), float(means[half]))


def _members(best: CandidateResult) -> dict[str, int]:
    return dict(best.members) if best.members else {best.name: 1}


def build_final_model(
    best: CandidateResult,
    board: Leaderboard,
    folds: FoldSet,
    X: pd.DataFrame,
    y: pd.Series,
    schema: Schema,
    features: FeaturesConfig,
    seed: int,
    threshold: float | None,
) -> BaggedEnsemble:
    """Members that kept their fold models are bagged; the others (forests, time-ordered
    folds, or candidates whose models were dropped to save memory) are refitted on every
    training row."""
    by_name = {r.name: r for r in board.results}
    members = _members(best)
    stacked = next((by_name[n] for n in members if by_name[n].stack_inputs), None)
    # The second layer's inputs predict at prediction time even where the mix gives them no
    # weight: they are parts too.
    needed = list(members) + [
        n for n in (stacked.stack_inputs if stacked else []) if n not in members
    ]
    preprocessors: list[Any] = []
    parts: list[tuple[str, int, Any]] = []
    stack_parts: list[tuple[int, Any]] = []
    full_index: int | None = None
    fold_index: dict[int, int] = {}
    for name in needed:
        result = by_name[name]
        if result.fold_models:
            for k, model in enumerate(result.fold_models):
                if k not in fold_index:
                    fold_index[k] = len(preprocessors)
                    preprocessors.append(folds.folds[k].preprocessor)
                if result is stacked:
                    stack_parts.append((fold_index[k], model))
                else:
                    parts.append((name, fold_index[k], model))
            continue
        if full_index is None:
            preprocessor = build_preprocessor(schema, features)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                X_full = np.asarray(preprocessor.fit_transform(X), dtype=np.float64)
            full_index = len(preprocessors)
            preprocessors.append(preprocessor)
        family = CATALOG[schema.task][result.family]
        model = family.build(seed, result.config)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(X_full, y)
        parts.append((name, full_index, model))
    stack = None
    if stacked is not None:
        stack = {"name": stacked.name, "inputs": list(stacked.stack_inputs), "parts": stack_parts}
    return BaggedEnsemble(
        schema.task,
        preprocessors,
        parts,
        {name: float(w) for name, w in members.items()},
        classes=folds.classes,
        threshold=threshold,
        stack=stack,
    )


def _lead_member(best: CandidateResult, board: Leaderboard) -> CandidateResult:
    """The member with the largest weight (the candidate itself when it is not an ensemble);
    for the second layer, its strongest input (a model of the columns alone)."""
    members = _members(best)
    name = max(members, key=lambda n: members[n])
    result = next(r for r in board.results if r.name == name)
    if result.stack_inputs:
        return next(r for r in board.results if r.name == result.stack_inputs[0])
    return result


def learning_estimator(
    best: CandidateResult, board: Leaderboard, schema: Schema, features: FeaturesConfig, seed: int
) -> Any:
    """An unfitted pipeline of the strongest single member, for the report's learning curves."""
    result = _lead_member(best, board)
    family = CATALOG[schema.task][result.family]
    return build_model_pipeline(schema, features, family.build(seed, result.config))


def refit_seconds(results: list[CandidateResult], metric: str) -> float:
    """A guess at the final refit's cost: the three best candidates without fold models (an
    ensemble may hold all three), each fitted once on all training rows (a fold fit sees
    (k-1)/k of them)."""
    sign = 1.0 if METRICS[metric].greater_is_better else -1.0
    ok = [
        r for r in results if r.status == "ok" and r.family and not r.fold_models and r.fold_outputs
    ]
    ok.sort(key=lambda r: -sign * r.mean(metric))
    return sum(1.3 * r.fit_seconds / len(r.fold_outputs) for r in ok[:3])


def one_fit_seconds(result: CandidateResult) -> float:
    """About how long ``result``'s candidate takes to fit on every training row, from its fold
    fits (each on (k-1)/k of the rows)."""
    return 1.25 * result.fit_seconds / max(len(result.fold_outputs), 1)


def full_fit_seconds(best: CandidateResult, board: Leaderboard) -> float:
    """About how long the learning-curve member takes to fit on every training row."""
    return one_fit_seconds(_lead_member(best, board))
