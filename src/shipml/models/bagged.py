"""The model shipml registers: a weighted average of fitted members, each averaged over its parts.

Training cross-validates every candidate on the same folds, with one preprocessor fitted per fold.
A member that is *bagged* keeps its fold models: its prediction is the mean of those models, each
after its own fold's preprocessor (as AutoGluon bags). A member that is not (random forests,
which are bagged already, or any member when folds run forward in time) is one model refitted on
every training row after a preprocessor fitted on them. The ensemble's weights come from the
greedy selection on out-of-fold predictions, and for binary problems a decision threshold chosen
on those predictions turns probabilities into labels.

A *stacked* member (a second layer, as AutoGluon stacks) is a model fitted on each fold's
preprocessed columns plus the first layer's cross-fitted predictions of its training rows; at
prediction time it sees the first-layer members' predictions (which is why those members are
parts even when the mix gives them no weight) and its fold models are averaged like a bagged
member's.

It is assembled from fitted parts, so it has no ``fit``; it is saved with skops like any other
scikit-learn object.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


class BaggedEnsemble:
    """Predicts like a fitted scikit-learn classifier or regressor on the raw input columns."""

    def __init__(
        self,
        task: str,
        preprocessors: list[Any],
        parts: list[tuple[str, int, Any]],
        weights: dict[str, float],
        classes: np.ndarray | None = None,
        threshold: float | None = None,
        stack: dict[str, Any] | None = None,
    ) -> None:
        # parts: (member name, index into preprocessors, fitted estimator)
        # stack: {"name": member, "inputs": [first-layer members],
        #         "parts": [(index into preprocessors, fitted estimator), ...]}
        self.task = task
        self.preprocessors = preprocessors
        self.parts = parts
        total = float(sum(weights.values()))
        self.weights = {name: float(w) / total for name, w in weights.items()}
        if classes is not None:
            self.classes_ = np.asarray(classes)
        self.threshold = threshold
        self.stack = stack

    @property
    def members(self) -> list[str]:
        return list(self.weights)

    def _outputs(self, X: pd.DataFrame) -> np.ndarray:
        transformed: dict[int, Any] = {}
        sums: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        for name, index, estimator in self.parts:
            if index not in transformed:
                transformed[index] = self.preprocessors[index].transform(X)
            out = self._output(estimator, transformed[index])
            sums[name] = sums[name] + out if name in sums else out
            counts[name] = counts.get(name, 0) + 1
        member = {name: sums[name] / counts[name] for name in sums}
        stack = getattr(self, "stack", None)  # models saved before stacking have none
        if stack:
            layer = stack_features([member[name] for name in stack["inputs"]], self.task)
            outs = []
            for index, estimator in stack["parts"]:
                if index not in transformed:
                    transformed[index] = self.preprocessors[index].transform(X)
                Xs = np.hstack([np.asarray(transformed[index], dtype=np.float64), layer])
                outs.append(self._output(estimator, Xs))
            member[stack["name"]] = np.mean(outs, axis=0)
        return sum(self.weights[n] * member[n] for n in self.weights)  # type: ignore[return-value]

    def _output(self, estimator: Any, X: Any) -> np.ndarray:
        """One part's output: class probabilities, or predictions for regression."""
        if self.task == "classification":
            return np.asarray(estimator.predict_proba(X), dtype=float)
        return np.asarray(estimator.predict(X), dtype=float)

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        if self.task != "classification":
            raise AttributeError("a regression model has no predict_proba")
        return self._outputs(X)

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        outputs = self._outputs(X)
        if self.task != "classification":
            return outputs
        return labels_for(outputs, self.classes_, self.threshold)

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}: {w:.2f}" for n, w in self.weights.items())
        return f"BaggedEnsemble({self.task}, {len(self.parts)} models, weights {{{shown}}})"


def stack_features(outputs: list[np.ndarray], task: str) -> np.ndarray:
    """The second layer's extra columns from first-layer outputs: each classifier's
    probabilities but the first class's (they sum to one), each regressor's prediction."""
    columns = [o[:, 1:] if task == "classification" else o.reshape(-1, 1) for o in outputs]
    return np.hstack(columns).astype(np.float64)


def labels_for(proba: np.ndarray, classes: np.ndarray, threshold: float | None) -> np.ndarray:
    """Class labels from probabilities: for two classes the second class wins at or above
    ``threshold`` (when given); otherwise the most probable class."""
    if threshold is not None and len(classes) == 2:
        return np.where(proba[:, 1] >= threshold, classes[1], classes[0])
    return classes[proba.argmax(axis=1)]
