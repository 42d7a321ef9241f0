"""Target-leakage screening: how well each column alone predicts the target."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from shipml.data.coerce import (
    as_category_strings,
    blank_to_missing,
    coerce_datetime,
    coerce_numeric,
)
from shipml.data.schema import MODEL_ROLES, ColumnInfo
from shipml.errors import InputSchemaError

LEAKAGE_SAMPLE = 5_000
LEAKAGE_FOLDS = 3
_MIN_LEAKAGE_ROWS = 20


def _folds(y: np.ndarray, classification: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import KFold, StratifiedKFold

    if classification and np.bincount(y).min() >= LEAKAGE_FOLDS:
        splitter: Any = StratifiedKFold(LEAKAGE_FOLDS, shuffle=True, random_state=0)
    else:
        splitter = KFold(LEAKAGE_FOLDS, shuffle=True, random_state=0)
    return list(splitter.split(np.zeros((len(y), 1)), y))


def _numeric_feature(
    values: pd.Series, name: str, role: str, date_format: str | None = None
) -> np.ndarray | None:
    """Numbers for the tree; missing values get a value below all others, so missingness counts.
    None when the column does not convert (the schema checks report that elsewhere)."""
    try:
        if role == "datetime":
            parsed = coerce_datetime(values, name, date_format=date_format)
            x = parsed.to_numpy(dtype="datetime64[ns]").astype("int64").astype("float64")
            x[parsed.isna().to_numpy()] = np.nan
        else:
            x = coerce_numeric(values, name).to_numpy(dtype="float64", copy=True)
    except InputSchemaError:
        return None
    finite = np.isfinite(x)
    if not finite.any():
        return None
    # A tree on one column sees only the order of its values: ranks keep every split and stay
    # small (values near the float64 limit do not fit the tree's float32), and missing values
    # rank below all others.
    ranks = np.full(len(x), -1.0)
    ranks[finite] = np.unique(x[finite], return_inverse=True)[1]
    return ranks


def _ordered_codes(
    codes: np.ndarray, y: np.ndarray, train: np.ndarray, n_codes: int, classification: bool
) -> np.ndarray:
    """Ordinal codes for a categorical feature, ordered on the training fold by the target
    (modal class, then its share; or mean target); categories unseen in training get -1."""
    counts = np.bincount(codes[train], minlength=n_codes).astype("float64")
    if classification:
        n_classes = int(y.max()) + 1
        table = np.bincount(
            codes[train] * n_classes + y[train], minlength=n_codes * n_classes
        ).reshape(n_codes, n_classes)
        modal = table.argmax(axis=1)
        share = table.max(axis=1) / np.maximum(counts, 1)
        order = np.lexsort((-share, modal))
    else:
        sums = np.bincount(codes[train], weights=y[train], minlength=n_codes)
        means = sums / np.maximum(counts, 1)
        order = np.argsort(means, kind="stable")
    rank = np.empty(n_codes, dtype="float64")
    rank[order] = np.arange(n_codes, dtype="float64")
    rank[counts == 0] = -1.0
    return rank[codes]


def _score(y_true: np.ndarray, y_pred: np.ndarray, classification: bool) -> float:
    if classification:
        recalls = [float(np.mean(y_pred[y_true == c] == c)) for c in np.unique(y_true)]
        return float(np.mean(recalls))
    total = float(np.sum((y_true - y_true.mean()) ** 2))
    if total == 0.0:
        return float("nan")
    return 1.0 - float(np.sum((y_true - y_pred) ** 2)) / total


def single_feature_scores(
    df: pd.DataFrame, target: str, columns: dict[str, ColumnInfo], task: str
) -> dict[str, float]:
    """Per model column: how well a depth-4 tree on that column alone predicts the target, in
    LEAKAGE_FOLDS-fold CV on up to LEAKAGE_SAMPLE rows (balanced accuracy, or R² for regression).
    A score near 1 means the column almost is the target: likely leakage."""
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    classification = task == "classification"
    y_raw = blank_to_missing(df[target])
    data = df.loc[y_raw.notna().to_numpy()]
    if len(data) > LEAKAGE_SAMPLE:
        data = data.sample(LEAKAGE_SAMPLE, random_state=0)
    if len(data) < _MIN_LEAKAGE_ROWS:
        return {}
    if classification:
        y, classes = pd.factorize(as_category_strings(data[target]))
        if len(classes) < 2:
            return {}
    else:
        numbers = pd.to_numeric(data[target].astype(object), errors="coerce")
        if numbers.isna().any() or numbers.nunique() < 2:
            return {}
        y = numbers.to_numpy(dtype="float64")
    folds = _folds(y, classification)
    out: dict[str, float] = {}
    for name, info in columns.items():
        if info.role not in MODEL_ROLES or name not in data.columns:
            continue
        values = blank_to_missing(data[name])
        codes, n_codes = np.zeros(0, dtype="int64"), 0
        if info.role in ("categorical", "boolean"):
            codes, uniques = pd.factorize(as_category_strings(values), use_na_sentinel=False)
            n_codes = len(uniques)
            x = None
        else:
            x = _numeric_feature(values, name, info.role, info.date_format)
            if x is None:
                continue
        scores = []
        for train, test in folds:
            feature = (
                x if x is not None else _ordered_codes(codes, y, train, n_codes, classification)
            )
            tree: Any = (
                DecisionTreeClassifier(max_depth=4, random_state=0)
                if classification
                else DecisionTreeRegressor(max_depth=4, random_state=0)
            )
            tree.fit(feature[train].reshape(-1, 1), y[train])
            scores.append(
                _score(y[test], tree.predict(feature[test].reshape(-1, 1)), classification)
            )
        score = float(np.nanmean(scores)) if not np.all(np.isnan(scores)) else float("nan")
        if math.isfinite(score):
            out[name] = score
    return out
