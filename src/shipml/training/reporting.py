"""The training report, sized to the time the budget leaves.

Permutation importance costs one prediction per shuffled copy of the test rows, and learning
curves cost fifteen refits; both are scaled down (fewer shuffles, fewer rows, or no learning
curve, said so in the report) when the time left would not cover them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shipml.config import ProjectConfig
from shipml.evaluation.inspection import LEARNING_FOLDS, LEARNING_SIZES
from shipml.evaluation.metrics import METRICS
from shipml.evaluation.report import ReportInputs, build_report, importance_table, write_report
from shipml.models.bagged import BaggedEnsemble, labels_for
from shipml.training.final import ThresholdChoice, one_fit_seconds
from shipml.training.search import TransformChoice

MIN_REPORT_S = 4.0  # the report gets at least this, even when the budget is spent
IMPORTANCE_SHARE = 0.4  # of the report's time; the learning curves get the rest
MIN_IMPORTANCE_ROWS = 200
MIN_LEARNING_ROWS = 200
MAX_LEARNING_ROWS = 5000
MAX_IMPORTANCE_ROWS = 2000


class ScoredModel:
    """The registered model as the report uses it: the test split's outputs are reused, and
    labels come from the probabilities of the same call (one prediction pass per table, where
    the report would otherwise make two)."""

    def __init__(self, model: BaggedEnsemble, X_test: pd.DataFrame) -> None:
        self.model = model
        self.task = model.task
        if model.task == "classification":
            self.classes_ = model.classes_
        self._last: tuple[Any, np.ndarray] | None = None
        self._outputs(X_test)

    def _outputs(self, X: pd.DataFrame) -> np.ndarray:
        if self._last is None or self._last[0] is not X:
            method = "predict_proba" if self.task == "classification" else "predict"
            self._last = (X, np.asarray(getattr(self.model, method)(X)))
        return self._last[1]

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self._outputs(X)

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        outputs = self._outputs(X)
        if self.task != "classification":
            return outputs
        return labels_for(outputs, self.classes_, self.model.threshold)


@dataclass
class ReportPlan:
    importance_repeats: int
    importance_rows: int
    learning_rows: int  # 0: no learning curve
    learning_skipped: str = ""
    learning_seconds: float | None = None  # the curve ends early rather than run past this
    importance_seconds: float | None = None  # permutation importance stops rather than overrun


FINISH_FIXED_S = 5.0  # the fast copy, registration and the report's least, on a small model
# ... on a short budget, its share: what a short budget can train, a baseline or a few small
# trees on a small table, takes 2.5 to 4 s there (iris at 10 s: 2.5 s after a baseline, 4.2 s
# after an ensemble of it and LightGBM, whose ONNX copy, registration and report take longer).
FINISH_FIXED_SHARE = 0.35
# A learning curve's fits, in fits on every training row: each of its folds fits on (k-1)/k of
# the rows at every size.
LEARNING_REFITS = float(sum(LEARNING_SIZES)) * (LEARNING_FOLDS - 1)


def report_reserve(budget: float) -> float:
    """The most the search leaves for the fast copy, registration and the report (on a
    73-column table at 60 s: about 2, 3 and 7 s)."""
    return min(max(0.18 * budget, 8.0), 90.0)


def finish_fixed(budget: float) -> float:
    """The part of the finish reserve that does not grow with the model."""
    return min(FINISH_FIXED_S, FINISH_FIXED_SHARE * budget)


def finish_reserve(budget: float, results: list[Any], metric: str) -> float:
    """Seconds the search leaves for the fast copy, registration and the report, from the best
    candidate so far: a fixed part and the learning curve's refits of it (a few dozen small
    trees need a second or two, not the 11 s of a 60 s budget's ceiling). At most
    ``report_reserve(budget)``. Before any candidate is measured, the fixed part alone: the
    first one is then still started on a short budget (a 15 s budget keeping the ceiling's
    8 s would cross-validate baselines only), and the reserve follows from its time once it
    has one."""
    ceiling = report_reserve(budget)
    sign = 1.0 if METRICS[metric].greater_is_better else -1.0
    done = [
        r for r in results if r.status == "ok" and r.family and not r.baseline and r.fold_outputs
    ]
    fixed = finish_fixed(budget)
    if not done:
        return min(ceiling, fixed)
    best = max(done, key=lambda r: sign * r.mean(metric))
    return min(ceiling, fixed + LEARNING_REFITS * one_fit_seconds(best))


def plan_report(
    allowance: float,
    n_test: int,
    n_columns: int,
    seconds_per_row: float,
    n_train: int,
    full_fit_seconds: float,
) -> ReportPlan:
    """How much importance and learning-curve work fits in ``allowance`` seconds, from the cost
    of one predicted row and of one fit on every training row."""
    budget_importance = IMPORTANCE_SHARE * allowance
    rows, repeats = min(n_test, MAX_IMPORTANCE_ROWS), 5

    def cost(r: int, k: int) -> float:
        return (1 + n_columns * k) * r * seconds_per_row

    while repeats > 2 and cost(rows, repeats) > budget_importance:
        repeats -= 1
    if cost(rows, repeats) > budget_importance:
        fitting = int(budget_importance / max((1 + n_columns * repeats) * seconds_per_row, 1e-9))
        rows = max(min(rows, MIN_IMPORTANCE_ROWS), min(rows, fitting))

    # The estimate leaves out each prediction call's own cost, which thousands of columns
    # (one batch of copies per call) make count: importance stops at twice its share.
    importance_seconds = max(2 * budget_importance, 1.0)
    budget_learning = allowance - cost(rows, repeats)
    # Fit time shrinks less than the rows on small samples (boosting pays per iteration,
    # CatBoost almost only that): most of it is taken as fixed. The curve also stops early
    # rather than overrun (learning_seconds).
    most = min(n_train, MAX_LEARNING_ROWS)
    fixed = 0.7

    def needed(r: int) -> float:
        return LEARNING_REFITS * full_fit_seconds * (fixed + (1 - fixed) * r / max(n_train, 1))

    learning_rows = most
    if needed(most) > budget_learning:
        ratio = max(budget_learning, 0.0) / max(LEARNING_REFITS * full_fit_seconds, 1e-9)
        learning_rows = min(most, int(n_train * (ratio - fixed) / (1 - fixed)))
    if learning_rows < min(MIN_LEARNING_ROWS, n_train):
        why = (
            f"learning curves skipped: they need about {needed(most):.0f} s and the time budget "
            f"had {max(budget_learning, 0):.0f} s left; a larger --time-budget includes them"
        )
        return ReportPlan(repeats, rows, 0, why, importance_seconds=importance_seconds)
    return ReportPlan(
        repeats,
        rows,
        learning_rows,
        learning_seconds=max(budget_learning, 1.0),
        importance_seconds=importance_seconds,
    )


def report_notes(
    config: ProjectConfig,
    trials: int,
    weight_reason: str,
    choice: ThresholdChoice | None,
    transform: TransformChoice | None = None,
) -> list[str]:
    notes = [
        f"search: {config.training.search}, {trials} trials after each family's defaults"
        + (" (a fixed number of trials)" if config.training.trials is not None else ""),
        f"class weights: {weight_reason}",
    ]
    if choice is not None:
        notes.append(
            f"decision threshold {choice.threshold:.4g}, chosen for {choice.metric} on "
            f"out-of-fold predictions: {choice.score:.4f} there against {choice.score_at_half:.4f}"
            " at 0.5 (optimistic: chosen on the same predictions)"
        )
    if transform is not None:
        note = f"{transform.line()} (training.target_transform: {transform.setting})"
        if transform.transform == "log":
            note += (
                "; back on the original scale, predictions are scaled by a factor learned out "
                "of fold so that their mean matches the target's"
            )
        notes.append(note)
    return notes


def write_training_report(
    path: Path, inputs: dict[str, Any], plan: ReportPlan, learning_estimator: Any
) -> tuple[Path, pd.DataFrame | None]:
    """Build the report with ``plan``'s sizes and write it atomically to ``path``; returns the
    path and the permutation importances it shows (None where they could not be computed)."""
    report = ReportInputs(
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        learning_estimator=learning_estimator if plan.learning_rows else None,
        learning_skipped=plan.learning_skipped,
        max_learning_rows=max(plan.learning_rows, 1),
        learning_seconds=plan.learning_seconds,
        importance_seconds=plan.importance_seconds,
        importance_repeats=plan.importance_repeats,
        max_importance_rows=plan.importance_rows,
        **inputs,
    )
    importances = importance_table(report)
    path = write_report(build_report(report, importances), path)
    return path, None if isinstance(importances, str) else importances
