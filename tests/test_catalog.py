"""The model catalog: baselines first, then the stronger families; defaults and search spaces."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from sklearn.base import is_classifier, is_regressor

from shipml.errors import ConfigError
from shipml.models.catalog import CATALOG, families_for, resolve_grid


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_auto_is_baselines_first_then_stronger_families(task: str) -> None:
    families = families_for(task, "auto")
    baselines = [f.baseline for f in families]
    assert baselines == sorted(baselines, reverse=True) and sum(baselines) == 2
    assert [f.name for f in families][2:] == [
        "lightgbm",
        "catboost",
        "hist_gradient_boosting",
        "random_forest",
        "extra_trees",
        "mlp",
    ]
    check = is_classifier if task == "classification" else is_regressor
    assert all(check(f.build(0)) for f in families)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_defaults_are_a_point_of_each_search_space(task: str) -> None:
    """The defaults are the search's first trial: the space must hand them back unchanged."""
    for family in families_for(task, "auto"):
        if family.space is None:
            assert family.baseline
            continue
        assert family.space(optuna.trial.FixedTrial(family.defaults)) == family.defaults
        for config in family.portfolio:
            assert family.space(optuna.trial.FixedTrial(config)) == config
        params = family.build(0).get_params()
        if family.name == "mlp":  # width and depth become the layer sizes, halving
            assert params["hidden_layer_sizes"] == (128, 64)
            params.update(width=128, depth=2)
        assert all(params[k] == v for k, v in family.defaults.items()), family.name


def test_search_trial_params_reach_the_estimator() -> None:
    family = CATALOG["classification"]["lightgbm"]
    model = family.build(3, {"num_leaves": 7, "class_weight": "balanced"})
    params = model.get_params()
    assert (params["num_leaves"], params["class_weight"], params["random_state"]) == (
        7,
        "balanced",
        3,
    )
    assert params["learning_rate"] == family.defaults["learning_rate"]  # the rest stay default


def test_a_list_keeps_the_baselines() -> None:
    names = [f.name for f in families_for("regression", ["lightgbm"])]
    assert names == ["mean", "ridge", "lightgbm"]


def test_unknown_family_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown model family 'xgboost'"):
        families_for("classification", ["xgboost"])
    with pytest.raises(ConfigError, match="empty"):
        families_for("classification", [])


def test_seed_reaches_the_estimator() -> None:
    forest = CATALOG["classification"]["random_forest"].build(7)
    assert forest.get_params()["random_state"] == 7


def test_flat_cheat_sheet_grid_goes_to_the_families_that_take_it() -> None:
    grid = {"n_estimators": [50, 100], "max_depth": [None, 5], "min_samples_split": [2, 5]}
    resolved = resolve_grid("classification", families_for("classification", "auto"), grid)
    assert set(resolved) == {"random_forest", "extra_trees"}
    assert resolved["random_forest"] == grid


def test_grid_keyed_by_family() -> None:
    families = families_for("regression", "auto")
    grid = {"lightgbm": {"num_leaves": [7, 31]}, "ridge": {"alpha": [0.1, 10.0]}}
    assert resolve_grid("regression", families, grid) == grid


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"random_forest": {"max_dept": [3]}}, r"param_grid.random_forest.max_dept: not a param"),
        ({"random_forest": {"max_depth": []}}, r"max_depth: expected a non-empty list"),
        ({"random_forest": {"max_depth": 3}}, r"max_depth: expected a non-empty list"),
        ({"random_forest": {"max_depth": [3]}, "n_estimators": [5]}, "mixes model families"),
        ({"learning_rate": [0.1], "min_samples_split": [2]}, "no model family takes all"),
        ({"lightgbm": [1, 2]}, r"param_grid.lightgbm: expected a mapping"),
    ],
)
def test_bad_grids_name_the_key(grid: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_grid("classification", families_for("classification", "auto"), grid)


def test_grid_for_a_family_not_chosen() -> None:
    families = families_for("classification", ["lightgbm"])
    with pytest.raises(ConfigError, match=r"not among training\.models"):
        resolve_grid("classification", families, {"random_forest": {"max_depth": [3]}})


def test_catboost_takes_class_weights_and_the_seed() -> None:
    family = CATALOG["classification"]["catboost"]
    params = family.build(5, {"depth": 4, "class_weight": "balanced"}).get_params()
    assert (params["depth"], params["auto_class_weights"], params["random_seed"]) == (
        4,
        "Balanced",
        5,
    )
    assert params["allow_writing_files"] is False  # no catboost_info/ in the user's project
    assert "auto_class_weights" not in family.build(5, {"class_weight": None}).get_params()


def test_log_target_wraps_every_regression_family_but_the_mean() -> None:
    from sklearn.compose import TransformedTargetRegressor

    for family in families_for("regression", "auto"):
        model = family.build(0, {"target_transform": "log"} if family.target_transform else {})
        assert isinstance(model, TransformedTargetRegressor) == (family.name != "mean")
    ridge = CATALOG["regression"]["ridge"].build(0, {"target_transform": "log", "alpha": 1e-6})
    X = np.linspace(0, 2, 50).reshape(-1, 1)
    y = np.expm1(3 * X[:, 0])  # exactly linear on the log scale
    np.testing.assert_allclose(ridge.fit(X, y).predict(X), y, rtol=1e-4, atol=1e-5)
    # Far outside the training range the prediction is capped, not inf.
    far = ridge.predict(np.array([[1e6]]))
    assert np.isfinite(far).all() and far[0] == pytest.approx(np.expm1(np.log1p(y.max()) + 1))


def test_fixed_params_are_checked_against_the_estimators() -> None:
    from shipml.models.catalog import resolve_params

    families = families_for("classification", ["random_forest"])
    fixed = resolve_params("classification", families, {"random_forest": {"n_estimators": 100}})
    assert fixed == {"random_forest": {"n_estimators": 100}}
    for params, message in [
        ({"random_forest": {"n_trees": 100}}, r"training.params.random_forest.n_trees: not a"),
        ({"lightgbm": {"num_leaves": 7}}, r"training.params.lightgbm: 'lightgbm' is not among"),
        ({"xgboost": {}}, r"training.params.xgboost: unknown model family"),
        ({"random_forest": [100]}, r"training.params.random_forest: expected a mapping"),
    ]:
        with pytest.raises(ConfigError, match=message):
            resolve_params("classification", families, params)


def test_baselines_can_be_left_out() -> None:
    names = [f.name for f in families_for("classification", ["random_forest"], baselines=False)]
    assert names == ["random_forest"]
    auto = [f.name for f in families_for("regression", "auto", baselines=False)]
    assert auto[0] == "lightgbm" and "mean" not in auto and "ridge" not in auto
    named = families_for("regression", ["ridge", "lightgbm"], baselines=False)
    assert [f.name for f in named] == ["ridge", "lightgbm"]
