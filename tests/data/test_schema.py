"""Schema inference, the task guess, and input checks at predict time."""

from __future__ import annotations

import uuid
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris

from shipml.config import FeaturesConfig
from shipml.data.coerce import check_input, coerce_frame, coerce_target
from shipml.data.infer import infer_schema, infer_task
from shipml.data.schema import Schema
from shipml.errors import DataError, InputSchemaError

N = 120


@pytest.fixture
def mixed() -> pd.DataFrame:
    """One column of every kind shipml tells apart."""
    rng = np.random.default_rng(0)
    words = ["great", "service", "slow", "delivery", "would", "buy", "again", "never", "price"]
    return pd.DataFrame(
        {
            "customer_id": np.arange(5000, 5000 + N),
            "session": [str(uuid.UUID(int=int(rng.integers(1 << 62)))) for _ in range(N)],
            "age": rng.integers(18, 80, N),
            "income": rng.normal(50_000, 8_000, N).round(2),
            "plan": rng.choice(["basic", "pro", "team"], N, p=[0.6, 0.3, 0.1]),
            "has_card": rng.choice(["yes", "no"], N),
            "is_new": rng.integers(0, 2, N),
            "verified": rng.choice([True, False], N),
            "signup": pd.date_range("2021-01-01", periods=N, freq="37h").strftime("%Y-%m-%d %H:%M"),
            "last_seen": pd.date_range("2023-01-01", periods=N, freq="D"),
            "review": [" ".join(rng.choice(words, 8)) + f" (order {i})" for i in range(N)],
            "always_one": 1,
            "nothing": np.nan,
            "churned": rng.choice(["no", "yes"], N),
        }
    )


# --- infer_task ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "task"),
    [
        (["a", "b", "a"], "classification"),
        ([True, False, True], "classification"),
        (pd.Categorical(["x", "y", "x"]), "classification"),
        ([0, 1, 1, 0], "classification"),
        ([0.0, 1.0, np.nan, 1.0], "classification"),
        ([1.5, 2.25, 3.0, 4.75], "regression"),
        (list(range(100)), "regression"),
        ([1, 2, 3] * 40, "classification"),
        ([5.5, 7.25], "classification"),  # two values: a binary label
        ([np.nan, np.nan], "classification"),
        ([Decimal("1.5"), Decimal("2.75"), Decimal("3.125")], "regression"),
    ],
)
def test_infer_task(values: object, task: str) -> None:
    assert infer_task(pd.Series(values)) == task


def test_infer_task_integer_with_many_values_is_regression() -> None:
    counts = pd.Series(np.random.default_rng(0).integers(0, 40, 200))
    assert infer_task(counts) == "regression"


def test_infer_task_on_bundled_data() -> None:
    assert infer_task(load_iris(as_frame=True).frame["target"]) == "classification"
    assert infer_task(load_breast_cancer(as_frame=True).frame["target"]) == "classification"
    assert infer_task(load_diabetes(as_frame=True).frame["target"]) == "regression"


# --- infer_schema --------------------------------------------------------------------------------


def test_roles_on_mixed_frame(mixed: pd.DataFrame) -> None:
    schema = infer_schema(mixed, "churned")
    roles = {name: info.role for name, info in schema.columns.items()}
    assert roles == {
        "customer_id": "identifier",
        "session": "identifier",
        "age": "numeric",
        "income": "numeric",
        "plan": "categorical",
        "has_card": "boolean",
        "is_new": "numeric",  # numbers that happen to be 0 and 1 are numbers
        "verified": "boolean",
        "signup": "datetime",
        "last_seen": "datetime",
        "review": "text",
        "always_one": "excluded",
        "nothing": "excluded",
    }
    assert "churned" not in schema.columns
    assert schema.task == "classification"
    assert schema.classes == ["no", "yes"]
    assert schema.input_columns == [
        "age", "income", "plan", "has_card", "is_new", "verified", "signup", "last_seen"
    ]  # fmt: skip
    assert schema.known_columns == set(mixed.columns)


def test_column_details(mixed: pd.DataFrame) -> None:
    mixed.loc[:9, "income"] = np.nan
    schema = infer_schema(mixed, "churned")
    plan = schema.columns["plan"]
    assert plan.categories is not None
    assert plan.categories[0] == "basic"  # most frequent first
    assert set(plan.categories) == {"basic", "pro", "team"}
    assert plan.n_unique == 3
    assert plan.dtype == "object"
    assert schema.columns["income"].missing_share == pytest.approx(10 / N)
    assert schema.columns["income"].categories is None
    assert set(schema.columns["has_card"].categories or []) == {"yes", "no"}
    assert schema.columns["nothing"].missing_share == 1.0
    assert "missing" in schema.columns["nothing"].note
    assert "constant" in schema.columns["always_one"].note
    assert "identifier" in schema.columns["session"].note
    assert "free text" in schema.columns["review"].note
    assert all(info.note for info in schema.columns.values())


def test_identifier_by_uniqueness_and_order() -> None:
    rng = np.random.default_rng(1)
    df = pd.DataFrame(
        {
            "row": np.arange(50),  # unique, in order: a row number
            "code": [f"C{i:05d}" for i in rng.permutation(50)],  # unique short strings
            "score": rng.normal(size=50),
            "y": rng.choice(["a", "b"], 50),
        }
    )
    roles = {n: c.role for n, c in infer_schema(df, "y").columns.items()}
    assert roles == {"row": "identifier", "code": "identifier", "score": "numeric"}


def test_numbers_and_number_strings_are_not_dates() -> None:
    df = pd.DataFrame(
        {
            "year": [2001, 2002, 2003, 2001] * 10,
            "zip": ["75001", "10115", "00100", "75001"] * 10,
            "size": ["3-4", "5-6", "3-4", "7-8"] * 10,
            "y": [0, 1] * 20,
        }
    )
    roles = {n: c.role for n, c in infer_schema(df, "y").columns.items()}
    assert roles == {"year": "numeric", "zip": "categorical", "size": "categorical"}


def test_boolean_spellings() -> None:
    df = pd.DataFrame(
        {
            "a": ["Yes", "no", None, "YES"],
            "b": ["Y", "N", "N", "Y"],
            "c": ["TRUE", "false", "True", "false"],
            "d": [1.0, 0.0, np.nan, 1.0],
            "e": ["red", "blue", "red", "blue"],
            "f": [1, 2, 1, 2],
            "y": [1, 0, 1, 0],
        }
    )
    roles = {n: c.role for n, c in infer_schema(df, "y").columns.items()}
    assert roles == {
        "a": "boolean",
        "b": "boolean",
        "c": "boolean",
        "d": "numeric",  # 1.0/0.0 are numbers: a later 3 is a number, not a bad yes/no
        "e": "categorical",
        "f": "numeric",
    }


def test_decimal_objects_are_numeric() -> None:
    df = pd.DataFrame(
        {"price": [Decimal("1.50"), Decimal("2.25"), None, Decimal("9.99")], "y": list("abab")}
    )
    schema = infer_schema(df, "y")
    assert schema.columns["price"].role == "numeric"
    assert coerce_frame(df, schema)["price"].dtype == "float64"


def test_target_not_a_column(mixed: pd.DataFrame) -> None:
    with pytest.raises(DataError) as info:
        infer_schema(mixed, "churn")
    assert "'churn'" in info.value.message
    assert "customer_id" in info.value.message  # lists some columns
    assert "--target" in (info.value.hint or "")


def test_classes_are_plain_python() -> None:
    df = load_breast_cancer(as_frame=True).frame
    schema = infer_schema(df, "target")
    assert schema.classes == [0, 1]
    assert all(type(c) is int for c in schema.classes)
    assert all(info.role == "numeric" for info in schema.columns.values())

    floats = pd.DataFrame({"x": range(6), "y": [1.0, 0.0, np.nan, 1.0, 0.0, 1.0]})
    schema = infer_schema(floats, "y")
    assert schema.classes == [0, 1]
    assert all(type(c) is int for c in schema.classes)

    bools = pd.DataFrame({"x": range(4), "y": [True, False, True, True]})
    classes = infer_schema(bools, "y").classes
    assert classes == [False, True]
    assert all(type(c) is bool for c in classes or [])


def test_regression_schema() -> None:
    df = load_diabetes(as_frame=True).frame
    schema = infer_schema(df, "target")
    assert schema.task == "regression"
    assert schema.classes is None
    assert schema.columns["sex"].role == "numeric"  # two values, but not a yes/no spelling


def test_task_given_wins() -> None:
    df = pd.DataFrame({"x": range(100), "y": [1, 2, 3, 4] * 25})
    assert infer_schema(df, "y").task == "classification"
    schema = infer_schema(df, "y", task="regression")
    assert schema.task == "regression"
    assert schema.classes is None


def test_features_config_pins_roles(mixed: pd.DataFrame) -> None:
    features = FeaturesConfig(
        exclude=["income"],
        categorical=["age", "review"],
        numeric=["is_new"],
        text=["plan"],
        derived={"age_sq": "age * age"},
    )
    schema = infer_schema(mixed, "churned", features=features)
    assert schema.columns["income"].role == "excluded"
    assert schema.columns["income"].note == "listed in features.exclude"
    assert schema.columns["age"].role == "categorical"
    assert schema.columns["age"].categories is not None
    assert schema.columns["review"].role == "categorical"
    assert schema.columns["is_new"].role == "numeric"
    assert schema.columns["plan"].role == "text"
    assert schema.columns["age"].note == "set in features.categorical"
    assert schema.derived == {"age_sq": "age * age"}


@pytest.mark.parametrize(
    "key", ["numeric", "categorical", "boolean", "datetime", "text", "exclude"]
)
def test_features_config_unknown_column(mixed: pd.DataFrame, key: str) -> None:
    features = FeaturesConfig(**{key: ["foo"]})
    with pytest.raises(DataError) as info:
        infer_schema(mixed, "churned", features=features)
    assert info.value.message == f"features.{key} lists 'foo', which is not a column of the data"
    assert info.value.hint


def test_features_config_derived_column_may_be_absent(mixed: pd.DataFrame) -> None:
    features = FeaturesConfig(numeric=["age_sq"], derived={"age_sq": "age * age"})
    assert "age_sq" not in infer_schema(mixed, "churned", features=features).columns


def test_features_config_conflicts(mixed: pd.DataFrame) -> None:
    with pytest.raises(DataError, match=r"both features\.numeric and features\.categorical"):
        infer_schema(
            mixed, "churned", features=FeaturesConfig(numeric=["age"], categorical=["age"])
        )
    with pytest.raises(DataError, match="target column 'churned'"):
        infer_schema(mixed, "churned", features=FeaturesConfig(numeric=["churned"]))


def test_pinned_numeric_that_is_not_numeric(mixed: pd.DataFrame) -> None:
    with pytest.raises(DataError) as info:
        infer_schema(mixed, "churned", features=FeaturesConfig(numeric=["plan"]))
    message = info.value.message
    assert "features.numeric" in message
    assert "'plan'" in message
    assert "row 1" in message


def test_schema_round_trip(mixed: pd.DataFrame) -> None:
    schema = infer_schema(mixed, "churned")
    again = Schema.from_dict(schema.to_dict())
    assert again == schema
    pd.testing.assert_frame_equal(check_input(mixed, again), check_input(mixed, schema))


# --- check_input / coerce_frame ------------------------------------------------------------------


@pytest.fixture
def schema(mixed: pd.DataFrame) -> Schema:
    return infer_schema(mixed, "churned")


def test_check_input_types_and_order(mixed: pd.DataFrame, schema: Schema) -> None:
    shuffled = mixed[list(reversed(mixed.columns))]
    out = check_input(shuffled, schema, source="new.csv")
    assert list(out.columns) == schema.input_columns
    assert out["age"].dtype == "float64"
    assert out["has_card"].dtype == "float64"
    assert set(out["has_card"].unique()) == {0.0, 1.0}
    assert out["verified"].dtype == "float64"
    assert out["plan"].dtype == object
    assert out["signup"].dtype == "datetime64[ns]"
    assert out["last_seen"].dtype == "datetime64[ns]"
    assert len(out) == len(mixed)


def test_training_and_predict_see_the_same_frame(mixed: pd.DataFrame, schema: Schema) -> None:
    train_side = coerce_frame(mixed, schema)
    as_text = mixed.astype(str).replace({"nan": ""})  # e.g. a CSV of strings, or JSON input
    predict_side = check_input(as_text, schema)
    pd.testing.assert_frame_equal(train_side, predict_side)


def test_check_input_missing_column(mixed: pd.DataFrame, schema: Schema) -> None:
    with pytest.raises(InputSchemaError) as info:
        check_input(mixed.drop(columns=["age"]), schema, source="new.csv")
    assert info.value.message == "new.csv: missing column 'age' that the model needs"
    assert info.value.hint

    with pytest.raises(InputSchemaError, match="missing columns 'age', 'plan'"):
        check_input(mixed.drop(columns=["age", "plan"]), schema, source="new.csv")


def test_check_input_unknown_column(mixed: pd.DataFrame, schema: Schema) -> None:
    extra = mixed.assign(favourite_colour="red")
    with pytest.raises(InputSchemaError) as info:
        check_input(extra, schema, source="new.csv")
    assert "new.csv" in info.value.message
    assert "'favourite_colour'" in info.value.message
    assert "--allow-extra" in (info.value.hint or "")
    out = check_input(extra, schema, source="new.csv", allow_extra=True)
    assert list(out.columns) == schema.input_columns


def test_check_input_training_columns_that_are_not_features_are_fine(schema: Schema) -> None:
    row = {
        "age": 40, "income": 1.0, "plan": "pro", "has_card": "yes", "is_new": 0,
        "verified": True, "signup": "2024-01-02", "last_seen": "2024-02-03",
    }  # fmt: skip
    full = pd.DataFrame([row | {"customer_id": 1, "review": "x", "nothing": None, "churned": "no"}])
    assert check_input(full, schema).shape == (1, len(schema.input_columns))
    assert check_input(pd.DataFrame([row]), schema).shape == (1, len(schema.input_columns))


def test_check_input_wrong_numeric(mixed: pd.DataFrame, schema: Schema) -> None:
    bad = mixed.astype({"age": object})
    bad.loc[2, "age"] = "forty"
    bad.loc[5, "age"] = "fifty"
    with pytest.raises(InputSchemaError) as info:
        check_input(bad, schema, source="new.csv")
    message = info.value.message
    assert message.startswith("new.csv: column 'age' row 3: 'forty' is not a number")
    assert "1 more row" in message
    assert info.value.hint


def test_check_input_wrong_boolean(mixed: pd.DataFrame, schema: Schema) -> None:
    bad = mixed.copy()
    bad.loc[0, "has_card"] = "maybe"
    with pytest.raises(
        InputSchemaError, match=r"column 'has_card' row 1: 'maybe' is not true/false"
    ):
        check_input(bad, schema, source="new.csv")


def test_check_input_wrong_datetime(mixed: pd.DataFrame, schema: Schema) -> None:
    bad = mixed.copy()
    bad.loc[7, "signup"] = "not a date"
    with pytest.raises(InputSchemaError, match=r"column 'signup' row 8: 'not a date'"):
        check_input(bad, schema, source="new.csv")


def test_check_input_boolean_spellings(schema: Schema, mixed: pd.DataFrame) -> None:
    values = ["true", "False", "YES", "n", "1", "0", 1, 0, True, None, "", " y "]
    rows = mixed.iloc[[0] * len(values)].reset_index(drop=True)
    rows["has_card"] = pd.Series(values, dtype=object)
    out = check_input(rows, schema)["has_card"]
    expected = [1, 0, 1, 0, 1, 0, 1, 0, 1, np.nan, np.nan, 1]
    np.testing.assert_array_equal(out.to_numpy(), np.array(expected, dtype=float))


def test_check_input_unseen_category_and_missing_values(
    mixed: pd.DataFrame, schema: Schema
) -> None:
    rows = mixed.iloc[:3].copy()
    rows["plan"] = ["enterprise", None, "pro"]
    rows["age"] = [np.nan, 30, 31]
    out = check_input(rows, schema)
    assert out["plan"].iloc[0] == "enterprise"
    assert pd.isna(out["plan"].iloc[1])
    assert np.isnan(out["age"].iloc[0])


def test_check_input_numbers_as_categories() -> None:
    df = pd.DataFrame({"store": [3, 4, 3, 5] * 5, "y": [1.5, 2.5, 3.5, 4.25] * 5})
    schema = infer_schema(df, "y", features=FeaturesConfig(categorical=["store"]))
    new = pd.DataFrame({"store": ["3", 3, 3.0, np.int64(3), " 4", None]})
    out = check_input(new, schema)["store"]
    assert out.iloc[:4].tolist() == ["3", "3", "3", "3"]
    assert out.iloc[4] == " 4"  # surrounding spaces are kept
    assert pd.isna(out.iloc[5])
    assert coerce_frame(df, schema)["store"].iloc[0] == "3"
    # an integer column that had missing values (float in pandas) gives the same strings
    with_nan = pd.DataFrame({"store": [3.0, np.nan]})
    assert coerce_frame(with_nan, schema)["store"].iloc[0] == "3"


def test_check_input_numeric_strings_become_numbers(mixed: pd.DataFrame, schema: Schema) -> None:
    rows = mixed.iloc[:2].astype({"age": object})
    rows["age"] = ["41", " 42.5 "]
    assert check_input(rows, schema)["age"].tolist() == [41.0, 42.5]


def test_check_input_timezones_become_utc(mixed: pd.DataFrame, schema: Schema) -> None:
    rows = mixed.iloc[:3].copy()
    rows["signup"] = ["2024-01-01T12:00:00+02:00", "2024-01-01 10:00", "2024-01-01T10:00:00Z"]
    out = check_input(rows, schema)["signup"]
    assert (out == pd.Timestamp("2024-01-01 10:00")).all()
    # One format per column: the ISO column of training reads no other layout.
    rows["signup"] = ["Jan 1, 2024 10:00"] * 3
    with pytest.raises(InputSchemaError, match="not a date/time in the format ISO 8601"):
        check_input(rows, schema)


def test_check_input_empty(mixed: pd.DataFrame, schema: Schema) -> None:
    with pytest.raises(InputSchemaError) as info:
        check_input(mixed.iloc[:0], schema, source="new.csv")
    assert "new.csv" in info.value.message
    assert "no rows" in info.value.message


def test_check_input_does_not_modify_its_input(mixed: pd.DataFrame, schema: Schema) -> None:
    before = mixed.copy()
    check_input(mixed, schema)
    pd.testing.assert_frame_equal(mixed, before)


def test_coerce_target() -> None:
    y = coerce_target(pd.Series([1.0, 0.0, 1.0]), "classification")
    assert y.dtype == "int64"
    assert coerce_target(pd.Series(["1", 2, 2.0]), "classification").tolist() == ["1", "2", "2"]
    assert coerce_target(pd.Series(["a", "b"]), "classification").tolist() == ["a", "b"]
    assert coerce_target(pd.Series([1, 2]), "regression").dtype == "float64"


def test_sorted_unique_years_are_not_identifiers() -> None:
    df = pd.DataFrame({"year": range(2000, 2030), "y": np.linspace(0.5, 9.5, 30)})
    assert infer_schema(df, "y").columns["year"].role == "numeric"


def test_dates_out_of_range() -> None:
    schema = infer_schema(
        pd.DataFrame({"d": pd.date_range("2020-01-01", periods=4), "y": [0, 1, 0, 1]}), "y"
    )
    far = pd.DataFrame({"d": np.array(["9999-01-01", "2020-01-01"], dtype="datetime64[s]")})
    with pytest.raises(InputSchemaError, match="'d'"):
        check_input(far, schema)
    text = pd.DataFrame({"d": ["9999-01-01"]})
    with pytest.raises(InputSchemaError, match="row 1"):
        check_input(text, schema)
