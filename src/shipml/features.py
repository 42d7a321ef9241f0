"""Feature preprocessing: derived features, datetime parts, and the scikit-learn preprocessor.

Everything here is a plain scikit-learn estimator that keeps only strings, dicts, lists and numpy
arrays on itself, so a fitted model pipeline serializes with skops.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from pandas.api import types as ptypes
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.utils.validation import check_is_fitted

from shipml.config import FeaturesConfig
from shipml.data.schema import Schema
from shipml.errors import ConfigError, DataError
from shipml.expressions import check_columns, evaluate_numeric, referenced_columns

# The model file's trusted types, where the pipelines built here have always looked for them.
from shipml.models.trusted import trusted_types_for as trusted_types_for

DATETIME_PARTS: tuple[str, ...] = ("year", "month", "day", "dayofweek", "hour")


def _frame(X: Any, who: str) -> pd.DataFrame:
    if not isinstance(X, pd.DataFrame):
        raise DataError(
            f"{who} needs a pandas DataFrame, got {type(X).__name__}",
            "pass the table as a DataFrame with named columns",
        )
    return X


def _names_out(estimator: Any, input_features: Any, extra: list[str]) -> np.ndarray:
    check_is_fitted(estimator, "feature_names_in_")
    names = [str(c) for c in estimator.feature_names_in_]
    if input_features is not None and [str(c) for c in input_features] != names:
        raise ValueError("input_features is not equal to feature_names_in_")
    return np.asarray(names + extra, dtype=object)


class DerivedFeatures(TransformerMixin, BaseEstimator):
    """Adds one float64 column per expression (``{name: expression}``, see shipml.expressions).

    Conditions become 0.0/1.0; missing results and ±inf become NaN. Expressions are evaluated in
    order, so a later one may use an earlier one's name.
    """

    def __init__(self, expressions: dict[str, str] | None = None) -> None:
        self.expressions = expressions

    def fit(self, X: pd.DataFrame, y: Any = None) -> DerivedFeatures:
        """Check every expression and that the columns it reads exist in ``X``."""
        X = _frame(X, "DerivedFeatures")
        available = {str(c) for c in X.columns}
        for name, expr in (self.expressions or {}).items():
            if name in available:
                raise ConfigError(
                    f"features.derived.{name}: the name is already taken by a column",
                    "give the derived feature a name no column of the table has",
                )
            check_columns(name, expr, available)
            available.add(name)
        self.feature_names_in_ = np.asarray([str(c) for c in X.columns], dtype=object)
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        """A copy of ``X`` with the derived columns added."""
        check_is_fitted(self, "feature_names_in_")
        X = _frame(X, "DerivedFeatures")
        out = X.copy(deep=False)
        for name, expr in (self.expressions or {}).items():
            absent = sorted(referenced_columns(expr, name) - {str(c) for c in out.columns})
            if absent:
                raise DataError(
                    f"column '{absent[0]}' is missing; derived feature '{name}' needs it",
                    "pass every input column the model was trained with",
                )
            out[name] = evaluate_numeric(expr, out, name)
        return out

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return _names_out(self, input_features, list(self.expressions or {}))


def parse_datetimes(values: pd.Series) -> pd.Series:
    """``values`` as datetime64: datetimes kept, strings parsed, unparseable values NaT."""
    if ptypes.is_datetime64_any_dtype(values.dtype):
        return values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parsed = pd.to_datetime(values, errors="coerce")
        fits = ptypes.is_datetime64_any_dtype(parsed.dtype)
        if not fits or parsed.isna().sum() > values.isna().sum():
            parsed = pd.to_datetime(values, errors="coerce", format="mixed")
        if not ptypes.is_datetime64_any_dtype(parsed.dtype):  # mixed time zones
            parsed = pd.to_datetime(values, errors="coerce", format="mixed", utc=True)
    return parsed


class DatetimeParts(TransformerMixin, BaseEstimator):
    """Replaces each datetime column with ``<col>_year, _month, _day, _dayofweek, _hour``.

    Values may be datetime64 or strings that parse as dates; missing or unparseable ones give NaN.
    """

    def fit(self, X: pd.DataFrame, y: Any = None) -> DatetimeParts:
        """Record the columns; a column whose values none parse as dates is a DataError."""
        X = _frame(X, "DatetimeParts")
        for column in X.columns:
            values = X[column]
            if values.notna().any() and parse_datetimes(values).isna().all():
                example = values.dropna().iloc[0]
                raise DataError(
                    f"datetime column '{column}' has no values that read as dates "
                    f"(e.g. {example!r})",
                    "write dates like 2024-01-31 or 2024-01-31 13:45, or give the column "
                    "another role in features",
                )
        self.feature_names_in_ = np.asarray([str(c) for c in X.columns], dtype=object)
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        """One float64 column per datetime part, NaN where the date is missing."""
        check_is_fitted(self, "feature_names_in_")
        X = _frame(X, "DatetimeParts")
        parts: dict[str, pd.Series] = {}
        for column in self.feature_names_in_:
            if column not in X.columns:
                raise DataError(
                    f"datetime column '{column}' is missing",
                    "pass every input column the model was trained with",
                )
            dates = parse_datetimes(X[column])
            for part in DATETIME_PARTS:
                values = getattr(dates.dt, part)
                parts[f"{column}_{part}"] = values.astype("float64")
        return pd.DataFrame(parts, index=X.index)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        names = _names_out(self, input_features, [])
        return np.asarray([f"{c}_{p}" for c in names for p in DATETIME_PARTS], dtype=object)


def _check_derived(schema: Schema) -> None:
    """Derived expressions may read model inputs and earlier derived features, nothing else."""
    available = set(schema.input_columns)
    for name, expr in schema.derived.items():
        if name in schema.columns or name == schema.target:
            raise ConfigError(
                f"features.derived.{name}: the name is already taken by a column",
                "give the derived feature a name no column of the table has",
            )
        for column in sorted(referenced_columns(expr, name)):
            if column in available:
                continue
            if column == schema.target:
                raise ConfigError(
                    f"features.derived.{name}: uses the target '{column}'",
                    "a feature cannot be computed from the target; it is unknown at predict time",
                )
            if column in schema.columns:
                role = schema.columns[column].role
                raise ConfigError(
                    f"features.derived.{name}: uses column '{column}', whose role is '{role}', "
                    "so it is not a model input",
                    f"give '{column}' a model role (numeric, categorical, boolean, datetime) "
                    "in features, or leave it out of the expression",
                )
            check_columns(name, expr, available)  # raises, naming the unknown column
        available.add(name)


def build_preprocessor(schema: Schema, features: FeaturesConfig) -> Pipeline:
    """Derived features, then per-role imputation, scaling and one-hot encoding.

    Input: a DataFrame of ``schema.input_columns``, coerced (numbers/booleans float64, categories
    object strings with NaN, datetimes datetime64).
    """
    _check_derived(schema)
    numeric = [c.name for c in schema.columns.values() if c.role in ("numeric", "boolean")] + list(
        schema.derived
    )
    categorical = schema.columns_with("categorical")
    datetimes = schema.columns_with("datetime")
    transformers: list[tuple[str, Any, list[str]]] = []
    if numeric:
        numeric_steps = Pipeline(
            [
                ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                ("scale", StandardScaler()),
            ]
        )
        transformers.append(("numeric", numeric_steps, numeric))
    if categorical:
        categorical_steps = Pipeline(
            [
                (
                    "impute",
                    SimpleImputer(
                        strategy="constant", fill_value="Unknown", keep_empty_features=True
                    ),
                ),
                (
                    "onehot",
                    OneHotEncoder(
                        handle_unknown="infrequent_if_exist",
                        min_frequency=features.min_category_frequency,
                        max_categories=features.max_categories,
                        sparse_output=False,
                        dtype=np.float64,
                    ),
                ),
            ]
        )
        transformers.append(("categorical", categorical_steps, categorical))
    if datetimes:
        datetime_steps = Pipeline(
            [
                ("parts", DatetimeParts()),
                ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                ("scale", StandardScaler()),  # year ~2000: linear models need it scaled
            ]
        )
        transformers.append(("datetime", datetime_steps, datetimes))
    if not transformers:
        raise ConfigError(
            "no column can be used as a model input",
            "give at least one column a numeric, categorical, boolean or datetime role in features",
        )
    columns = ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=True)
    return Pipeline([("derive", DerivedFeatures(dict(schema.derived))), ("columns", columns)])


def build_model_pipeline(schema: Schema, features: FeaturesConfig, estimator: Any) -> Pipeline:
    """The preprocessor followed by ``estimator``: what gets trained, registered and served."""
    return Pipeline([("preprocess", build_preprocessor(schema, features)), ("model", estimator)])
