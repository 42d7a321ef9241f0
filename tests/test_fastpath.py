"""The fast inference path reproduces registered models exactly, or declines with a reason."""

from __future__ import annotations

import itertools
import json
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes
from sklearn.neighbors import KNeighborsClassifier

from shipml.config import FeaturesConfig
from shipml.data.coerce import coerce_frame, coerce_target
from shipml.data.infer import infer_schema
from shipml.data.schema import Schema
from shipml.demo import generate_customers
from shipml.errors import InputSchemaError
from shipml.features import build_preprocessor
from shipml.models.bagged import BaggedEnsemble
from shipml.models.catalog import CATALOG
from shipml.models.fastpath import (
    FastPredictor,
    _forest,
    _onnx_model,
    build_verified,
    compile_preprocessor,
    datetime_parts,
    float32_at_or_below,
    frame_columns,
    record_columns,
    value_columns,
    verify,
)
from shipml.training.folds import prepare_folds
from tests.conftest import breast_cancer_frame

# Infrequent buckets on the customers table: 'islands' (2%) and 'Unknown' region (4%) are rare.
RARE = FeaturesConfig(min_category_frequency=30, max_categories=4)
SMALL = {
    "random_forest": {"n_estimators": 100},
    "extra_trees": {"n_estimators": 30},
    "lightgbm": {"n_estimators": 60},
    "catboost": {"iterations": 60},
    "hist_gradient_boosting": {"max_iter": 40},
}


class Table:
    def __init__(self, df: pd.DataFrame, target: str, features: FeaturesConfig, n_train: int):
        self.schema = infer_schema(df, target, features=features)
        self.X = coerce_frame(df, self.schema)
        self.y = coerce_target(df[target], self.schema.task)
        self.X_train, self.y_train = self.X.iloc[:n_train], self.y.iloc[:n_train]
        self.X_test = self.X.iloc[n_train:].copy()
        self.features = features
        self.preprocessor = build_preprocessor(self.schema, features).fit(self.X_train)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.Xt = np.asarray(self.preprocessor.transform(self.X_train), dtype=np.float64)

    def fit(self, family: str, params: dict[str, Any] | None = None) -> Any:
        merged = {**SMALL.get(family, {}), **(params or {})}
        estimator = CATALOG[self.schema.task][family].build(0, merged)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return estimator.fit(self.Xt, self.y_train)

    def ensemble(self, members: dict[str, Any], threshold: float | None = None) -> BaggedEnsemble:
        """One refitted part per member, weighted 1, 2, 3, ..."""
        classes = np.unique(self.y) if self.schema.task == "classification" else None
        return BaggedEnsemble(
            self.schema.task,
            [self.preprocessor],
            [(name, 0, model) for name, model in members.items()],
            {name: float(i + 1) for i, name in enumerate(members)},
            classes=classes,
            threshold=threshold,
        )


def _with_gaps(X: pd.DataFrame) -> pd.DataFrame:
    """Unseen and missing categories, missing numbers, booleans and dates."""
    X = X.copy()
    gaps = [
        (slice(0, 6), "region", "overseas"),  # never seen
        (slice(6, 12), "plan", np.nan),
        (slice(12, 18), "region", np.nan),
        (slice(18, 24), "age", np.nan),
        (slice(24, 30), "has_partner", np.nan),
        (slice(30, 36), "signup_date", pd.NaT),
        (slice(36, 40), "contract", "lifetime"),
    ]
    for rows, column, value in gaps:
        if column in X.columns:
            X.iloc[rows, X.columns.get_loc(column)] = value
    return X


@pytest.fixture(scope="module")
def churn() -> Table:
    table = Table(generate_customers(800, 1), "churned", RARE, 600)
    table.X_test = _with_gaps(table.X_test)
    return table


@pytest.fixture(scope="module")
def forest_model(churn: Table) -> tuple[BaggedEnsemble, FastPredictor]:
    ensemble = churn.ensemble({"random_forest": churn.fit("random_forest")}, threshold=0.35)
    fast, reason = FastPredictor.build(ensemble, churn.schema)
    assert fast is not None, reason
    return ensemble, fast


def _check(ensemble: BaggedEnsemble, schema: Schema, X_test: pd.DataFrame) -> FastPredictor:
    fast, reason = FastPredictor.build(ensemble, schema)
    assert fast is not None, reason
    result = verify(fast, ensemble, X_test)
    assert result.ok, result.reason
    assert result.labels_equal and result.rows == len(X_test)
    assert result.max_abs_diff <= 1e-9  # exact up to the order of floating-point sums
    # What the server gets where it matches: trees on float32 features in float32.
    single, how, check = build_verified(ensemble, schema, X_test)
    assert single is not None and check is not None and check.ok, how
    assert check.labels_equal and check.max_abs_diff <= 1e-6
    return fast


# -- the compiled preprocessor ------------------------------------------------------------------


@pytest.mark.parametrize("features", [RARE, FeaturesConfig()], ids=["infrequent", "plain"])
def test_compiled_preprocessor_gives_sklearns_matrix_exactly(features: FeaturesConfig) -> None:
    table = Table(generate_customers(800, 1), "churned", features, 600)
    X_test = _with_gaps(table.X_test)
    compiled, reason = compile_preprocessor(table.preprocessor)
    assert compiled is not None, reason
    assert compiled.input_columns["signup_date"] == "datetime"
    assert compiled.input_columns["has_partner"] == "numeric"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = table.preprocessor.transform(X_test)
    got = compiled.transform(frame_columns(X_test, compiled.input_columns))
    assert got.dtype == np.float64 and got.shape == expected.shape
    assert np.array_equal(got, expected)
    # One row at a time, from plain Python values, gives the same rows.
    for i in (0, 6, 12, 18, 24, 30, 36, 50):
        row = X_test.iloc[i]
        columns = {c: [None if pd.isna(row[c]) else row[c]] for c in compiled.input_columns}
        columns["signup_date"] = X_test["signup_date"].to_numpy()[i : i + 1]
        assert np.array_equal(compiled.transform(columns)[0], expected[i])


def test_unseen_category_is_infrequent_or_all_zeros() -> None:
    names = {}
    for label, features in (("rare", RARE), ("plain", FeaturesConfig())):
        table = Table(generate_customers(800, 1), "churned", features, 600)
        compiled, _ = compile_preprocessor(table.preprocessor)
        assert compiled is not None
        out = compiled.transform(frame_columns(_with_gaps(table.X_test), compiled.input_columns))
        names[label] = [str(n) for n in table.preprocessor.get_feature_names_out()]
        region = [i for i, n in enumerate(names[label]) if n.startswith("categorical__region")]
        unseen = out[0, region]
        if label == "rare":
            assert names[label][region[-1]].endswith("infrequent_sklearn")
            assert unseen[-1] == 1.0 and unseen.sum() == 1.0
        else:
            assert unseen.sum() == 0.0


def test_datetime_parts_match_pandas() -> None:
    rng = np.random.default_rng(0)
    low, high = pd.Timestamp("1677-09-22").value, pd.Timestamp("2262-04-11").value
    stamps = pd.Series(rng.integers(low, high, 5000).astype("datetime64[ns]"))
    stamps.iloc[::97] = pd.NaT
    parts = ("year", "month", "day", "dayofweek", "hour")
    expected = np.column_stack([getattr(stamps.dt, p).astype("float64") for p in parts])
    values = stamps.to_numpy()
    assert np.array_equal(datetime_parts(values), expected, equal_nan=True)  # vectorised
    few = np.vstack([datetime_parts(values[i : i + 3]) for i in range(0, 600, 3)])
    assert np.array_equal(few, expected[:600], equal_nan=True)  # integer arithmetic


def test_what_does_not_compile_says_why(churn: Table) -> None:
    derived = build_preprocessor(
        Schema(
            churn.schema.target,
            "classification",
            churn.schema.columns,
            derived={"charge_per_month": "monthly_charges / (tenure_months + 1)"},
        ),
        FeaturesConfig(derived={"charge_per_month": "monthly_charges / (tenure_months + 1)"}),
    ).fit(churn.X_train)
    compiled, reason = compile_preprocessor(derived)
    assert compiled is None and "derived" in reason
    compiled, reason = compile_preprocessor(churn.preprocessor.named_steps["columns"])
    assert compiled is None and "pipeline" in reason


# -- models -------------------------------------------------------------------------------------


def test_random_forest_is_exact_and_round_trips_as_bytes(
    churn: Table, forest_model: tuple[BaggedEnsemble, FastPredictor]
) -> None:
    ensemble, fast = forest_model
    result = verify(fast, ensemble, churn.X_test)
    assert result.ok and result.labels_equal, result.reason
    assert result.max_abs_diff <= 1e-12
    columns = frame_columns(churn.X_test, fast.input_columns)
    assert np.array_equal(fast.predict(columns), ensemble.predict(churn.X_test))

    data = fast.to_bytes()
    assert data.startswith(b"SHIPMLFP")
    length = int.from_bytes(data[8:16], "little")
    header = json.loads(data[16 : 16 + length])  # plain JSON, arrays and ONNX as raw bytes
    assert header["format"] == "shipml-fastpath" and header["task"] == "classification"
    loaded = FastPredictor.from_bytes(data)
    assert np.array_equal(loaded.outputs(columns), fast.outputs(columns))
    assert np.array_equal(loaded.classes, fast.classes)  # type: ignore[arg-type]
    assert loaded.threshold == 0.35
    assert verify(loaded, ensemble, churn.X_test).ok
    with pytest.raises(ValueError, match="not a shipml fast-path file"):
        FastPredictor.from_bytes(b"\x80\x04" + data)


@pytest.mark.parametrize(
    "family",
    [
        "majority",
        "logistic_regression",
        "extra_trees",
        "hist_gradient_boosting",
        "lightgbm",
        "catboost",
    ],
)
def test_each_binary_family_is_exact(churn: Table, family: str) -> None:
    _check(churn.ensemble({family: churn.fit(family)}, threshold=0.5), churn.schema, churn.X_test)


def test_multiclass_weighted_members_are_exact() -> None:
    table = Table(generate_customers(800, 2), "contract", FeaturesConfig(), 600)
    members = {f: table.fit(f) for f in ("random_forest", "logistic_regression", "catboost")}
    members["lightgbm"] = table.fit("lightgbm")
    ensemble = table.ensemble(members)
    assert len(ensemble.classes_) == 3
    fast = _check(ensemble, table.schema, _with_gaps(table.X_test))
    assert fast.outputs(frame_columns(table.X_test, fast.input_columns)).shape == (200, 3)


def test_regression_with_log_target_is_exact() -> None:
    df = load_diabetes(as_frame=True).frame.rename(columns={"target": "progression"})
    df["sex"] = np.where(df["sex"] > 0, "m", "f")  # a categorical column
    table = Table(df, "progression", FeaturesConfig(), 330)
    log = {"target_transform": "log"}
    shifted = {"target_transform": "log", "target_shift": 0.27}  # the out-of-fold correction
    members = {
        "ridge": table.fit("ridge", log),
        "lightgbm": table.fit("lightgbm", shifted),
        "random_forest": table.fit("random_forest", {"n_estimators": 40}),
        "hist_gradient_boosting": table.fit("hist_gradient_boosting", log),
        "mean": table.fit("mean"),
    }
    ensemble = table.ensemble(members)
    fast = _check(ensemble, table.schema, table.X_test)
    out = fast.outputs(frame_columns(table.X_test, fast.input_columns))
    assert out.shape == (len(table.X_test),)
    assert np.allclose(out, ensemble.predict(table.X_test), rtol=1e-12, atol=0)


def test_bagged_fold_models_are_exact() -> None:
    """As training registers them: fold models after their own fold preprocessors, averaged,
    next to a member refitted on every row."""
    df = breast_cancer_frame()
    schema = infer_schema(df, "diagnosis")
    X = coerce_frame(df, schema)
    y = coerce_target(df["diagnosis"], "classification")
    X_train, y_train, X_test = X.iloc[:450], y.iloc[:450], X.iloc[450:]
    folds = prepare_folds(X_train, y_train, schema, FeaturesConfig(), 3, 0, ordered=False)
    folds.folds = folds.folds[:3]  # one pass of the repeated k-fold is enough here
    catalog = CATALOG["classification"]
    preprocessors: list[Any] = [f.preprocessor for f in folds.folds]
    parts: list[tuple[str, int, Any]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("logistic_regression", "lightgbm"):
            for k, fold in enumerate(folds.folds):
                model = catalog[name].build(0, SMALL.get(name)).fit(fold.X_train, fold.y_train)
                parts.append((name, k, model))
        full = build_preprocessor(schema, FeaturesConfig()).fit(X_train)
        preprocessors.append(full)
        forest = catalog["random_forest"].build(0, {"n_estimators": 50})
        parts.append(("random_forest", 3, forest.fit(full.transform(X_train), y_train)))
    ensemble = BaggedEnsemble(
        "classification",
        preprocessors,
        parts,
        {"logistic_regression": 2, "lightgbm": 1, "random_forest": 1},
        classes=folds.classes,
        threshold=0.6,
    )
    fast = _check(ensemble, schema, X_test)
    assert len(fast.preprocessors) == 4 and len(fast.parts) == 7
    loaded = FastPredictor.from_bytes(fast.to_bytes())
    columns = frame_columns(X_test, fast.input_columns)
    assert np.array_equal(loaded.predict(columns), ensemble.predict(X_test))


def test_float32_at_or_below_keeps_every_comparison() -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate(
        [
            rng.normal(0, 1e3, 2000),
            rng.normal(0, 1, 2000).astype(np.float32).astype(np.float64),  # float32 already
            [0.0, -0.0, 1e-50, -1e-50, 1e300, -1e300, 0.1, 1 / 3],
        ]
    )
    below = float32_at_or_below(values)
    assert below.dtype == np.float32
    assert (below.astype(np.float64) <= values).all()
    with np.errstate(over="ignore"):  # (past the largest float32: inf)
        above = np.nextafter(below, np.float32(np.inf))  # the next float32 is past the value
    assert (above.astype(np.float64) > values).all()


def test_float32_trees_split_as_the_forest_does_at_its_thresholds() -> None:
    # Rows exactly at each threshold's float32 neighbours: where a rounded split would send
    # a row the wrong way.
    import onnxruntime as ort
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int)
    forest = RandomForestClassifier(n_estimators=20, random_state=0).fit(X, y)
    part = _forest(forest, "classification")
    part.preprocessor = 0

    class Width:
        n_features = 3

    model, inputs = _onnx_model([part], [Width()], single=True)  # type: ignore[list-item]
    assert model is not None and list(inputs) == ["x0_f32"]
    rows = []
    for tree in forest.estimators_:
        inner = tree.tree_.feature >= 0
        for feature, threshold in zip(
            tree.tree_.feature[inner], tree.tree_.threshold[inner], strict=True
        ):
            t32 = np.float32(threshold)
            for x in (np.nextafter(t32, np.float32(-1)), t32, np.nextafter(t32, np.float32(1))):
                row = X[len(rows) % len(X)].copy()
                row[feature] = x
                rows.append(row)
    edges = np.asarray(rows, dtype=np.float32)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    (raw,) = session.run(["p0"], {"x0_f32": edges})
    expected = forest.predict_proba(edges)[:, 1]
    assert raw.dtype == np.float64 and len(edges) > 1000
    assert np.abs(raw[:, 0] / len(forest.estimators_) - expected).max() <= 1e-6
    assert np.array_equal(raw[:, 0] / len(forest.estimators_) > 0.5, expected > 0.5)


def test_a_copy_that_float32_cannot_match_is_built_in_double(churn: Table) -> None:
    # Leaves of three or more rows hold class shares such as 1/3, which float32 rounds.
    forest = churn.fit("random_forest", {"min_samples_leaf": 3})
    ensemble = churn.ensemble({"random_forest": forest})
    fast, how, check = build_verified(ensemble, churn.schema, churn.X_test)
    assert fast is not None and how == "float32 trees" and check is not None
    assert 1e-12 < check.max_abs_diff <= 1e-6  # float32 leaf sums: close, not identical
    # Asked to match to 1e-12, float32 cannot; the double-precision graph can.
    fast, how, check = build_verified(ensemble, churn.schema, churn.X_test, tolerance=1e-12)
    assert fast is not None and how == "double-precision trees", how
    assert check is not None and check.max_abs_diff <= 1e-12
    # And where neither matches, no copy, and why.
    fast, how, check = build_verified(ensemble, churn.schema, churn.X_test, tolerance=-1.0)
    assert fast is None and check is not None and not check.ok
    assert how.startswith("the fast copy differs on the test split: outputs differ")


def test_a_model_that_does_not_convert_falls_back_with_a_reason(churn: Table) -> None:
    knn = KNeighborsClassifier(5).fit(churn.Xt, churn.y_train)
    ensemble = churn.ensemble({"logistic_regression": churn.fit("logistic_regression")})
    ensemble.parts.append(("knn", 0, knn))
    ensemble.weights["knn"] = 0.5
    fast, reason = FastPredictor.build(ensemble, churn.schema)
    assert fast is None
    assert reason == "knn: KNeighborsClassifier has no fast version"

    lightgbm = churn.fit("lightgbm", {"zero_as_missing": True})
    fast, reason = FastPredictor.build(churn.ensemble({"lightgbm": lightgbm}), churn.schema)
    assert fast is None and "missing values as 'Zero'" in reason

    schema = Schema(churn.schema.target, "classification", churn.schema.columns, derived={"x": "1"})
    fast, reason = FastPredictor.build(ensemble, schema)
    assert fast is None and "derived" in reason


def test_verify_catches_a_copy_that_differs(
    churn: Table, forest_model: tuple[BaggedEnsemble, FastPredictor]
) -> None:
    ensemble, fast = forest_model
    altered = FastPredictor.from_bytes(fast.to_bytes())
    altered.parts[0].post["divide"] *= 1.01  # probabilities off by about 1%
    result = verify(altered, ensemble, churn.X_test)
    assert not result.ok and result.max_abs_diff > 1e-3
    assert "differ" in result.reason
    assert not verify(fast, ensemble, churn.X_test.iloc[:0]).ok


# -- JSON records to columns --------------------------------------------------------------------


def _same_columns(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    if a.keys() != b.keys():
        return False
    for column in a:
        x, y = a[column], b[column]
        if x.dtype == object or y.dtype == object:
            same = [(pd.isna(u) and pd.isna(v)) or u == v for u, v in zip(x, y, strict=True)]
            if not all(same):
                return False
        elif not np.array_equal(x, y, equal_nan=True):
            return False
    return True


def test_records_convert_as_coerce_frame_does(
    churn: Table, forest_model: tuple[BaggedEnsemble, FastPredictor]
) -> None:
    ensemble, fast = forest_model
    base = {
        "customer_id": "C1",
        "age": 41,
        "income": 52000.5,
        "household_size": 3,
        "plan": "basic",
        "contract": "one-year",
        "region": "north",
        "tenure_months": 12,
        "monthly_charges": 30.25,
        "support_calls": 2,
        "has_partner": "yes",
        "signup_date": "2021-03-04",
    }
    variants: list[dict[str, Any]] = [
        {},
        {"age": None, "plan": None, "region": "overseas", "signup_date": None},
        {"has_partner": True, "income": 0, "region": "", "signup_date": "2021-03-04 10:30"},
        {"has_partner": "No", "age": 30.0, "plan": "  ", "contract": "two-year"},
        {"has_partner": 0, "signup_date": "2022-11-30T23:59:59"},
    ]
    records = [{**base, **v} for v in variants]
    kinds = fast.input_columns
    for batch in [records, *([r] for r in records)]:
        expected = frame_columns(coerce_frame(pd.DataFrame(batch), churn.schema), kinds)
        assert _same_columns(record_columns(batch, churn.schema), expected)
    got = fast.outputs(record_columns(records, churn.schema))
    expected_proba = ensemble.predict_proba(coerce_frame(pd.DataFrame(records), churn.schema))
    assert np.abs(got - expected_proba).max() <= 1e-12

    # Values that need shipml's full coercion take it, with its errors.
    # (a date with a UTC offset: still ISO 8601, the one format this column was trained on)
    odd = [{**base, "age": "41", "signup_date": "2021-03-04T10:30+02:00", "has_partner": "TRUE "}]
    expected = frame_columns(coerce_frame(pd.DataFrame(odd), churn.schema), kinds)
    assert _same_columns(record_columns(odd, churn.schema), expected)
    with pytest.raises(InputSchemaError, match="'age'"):
        record_columns([{**base, "age": "forty"}], churn.schema)
    with pytest.raises(InputSchemaError, match="missing column 'plan'"):
        record_columns([{k: v for k, v in base.items() if k != "plan"}], churn.schema)
    with pytest.raises(InputSchemaError, match="infinite"):
        fast.outputs(record_columns([{**base, "income": float("inf")}], churn.schema))


# -- whole columns at once ----------------------------------------------------------------------

_MIXES: dict[str, list[list[Any]]] = {
    "numeric": [
        [1.5, 2, None, -0.0, 1e300],
        [None, None],
        [True, False, None],  # (plain booleans in a numeric column: 1.0 and 0.0)
        [1.5, "2.5", None],  # a string: shipml's full coercion
        [3, 10**400],  # past float's range: as the one-by-one loop reports it
        [float("nan"), 1],
    ],
    "boolean": [
        [True, False, None],
        [True, 1, 0, None],
        ["yes", "No", True],
        [None, None],
    ],
    "categorical": [
        ["basic", "pro", "basic", "pro"],
        ["basic", "", "  ", None, "basic"],
        ["a", 3, 3.0, 2.5, None, float("nan")],
        [True, 1, 1.0, "1", False, 0],  # True and 1 are equal keys, not equal categories
        [np.int64(3), "3"],
    ],
}


@pytest.mark.parametrize("role", sorted(_MIXES))
def test_whole_columns_convert_as_value_by_value(role: str) -> None:
    from shipml.models import fastpath

    for values in _MIXES[role]:
        try:
            expected = fastpath._values_one_by_one(values, role)
        except OverflowError as err:
            with pytest.raises(OverflowError, match=str(err)):
                fastpath._fast_values(values, role)
            continue
        got = fastpath._fast_values(values, role)
        if expected is None:
            assert got is None, values
            continue
        assert got is not None and got.dtype == expected.dtype, values
        assert _same_columns({"c": got}, {"c": expected}), (values, got, expected)
        if role == "categorical":  # the same strings, not only equal ones
            assert [type(v) for v in got] == [type(v) for v in expected], values


def test_a_batch_one_hot_encodes_as_row_by_row(
    churn: Table, forest_model: tuple[BaggedEnsemble, FastPredictor]
) -> None:
    # Many rows take the lookup per distinct value; one row the loop: the same matrix.
    _, fast = forest_model
    X = churn.X_test.copy()
    X.loc[X.index[:5], "plan"] = "never seen"
    X.loc[X.index[5:10], "region"] = np.nan
    columns = frame_columns(coerce_frame(X, churn.schema), fast.input_columns)
    n = len(X)
    for pre in fast.preprocessors:
        whole = pre.transform(columns, n)
        rows = np.vstack(
            [pre.transform({k: v[i : i + 1] for k, v in columns.items()}, 1) for i in range(n)]
        )
        assert np.array_equal(whole, rows, equal_nan=True)


def test_trees_scored_in_slices_of_rows_give_the_same_outputs(
    churn: Table, forest_model: tuple[BaggedEnsemble, FastPredictor]
) -> None:
    # The server scores a large batch's trees in slices on several threads at once.
    from concurrent.futures import ThreadPoolExecutor

    _, fast = forest_model
    X = pd.concat([churn.X_test] * 3, ignore_index=True)
    columns = frame_columns(coerce_frame(X, churn.schema), fast.input_columns)
    n = len(X)
    matrices = fast.matrices(columns, n)
    inputs = fast.tree_inputs(matrices)
    assert inputs is not None
    cuts = [0, 1, n // 3, n // 2, n]
    with ThreadPoolExecutor(4) as pool:
        slices = list(pool.map(lambda c: fast.tree_outputs(inputs, *c), itertools.pairwise(cuts)))
    scores = [np.concatenate(parts) for parts in zip(*slices, strict=True)]
    assert np.array_equal(fast.combine(matrices, scores, n), fast.outputs(columns))
    assert [len(s[0]) for s in slices] == [1, n // 3 - 1, n // 2 - n // 3, n - n // 2]


@pytest.mark.parametrize("features", [RARE, FeaturesConfig()], ids=["infrequent", "plain"])
def test_one_row_by_name_scores_as_the_columns_do(features: FeaturesConfig) -> None:
    # The serving path's single row skips value_columns: the same numbers, bit for bit.
    df = generate_customers(700, 5).drop(columns=["signup_date", "customer_id"])
    table = Table(df, "churned", features, 500)
    members = {"random_forest": table.fit("random_forest"), "logistic_regression": None}
    members["logistic_regression"] = table.fit("logistic_regression")
    ensemble = table.ensemble(members)
    fast, reason = FastPredictor.build(ensemble, table.schema)
    assert fast is not None, reason
    records = json.loads(df.drop(columns=["churned"]).iloc[500:600].to_json(orient="records"))
    for record in records:  # as the request models validate "yes" and "no"
        record["has_partner"] = {"yes": True, "no": False}.get(record["has_partner"])
    records += [
        {**records[0], "plan": None, "region": "", "age": None, "has_partner": None},
        {**records[1], "plan": "never seen", "region": "  ", "income": 0},
        {**records[2], "plan": 3, "household_size": 2, "has_partner": False},
        {**records[3], "region": 2.5, "monthly_charges": float("nan")},
        {**records[4], "has_partner": True, "tenure_months": -0.0},
    ]
    for record in records:
        one = fast.outputs_one(record)
        assert one is not None, record
        columns = value_columns({c: [record[c]] for c in fast.input_columns}, table.schema)
        assert np.array_equal(one, fast.outputs(columns)), record
    with pytest.raises(InputSchemaError, match="infinite"):
        fast.outputs_one({**records[0], "income": float("inf")})
    assert fast.outputs_one({**records[0], "age": "41"}) is None  # not validated: the long way
    assert fast.outputs_one({**records[0], "plan": ["basic"]}) is None


@pytest.mark.parametrize("features", [RARE, FeaturesConfig()], ids=["infrequent", "plain"])
def test_lists_from_the_strict_decoder_give_value_columns_matrices(
    features: FeaturesConfig,
) -> None:
    # The serving path's strict batches skip value_columns: the same matrices, bit for bit.
    df = generate_customers(700, 6).drop(columns=["signup_date", "customer_id"])
    table = Table(df, "churned", features, 500)
    ensemble = table.ensemble({"random_forest": table.fit("random_forest")})
    fast, reason = FastPredictor.build(ensemble, table.schema)
    assert fast is not None, reason
    records = json.loads(df.drop(columns=["churned"]).iloc[500:].to_json(orient="records"))
    rng = np.random.default_rng(0)
    odd: dict[str, list[Any]] = {  # what msgspec lets through for each kind
        "age": [None, 0.0, -0.0, 1e300, 41.0],
        "has_partner": [True, False, None],
        "plan": [None, "", "  ", "never seen", 3, 3.0, 2.5, "basic "],
        "region": [None, "", 7, -1.5],
    }
    for record in records:
        record["has_partner"] = {"yes": True, "no": False}.get(record["has_partner"])
        for column, values in odd.items():
            if rng.random() < 0.2:
                record[column] = values[rng.integers(len(values))]
    n = len(records)
    lists = {c: [r[c] for r in records] for c in fast.input_columns}
    got = fast.matrices_of_lists(lists, n)
    expected = fast.matrices(value_columns(lists, table.schema), n)
    assert got is not None
    assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(got, expected, strict=True))
    one = fast.matrices_of_lists({c: v[:1] for c, v in lists.items()}, 1)
    assert one is not None and np.array_equal(one[0], expected[0][:1])
    # Kinds the strict decoder never gives: the general path, which converts or refuses them.
    assert fast.matrices_of_lists({**lists, "age": ["old", *lists["age"][1:]]}, n) is None
    assert fast.matrices_of_lists({**lists, "plan": [True, *lists["plan"][1:]]}, n) is None
    assert fast.matrices_of_lists({**lists, "plan": lists["plan"][1:]}, n) is None


def test_one_row_with_a_datetime_takes_the_columns(
    churn: Table, forest_model: tuple[BaggedEnsemble, FastPredictor]
) -> None:
    _, fast = forest_model
    assert "datetime" in fast.input_columns.values()
    record = {c: None for c in fast.input_columns}
    assert fast.outputs_one(record) is None
