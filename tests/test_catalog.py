"""The model catalog: baselines first, then the stronger families; defaults and search spaces."""

from __future__ import annotations

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
        "hist_gradient_boosting",
        "random_forest",
        "extra_trees",
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
