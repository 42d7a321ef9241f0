"""The model catalog: baselines first, then the stronger families, for both tasks."""

from __future__ import annotations

import pytest
from sklearn.base import is_classifier, is_regressor

from shipml.errors import ConfigError
from shipml.models.catalog import CATALOG, families_for


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_auto_is_baselines_first_then_stronger_families(task: str) -> None:
    families = families_for(task, "auto")
    baselines = [f.baseline for f in families]
    assert baselines == sorted(baselines, reverse=True) and sum(baselines) == 2
    assert [f.name for f in families][2:] == ["random_forest", "hist_gradient_boosting", "lightgbm"]
    check = is_classifier if task == "classification" else is_regressor
    assert all(check(f.build(0)) for f in families)


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
