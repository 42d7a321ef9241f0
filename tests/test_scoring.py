"""Batch scoring with a registered model: one pass of the model for labels and probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shipml import Project
from shipml.data.coerce import check_input
from shipml.models.bagged import BaggedEnsemble
from shipml.scoring import evaluate


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many rows each pass of a BaggedEnsemble over its fold models scored."""
    passes: list[int] = []
    outputs = BaggedEnsemble._outputs

    def counting(self: BaggedEnsemble, X: pd.DataFrame) -> np.ndarray:
        passes.append(len(X))
        return outputs(self, X)

    monkeypatch.setattr(BaggedEnsemble, "_outputs", counting)
    return passes


@pytest.mark.parametrize("threshold", [None, 0.05, 0.95])
def test_score_runs_the_model_once_and_keeps_its_threshold(
    trained_binary: Path, counted: list[int], threshold: float | None
) -> None:
    model = Project.load(trained_binary).load_model("champion")
    assert isinstance(model.pipeline, BaggedEnsemble)
    model.pipeline.threshold = threshold  # this loaded copy only: the registry is untouched
    new = pd.read_csv(trained_binary.parent / "new.csv")

    scored = model.score(new, allow_extra=True)
    assert counted == [len(new)]  # labels and probabilities from one pass

    X = check_input(new, model.schema, source="new.csv", allow_extra=True)
    proba = model.pipeline.predict_proba(X)
    labels = model.pipeline.predict(X)  # the model's own rule, threshold included
    classes = model.classes or []
    order = list(model.pipeline.classes_)
    assert scored["prediction"].tolist() == [classes[order.index(v)] for v in labels]
    for i, c in enumerate(classes):
        assert np.array_equal(scored[f"proba_{c}"].to_numpy(), proba[:, i])
    if threshold is not None:  # a far-off threshold moves labels: the test sees it applied
        positive = classes[1]
        expected = proba[:, 1] >= threshold
        assert ((scored["prediction"] == positive).to_numpy() == expected).all()


def test_evaluate_runs_the_model_once(trained_binary: Path, counted: list[int]) -> None:
    model = Project.load(trained_binary).load_model("champion")
    labelled = pd.read_csv(trained_binary.parent / "labelled.csv")
    result = evaluate(model, labelled, "labelled.csv")
    assert counted == [len(labelled)]
    assert result.n_rows == len(labelled) and 0.9 < result.metrics["roc_auc"] <= 1.0
