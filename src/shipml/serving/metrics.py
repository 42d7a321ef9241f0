"""Prometheus metrics of the prediction service (prometheus_client).

With several uvicorn workers, ``shipml serve`` sets PROMETHEUS_MULTIPROC_DIR before the workers
start: every worker writes its samples there and /metrics, whichever worker answers, adds them
up (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CONFIDENCE_BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
ERROR_KINDS = (
    "bad_request",
    "body_too_large",
    "not_ready",
    "unsupported_media_type",
    "unauthorized",
    "rate_limited",
    "log_unavailable",  # the prediction log could not take the record: nothing was answered
    "internal",
)


def observe_many(histogram: Any, values: np.ndarray) -> None:
    """``histogram.observe(v)`` for every v in ``values`` but NaN (no confidence), as one
    increment per bucket: a 1,000-row batch's confidences in microseconds instead of
    milliseconds. Uses the child's bucket and sum values, as prometheus_client's own
    ``observe`` does; where a version lays them out otherwise, observes one value at a time."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if (
        len(values) < 32  # (numpy's calls cost more than a few observes)
        or bounds is None
        or buckets is None
        or total is None
        or len(bounds) != len(buckets)
    ):
        for value in values.tolist():
            if value == value:
                histogram.observe(value)
        return
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if not len(values):
        return
    # The first bound >= v, as observe's `amount <= bound`; the last bound is +Inf.
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    total.inc(float(values.sum()))
    for index in np.flatnonzero(counts).tolist():
        buckets[index].inc(int(counts[index]))


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class ServingMetrics:
    """The service's metrics, on a registry of their own (one per app). Every series carries
    ``model="<project name>"``, so one Prometheus scraping several services keeps them apart."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, model: str) -> None:
        self.model = model
        self.registry = CollectorRegistry(auto_describe=True)
        self.predictions = Counter(
            "shipml_predictions",
            "Predictions answered (rows), by the model version that made them",
            ["model", "model_version"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "shipml_prediction_latency_seconds",
            "Time from request received to answer ready, per request",
            ["model", "model_version"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.confidence = Histogram(
            "shipml_prediction_confidence",
            "Probability of the predicted class, per predicted row (classification)",
            ["model", "model_version"],
            buckets=CONFIDENCE_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "shipml_prediction_errors",
            "Requests answered with an error, by kind",
            ["model", "kind"],
            registry=self.registry,
        )
        self.model_info = Gauge(
            "shipml_model_info",
            "1 for the model version being served (with its family and inference path)",
            ["model", "model_version", "family", "inference"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        # Drift of the latest logged predictions, recomputed in the background (one process
        # of several holds the job; "livemostrecent" shows its latest values).
        drift_gauge: dict[str, Any] = {
            "registry": self.registry,
            "multiprocess_mode": "livemostrecent",
        }
        self.drift_score = Gauge(
            "shipml_drift_score",
            "Drift score of a column over the latest predictions (p-value or distance: see method)",
            ["model", "model_version", "column", "method"],
            **drift_gauge,
        )
        self.drift_detected = Gauge(
            "shipml_drift_detected",
            "1 when the column drifted from the served version's training data",
            ["model", "model_version", "column"],
            **drift_gauge,
        )
        self.dataset_drift = Gauge(
            "shipml_dataset_drift",
            "1 when the dataset drifted: at least monitoring.drift_share of the columns, or one "
            "of the model's monitoring.important_columns most important",
            ["model", "model_version"],
            **drift_gauge,
        )
        self.drift_share = Gauge(
            "shipml_drift_share",
            "Share of the tested columns that drifted",
            ["model", "model_version"],
            **drift_gauge,
        )
        self.drift_window_rows = Gauge(
            "shipml_drift_window_rows",
            "Logged predictions the drift gauges were computed on",
            ["model", "model_version"],
            **drift_gauge,
        )
        self._children: dict[str, tuple[Any, Any, Any]] = {}
        self._errors = {kind: self.errors.labels(model=model, kind=kind) for kind in ERROR_KINDS}

    def children(self, version: str) -> tuple[Any, Any, Any]:
        """The (predictions, latency, confidence) series of one model version, looked up once
        (``labels()`` costs microseconds per call on the request path)."""
        found = self._children.get(version)
        if found is None:
            labels = {"model": self.model, "model_version": version}
            found = (
                self.predictions.labels(**labels),
                self.latency.labels(**labels),
                self.confidence.labels(**labels),
            )
            self._children[version] = found
        return found

    def error(self, kind: str) -> None:
        """Count a request answered with an error of ``kind`` (one of ERROR_KINDS)."""
        self._errors[kind].inc()

    def served(self, version: str, family: str, inference: str) -> None:
        self._info(version, family, inference).set(1)

    def retired(self, version: str, family: str, inference: str) -> None:
        self._info(version, family, inference).set(0)

    def _info(self, version: str, family: str, inference: str) -> Any:
        return self.model_info.labels(
            model=self.model, model_version=version, family=family, inference=inference
        )

    def drift(self, version: str, result: Any, rows: int) -> None:
        """Set the drift gauges from a shipml.monitoring.drift.DriftResult."""
        model = self.model
        for name, column in result.columns.items():
            self.drift_score.labels(model, version, name, column.method).set(column.score)
            self.drift_detected.labels(model, version, name).set(1 if column.drift else 0)
        self.dataset_drift.labels(model, version).set(1 if result.dataset_drift else 0)
        self.drift_share.labels(model, version).set(result.share_drifted)
        self.drift_window_rows.labels(model, version).set(rows)

    def render(self) -> bytes:
        folder = multiprocess_dir()
        if folder is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=folder)  # type: ignore[no-untyped-call]
        return generate_latest(registry)


def worker_exit(pid: int) -> None:
    """Drop a finished worker's live gauges (multiprocess mode)."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
