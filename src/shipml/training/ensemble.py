"""A greedy weighted ensemble of the cross-validated candidates (Caruana et al., 2004).

Starting from the best single candidate, each round adds (with replacement) the candidate whose
fold outputs, averaged in, give the best mean CV score, even where that is below the score so
far: adding the leader again is what lets a later round mix two models 2:1 or 3:1 where 1:1 is
worse than the leader alone (as AutoGluon's ensemble selection does). After ``MAX_ROUNDS`` the
best mix seen is kept; weights are how often each was added. Scored on the same folds as the
candidates, it joins the leaderboard and wins only when it beats every single model there.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from shipml.evaluation.metrics import METRICS, rank_auc
from shipml.training.leaderboard import CandidateResult, fold_metrics

MAX_ROUNDS = 20


def _score(
    outputs: list[np.ndarray],
    targets: list[pd.Series],
    classes: np.ndarray | None,
    metrics: tuple[str, ...],
) -> dict[str, list[float]]:
    per_metric: dict[str, list[float]] = {m: [] for m in metrics}
    for output, y in zip(outputs, targets, strict=True):
        for m, v in fold_metrics(y, output, classes, metrics).items():
            per_metric[m].append(v)
    return per_metric


def _binary_auc(
    targets: list[pd.Series], classes: np.ndarray | None
) -> Callable[[int, np.ndarray], float] | None:
    """Fold ``i``'s ROC AUC of a binary output from the ranks (Mann-Whitney U): the value
    scikit-learn's roc_auc_score gives, ties included, in a twentieth of its time, for the
    ensemble's thousand or so scorings. None where that does not apply (multiclass, or a fold
    with one class: the general path handles those)."""
    if classes is None or len(classes) != 2:
        return None
    positives = [np.asarray(y) == classes[1] for y in targets]
    if any(p.all() or not p.any() for p in positives):
        return None

    def auc(i: int, output: np.ndarray) -> float:
        return rank_auc(positives[i], output[:, 1])

    return auc


def greedy_ensemble(
    results: list[CandidateResult],
    targets: list[pd.Series],
    classes: np.ndarray | None,
    metric: str,
    metrics: tuple[str, ...],
    deadline: float | None = None,
) -> CandidateResult | None:
    """The ensemble as a leaderboard entry, or None when no mix beats the best single model.
    Past ``deadline`` (time.monotonic()) no round starts after the first."""
    pool = [
        r
        for r in results
        if r.status == "ok" and len(r.fold_outputs) == len(targets) and r.name != "majority"
    ]
    if len(pool) < 2:
        return None
    sign = 1.0 if METRICS[metric].greater_is_better else -1.0
    rounds_metric = _binary_auc(targets, classes) if metric == "roc_auc" else None

    def mean_score(outputs: list[np.ndarray]) -> float:
        if rounds_metric is not None:
            return sign * float(np.mean([rounds_metric(i, o) for i, o in enumerate(outputs)]))
        values = _score(outputs, targets, classes, (metric,))[metric]
        return sign * float(np.mean(values))

    best = max(pool, key=lambda r: sign * r.mean(metric))
    weights = {best.name: 1}
    sums = [o.copy() for o in best.fold_outputs]
    kept = (sign * best.mean(metric), dict(weights), [s.copy() for s in sums])
    for round_ in range(MAX_ROUNDS):
        if round_ and deadline is not None and time.monotonic() > deadline:
            break
        total = sum(weights.values())
        trials = []
        for r in pool:
            outputs = [(s + o) / (total + 1) for s, o in zip(sums, r.fold_outputs, strict=True)]
            trials.append((mean_score(outputs), r))
        # Ties go to a model not yet in the mix: averaging equally good, different models lowers
        # variance, which the folds cannot see but unseen data rewards.
        score, new, chosen = max(
            ((score, r.name not in weights, r) for score, r in trials), key=lambda t: t[:2]
        )
        weights[chosen.name] = weights.get(chosen.name, 0) + 1
        sums = [s + o for s, o in zip(sums, chosen.fold_outputs, strict=True)]
        # A tie is kept only for a second model at equal weight, not for a sliver of one.
        if score > kept[0] + 1e-12 or (score >= kept[0] - 1e-12 and new and total == 1):
            kept = (score, dict(weights), [s.copy() for s in sums])
    _, weights, sums = kept
    if len(weights) < 2:
        return None
    total = sum(weights.values())
    outputs = [s / total for s in sums]
    members = {r.name: weights[r.name] for r in pool if r.name in weights}
    return CandidateResult(
        name="ensemble",
        description="weighted average of " + ", ".join(f"{n} ×{w}" for n, w in members.items()),
        baseline=False,
        params={"members": ",".join(f"{n}:{w}" for n, w in members.items())},
        fold_scores=_score(outputs, targets, classes, metrics),
        fit_seconds=sum(r.fit_seconds for r in pool if r.name in members),
        members=members,
        fold_outputs=outputs,
    )
