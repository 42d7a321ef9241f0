"""Train/test split: stratified and seeded, or by time."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris

from shipml.config import SplitConfig
from shipml.data.infer import infer_schema
from shipml.data.split import split_table
from shipml.errors import DataError


def test_stratified_split() -> None:
    df = load_breast_cancer(as_frame=True).frame
    schema = infer_schema(df, "target")
    train, test = split_table(df, schema, SplitConfig(test_size=0.25, seed=1))
    assert len(train) + len(test) == len(df)
    assert len(test) == pytest.approx(0.25 * len(df), abs=1)
    share = df["target"].mean()
    assert train["target"].mean() == pytest.approx(share, abs=0.005)
    assert test["target"].mean() == pytest.approx(share, abs=0.005)
    assert train.index.tolist() == list(range(len(train)))
    assert test.index.tolist() == list(range(len(test)))
    rows = pd.concat([train, test]).sort_values(list(df.columns)).reset_index(drop=True)
    pd.testing.assert_frame_equal(rows, df.sort_values(list(df.columns)).reset_index(drop=True))


def test_multiclass_stratified() -> None:
    df = load_iris(as_frame=True).frame
    _, test = split_table(df, infer_schema(df, "target"), SplitConfig(test_size=0.2))
    assert test["target"].value_counts().tolist() == [10, 10, 10]


def test_seeded() -> None:
    df = load_iris(as_frame=True).frame
    schema = infer_schema(df, "target")
    a_train, a_test = split_table(df, schema, SplitConfig(seed=7))
    b_train, b_test = split_table(df, schema, SplitConfig(seed=7))
    pd.testing.assert_frame_equal(a_train, b_train)
    pd.testing.assert_frame_equal(a_test, b_test)
    c_train, _ = split_table(df, schema, SplitConfig(seed=8))
    assert not a_train.equals(c_train)


def test_shuffled() -> None:
    df = load_diabetes(as_frame=True).frame
    schema = infer_schema(df, "target")
    _, test = split_table(df, schema, SplitConfig(test_size=0.2))
    assert len(test) == 89
    assert not test["target"].equals(df["target"].iloc[-89:].reset_index(drop=True))


def test_falls_back_when_stratification_is_impossible() -> None:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x": rng.normal(size=40), "y": ["a"] * 20 + ["b"] * 19 + ["c"]})
    schema = infer_schema(df, "y")
    train, test = split_table(df, schema, SplitConfig(test_size=0.25))
    assert (len(train), len(test)) == (30, 10)


def test_falls_back_when_test_set_is_smaller_than_the_classes() -> None:
    df = pd.DataFrame({"x": range(12), "y": list("abcdef") * 2})
    schema = infer_schema(df, "y", task="classification")
    train, test = split_table(df, schema, SplitConfig(test_size=0.2))
    assert (len(train), len(test)) == (9, 3)


def test_time_split() -> None:
    rng = np.random.default_rng(0)
    dates = pd.date_range("2024-01-01", periods=100, freq="D")
    df = pd.DataFrame(
        {
            "when": dates.strftime("%Y-%m-%d"),
            "x": rng.normal(size=100),
            "y": rng.choice(["a", "b"], 100),
        }
    ).sample(frac=1.0, random_state=3)
    schema = infer_schema(df, "y")
    train, test = split_table(df, schema, SplitConfig(test_size=0.2, time_column="when"))
    assert (len(train), len(test)) == (80, 20)
    assert train["when"].max() < test["when"].min()
    assert test["when"].tolist() == sorted(test["when"])
    assert train["when"].tolist() == sorted(train["when"])
    assert test.index.tolist() == list(range(20))


def test_time_split_on_numbers_and_datetimes() -> None:
    df = pd.DataFrame({"t": [5, 3, 1, 4, 2, 9, 8, 7, 6, 10], "y": [0.5, 1.5] * 5})
    schema = infer_schema(df, "y")
    _, test = split_table(df, schema, SplitConfig(test_size=0.3, time_column="t"))
    assert test["t"].tolist() == [8, 9, 10]
    df["t"] = pd.to_datetime("2024-01-01") + pd.to_timedelta(df["t"], unit="h")
    _, test = split_table(df, schema, SplitConfig(test_size=0.3, time_column="t"))
    assert test["t"].dt.hour.tolist() == [8, 9, 10]


def test_time_column_missing() -> None:
    df = load_iris(as_frame=True).frame
    with pytest.raises(DataError) as info:
        split_table(df, infer_schema(df, "target"), SplitConfig(time_column="when"))
    assert "split.time_column 'when'" in info.value.message
    assert info.value.hint


def test_time_column_not_dates() -> None:
    df = pd.DataFrame({"when": ["soon", "later", "never"] * 5, "y": [0, 1, 1] * 5})
    with pytest.raises(DataError, match="'when'"):
        split_table(df, infer_schema(df, "y"), SplitConfig(time_column="when"))


def test_too_small_to_split() -> None:
    df = pd.DataFrame({"x": [1], "y": ["a"]})
    with pytest.raises(DataError):
        split_table(df, infer_schema(df, "y"), SplitConfig())
