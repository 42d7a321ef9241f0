"""The second layer (stacking): LightGBM on the columns plus the best families' out-of-fold
predictions, cross-validated on the same folds, bagged into the final model."""

from __future__ import annotations

import copy
import time

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.datasets import make_classification, make_regression

from shipml.config import FeaturesConfig, TrainingConfig
from shipml.data.infer import infer_schema
from shipml.features import trusted_types_for
from shipml.models.bagged import stack_features
from shipml.models.catalog import families_for
from shipml.models.fastpath import FastPredictor
from shipml.training.final import build_final_model, learning_estimator
from shipml.training.folds import prepare_folds
from shipml.training.leaderboard import Leaderboard
from shipml.training.search import STACK, Search, run_search, stacked_columns

FAMILIES = ["logistic_regression", "lightgbm", "random_forest"]


def _table(task: str, rows: int = 1200) -> tuple[pd.DataFrame, pd.Series]:
    if task == "classification":
        X, y = make_classification(rows, 8, n_informative=5, random_state=0)
    else:
        X, y = make_regression(rows, 8, n_informative=5, noise=10.0, random_state=0)
    df = pd.DataFrame(X, columns=[f"x{i}" for i in range(8)])
    df["colour"] = np.where(X[:, 0] > 0, "red", "blue")  # a categorical column too
    return df, pd.Series(y, name="target")


def _folds(task: str, rows: int = 1200):
    X, y = _table(task, rows)
    schema = infer_schema(pd.concat([X, y], axis=1), "target", task)
    return X, y, schema, prepare_folds(X, y, schema, FeaturesConfig(), 3, 0, ordered=False)


def _classifier_search(folds, metric: str = "roc_auc", in_seconds: float = 3600) -> Search:
    """A search of FAMILIES with the second layer on, its deadline ``in_seconds`` away."""
    config = TrainingConfig(trials=0, stack=True)
    families = families_for("classification", FAMILIES)
    return Search(
        families, folds, "classification", metric, config, time.monotonic() + in_seconds, None
    )


@pytest.fixture(scope="module")
def classification():
    X, y, schema, folds = _folds("classification")
    search = _classifier_search(folds)
    search.run_defaults()
    stack = search.run_stack(exact=True)
    return X, y, schema, folds, search, stack


def test_the_second_layer_is_cross_validated_on_the_first_layers_out_of_fold_predictions(
    classification,
) -> None:
    X, _, _, folds, search, stack = classification
    assert stack is not None and stack.name == STACK and stack.status == "ok"
    assert len(stack.fold_outputs) == len(stack.fold_models) == len(folds) == 3
    # Its inputs: the best candidate of each family but the baselines, best first.
    ranked = sorted(
        (r for r in search.results if r.family and not r.baseline and r.status == "ok"),
        key=lambda r: -r.mean("roc_auc"),
    )
    best_per_family: list[str] = []
    for r in ranked:
        if r.family not in {n.split("#")[0] for n in best_per_family}:
            best_per_family.append(r.name)
    assert stack.stack_inputs == best_per_family  # lightgbm (or #1) and random_forest
    assert len(stack.stack_inputs) == 2
    # Each training row's extra column is the prediction of the model that did not see it.
    inputs = [next(r for r in search.results if r.name == n) for n in stack.stack_inputs]
    layer = stacked_columns(inputs, folds, "classification")
    assert layer.shape == (len(X), len(inputs))
    for k, fold in enumerate(folds.folds):
        for j, r in enumerate(inputs):
            np.testing.assert_array_equal(layer[fold.valid_index, j], r.fold_outputs[k][:, 1])
    # A training row's columns are cross-fitted: from a model that saw neither its fold nor the
    # validation fold, so no validation label reaches the second layer through them.
    layers = search.cross_fitted_columns(inputs, exact=True)
    assert layers is not None and not any(np.isnan(layer).any() for layer in layers)
    k, j, c = 0, 2, 1  # outer fold 0, rows of fold 2, the second input
    outer, inner = folds.folds[k], folds.folds[j]
    in_j = np.isin(outer.train_index, inner.valid_index)
    family = next(f for f in search.families if f.name == inputs[c].family)
    model = family.build(search.seed, inputs[c].config).fit(
        outer.X_train[~in_j], outer.y_train.iloc[~in_j]
    )
    assert not set(outer.train_index[~in_j]) & (set(inner.valid_index) | set(outer.valid_index))
    np.testing.assert_allclose(layers[k][in_j, c], model.predict_proba(outer.X_train[in_j])[:, 1])
    # The same model gives fold 0's rows their columns where fold 2 is the validation fold.
    where = np.searchsorted(inner.train_index, outer.valid_index)
    np.testing.assert_allclose(layers[j][where, c], model.predict_proba(outer.X_valid)[:, 1])
    # The second-layer model of fold k saw the columns plus the layer: 8 + 2 one-hot + inputs.
    assert stack.fold_models[0].n_features_in_ == folds.folds[0].X_train.shape[1] + len(inputs)
    # Scored like any candidate on the same folds.
    assert set(stack.fold_scores) == set(search.metrics)
    assert 0.5 < stack.mean("roc_auc") <= 1.0


def test_the_final_model_feeds_the_second_layer_the_first_layers_predictions(
    classification,
) -> None:
    X, y, schema, folds, search, stack = classification
    board = Leaderboard("roc_auc", search.metrics, search.results)
    model = build_final_model(stack, board, folds, X, y, schema, FeaturesConfig(), 0, None)
    assert model.weights == {STACK: 1.0}
    assert model.stack is not None and model.stack["inputs"] == stack.stack_inputs
    # The inputs are parts (they predict at prediction time) though the mix gives them no weight.
    assert {name for name, _, _ in model.parts} == set(stack.stack_inputs)
    rows = X.head(50)
    member = {}
    for name in stack.stack_inputs:
        outs = [
            est.predict_proba(model.preprocessors[i].transform(rows))
            for n, i, est in model.parts
            if n == name
        ]
        member[name] = np.mean(outs, axis=0)
    layer = stack_features([member[n] for n in stack.stack_inputs], "classification")
    expected = np.mean(
        [
            est.predict_proba(np.hstack([model.preprocessors[i].transform(rows), layer]))
            for i, est in model.stack["parts"]
        ],
        axis=0,
    )
    np.testing.assert_allclose(model.predict_proba(rows), expected)
    assert set(model.predict(rows)) <= set(folds.classes)
    # Saved and loaded with skops like any registered model, it predicts the same.
    data = sio.dumps(model)
    loaded = sio.loads(data, trusted=trusted_types_for(sio.get_untrusted_types(data=data)))
    np.testing.assert_allclose(loaded.predict_proba(rows), model.predict_proba(rows))
    # The fast (ONNX) path does not compile a second layer: the native model serves.
    fast, reason = FastPredictor.build(model, schema)
    assert fast is None and "stacking" in reason
    # The learning curves follow the second layer's strongest input.
    curve = learning_estimator(stack, board, schema, FeaturesConfig(), 0)
    strongest = next(r for r in search.results if r.name == stack.stack_inputs[0])
    family = next(f for f in search.families if f.name == strongest.family)
    assert type(curve[-1]) is type(family.build(0, strongest.config))


def test_an_ensemble_with_the_second_layer_bags_both_layers() -> None:
    X, y, schema, folds = _folds("regression")
    config = TrainingConfig(trials=0, stack=True)
    result = run_search(
        families_for("regression", ["ridge", "lightgbm", "random_forest"]),
        folds,
        "regression",
        "rmse",
        config,
        time.monotonic() + 3600,
    )
    stack = next(r for r in result.leaderboard.results if r.name == STACK)
    assert stack.status == "ok" and len(stack.fold_outputs) == 3
    # A mix that holds the second layer and a first-layer model, weighted like the ensemble.
    mix = result.leaderboard.results[0].__class__(
        "ensemble", "", False, {}, members={STACK: 2, stack.stack_inputs[0]: 1}
    )
    board = result.leaderboard
    model = build_final_model(mix, board, folds, X, y, schema, FeaturesConfig(), 0, None)
    assert model.weights == pytest.approx({STACK: 2 / 3, stack.stack_inputs[0]: 1 / 3})
    rows = X.head(20)
    only_stack = build_final_model(
        stack, result.leaderboard, folds, X, y, schema, FeaturesConfig(), 0, None
    )
    first = build_final_model(
        next(r for r in result.leaderboard.results if r.name == stack.stack_inputs[0]),
        result.leaderboard,
        folds,
        X,
        y,
        schema,
        FeaturesConfig(),
        0,
        None,
    )
    np.testing.assert_allclose(
        model.predict(rows), 2 / 3 * only_stack.predict(rows) + 1 / 3 * first.predict(rows)
    )


def test_no_second_layer_where_rows_are_predicted_out_of_fold_more_than_once() -> None:
    """Small tables repeat their k folds (each row has several out-of-fold predictions), time
    columns run folds forward (early rows have none), two folds leave no rows for the
    cross-fitting; it is off unless ``stack: true``."""
    X, y, schema, _ = _folds("classification", rows=400)
    families = families_for("classification", FAMILIES)
    far = time.monotonic() + 3600
    repeated = prepare_folds(X, y, schema, FeaturesConfig(), 3, 0, ordered=False)
    assert len(repeated) > repeated.per_repeat
    ordered = prepare_folds(X, y, schema, FeaturesConfig(), 3, 0, ordered=True)
    X_single, y_single, schema_single, single = _folds("classification")
    two = prepare_folds(X_single, y_single, schema_single, FeaturesConfig(), 2, 0, ordered=False)
    cases = [
        (two, TrainingConfig(trials=0, stack=True)),  # a pair of folds out leaves no rows
        (repeated, TrainingConfig(trials=0, stack=True)),
        (ordered, TrainingConfig(trials=0, stack=True)),
        (single, TrainingConfig(trials=0)),  # off unless asked for
        (single, TrainingConfig(trials=0, stack=True, ensemble=False)),
    ]
    for folds, config in cases:
        result = run_search(families, folds, "classification", "roc_auc", config, far)
        assert STACK not in [r.name for r in result.leaderboard.results]
    # ...and it does run on the single pass when asked for.
    config = TrainingConfig(trials=0, stack=True)
    result = run_search(families, single, "classification", "roc_auc", config, far)
    assert STACK in [r.name for r in result.leaderboard.results]


def test_a_spent_budget_skips_the_second_layer_and_says_why(classification) -> None:
    _, _, _, folds, search, _ = classification
    late = _classifier_search(folds, in_seconds=-1)  # the deadline has passed
    late.results = [r for r in search.results if r.name != STACK]
    # Kept for it: LightGBM's defaults' time, with room for the new columns, and the
    # cross-fitting of its inputs (a model per pair of folds: (k - 1) / 2 per fold).
    lightgbm = next(r for r in late.results if r.name == "lightgbm")
    pairs = sum(r.fit_seconds * (3 - 1) / 2 for r in late.stack_inputs())
    assert late.stack_reserve == pytest.approx(3.0 * lightgbm.fit_seconds + pairs)
    skipped = late.run_stack()
    assert skipped is not None and skipped.status == "skipped"
    assert skipped.reason == "time budget used up" and not skipped.fold_outputs


def test_three_classes_give_the_second_layer_two_columns_per_input() -> None:
    X, y = make_classification(1200, 8, n_informative=5, n_classes=3, random_state=1)
    df = pd.DataFrame(X, columns=[f"x{i}" for i in range(8)])
    target = pd.Series(np.array(["a", "b", "c"])[y], name="target")
    schema = infer_schema(pd.concat([df, target], axis=1), "target", "classification")
    folds = prepare_folds(df, target, schema, FeaturesConfig(), 3, 0, ordered=False)
    search = _classifier_search(folds, "f1_macro")
    search.run_defaults()
    stack = search.run_stack(exact=True)
    assert stack is not None and stack.status == "ok", stack and stack.reason
    # Each input's probabilities but the first class's (the three sum to one).
    extra = 2 * len(stack.stack_inputs)
    assert stack.fold_models[0].n_features_in_ == folds.folds[0].X_train.shape[1] + extra
    board = Leaderboard("f1_macro", search.metrics, search.results)
    model = build_final_model(stack, board, folds, df, target, schema, FeaturesConfig(), 0, None)
    proba = model.predict_proba(df.head(30))
    assert proba.shape == (30, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert set(model.predict(df.head(30))) <= {"a", "b", "c"}


def test_a_first_layer_model_that_fails_to_refit_fails_the_second_layer_not_the_training(
    classification,
) -> None:
    _, _, _, folds, search, _ = classification
    broken = _classifier_search(folds)
    broken.results = [copy.copy(r) for r in search.results if r.name != STACK]
    forest = next(r for r in broken.results if r.name == "random_forest")
    forest.config = {**forest.config, "n_estimators": -1}  # scikit-learn refuses it
    stack = broken.run_stack(exact=True)
    assert stack is not None and stack.status == "failed"
    assert stack.reason.startswith("cross-fitting: InvalidParameterError")
    assert not stack.fold_outputs
