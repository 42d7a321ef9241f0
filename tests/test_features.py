"""Derived features, datetime parts, the preprocessor, and skops round trips of model pipelines."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from lightgbm import LGBMClassifier
from sklearn.base import clone
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from shipml.config import FeaturesConfig
from shipml.data.schema import ColumnInfo, Schema
from shipml.errors import ConfigError, DataError, RegistryError
from shipml.features import (
    DatetimeParts,
    DerivedFeatures,
    build_model_pipeline,
    build_preprocessor,
    trusted_types_for,
)

ROLES = {
    "income": "numeric",
    "size": "numeric",
    "active": "boolean",
    "city": "categorical",
    "plan": "categorical",
    "signup": "datetime",
    "customer_id": "identifier",
    "notes": "text",
}


def make_schema(derived: dict[str, str] | None = None, **roles: str) -> Schema:
    columns = {
        name: ColumnInfo(name=name, role=role, dtype="x")  # type: ignore[arg-type]
        for name, role in (roles or ROLES).items()
    }
    return Schema(
        target="churn",
        task="classification",
        columns=columns,
        classes=["no", "yes"],
        derived=dict(derived or {}),
    )


def make_frame(n: int = 120, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Coerced model input (as the data layer hands it over) and a string target."""
    rng = np.random.default_rng(seed)
    income = rng.normal(50, 15, n)
    size = rng.integers(0, 6, n).astype(float)
    city = rng.choice(["north", "south", "east", "west"], n, p=[0.35, 0.3, 0.2, 0.15])
    city[[1, 2]] = "isle"  # rare: below min_category_frequency
    df = pd.DataFrame(
        {
            "income": income,
            "size": size,
            "active": rng.integers(0, 2, n).astype(float),
            "city": pd.Series(city, dtype=object),
            "plan": pd.Series(rng.choice(["basic", "pro"], n), dtype=object),
            "signup": pd.Timestamp("2020-01-01")
            + pd.to_timedelta(rng.integers(0, 2000, n), unit="h"),
        }
    )
    df.loc[::7, "income"] = np.nan
    df.loc[::9, "active"] = np.nan
    df.loc[::5, "city"] = np.nan
    df.loc[::11, "signup"] = pd.NaT
    score = np.nan_to_num(income) / 50 + (city == "north") + rng.normal(0, 0.5, n)
    y = np.where(score > 1.4, "yes", "no")
    return df, y


DERIVED = {
    "per_person": "income / size",
    "weekend_north": "city in ['north'] and active",
    "rich": "per_person > 20",
}


# -- DerivedFeatures -------------------------------------------------------------------------------


def test_derived_features_add_float_columns() -> None:
    df = pd.DataFrame({"income": [100.0, 50.0, np.nan], "size": [2.0, 0.0, 1.0]})
    step = DerivedFeatures({"per": "income / size", "big": "income > 60"}).fit(df)
    out = step.transform(df)
    assert list(out.columns) == ["income", "size", "per", "big"]
    assert out["per"].dtype == "float64" and out["big"].dtype == "float64"
    assert out["per"].iloc[0] == 50.0
    assert np.isnan(out["per"].iloc[1])  # 50 / 0 = inf becomes NaN
    assert np.isnan(out["per"].iloc[2])
    assert out["big"].tolist()[:2] == [1.0, 0.0]
    assert np.isnan(out["big"].iloc[2])
    assert list(df.columns) == ["income", "size"]  # the input is not changed
    assert list(step.get_feature_names_out()) == ["income", "size", "per", "big"]


def test_derived_features_may_use_earlier_ones() -> None:
    df = pd.DataFrame({"a": [1.0, 2.0]})
    out = DerivedFeatures({"b": "a * 2", "c": "b + 1"}).fit_transform(df)
    assert out["c"].tolist() == [3.0, 5.0]


def test_derived_features_without_expressions_is_identity() -> None:
    df = pd.DataFrame({"a": [1.0, 2.0]})
    out = DerivedFeatures().fit_transform(df)
    pd.testing.assert_frame_equal(out, df)


def test_derived_unknown_column_is_a_config_error() -> None:
    df = pd.DataFrame({"income": [1.0], "size": [2.0]})
    with pytest.raises(ConfigError, match=r"features\.derived\.per: unknown column 'sise'") as info:
        DerivedFeatures({"per": "income / sise"}).fit(df)
    assert "did you mean 'size'" in (info.value.hint or "")


def test_derived_name_clash_and_bad_expression() -> None:
    df = pd.DataFrame({"a": [1.0]})
    with pytest.raises(ConfigError, match=r"features\.derived\.a: the name is already taken"):
        DerivedFeatures({"a": "a + 1"}).fit(df)
    with pytest.raises(ConfigError, match=r"features\.derived\.x: attribute access"):
        DerivedFeatures({"x": "a.real"}).fit(df)


def test_derived_transform_missing_column_is_a_data_error() -> None:
    step = DerivedFeatures({"b": "a * 2"}).fit(pd.DataFrame({"a": [1.0]}))
    with pytest.raises(DataError, match="column 'a' is missing; derived feature 'b' needs it"):
        step.transform(pd.DataFrame({"z": [1.0]}))


def test_derived_needs_a_dataframe() -> None:
    with pytest.raises(DataError, match="needs a pandas DataFrame"):
        DerivedFeatures({"b": "a"}).fit(np.zeros((2, 2)))


def test_derived_keeps_only_plain_values() -> None:
    step = DerivedFeatures({"b": "a * 2"}).fit(pd.DataFrame({"a": [1.0]}))
    for value in vars(step).values():
        assert isinstance(value, dict | str | int | np.ndarray | type(None)), type(value)


@pytest.mark.parametrize(
    "estimator",
    [DerivedFeatures({"b": "a * 2"}), DerivedFeatures(), DatetimeParts()],
    ids=["derived", "derived-empty", "datetime"],
)
def test_clone_and_get_params_round_trip(estimator: Any) -> None:
    params = estimator.get_params()
    copy = clone(estimator)
    assert copy.get_params() == params
    assert type(estimator)(**params).get_params() == params
    copy.set_params(**params)
    assert not hasattr(copy, "feature_names_in_")


def test_clone_of_a_fitted_model_pipeline_is_unfitted() -> None:
    df, y = make_frame()
    pipe = build_model_pipeline(
        make_schema(DERIVED), FeaturesConfig(), LogisticRegression(max_iter=1000)
    )
    pipe.fit(df, y)
    fresh = clone(pipe)
    assert fresh.get_params(deep=False).keys() == pipe.get_params(deep=False).keys()
    assert fresh.named_steps["preprocess"].named_steps["derive"].expressions == DERIVED
    assert not hasattr(fresh.named_steps["preprocess"].named_steps["derive"], "feature_names_in_")


# -- DatetimeParts ---------------------------------------------------------------------------------


def test_datetime_parts_values() -> None:
    df = pd.DataFrame(
        {
            "when": pd.to_datetime(["2024-03-09 14:30", None, "2023-12-31 00:00"]),
            "text": ["2024-01-31", "not a date", None],
        }
    )
    step = DatetimeParts().fit(df)
    out = step.transform(df)
    expected = [
        f"{c}_{p}" for c in ("when", "text") for p in ("year", "month", "day", "dayofweek", "hour")
    ]
    assert list(out.columns) == expected == list(step.get_feature_names_out())
    assert (out.dtypes == "float64").all()
    row = out.iloc[0]
    assert [row["when_year"], row["when_month"], row["when_day"]] == [2024, 3, 9]
    assert row["when_dayofweek"] == 5  # Saturday
    assert row["when_hour"] == 14
    assert out.iloc[1][[c for c in out.columns if c.startswith("when")]].isna().all()
    assert out.iloc[0]["text_year"] == 2024 and out.iloc[0]["text_dayofweek"] == 2  # Wednesday
    assert out.iloc[1:][[c for c in out.columns if c.startswith("text")]].isna().all().all()


def test_datetime_parts_mixed_formats_and_time_zones() -> None:
    df = pd.DataFrame({"d": ["2024-01-31", "2024/02/01 10:00", "2024-01-31T10:00+05:00"]})
    out = DatetimeParts().fit_transform(df)
    assert out["d_year"].notna().all()
    assert out["d_month"].tolist()[:2] == [1.0, 2.0]


def test_datetime_parts_rejects_a_column_with_no_dates() -> None:
    with pytest.raises(DataError, match="datetime column 'd' has no values that read as dates"):
        DatetimeParts().fit(pd.DataFrame({"d": ["apple", "pear"]}))


def test_datetime_parts_all_missing_column_is_fine() -> None:
    df = pd.DataFrame({"d": pd.Series([None, None], dtype="datetime64[ns]")})
    assert DatetimeParts().fit_transform(df).isna().all().all()


# -- build_preprocessor ---------------------------------------------------------------------------


def test_preprocessor_output_and_names() -> None:
    df, y = make_frame()
    pre = build_preprocessor(make_schema(DERIVED), FeaturesConfig(min_category_frequency=5))
    out = pre.fit_transform(df, y)
    names = list(pre.get_feature_names_out())
    assert out.shape == (len(df), len(names))
    assert out.dtype == np.float64
    assert not np.isnan(out).any()
    assert names[:6] == [
        "numeric__income",
        "numeric__size",
        "numeric__active",
        "numeric__per_person",
        "numeric__weekend_north",
        "numeric__rich",
    ]
    assert "categorical__city_north" in names
    assert "categorical__city_Unknown" in names  # missing values become a category
    assert "categorical__city_infrequent_sklearn" in names  # 'isle' is rare
    assert "datetime__signup_year" in names and "datetime__signup_hour" in names
    assert not any("customer_id" in n or "notes" in n for n in names)


def test_preprocessor_handles_unseen_categories_and_missing_values() -> None:
    df, y = make_frame()
    pre = build_preprocessor(make_schema(DERIVED), FeaturesConfig()).fit(df, y)
    new = df.head(6).copy()
    new["city"] = ["atlantis", "north", None, "mars", "south", "isle"]
    new["plan"] = ["enterprise", "basic", None, None, "pro", "pro"]
    new.loc[new.index[:3], ["income", "size", "active"]] = np.nan
    new.loc[new.index[:2], "signup"] = pd.NaT
    out = pre.transform(new)
    assert out.shape[0] == 6 and not np.isnan(out).any()
    names = list(pre.get_feature_names_out())
    rare = names.index("categorical__city_infrequent_sklearn")
    assert out[0, rare] == 1.0  # unseen goes to the infrequent bucket
    plan = [i for i, n in enumerate(names) if n.startswith("categorical__plan_")]
    assert out[0, plan].sum() == 0.0  # no infrequent bucket for plan: all zeros, no error


def test_preprocessor_with_all_missing_columns() -> None:
    df, y = make_frame()
    df["income"] = np.nan
    df["city"] = pd.Series([np.nan] * len(df), dtype=object)
    df["signup"] = pd.NaT
    pre = build_preprocessor(make_schema(DERIVED), FeaturesConfig()).fit(df, y)
    out = pre.transform(df)
    names = list(pre.get_feature_names_out())
    assert out.shape == (len(df), len(names))
    assert not np.isnan(out).any()
    assert "numeric__income" in names and "datetime__signup_year" in names
    assert [n for n in names if n.startswith("categorical__city")] == ["categorical__city_Unknown"]


def test_preprocessor_groups_infrequent_and_caps_categories() -> None:
    df = pd.DataFrame(
        {"c": pd.Series(["a"] * 50 + ["b"] * 30 + ["c"] * 15 + ["d"] * 3 + ["e"] * 2, dtype=object)}
    )
    schema = make_schema(c="categorical")
    pre = build_preprocessor(schema, FeaturesConfig(min_category_frequency=5)).fit(df)
    names = pre.get_feature_names_out()
    assert list(names) == [
        "categorical__c_a",
        "categorical__c_b",
        "categorical__c_c",
        "categorical__c_infrequent_sklearn",
    ]
    out = pre.transform(pd.DataFrame({"c": pd.Series(["d", "e", "a", "zzz"], dtype=object)}))
    assert out.tolist() == [[0, 0, 0, 1], [0, 0, 0, 1], [1, 0, 0, 0], [0, 0, 0, 1]]
    names = (
        build_preprocessor(schema, FeaturesConfig(min_category_frequency=1, max_categories=2))
        .fit(df)
        .get_feature_names_out()
    )
    assert list(names) == ["categorical__c_a", "categorical__c_infrequent_sklearn"]


def test_preprocessor_omits_empty_groups() -> None:
    schema = make_schema(x="numeric", notes="text")
    pre = build_preprocessor(schema, FeaturesConfig())
    transformers = pre.named_steps["columns"].transformers
    assert [t[0] for t in transformers] == ["numeric"]
    assert pre.named_steps["columns"].remainder == "drop"


def test_preprocessor_needs_some_input() -> None:
    with pytest.raises(ConfigError, match="no column can be used as a model input"):
        build_preprocessor(make_schema(notes="text", customer_id="identifier"), FeaturesConfig())


def test_preprocessor_rejects_derived_from_non_inputs() -> None:
    with pytest.raises(ConfigError, match="uses column 'customer_id', whose role is 'identifier'"):
        build_preprocessor(make_schema({"x": "str_len(customer_id)"}), FeaturesConfig())
    with pytest.raises(ConfigError, match="uses the target 'churn'"):
        build_preprocessor(make_schema({"x": "churn == 'yes'"}), FeaturesConfig())
    with pytest.raises(ConfigError, match="unknown column 'nope'"):
        build_preprocessor(make_schema({"x": "nope + 1"}), FeaturesConfig())
    with pytest.raises(ConfigError, match="the name is already taken"):
        build_preprocessor(make_schema({"income": "size + 1"}), FeaturesConfig())


def test_derived_type_error_surfaces_at_fit() -> None:
    df, y = make_frame()
    pre = build_preprocessor(make_schema({"x": "city * 2"}), FeaturesConfig())
    with pytest.raises(ConfigError, match=r"features\.derived\.x: 'city' is text"):
        pre.fit(df, y)


# -- skops ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "estimator",
    [
        LGBMClassifier(n_estimators=20, verbose=-1),
        HistGradientBoostingClassifier(max_iter=20),
        RandomForestClassifier(n_estimators=20, random_state=0),
    ],
    ids=["lightgbm", "hist_gradient_boosting", "random_forest"],
)
def test_model_pipeline_round_trips_through_skops(estimator: Any) -> None:
    df, y = make_frame()
    pipe = build_model_pipeline(make_schema(DERIVED), FeaturesConfig(), estimator).fit(df, y)
    data = sio.dumps(pipe)
    untrusted = sio.get_untrusted_types(data=data)
    assert "shipml.features.DerivedFeatures" in untrusted
    loaded = sio.loads(data, trusted=trusted_types_for(untrusted))
    new, _ = make_frame(n=40, seed=1)
    new.loc[new.index[0], "city"] = "never seen"
    np.testing.assert_array_equal(pipe.predict_proba(new), loaded.predict_proba(new))
    assert list(loaded.classes_) == ["no", "yes"]


def test_trusted_types_for() -> None:
    types = ["shipml.features.DerivedFeatures", "lightgbm.basic.Booster", "collections.OrderedDict"]
    assert trusted_types_for(types) == types
    assert trusted_types_for([]) == []
    # Exact names, never a module prefix: under numpy. and sklearn. are functions and classes
    # that delete or write files when a crafted model file makes them run.
    for bad in (
        "os.system",
        "subprocess.Popen",
        "collections.OrderedDictX",
        "sklearnx.Evil",
        "numpy.lib.npyio.DataSource",
        "sklearn.datasets._base.clear_data_home",
        "builtins.eval",
        "builtins.exec",
        "io.open",
        "builtins.getattr",
    ):
        with pytest.raises(RegistryError, match=re.escape(f"untrusted type '{bad}'")):
            trusted_types_for(["numpy.dtype", bad])
