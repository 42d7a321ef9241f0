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


def _lightgbm(task: str) -> Callable[[int], BaseEstimator]:
    def build(seed: int) -> BaseEstimator:
        from lightgbm import LGBMClassifier, LGBMRegressor

        params: dict[str, Any] = {
            "n_estimators": 300,
            "learning_rate": 0.05,
            "num_leaves": 31,
            "subsample": 0.8,
            "subsample_freq": 1,
            "colsample_bytree": 0.8,
            "n_jobs": N_JOBS,
            "verbose": -1,
            "random_state": seed,
        }
        return LGBMClassifier(**params) if task == "classification" else LGBMRegressor(**params)

    return build


def _random_forest(task: str) -> Callable[[int], BaseEstimator]:
    cls = RandomForestClassifier if task == "classification" else RandomForestRegressor
    return lambda seed: cls(n_estimators=200, random_state=seed, n_jobs=N_JOBS)


def _hist_gradient_boosting(task: str) -> Callable[[int], BaseEstimator]:
    if task == "classification":
        return lambda seed: HistGradientBoostingClassifier(random_state=seed)
    return lambda seed: HistGradientBoostingRegressor(random_state=seed)


_STRONGER = (
    ("random_forest", _random_forest, "random forest of 200 trees"),
    ("hist_gradient_boosting", _hist_gradient_boosting, "scikit-learn histogram gradient boosting"),
    ("lightgbm", _lightgbm, "LightGBM gradient boosting"),
)
_BASELINES = {
    "classification": (
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
    ),
    "regression": (
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
    ),
}

# Per task, in the order they are tried: baselines first, then the stronger families.
CATALOG: dict[str, dict[str, Family]] = {
    task: {
        f.name: f
        for f in [
            *baselines,
            *(Family(name, False, make(task), text) for name, make, text in _STRONGER),
        ]
    }
    for task, baselines in _BASELINES.items()
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
