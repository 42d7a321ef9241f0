"""Train/test split: seeded and stratified, or by time."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from shipml.config import SplitConfig
from shipml.data.coerce import as_category_strings, coerce_datetime
from shipml.data.schema import Schema
from shipml.errors import DataError, InputSchemaError


def _time_order(df: pd.DataFrame, column: str, date_format: str | None = None) -> np.ndarray:
    """Row positions sorted by the time column (stable; rows without a time come first);
    ``date_format``: the column's, where the schema has one."""
    values = df[column]
    if pd.api.types.is_numeric_dtype(values.dtype) and values.dtype != bool:
        keys = pd.to_numeric(values, errors="coerce")
    else:
        try:
            keys = coerce_datetime(values, column, "split.time_column", date_format)
        except InputSchemaError as err:
            raise DataError(
                f"split.time_column '{column}' holds values that are not dates ({err.message})",
                "point split.time_column at a date/time or numeric column",
            ) from None
    frame = pd.DataFrame({"key": keys.to_numpy(), "pos": np.arange(len(df))})
    ordered = frame.sort_values(["key", "pos"], kind="mergesort", na_position="first")
    return ordered["pos"].to_numpy()


def _stratify_labels(df: pd.DataFrame, schema: Schema) -> pd.Series | None:
    if schema.task != "classification" or schema.target not in df.columns:
        return None
    labels = as_category_strings(df[schema.target]).fillna("\0missing")
    return labels if labels.value_counts().min() >= 2 else None


def split_table(
    df: pd.DataFrame, schema: Schema, split: SplitConfig
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test), both with a fresh index. Seeded shuffle, stratified on the target for
    classification when possible; with split.time_column, the latest rows are the test set."""
    from sklearn.model_selection import train_test_split

    n = len(df)
    if n < 2:
        raise DataError(
            f"cannot split a table of {n} row{'s' if n != 1 else ''} into train and test",
            "give more data rows",
        )
    if split.time_column:
        column = split.time_column
        if column not in df.columns:
            raise DataError(
                f"split.time_column '{column}' is not a column of the data",
                "fix split.time_column in shipml.yaml, or remove it for a random split",
            )
        n_test = min(max(1, math.ceil(split.test_size * n)), n - 1)
        info = schema.columns.get(column)
        order = _time_order(df, column, info.date_format if info is not None else None)
        train = df.iloc[order[: n - n_test]]
        test = df.iloc[order[n - n_test :]]
        return train.reset_index(drop=True), test.reset_index(drop=True)
    labels = _stratify_labels(df, schema)
    try:
        train, test = train_test_split(
            df, test_size=split.test_size, random_state=split.seed, shuffle=True, stratify=labels
        )
    except ValueError:
        if labels is None:
            raise DataError(
                f"cannot split {n} rows with split.test_size {split.test_size}",
                "give more rows or change split.test_size",
            ) from None
        # stratification impossible (e.g. fewer test rows than classes): plain shuffle
        train, test = train_test_split(
            df, test_size=split.test_size, random_state=split.seed, shuffle=True
        )
    return train.reset_index(drop=True), test.reset_index(drop=True)
