"""The greedy weighted ensemble: joins only when it beats every single model, and serializes."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.datasets import load_breast_cancer
from sklearn.metrics import roc_auc_score

from shipml.config import FeaturesConfig
from shipml.data.infer import infer_schema
from shipml.features import trusted_types_for
from shipml.models.bagged import BaggedEnsemble
from shipml.models.catalog import CATALOG
from shipml.training import ensemble as ensemble_module
from shipml.training.ensemble import _binary_auc, greedy_ensemble
from shipml.training.folds import prepare_folds
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


Y = pd.Series([3.0, 5.0, 8.0, 13.0])


def _shifted(name: str, shift: float) -> CandidateResult:
    """A regression candidate on one fold whose every prediction is ``shift`` off ``Y``."""
    result = CandidateResult(name, name, False, {})
    result.fold_outputs = [Y.to_numpy() + shift]
    scores = fold_metrics(Y, result.fold_outputs[0], None, ("rmse",))
    result.fold_scores = {k: [v] for k, v in scores.items()}
    return result


def test_a_mix_worse_at_one_to_one_is_found_at_four_to_one() -> None:
    # a is 1 too high, b 4 too low. Half and half is worse than a alone (1.5 off), so a search
    # that stops at the first round without gain keeps a; four parts of a to one of b is exact.
    a, b = _shifted("a", 1.0), _shifted("b", -4.0)
    ensemble = greedy_ensemble([a, b], [Y], None, "rmse", ("rmse",))
    assert ensemble is not None
    assert ensemble.members == {"a": 4, "b": 1}
    assert ensemble.fold_scores["rmse"] == [0.0]


def test_past_its_deadline_the_selection_stops_after_the_first_round() -> None:
    a, b = _shifted("a", 1.0), _shifted("b", -4.0)
    # The first round (1:1) loses to a alone; the rounds that find 4:1 never start.
    assert greedy_ensemble([a, b], [Y], None, "rmse", ("rmse",), deadline=0.0) is None
    later = greedy_ensemble([a, b], [Y], None, "rmse", ("rmse",), deadline=time.monotonic() + 60)
    assert later is not None and later.members == {"a": 4, "b": 1}


def test_no_ensemble_when_one_model_is_best_alone() -> None:
    y = pd.Series([1, 1, 0, 0])
    perfect = _candidate("perfect", [_proba([0.9, 0.9, 0.1, 0.1])], [y])
    wrong = _candidate("wrong", [_proba([0.1, 0.1, 0.9, 0.9])], [y])
    assert greedy_ensemble([perfect, wrong], [y], CLASSES, "accuracy", METRICS) is None
    assert greedy_ensemble([perfect], [y], CLASSES, "accuracy", METRICS) is None


def test_rank_auc_of_the_rounds_is_scikit_learns_roc_auc(monkeypatch) -> None:
    rng = np.random.default_rng(0)
    labels = np.array(["no", "yes"])
    targets = [pd.Series(rng.choice(labels, 300, p=[0.8, 0.2])) for _ in range(3)]
    # Rounded scores: many ties, which both must count as half.
    outputs = [_proba(np.round(rng.random(300), 1)) for _ in targets]
    auc = _binary_auc(targets, labels)
    assert auc is not None
    for i, (y, output) in enumerate(zip(targets, outputs, strict=True)):
        expected = roc_auc_score(y == "yes", output[:, 1])
        assert auc(i, output) == pytest.approx(expected, abs=1e-12)
    assert _binary_auc(targets, np.array(["a", "b", "c"])) is None  # multiclass
    assert _binary_auc([pd.Series(["no"] * 5)], labels) is None  # one class in a fold

    # The same members either way.
    metrics = ("roc_auc",)
    pool = []
    for name in "abcd":
        result = CandidateResult(name, name, False, {})
        result.fold_outputs = [_proba(rng.random(300)) * 0.5 + o * 0.5 for o in outputs]
        for y, output in zip(targets, result.fold_outputs, strict=True):
            for m, v in fold_metrics(y, output, labels, metrics).items():
                result.fold_scores.setdefault(m, []).append(v)
        pool.append(result)
    fast = greedy_ensemble(pool, targets, labels, "roc_auc", metrics)
    monkeypatch.setattr(ensemble_module, "_binary_auc", lambda targets, classes: None)
    general = greedy_ensemble(pool, targets, labels, "roc_auc", metrics)
    assert fast is not None and general is not None
    assert fast.members == general.members
    assert fast.fold_scores == general.fold_scores


def test_bagged_ensemble_round_trips_through_skops_and_applies_its_threshold() -> None:
    data = load_breast_cancer(as_frame=True)
    df = data.frame
    schema = infer_schema(df, "target")
    X, y = df.drop(columns="target"), df["target"]
    folds = prepare_folds(X, y, schema, FeaturesConfig(), 3, 0, ordered=False)
    catalog = CATALOG["classification"]
    parts = []
    for name in ("logistic_regression", "lightgbm"):
        for k, fold in enumerate(folds.folds):
            parts.append((name, k, catalog[name].build(0).fit(fold.X_train, fold.y_train)))
    preprocessors = [f.preprocessor for f in folds.folds]
    model = BaggedEnsemble(
        "classification",
        preprocessors,
        parts,
        {"logistic_regression": 2, "lightgbm": 1},
        classes=folds.classes,
        threshold=0.9,
    )
    proba = model.predict_proba(X)
    # The weighted mean of each member's mean over its fold models.
    expected = np.zeros_like(proba)
    for name, weight in (("logistic_regression", 2 / 3), ("lightgbm", 1 / 3)):
        member = [m for n, _, m in parts if n == name]
        expected += weight * np.mean(
            [m.predict_proba(p.transform(X)) for m, p in zip(member, preprocessors, strict=True)],
            axis=0,
        )
    np.testing.assert_allclose(proba, expected)
    np.testing.assert_array_equal(model.predict(X), np.where(proba[:, 1] >= 0.9, 1, 0))
    assert (model.predict(X) != proba.argmax(axis=1)).any()  # the threshold changed some labels

    blob = sio.dumps(model)
    loaded = sio.loads(blob, trusted=trusted_types_for(sio.get_untrusted_types(data=blob)))
    np.testing.assert_array_equal(loaded.predict_proba(X), proba)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    assert list(loaded.classes_) == [0, 1] and loaded.threshold == 0.9
