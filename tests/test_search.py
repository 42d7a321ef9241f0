"""The search: defaults first, Optuna trials (pruned, reproducible), grid, budget shares,
class weights and the decision threshold."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer

from shipml.config import FeaturesConfig, TrainingConfig
from shipml.data.infer import infer_schema
from shipml.errors import ConfigError
from shipml.models.catalog import families_for, resolve_grid
from shipml.training.final import choose_threshold, threshold_metric
from shipml.training.folds import prepare_folds
from shipml.training.leaderboard import CandidateResult
from shipml.training.search import (
    Search,
    class_weight_policy,
    run_search,
    target_transform_policy,
)


@pytest.fixture(scope="module")
def small_folds():
    data = load_breast_cancer(as_frame=True)
    df = data.frame.sample(300, random_state=0).reset_index(drop=True)
    schema = infer_schema(df, "target")
    X, y = df.drop(columns="target"), df["target"]
    return prepare_folds(X, y, schema, FeaturesConfig(), 3, 0, ordered=False)


def _search(folds, trials: int, models=("lightgbm",), **training):
    config = TrainingConfig(trials=trials, ensemble=False, **training)
    families = families_for("classification", list(models))
    far = time.monotonic() + 3600
    return run_search(families, folds, "classification", "roc_auc", config, far)


def test_fixed_trials_are_reproducible_and_every_trial_is_on_the_board(small_folds) -> None:
    first = _search(small_folds, 6)
    second = _search(small_folds, 6)
    assert first.trials == second.trials == 6
    names = [r.name for r in first.leaderboard.results]
    # The defaults and LightGBM's early portfolio configuration open the board.
    assert names[:4] == ["majority", "logistic_regression", "lightgbm", "lightgbm#1"]
    # Six trials beyond them, numbered after each family's earlier ones.
    tuned = first.leaderboard.results[4:]
    assert len(tuned) == 6 and all(r.trial > 0 for r in tuned)
    assert {r.family for r in tuned} <= {"logistic_regression", "lightgbm"}
    assert [r.config for r in first.leaderboard.results] == [
        r.config for r in second.leaderboard.results
    ]
    assert [r.fold_scores for r in first.leaderboard.results] == [
        r.fold_scores for r in second.leaderboard.results
    ]
    assert len({str(r.config) for r in tuned}) == 6  # the sampler explores
    assert len(first.history) == len(first.leaderboard.results)


def test_another_seed_samples_other_trials(small_folds) -> None:
    # Beyond the portfolio configurations, which every seed tries alike.
    a = _search(small_folds, 5, seed=1)
    b = _search(small_folds, 5, seed=2)
    configs = lambda s: [r.config for r in s.leaderboard.results if r.trial > 0]  # noqa: E731
    assert configs(a) != configs(b)


def test_a_time_budget_stops_the_search(small_folds) -> None:
    config = TrainingConfig(ensemble=False)
    families = families_for("classification", ["lightgbm"])
    started = time.monotonic()
    result = run_search(families, small_folds, "classification", "roc_auc", config, started + 4)
    assert time.monotonic() - started < 10
    assert result.trials >= 1  # it searched while there was time...
    assert result.leaderboard.results[-1].status in ("ok", "pruned", "stopped")  # ...and stopped


def test_a_default_that_cannot_finish_is_not_started(small_folds) -> None:
    """Once the time left is under the cheapest defaults seen, a family's defaults are skipped
    (not started and stopped after a fold); the early configuration runs while its work fits."""
    config = TrainingConfig(ensemble=False)
    families = families_for("classification", ["lightgbm", "random_forest"])
    deadline = time.monotonic() + 3600
    left: dict[str, float] = {}

    def reserve(results: list[CandidateResult]) -> float:
        # Once LightGBM's defaults are in, a little less than their time is left: enough for
        # the early configuration (a tenth of their work), not for another family's defaults.
        done = len(small_folds)
        runs = [r for r in results if r.name == "lightgbm" and len(r.fold_outputs) == done]
        if not runs:
            return 0.0
        left.setdefault("after", 0.95 * runs[0].fit_seconds)
        return deadline - time.monotonic() - left["after"]

    search = Search(
        families, small_folds, "classification", "roc_auc", config, deadline, None,
        reserve=reserve,
    )  # fmt: skip
    search.run_defaults()
    statuses = {r.name: (r.status, r.reason) for r in search.results}
    assert statuses["lightgbm"][0] == statuses["lightgbm#1"][0] == "ok"
    assert statuses["random_forest"] == ("skipped", "time budget used up")


def test_a_default_cut_short_counts_at_all_its_folds_in_the_opening(small_folds) -> None:
    """A family's defaults stopped after one fold (a short budget) tell the next family's
    defaults what a full run costs: their fold's time times the folds, not nothing."""
    config = TrainingConfig(ensemble=False)
    families = families_for("classification", ["lightgbm", "random_forest"])
    search = Search(families, small_folds, "classification", "roc_auc", config, 1e12, None)
    forest = next(f for f in families if f.name == "random_forest")
    assert search.opening_cost(forest, 0, {}) == 0.0  # nothing measured yet
    stopped = CandidateResult(
        "lightgbm", "", False, {}, family="lightgbm", trial=0, status="stopped", fit_seconds=0.5
    )
    stopped.fold_outputs = [np.zeros(2)]
    search.results.append(stopped)
    assert search.opening_cost(forest, 0, {}) == pytest.approx(0.5 * len(small_folds))


def test_pruned_trials_stop_early(small_folds) -> None:
    config = TrainingConfig(trials=0)
    family = families_for("classification", ["lightgbm"])[-1]
    search = Search([family], small_folds, "classification", "roc_auc", config, 1e12, None)
    result = search.evaluate(family, 1, family.defaults, report=lambda step, value: True)
    assert result.status == "pruned" and len(result.fold_outputs) == 1
    assert not result.fold_models  # a pruned trial never reaches the final model


def test_the_best_family_gets_the_most_turns(small_folds) -> None:
    config = TrainingConfig()
    families = families_for("classification", "auto")
    search = Search(families, small_folds, "classification", "roc_auc", config, 1e12, None)
    scores = {"logistic_regression": 0.9, "random_forest": 0.95, "lightgbm": 0.99}
    for name, score in scores.items():
        r = CandidateResult(name, "", False, {}, family=name, fold_scores={"roc_auc": [score]})
        search.results.append(r)
    tunable = [f for f in families if f.name in scores]
    taken = {f.name: 0 for f in tunable}
    for _ in range(14):
        taken[search.next_family(tunable, taken).name] += 1
    assert taken == {"lightgbm": 8, "random_forest": 4, "logistic_regression": 2}


def test_grid_runs_every_combination_in_order(small_folds) -> None:
    grid = {"n_estimators": [20, 40], "min_samples_leaf": [1, 5]}
    families = families_for("classification", ["random_forest"])
    config = TrainingConfig(search="grid", param_grid=grid, ensemble=False)
    resolved = resolve_grid("classification", families, grid)
    result = run_search(
        families,
        small_folds,
        "classification",
        "roc_auc",
        config,
        time.monotonic() + 3600,
        resolved,
    )
    trials = [r for r in result.leaderboard.results if r.trial > 0]
    # scikit-learn's ParameterGrid order: the last parameter name varies fastest.
    assert [(r.config["min_samples_leaf"], r.config["n_estimators"]) for r in trials] == [
        (1, 20),
        (1, 40),
        (5, 20),
        (5, 40),
    ]
    assert all(r.status == "ok" for r in trials) and result.trials == 4


def test_ensemble_joins_and_keeps_its_members_fold_outputs(small_folds) -> None:
    config = TrainingConfig(trials=2)
    families = families_for("classification", ["lightgbm", "random_forest"])
    result = run_search(
        families, small_folds, "classification", "log_loss", config, time.monotonic() + 3600
    )
    ensembles = [r for r in result.leaderboard.results if r.name == "ensemble"]
    # On these folds the logistic regression and the trees mix to a lower log loss than either.
    assert len(ensembles) == 1
    ensemble = ensembles[0]
    singles = [r for r in result.leaderboard.results if r.name != "ensemble" and r.status == "ok"]
    assert ensemble.mean("log_loss") < min(r.mean("log_loss") for r in singles)
    assert result.leaderboard.best is ensemble
    assert len(ensemble.fold_outputs) == len(small_folds)
    assert len(ensemble.members) >= 2 and set(ensemble.members) <= {r.name for r in singles}


def test_class_weight_policy() -> None:
    balanced = pd.Series([0, 1] * 50)
    skewed = pd.Series([0] * 90 + [1] * 10)
    assert class_weight_policy("auto", "f1_macro", balanced, "classification")[0] is None
    assert class_weight_policy("auto", "f1_macro", skewed, "classification")[0] == "balanced"
    assert class_weight_policy("auto", "roc_auc", skewed, "classification")[0] is None
    assert class_weight_policy("balanced", "roc_auc", balanced, "classification")[0] == "balanced"
    assert class_weight_policy("none", "f1_macro", skewed, "classification")[0] is None
    assert class_weight_policy("auto", "rmse", skewed, "regression")[0] is None


def test_weighted_defaults_when_the_data_calls_for_it(small_folds) -> None:
    config = TrainingConfig(trials=0, ensemble=False)
    families = families_for("classification", ["lightgbm"])
    result = run_search(
        families, small_folds, "classification", "f1_macro", config, 1e12, class_weight="balanced"
    )
    by_name = {r.name: r for r in result.leaderboard.results}
    assert by_name["lightgbm"].config["class_weight"] == "balanced"
    assert by_name["logistic_regression"].params["class_weight"] == "balanced"
    assert "class_weight" not in by_name["majority"].config


def test_target_transform_policy() -> None:
    skewed = pd.Series(np.exp(np.random.default_rng(0).normal(10, 1, 500)))  # prices
    symmetric = pd.Series(np.random.default_rng(0).normal(10, 1, 500))
    # skewed and >= 0: a candidate for log1p, which the search then decides by cross-validation
    assert target_transform_policy("auto", skewed, "regression")[0] == "auto"
    assert target_transform_policy("auto", symmetric, "regression")[0] is None
    assert target_transform_policy("auto", skewed - skewed.median(), "regression")[0] is None
    assert target_transform_policy("none", skewed, "regression")[0] is None
    assert target_transform_policy("log", symmetric, "regression")[0] == "log"
    assert target_transform_policy("auto", skewed, "classification")[0] is None
    with pytest.raises(ConfigError, match=r"target_transform: log needs a target >= 0"):
        target_transform_policy("log", symmetric - 20, "regression")


def test_log_target_reaches_every_candidate_but_the_mean() -> None:
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=200), "b": rng.normal(size=200)})
    y = pd.Series(np.exp(2 + X["a"] + 0.3 * rng.normal(size=200)), name="y")
    schema = infer_schema(X.assign(y=y), "y", "regression")
    folds = prepare_folds(X, y, schema, FeaturesConfig(), 3, 0, ordered=False)
    families = families_for("regression", ["lightgbm"])
    config = TrainingConfig(trials=2, ensemble=False)
    result = run_search(families, folds, "regression", "rmse", config, 1e12, target_transform="log")
    by_family: dict[str, list[CandidateResult]] = {}
    for r in result.leaderboard.results:
        by_family.setdefault(r.family, []).append(r)
    assert [r.config.get("target_transform") for r in by_family["mean"]] == [None]
    for r in by_family["ridge"] + by_family["lightgbm"]:
        assert r.status == "ok"
        assert r.config["target_transform"] == r.params["target_transform"] == "log"
    # defaults, the early portfolio configuration, two trials
    assert len(by_family["lightgbm"]) + len(by_family["ridge"]) == 2 + 1 + 2


def test_catboost_cross_validates_with_class_weights(small_folds) -> None:
    grid = {"catboost": {"iterations": [100], "class_weight": [None, "balanced"]}}
    families = families_for("classification", ["catboost"])
    config = TrainingConfig(search="grid", param_grid=grid, ensemble=False)
    resolved = resolve_grid("classification", families, grid)
    # The defaults with the grid's iterations too: 500 would cost five times as much.
    result = run_search(
        families,
        small_folds,
        "classification",
        "roc_auc",
        config,
        1e12,
        resolved,
        fixed={"catboost": {"iterations": 100}},
    )
    boosted = [r for r in result.leaderboard.results if r.family == "catboost"]
    assert [r.status for r in boosted] == ["ok", "ok", "ok"]
    assert all(r.mean("roc_auc") > 0.95 for r in boosted)
    assert [r.params.get("auto_class_weights") for r in boosted] == [None, None, "Balanced"]


def _proba(p1: list[float]) -> np.ndarray:
    p = np.asarray(p1)
    return np.column_stack([1 - p, p])


def test_threshold_is_chosen_on_out_of_fold_predictions() -> None:
    # Positives score 0.30-0.40 and negatives below 0.2: 0.5 calls every positive negative.
    y = pd.Series([1, 1, 1, 0, 0, 0, 0, 0])
    out = _proba([0.3, 0.35, 0.4, 0.1, 0.15, 0.05, 0.12, 0.18])
    choice = choose_threshold([out, out], [y, y], np.array([0, 1]), "accuracy")
    assert 0.18 < choice.threshold <= 0.3
    assert choice.score == 1.0 and choice.score_at_half == pytest.approx(5 / 8)


def test_threshold_stays_at_half_when_nothing_is_better() -> None:
    y = pd.Series([1, 1, 0, 0])
    out = _proba([0.9, 0.8, 0.1, 0.2])
    choice = choose_threshold([out], [y], np.array([0, 1]), "balanced_accuracy")
    assert choice.threshold == 0.5 and choice.score == 1.0


def test_threshold_metric_follows_the_configured_metric() -> None:
    assert threshold_metric("f1_macro", None) == "f1_macro"
    assert threshold_metric("roc_auc", None) == "accuracy"
    assert threshold_metric("roc_auc", "balanced") == "balanced_accuracy"


def test_vectorised_threshold_scores_match_scikit_learn() -> None:
    from functools import partial

    from sklearn import metrics as skm

    from shipml.training.final import binary_scores

    rng = np.random.default_rng(0)
    positive = rng.random(200) < 0.3
    p1 = np.clip(positive * 0.3 + rng.random(200) * 0.7, 0, 1)
    thresholds = np.array([0.0, 0.2, 0.5, 0.73, 0.99, 1.5])
    ours = binary_scores(positive, p1, thresholds)
    reference = {
        "accuracy": skm.accuracy_score,
        "balanced_accuracy": skm.balanced_accuracy_score,
        "f1_macro": partial(skm.f1_score, average="macro", zero_division=0),
        "f1_weighted": partial(skm.f1_score, average="weighted", zero_division=0),
        "precision_macro": partial(skm.precision_score, average="macro", zero_division=0),
        "recall_macro": partial(skm.recall_score, average="macro", zero_division=0),
    }
    for name, score in reference.items():
        expected = [score(positive, p1 >= t) for t in thresholds]
        np.testing.assert_allclose(ours[name], expected, err_msg=name)


def test_portfolio_configurations_are_tried_first(small_folds) -> None:
    family = families_for("classification", ["lightgbm"])[-1]
    result = _search(small_folds, len(family.portfolio) - family.early)
    tuned = [r for r in result.leaderboard.results if r.trial > 0]
    assert [r.family for r in tuned] == ["lightgbm"] * len(family.portfolio)
    assert [r.trial for r in tuned] == list(range(1, len(family.portfolio) + 1))
    for r, config in zip(tuned, family.portfolio, strict=True):
        assert {k: r.config[k] for k in config} == config


def test_a_portfolio_trial_is_costed_by_its_work(small_folds) -> None:
    """Seconds per unit of work from the family's runs so far, times the configuration's
    work: the small-tree configuration is expected to cost a fraction of the large one."""
    family = families_for("classification", ["lightgbm"])[-1]
    assert family.work is not None and family.early == 1
    search = Search(
        [family], small_folds, "classification", "roc_auc", TrainingConfig(), 1e12, None
    )
    search.run_defaults()
    runs = [r for r in search.results if r.status == "ok"]
    assert [r.trial for r in runs] == [0, 1]  # the defaults and the early configuration
    rate = np.mean([r.fit_seconds / family.work(r.config) for r in runs])
    small, large = family.portfolio[0], family.portfolio[-1]
    assert search.cost(family, small) == pytest.approx(rate * family.work(small))
    assert search.cost(family, large) / search.cost(family, small) == pytest.approx(
        family.work(large) / family.work(small)
    )
    assert family.work(large) > 10 * family.work(small)
    # A sampled trial's configuration is not known ahead: twice the defaults' time (the early
    # configuration is not a sampled trial).
    assert search.cost(family) == pytest.approx(2 * runs[0].fit_seconds)


def test_a_trial_cut_short_counts_at_what_all_its_folds_would_take(small_folds) -> None:
    """A trial stopped for time after one fold would have taken k times that fold: the next
    trial's expected cost says so, instead of following only the trials that finished."""
    from shipml.training.leaderboard import CandidateResult

    family = families_for("classification", ["random_forest"])[-1]
    search = Search(
        [family], small_folds, "classification", "roc_auc", TrainingConfig(), 1e12, None
    )
    k = len(small_folds)

    def trial(number: int, status: str, folds: int, seconds: float) -> CandidateResult:
        r = CandidateResult(f"random_forest#{number}", "", False, {}, family="random_forest")
        r.trial, r.status, r.fit_seconds = number, status, seconds
        r.fold_outputs = [np.zeros(1)] * folds
        return r

    search.results = [trial(0, "ok", k, 1.0), trial(1, "ok", k, 1.0)]
    assert search.cost(family) == pytest.approx(1.0)  # the tuned trial so far
    search.results.append(trial(2, "stopped", 1, 2.0))  # 2 s for one fold: 2k s in all
    assert search.cost(family) == pytest.approx((1.0 + 2.0 * k) / 2)
    search.results.append(trial(3, "pruned", 2, 1.0))  # pruned after two folds of 0.5 s
    assert search.cost(family) == pytest.approx((1.0 + 2.0 * k + 0.5 * k) / 3)
    # Nothing learned from a trial that never finished a fold, or failed.
    search.results += [trial(4, "stopped", 0, 0.0), trial(5, "failed", 1, 9.0)]
    assert search.cost(family) == pytest.approx((1.0 + 2.0 * k + 0.5 * k) / 3)


def test_fixed_params_hold_in_defaults_and_every_trial(small_folds) -> None:
    config = TrainingConfig(trials=3, ensemble=False)
    families = families_for("classification", ["random_forest"])
    result = run_search(
        families,
        small_folds,
        "classification",
        "roc_auc",
        config,
        1e12,
        fixed={"random_forest": {"n_estimators": 30}},
    )
    forests = [r for r in result.leaderboard.results if r.family == "random_forest"]
    assert len(forests) >= 2
    assert all(r.params["n_estimators"] == 30 for r in forests)


def test_a_failed_fit_says_why_in_one_line_even_without_a_message() -> None:
    from shipml.training.search import failure

    assert failure(ValueError("bad value\nmore detail")) == "ValueError: bad value"
    assert failure(ValueError()) == "ValueError: "
