"""The catalog of model families shipml trains: baselines first, then stronger, cheapest first."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sklearn.base import BaseEstimator
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LogisticRegression, Ridge

from shipml.errors import ConfigError

N_JOBS = 2  # the machines shipml targets by default have two cores; tree ensembles use both


@dataclass(frozen=True)
class Family:
    """A model family: how to build its estimator for one task, and whether it is a baseline."""

    name: str
    baseline: bool
    build: Callable[[int], BaseEstimator]
    description: str


def _lgbm_classifier(seed: int) -> BaseEstimator:
    from lightgbm import LGBMClassifier

    return LGBMClassifier(**_LGBM_PARAMS, random_state=seed)


def _lgbm_regressor(seed: int) -> BaseEstimator:
    from lightgbm import LGBMRegressor

    return LGBMRegressor(**_LGBM_PARAMS, random_state=seed)


_LGBM_PARAMS: dict[str, Any] = {
    "n_estimators": 300,
    "learning_rate": 0.05,
    "num_leaves": 31,
    "subsample": 0.8,
    "subsample_freq": 1,
    "colsample_bytree": 0.8,
    "n_jobs": N_JOBS,
    "verbose": -1,
}

CATALOG: dict[str, dict[str, Family]] = {
    "classification": {
        f.name: f
        for f in [
            Family(
                "majority",
                True,
                lambda seed: DummyClassifier(strategy="prior"),
                "predicts the class shares of the training data (baseline)",
            ),
            Family(
                "logistic_regression",
                True,
                lambda seed: LogisticRegression(max_iter=2000, random_state=seed),
                "L2-regularised logistic regression (baseline)",
            ),
            Family(
                "random_forest",
                False,
                lambda seed: RandomForestClassifier(
                    n_estimators=200, random_state=seed, n_jobs=N_JOBS
                ),
                "random forest of 200 trees",
            ),
            Family(
                "hist_gradient_boosting",
                False,
                lambda seed: HistGradientBoostingClassifier(random_state=seed),
                "scikit-learn histogram gradient boosting",
            ),
            Family("lightgbm", False, _lgbm_classifier, "LightGBM gradient boosting"),
        ]
    },
    "regression": {
        f.name: f
        for f in [
            Family(
                "mean",
                True,
                lambda seed: DummyRegressor(strategy="mean"),
                "predicts the training mean (baseline)",
            ),
            Family(
                "ridge",
                True,
                lambda seed: Ridge(alpha=1.0, random_state=seed),
                "ridge regression (baseline)",
            ),
            Family(
                "random_forest",
                False,
                lambda seed: RandomForestRegressor(
                    n_estimators=200, random_state=seed, n_jobs=N_JOBS
                ),
                "random forest of 200 trees",
            ),
            Family(
                "hist_gradient_boosting",
                False,
                lambda seed: HistGradientBoostingRegressor(random_state=seed),
                "scikit-learn histogram gradient boosting",
            ),
            Family("lightgbm", False, _lgbm_regressor, "LightGBM gradient boosting"),
        ]
    },
}


def families_for(task: str, models: str | list[str]) -> list[Family]:
    """The families to train, in catalog order; ``models`` is 'auto' or names. The baselines
    always run, so every leaderboard shows what a trivial model scores."""
    catalog = CATALOG[task]
    if models == "auto":
        return list(catalog.values())
    unknown = [m for m in models if m not in catalog]
    if unknown:
        raise ConfigError(
            f"training.models: unknown model family '{unknown[0]}' for {task}",
            f"use 'auto' or some of: {', '.join(catalog)}",
        )
    if not models:
        raise ConfigError(
            "training.models is empty", f"use 'auto' or some of: {', '.join(catalog)}"
        )
    return [f for f in catalog.values() if f.baseline or f.name in models]


def build_ensemble(task: str, members: dict[str, int], seed: int) -> BaseEstimator:
    """The soft-voting ensemble the leaderboard's 'ensemble' entry stands for."""
    from sklearn.ensemble import VotingClassifier, VotingRegressor

    catalog = CATALOG[task]
    estimators = [(name, catalog[name].build(seed)) for name in members]
    weights = [members[name] for name in members]
    if task == "classification":
        return VotingClassifier(estimators, voting="soft", weights=weights)
    return VotingRegressor(estimators, weights=weights)
