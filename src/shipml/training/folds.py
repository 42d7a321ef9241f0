"""Cross-validation folds, preprocessed once and shared by every candidate and trial.

The preprocessor (imputation, scaling, encoding, derived features) learns nothing from the
target, so it is fitted once per fold on that fold's training rows and every candidate trains on
the same transformed arrays: a search of many trials pays for preprocessing once per fold, not
once per trial. The fitted fold preprocessors also become part of bagged final models.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import RepeatedKFold, RepeatedStratifiedKFold, TimeSeriesSplit

from shipml.config import FeaturesConfig
from shipml.data.schema import Schema
from shipml.features import build_preprocessor

SMALL_TABLE_ROWS = 1000


def folds_for(
    schema: Schema, y: pd.Series, cv: int, seed: int, ordered: bool
) -> RepeatedKFold | RepeatedStratifiedKFold | TimeSeriesSplit:
    """Stratified folds for classification, shuffled k-fold for regression, forward in time."""
    if ordered:
        return TimeSeriesSplit(n_splits=cv)
    # On small tables one k-fold pass is a noisy judge of which model is best: repeat it.
    repeats = 3 if len(y) < SMALL_TABLE_ROWS else 1
    if schema.task == "classification":
        smallest = int(y.value_counts().min())
        k = max(2, min(cv, smallest))
        return RepeatedStratifiedKFold(n_splits=k, n_repeats=repeats, random_state=seed)
    return RepeatedKFold(n_splits=cv, n_repeats=repeats, random_state=seed)


@dataclass
class Fold:
    """One fold: its rows, its fitted preprocessor and the transformed arrays."""

    train_index: np.ndarray
    valid_index: np.ndarray
    preprocessor: Any
    X_train: Any
    y_train: pd.Series
    X_valid: Any
    y_valid: pd.Series


@dataclass
class FoldSet:
    """Every fold of one training table, plus what all candidates share."""

    folds: list[Fold]
    classes: np.ndarray | None  # sorted labels: probability columns line up across candidates
    ordered: bool
    seconds: float  # time spent preprocessing
    per_repeat: int  # folds in one pass over the rows (repeated k-fold repeats it)

    def __len__(self) -> int:
        return len(self.folds)

    @property
    def targets(self) -> list[pd.Series]:
        return [f.y_valid for f in self.folds]


def prepare_folds(
    X: pd.DataFrame,
    y: pd.Series,
    schema: Schema,
    features: FeaturesConfig,
    cv: int,
    seed: int,
    ordered: bool,
) -> FoldSet:
    started = time.monotonic()
    splitter = folds_for(schema, y, cv, seed, ordered)
    folds = []
    for train_index, valid_index in splitter.split(X, y):
        preprocessor = build_preprocessor(schema, features)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            X_train = preprocessor.fit_transform(X.iloc[train_index])
            X_valid = preprocessor.transform(X.iloc[valid_index])
        folds.append(
            Fold(
                train_index,
                valid_index,
                preprocessor,
                np.asarray(X_train, dtype=np.float64),
                y.iloc[train_index],
                np.asarray(X_valid, dtype=np.float64),
                y.iloc[valid_index],
            )
        )
    classes = np.unique(y.to_numpy()) if schema.task == "classification" else None
    per_repeat = (
        len(folds) if ordered else splitter.get_n_splits() // getattr(splitter, "n_repeats", 1)
    )
    return FoldSet(folds, classes, ordered, time.monotonic() - started, per_repeat)
