"""A registered model's fast-inference copy behind the estimator interface batch scoring uses.

``FastPipeline`` gives ``shipml.scoring.Model`` what it reads of a fitted pipeline
(``classes_``, ``threshold``, ``predict``, ``predict_proba`` on the checked input frame) from a
``FastPredictor`` (see shipml.models.fastpath): the copy verified at training against the model
on held-out rows, so `shipml predict` scores without importing scikit-learn, skops or MLflow.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from shipml.models.bagged import labels_for
from shipml.models.fastpath import FastPredictor, frame_columns


class FastPipeline:
    """The estimator face of a FastPredictor: the same labels and probabilities."""

    def __init__(self, fast: FastPredictor) -> None:
        self.fast = fast
        self.classes_ = fast.classes
        self.threshold = fast.threshold
        self._last: tuple[pd.DataFrame, np.ndarray] | None = None

    @classmethod
    def from_bytes(cls, data: bytes) -> FastPipeline:
        return cls(FastPredictor.from_bytes(data))

    def _outputs(self, X: pd.DataFrame) -> np.ndarray:
        # Scoring asks for probabilities and labels of the same frame: computed once (the
        # frame is held, so no other frame can be taken for it).
        if self._last is not None and self._last[0] is X:
            return self._last[1]
        out = np.asarray(self.fast.outputs(frame_columns(X, self.fast.input_columns)))
        self._last = (X, out)
        return out

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self._outputs(X)

    def predict(self, X: pd.DataFrame) -> Any:
        out = self._outputs(X)
        if self.fast.task != "classification" or self.classes_ is None:
            return out
        return labels_for(out, self.classes_, self.threshold)
