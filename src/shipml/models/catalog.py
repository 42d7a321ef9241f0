"""The catalog of model families shipml trains: baselines first, then the stronger families,
the strongest per second first.

Each family has default hyperparameters (its first, untuned candidate) and a search space that
Optuna samples from (`shipml.training.search`); `training.search: grid` uses the same builders.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import TransformedTargetRegressor
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LogisticRegression, Ridge

from shipml.errors import ConfigError

if TYPE_CHECKING:
    import optuna

N_JOBS = 2  # the machines shipml targets by default have two cores; tree ensembles use both

Params = dict[str, Any]
Space = Callable[["optuna.Trial"], Params]


@dataclass(frozen=True)
class Family:
    """A model family: its estimator for one task, default hyperparameters and search space."""

    name: str
    baseline: bool
    make: Callable[[Params, int], BaseEstimator]
    description: str
    defaults: Params = field(default_factory=dict)
    space: Space | None = None
    # Whether the final model averages the cross-validation fold models (bagging, as AutoGluon
    # does) rather than refitting once: not for forests, which are bagged already and large.
    bag: bool = True
    class_weight: bool = False  # takes class_weight="balanced"
    # Hand-picked configurations the search tries first, after the defaults (points of the
    # space): strong starting points for different kinds of data, as AutoGluon's portfolios.
    portfolio: tuple[Params, ...] = ()
    # How many of the portfolio's first configurations run with the defaults rather than in
    # the search: cheap ones, strong where the defaults are weak, that a short budget whose
    # defaults take most of it would otherwise never reach.
    early: int = 0
    # A configuration's fitting work relative to another's (for a trial's expected time from
    # the family's runs so far); None: every configuration alike.
    work: Callable[[Params], float] | None = None
    # Whether a log-transformed target may be used (not for the mean baseline: it would
    # predict the geometric mean).
    target_transform: bool = True
    # The shipml extra the family needs ("deep": PyTorch); without it, `models: auto` leaves
    # the family out and naming it is a config error.
    optional: str | None = None
    auto: bool = True  # part of `models: auto`
    images_only: bool = False  # needs an image data set (its input shape comes from it)

    @property
    def available(self) -> bool:
        return self.optional is None or deep_available()

    def build(self, seed: int, params: Params | None = None) -> BaseEstimator:
        """The estimator for ``params`` over the defaults. ``target_transform: log`` (set by the
        search for skewed, positive regression targets) fits on log1p(y) and predicts back on
        the original scale."""
        merged = {**self.defaults, **(params or {})}
        transform = merged.pop(TARGET_TRANSFORM, None)
        shift = float(merged.pop(TARGET_SHIFT, 0.0))
        estimator = self.make(merged, seed)
        if transform == "log":
            return TransformedTargetRegressor(
                regressor=estimator, transformer=LogTarget(shift=shift), check_inverse=False
            )
        return estimator


class LogTarget(TransformerMixin, BaseEstimator):
    """log1p of a non-negative target, and back. Predictions come back clipped to one unit
    (a factor of e) beyond the training range on the log scale: an extrapolating linear model
    cannot overflow expm1 into inf.

    A model fitted on log1p(y) predicts about the mean of log1p(y), whose expm1 is below the
    mean of y (by Jensen's inequality; on counts with many zeros by a third). ``shift`` is the
    correction, on the log scale: predictions are ``expm1(z + shift)``, that is (1 + y) scaled
    by ``exp(shift)``. The search learns it out of fold (``Search.debias`` in
    ``shipml.training.search``)."""

    def __init__(self, shift: float = 0.0) -> None:
        self.shift = shift

    def fit(self, y: Any, _: Any = None) -> LogTarget:
        logged = np.log1p(np.asarray(y, dtype=float))
        self.low_ = float(np.nanmin(logged)) - 1.0
        self.high_ = float(np.nanmax(logged)) + 1.0
        return self

    def transform(self, y: Any) -> np.ndarray:
        return np.log1p(np.asarray(y, dtype=float))

    def inverse_transform(self, y: Any) -> np.ndarray:
        logged = np.clip(np.asarray(y, dtype=float), self.low_, self.high_)
        shift = getattr(self, "shift", 0.0)  # a model registered before the correction has none
        return np.expm1(logged + shift if shift else logged)


TARGET_TRANSFORM = "target_transform"  # a config key Family.build takes, not the estimator
# ... and the log target's bias correction (LogTarget's shift), learned out of fold.
TARGET_SHIFT = "target_shift"


def _lightgbm(task: str) -> Callable[[Params, int], BaseEstimator]:
    def make(params: Params, seed: int) -> BaseEstimator:
        from lightgbm import LGBMClassifier, LGBMRegressor

        # deterministic + a fixed histogram layout: LightGBM otherwise picks row- or col-wise
        # by timing both, which can change the model from one run to the next.
        fixed = {
            "subsample_freq": 1,
            "n_jobs": N_JOBS,
            "verbose": -1,
            "random_state": seed,
            "deterministic": True,
            "force_col_wise": True,
        }
        cls = LGBMClassifier if task == "classification" else LGBMRegressor
        return cls(**{**params, **fixed})

    return make


def _lightgbm_space(trial: optuna.Trial) -> Params:
    return {
        # Down to a few dozen trees of a few leaves: on a weak signal (taxi tips) such small
        # models cross-validate far above the defaults (ROC AUC 0.653 against 0.601).
        "n_estimators": trial.suggest_int("n_estimators", 20, 1000, log=True),
        "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.3, log=True),
        "num_leaves": trial.suggest_int("num_leaves", 3, 127, log=True),
        "min_child_samples": trial.suggest_int("min_child_samples", 3, 200, log=True),
        "subsample": trial.suggest_float("subsample", 0.5, 1.0),
        "colsample_bytree": trial.suggest_float("colsample_bytree", 0.3, 1.0),
        "reg_lambda": trial.suggest_float("reg_lambda", 1e-8, 10.0, log=True),
    }


def _lightgbm_work(config: Params) -> float:
    # Boosting rounds times the depth-like growth of the leaves (measured: 60 x 6 leaves took
    # a tenth of 300 x 31).
    return float(config["n_estimators"]) * math.sqrt(float(config["num_leaves"]))


def _catboost(task: str) -> Callable[[Params, int], BaseEstimator]:
    def make(params: Params, seed: int) -> BaseEstimator:
        from catboost import CatBoostClassifier, CatBoostRegressor

        params = dict(params)
        fixed: Params = {
            "thread_count": N_JOBS,
            "random_seed": seed,
            "verbose": 0,
            "allow_writing_files": False,  # no catboost_info/ folder in the user's project
        }
        if params.pop("class_weight", None) == "balanced":
            fixed["auto_class_weights"] = "Balanced"
        if task == "classification":
            return CatBoostClassifier(**params, **fixed)
        return CatBoostRegressor(**params, **fixed)

    return make


def _catboost_space(trial: optuna.Trial) -> Params:
    return {
        # Depth 8 costs about four times depth 6 per iteration: too slow for short budgets.
        "iterations": trial.suggest_int("iterations", 200, 800, step=100),
        "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.2, log=True),
        "depth": trial.suggest_int("depth", 4, 7),
        "l2_leaf_reg": trial.suggest_float("l2_leaf_reg", 1.0, 10.0, log=True),
    }


def _catboost_work(config: Params) -> float:
    return float(config["iterations"]) * 2.0 ** float(config["depth"])  # symmetric trees


def _forest(
    classifier: type[BaseEstimator], regressor: type[BaseEstimator], task: str
) -> Callable[[Params, int], BaseEstimator]:
    cls = classifier if task == "classification" else regressor
    return lambda params, seed: cls(**params, random_state=seed, n_jobs=N_JOBS)


def _forest_space(trial: optuna.Trial) -> Params:
    return {
        "n_estimators": trial.suggest_int("n_estimators", 100, 400, step=50),
        "max_features": trial.suggest_categorical("max_features", ["sqrt", 0.3, 0.5, 0.8, 1.0]),
        "min_samples_leaf": trial.suggest_int("min_samples_leaf", 1, 16, log=True),
        # Few-leaf trees average away noise where fully grown ones fit it.
        "max_leaf_nodes": trial.suggest_categorical("max_leaf_nodes", [None, 16, 64, 256]),
    }


def _forest_work(config: Params) -> float:
    return float(config["n_estimators"])


def _hist_gradient_boosting(task: str) -> Callable[[Params, int], BaseEstimator]:
    cls = (
        HistGradientBoostingClassifier
        if task == "classification"
        else HistGradientBoostingRegressor
    )
    return lambda params, seed: cls(**params, random_state=seed)


def _hgb_space(trial: optuna.Trial) -> Params:
    return {
        "max_iter": trial.suggest_int("max_iter", 100, 600, step=50),
        "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.3, log=True),
        "max_leaf_nodes": trial.suggest_int("max_leaf_nodes", 7, 127, log=True),
        "min_samples_leaf": trial.suggest_int("min_samples_leaf", 3, 100, log=True),
        "l2_regularization": trial.suggest_float("l2_regularization", 1e-8, 10.0, log=True),
    }


def _hgb_work(config: Params) -> float:
    return float(config["max_iter"]) * math.sqrt(float(config["max_leaf_nodes"]))


def deep_available() -> bool:
    """Whether PyTorch is installed (`pip install shipml[deep]`): the `mlp` family needs it."""
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def _hidden(width: int, depth: int) -> tuple[int, ...]:
    """A funnel: ``depth`` layers, halving from ``width`` (at least 16 units)."""
    return tuple(max(width // 2**i, 16) for i in range(depth))


def _mlp(task: str) -> Callable[[Params, int], BaseEstimator]:
    def make(params: Params, seed: int) -> BaseEstimator:
        from shipml.models.torch_mlp import TorchMLPClassifier, TorchMLPRegressor

        params = dict(params)
        width, depth = params.pop("width", None), params.pop("depth", None)
        if width is not None or depth is not None:
            params["hidden_layer_sizes"] = _hidden(int(width or 128), int(depth or 2))
        cls = TorchMLPClassifier if task == "classification" else TorchMLPRegressor
        return cls(**params, random_state=seed)

    return make


def _mlp_space(trial: optuna.Trial) -> Params:
    return {
        "width": trial.suggest_int("width", 32, 512, log=True),
        "depth": trial.suggest_int("depth", 1, 3),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        "learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [64, 128, 256, 512]),
    }


def _cnn(params: Params, seed: int) -> BaseEstimator:
    from shipml.models.torch_cnn import TorchCNNClassifier

    params = dict(params)
    blocks = params.pop("blocks", None)
    if blocks is not None:  # conv-pool blocks doubling from 32 channels
        params["conv_channels"] = tuple(32 * 2**i for i in range(int(blocks)))
    return TorchCNNClassifier(**params, random_state=seed)


def _cnn_space(trial: optuna.Trial) -> Params:
    return {
        "blocks": trial.suggest_int("blocks", 1, 3),
        "dense_units": trial.suggest_categorical("dense_units", [64, 128, 256]),
        "dropout": trial.suggest_float("dropout", 0.1, 0.6),
        "learning_rate": trial.suggest_float("learning_rate", 3e-4, 3e-3, log=True),
    }


def _keras(task: str) -> Callable[[Params, int], BaseEstimator]:
    def make(params: Params, seed: int) -> BaseEstimator:
        from shipml.models.keras_model import KerasClassifier, KerasRegressor

        params = dict(params)
        width, depth = params.pop("width", None), params.pop("depth", None)
        if width is not None or depth is not None:
            params["hidden_layer_sizes"] = _hidden(int(width or 128), int(depth or 2))
        cls = KerasClassifier if task == "classification" else KerasRegressor
        return cls(**params, random_state=seed)

    return make


def _keras_space(trial: optuna.Trial) -> Params:
    space = _mlp_space(trial)
    del space["weight_decay"]
    return space


def _logistic_space(trial: optuna.Trial) -> Params:
    return {"C": trial.suggest_float("C", 1e-3, 100.0, log=True)}


def _ridge_space(trial: optuna.Trial) -> Params:
    return {"alpha": trial.suggest_float("alpha", 1e-3, 1e3, log=True)}


def _stronger(task: str) -> list[Family]:
    # Defaults name every hyperparameter of the space: they are the search's first trial.
    forest = {
        "n_estimators": 200,
        "max_features": "sqrt" if task == "classification" else 1.0,
        "min_samples_leaf": 1,
        "max_leaf_nodes": None,
    }
    # Weak signals: few-leaf trees on half the columns (taxi tips: CV ROC AUC 0.655 against
    # 0.601 for fully grown trees).
    forest_portfolio = ({**forest, "max_features": 0.5, "max_leaf_nodes": 16},)
    # Strongest per second first: on wide tables a forest can take most of a short budget.
    return [
        Family(
            "lightgbm",
            False,
            _lightgbm(task),
            "LightGBM gradient boosting",
            {
                "n_estimators": 300,
                "learning_rate": 0.05,
                "num_leaves": 31,
                "min_child_samples": 20,
                "subsample": 0.8,
                "colsample_bytree": 0.8,
                "reg_lambda": 1e-8,
            },
            _lightgbm_space,
            class_weight=True,
            early=1,
            work=_lightgbm_work,
            portfolio=(
                # Weak signals: a few dozen small trees, a tenth of the defaults' time (taxi
                # tips: CV ROC AUC 0.653 against 0.601); tried with the defaults.
                {
                    "n_estimators": 60,
                    "learning_rate": 0.05,
                    "num_leaves": 6,
                    "min_child_samples": 20,
                    "subsample": 0.9,
                    "colsample_bytree": 0.8,
                    "reg_lambda": 0.1,
                },
                # Noisy targets: shallow, slow, heavily subsampled.
                {
                    "n_estimators": 500,
                    "learning_rate": 0.02,
                    "num_leaves": 15,
                    "min_child_samples": 50,
                    "subsample": 0.7,
                    "colsample_bytree": 0.5,
                    "reg_lambda": 1.0,
                },
                # Clean, structured targets: many leaves, small leaves.
                {
                    "n_estimators": 400,
                    "learning_rate": 0.03,
                    "num_leaves": 127,
                    "min_child_samples": 3,
                    "subsample": 0.9,
                    "colsample_bytree": 0.9,
                    "reg_lambda": 1e-8,
                },
            ),
        ),
        Family(
            "catboost",
            False,
            _catboost(task),
            "CatBoost gradient boosting (symmetric trees)",
            {"iterations": 500, "learning_rate": 0.06, "depth": 6, "l2_leaf_reg": 3.0},
            _catboost_space,
            class_weight=True,
            work=_catboost_work,
        ),
        Family(
            "hist_gradient_boosting",
            False,
            _hist_gradient_boosting(task),
            "scikit-learn histogram gradient boosting",
            {
                "max_iter": 100,
                "learning_rate": 0.1,
                "max_leaf_nodes": 31,
                "min_samples_leaf": 20,
                "l2_regularization": 1e-8,
            },
            _hgb_space,
            bag=False,  # refitted once: five fold copies of hundreds of trees save and load slowly
            class_weight=True,
            work=_hgb_work,
        ),
        Family(
            "random_forest",
            False,
            _forest(RandomForestClassifier, RandomForestRegressor, task),
            "random forest",
            forest,
            _forest_space,
            bag=False,
            class_weight=True,
            work=_forest_work,
            portfolio=forest_portfolio,
        ),
        Family(
            "extra_trees",
            False,
            _forest(ExtraTreesClassifier, ExtraTreesRegressor, task),
            "extremely randomised trees",
            forest,
            _forest_space,
            bag=False,
            class_weight=True,
            work=_forest_work,
        ),
        Family(
            "mlp",
            False,
            _mlp(task),
            "PyTorch multilayer perceptron (Adam, early stopping, learning-rate schedule)",
            {
                "width": 128,
                "depth": 2,
                "dropout": 0.1,
                "learning_rate": 1e-3,
                "weight_decay": 1e-4,
                # Small tables (a few hundred rows per fold) still get several steps an epoch.
                "batch_size": 128,
            },
            _mlp_space,
            class_weight=task == "classification",
            optional="deep",
        ),
        *(
            [
                Family(
                    "cnn",
                    False,
                    _cnn,
                    "PyTorch convolutional network for images (conv-pool blocks, dropout, "
                    "light augmentation)",
                    {"blocks": 2, "dense_units": 128, "dropout": 0.5, "learning_rate": 1e-3},
                    _cnn_space,
                    class_weight=True,
                    optional="deep",
                    images_only=True,
                )
            ]
            if task == "classification"
            else []
        ),
        Family(
            "keras",
            False,
            _keras(task),
            "Keras 3 network (torch backend): the built-in Dense/Dropout net or the user's "
            "build_model (training.params.keras.build_model)",
            {"width": 128, "depth": 2, "dropout": 0.1, "learning_rate": 1e-3, "batch_size": 128},
            _keras_space,
            class_weight=task == "classification",
            optional="deep",
            auto=False,  # for users who write Keras: named in training.models
        ),
    ]


_BASELINES = {
    "classification": (
        Family(
            "majority",
            True,
            lambda params, seed: DummyClassifier(strategy="prior"),
            "predicts the class shares of the training data (baseline)",
        ),
        Family(
            "logistic_regression",
            True,
            lambda params, seed: LogisticRegression(max_iter=2000, random_state=seed, **params),
            "L2-regularised logistic regression (baseline)",
            {"C": 1.0},
            _logistic_space,
            class_weight=True,
        ),
    ),
    "regression": (
        Family(
            "mean",
            True,
            lambda params, seed: DummyRegressor(strategy="mean"),
            "predicts the training mean (baseline)",
            target_transform=False,
        ),
        Family(
            "ridge",
            True,
            lambda params, seed: Ridge(random_state=seed, **params),
            "ridge regression (baseline)",
            {"alpha": 1.0},
            _ridge_space,
        ),
    ),
}

# Per task, in the order they are tried: baselines first, then the stronger families.
CATALOG: dict[str, dict[str, Family]] = {
    task: {f.name: f for f in [*baselines, *_stronger(task)]}
    for task, baselines in _BASELINES.items()
}


def families_for(
    task: str, models: str | list[str], baselines: bool = True, images: bool = False
) -> list[Family]:
    """The families to train, in catalog order; ``models`` is 'auto' or names. The baselines
    run too, so every leaderboard shows what a trivial model scores, unless ``baselines`` is
    False (then only the stronger or named families compete: the model is of a family the user
    chose, e.g. for a benchmark)."""
    catalog = CATALOG[task]
    if models != "auto":
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
    named = set(catalog) if models == "auto" else set(models)
    for name in named if models != "auto" else ():
        if catalog[name].images_only and not images:
            raise ConfigError(
                f"training.models: '{name}' is for image data sets",
                "point data.path at an image folder or an .npz, or remove it from training.models",
            )
        if not catalog[name].available:
            raise ConfigError(
                f"training.models: '{name}' needs PyTorch, which is not installed",
                f'pip install "shipml[{catalog[name].optional}]" (install torch==2.13.0 first '
                "for the CPU build), or remove it from training.models",
            )
    return [
        f
        for f in catalog.values()
        if (f.baseline and baselines)
        or (
            f.name in named
            and (not f.baseline or models != "auto")
            and f.available
            and (f.auto or models != "auto")
            and (images or not f.images_only)
        )
    ]


def resolve_grid(
    task: str, families: list[Family], param_grid: dict[str, Any]
) -> dict[str, dict[str, list[Any]]]:
    """``training.param_grid`` as {family: {param: values}}, checked against the estimators.

    A grid keyed by family names is taken as it is; a flat, cheat-sheet style grid
    ({n_estimators: [...], max_depth: [...]}) applies to every chosen non-baseline family whose
    estimator takes all of its parameters."""
    catalog = CATALOG[task]
    chosen = {f.name: f for f in families}
    keyed = [k for k in param_grid if k in catalog]
    if keyed and len(keyed) != len(param_grid):
        other = next(k for k in param_grid if k not in catalog)
        raise ConfigError(
            f"training.param_grid mixes model families and parameters ('{keyed[0]}', '{other}')",
            "key it by family ({random_forest: {max_depth: [...]}}) or give parameters only",
        )
    if keyed:
        grids = {}
        for name, grid in param_grid.items():
            if name not in chosen:
                raise ConfigError(
                    f"training.param_grid.{name}: '{name}' is not among training.models",
                    "add it to training.models or remove it from the grid",
                )
            if not isinstance(grid, dict):
                raise ConfigError(
                    f"training.param_grid.{name}: expected a mapping of parameter: [values]",
                    "for example {max_depth: [null, 10, 20]}",
                )
            grids[name] = _checked_grid(chosen[name], grid, f"training.param_grid.{name}")
        return grids
    _checked_values(param_grid, "training.param_grid")
    takers = [f for f in families if not f.baseline and set(param_grid) <= _param_names(f)]
    if not takers:
        raise ConfigError(
            f"training.param_grid: no model family takes all of {', '.join(param_grid)}",
            "key the grid by family, e.g. {random_forest: {n_estimators: [100, 300]}}",
        )
    return {f.name: dict(param_grid) for f in takers}


def resolve_params(
    task: str, families: list[Family], params: dict[str, dict[str, Any]]
) -> dict[str, Params]:
    """``training.params`` checked against the chosen families' estimators."""
    chosen = {f.name: f for f in families}
    for name, values in params.items():
        if name not in CATALOG[task]:
            raise ConfigError(
                f"training.params.{name}: unknown model family for {task}",
                f"use some of: {', '.join(CATALOG[task])}",
            )
        if name not in chosen:
            raise ConfigError(
                f"training.params.{name}: '{name}' is not among training.models",
                "add it to training.models or remove it from training.params",
            )
        if not isinstance(values, dict):
            raise ConfigError(
                f"training.params.{name}: expected a mapping of parameter: value",
                "for example {n_estimators: 100}",
            )
        _check_known(chosen[name], values, f"training.params.{name}")
    return {name: dict(values) for name, values in params.items()}


def _param_names(family: Family) -> set[str]:
    """The hyperparameters a grid may set: the estimator's (CatBoost lists only those given to
    it, so its constructor's names too), and class_weight where the family takes it."""
    estimator = family.build(0)
    names = set(estimator.get_params(deep=False))
    names |= {
        p.name
        for p in inspect.signature(type(estimator).__init__).parameters.values()
        if p.name != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD
    }
    if family.class_weight:
        names.add("class_weight")
    return names | set(family.defaults)  # the family's own names too (the MLP's width, depth)


def _checked_values(grid: dict[str, Any], where: str) -> None:
    for param, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(
                f"{where}.{param}: expected a non-empty list of values (got {values!r})",
                f"for example {param}: [{values!r}]" if values is not None else None,
            )


def _check_known(family: Family, params: dict[str, Any], where: str) -> None:
    known = _param_names(family)
    for param in params:
        if param not in known:
            raise ConfigError(
                f"{where}.{param}: not a parameter of {type(family.build(0)).__name__}",
                f"its parameters: {', '.join(sorted(known))}",
            )


def _checked_grid(family: Family, grid: dict[str, Any], where: str) -> dict[str, list[Any]]:
    _checked_values(grid, where)
    _check_known(family, grid, where)
    return dict(grid)
