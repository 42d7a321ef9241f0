"""Performance monitoring: live metrics on labelled rows against the version's test metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from shipml.data.coerce import as_category_strings


@dataclass
class Performance:
    """Live metrics on labelled rows against the serving version's test-time metrics."""

    metric: str
    live: float | None
    reference: float | None
    tolerance: float
    degraded: bool
    n_labelled: int
    live_metrics: dict[str, float] = field(default_factory=dict)
    reference_metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "live": self.live,
            "reference": self.reference,
            "tolerance": self.tolerance,
            "degraded": self.degraded,
            "n_labelled": self.n_labelled,
            "live_metrics": self.live_metrics,
            "reference_metrics": self.reference_metrics,
        }


def performance(
    metric: str,
    task: str,
    y: list[Any] | np.ndarray,
    predictions: list[Any] | np.ndarray,
    proba: np.ndarray | None,
    classes: list[str] | None,
    reference: dict[str, float],
    tolerance: float,
) -> Performance:
    """Metrics on labelled rows; degraded when the configured metric is worse than at test time
    by more than ``tolerance`` of its test-time value."""
    from shipml.evaluation.metrics import (
        classification_metrics,
        metric_spec,
        regression_metrics,
    )

    if task == "regression":
        live_metrics = regression_metrics(
            np.asarray(y, dtype="float64"), np.asarray(predictions, dtype="float64")
        )
    else:
        live_metrics = classification_metrics(
            np.asarray(y, dtype=object), np.asarray(predictions, dtype=object), proba, classes or []
        )
    live = live_metrics.get(metric)
    ref_value = reference.get(metric)
    degraded = False
    if live is not None and ref_value is not None and math.isfinite(live):
        allowed = tolerance * abs(ref_value)
        if metric_spec(metric).greater_is_better:
            degraded = live < ref_value - allowed
        else:
            degraded = live > ref_value + allowed
    return Performance(
        metric=metric,
        live=live,
        reference=ref_value,
        tolerance=tolerance,
        degraded=degraded,
        n_labelled=len(y),
        live_metrics=live_metrics,
        reference_metrics=dict(reference),
    )


def strings(values: Any) -> list[str]:
    return list(as_category_strings(pd.Series(list(values), dtype=object)))


def log_performance(
    rows: list[dict[str, Any]],
    labels: dict[str, Any],
    task: str,
    metric: str,
    reference: dict[str, float],
    tolerance: float,
) -> Performance | None:
    labelled = [r for r in rows if r.get("request_id") in labels]
    if not labelled:
        return None
    y = [labels[r["request_id"]] for r in labelled]
    predictions = [r.get("prediction") for r in labelled]
    if task == "regression":
        return performance(metric, task, y, predictions, None, None, reference, tolerance)
    classes = sorted({k for r in labelled for k in (r.get("probabilities") or {})})
    proba = None
    if classes and all(r.get("probabilities") for r in labelled):
        proba = np.array([[r["probabilities"].get(c, 0.0) for c in classes] for r in labelled])
    return performance(
        metric,
        task,
        strings(y),
        strings(predictions),
        proba,
        classes or None,
        reference,
        tolerance,
    )
