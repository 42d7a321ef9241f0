"""The greedy weighted ensemble: joins only when it beats every single model, and serializes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import skops.io as sio
from sklearn.datasets import load_breast_cancer

from shipml.config import FeaturesConfig
from shipml.data.infer import infer_schema
from shipml.features import build_model_pipeline, trusted_types_for
from shipml.models.catalog import build_ensemble
from shipml.training.ensemble import greedy_ensemble
from shipml.training.leaderboard import CandidateResult, fold_metrics

METRICS = ("accuracy",)
CLASSES = np.array([0, 1])


def _candidate(name: str, outputs: list[np.ndarray], targets: list[pd.Series]) -> CandidateResult:
    result = CandidateResult(name, name, False, {})
    result.fold_outputs = outputs
    for output, y in zip(outputs, targets, strict=True):
        for m, v in fold_metrics(y, output, CLASSES, METRICS).items():
            result.fold_scores.setdefault(m, []).append(v)
    return result


def _proba(p1: list[float]) -> np.ndarray:
    p = np.asarray(p1)
    return np.column_stack([1 - p, p])


def test_mix_of_two_complementary_models_wins() -> None:
    y = pd.Series([1, 1, 0, 0])
    # Each model is confidently wrong on a different row; their average is right on all four.
    a = _candidate("a", [_proba([0.9, 0.3, 0.1, 0.2])], [y])
    b = _candidate("b", [_proba([0.4, 0.9, 0.2, 0.1])], [y])
    ensemble = greedy_ensemble([a, b], [y], CLASSES, "accuracy", METRICS)
    assert ensemble is not None
    assert ensemble.members == {"a": 1, "b": 1}
    assert ensemble.fold_scores["accuracy"] == [1.0]
    assert a.mean("accuracy") == b.mean("accuracy") == 0.75


def test_no_ensemble_when_one_model_is_best_alone() -> None:
    y = pd.Series([1, 1, 0, 0])
    perfect = _candidate("perfect", [_proba([0.9, 0.9, 0.1, 0.1])], [y])
    wrong = _candidate("wrong", [_proba([0.1, 0.1, 0.9, 0.9])], [y])
    assert greedy_ensemble([perfect, wrong], [y], CLASSES, "accuracy", METRICS) is None
    assert greedy_ensemble([perfect], [y], CLASSES, "accuracy", METRICS) is None


def test_ensemble_model_round_trips_through_skops() -> None:
    data = load_breast_cancer(as_frame=True)
    df = data.frame
    schema = infer_schema(df, "target")
    X, y = df.drop(columns="target"), df["target"]
    members = {"logistic_regression": 2, "lightgbm": 1}
    pipeline = build_model_pipeline(
        schema, FeaturesConfig(), build_ensemble("classification", members, 0)
    )
    pipeline.fit(X, y)
    blob = sio.dumps(pipeline)
    loaded = sio.loads(blob, trusted=trusted_types_for(sio.get_untrusted_types(data=blob)))
    np.testing.assert_array_equal(loaded.predict_proba(X), pipeline.predict_proba(X))
    assert list(loaded.classes_) == [0, 1]
