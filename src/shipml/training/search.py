"""Cross-validate candidate models inside a time budget and rank them in a leaderboard.

First every family's default hyperparameters (baselines always, then the stronger families,
strongest per second first), then a search over each family's space, then a greedy weighted
ensemble of the best candidates. The search is one of:

- ``optuna`` (default): a TPE study per family, seeded; each trial is cross-validated fold by
  fold and pruned (median rule) when its running score falls behind the family's earlier trials.
  A family's hand-picked portfolio configurations go first; then trials go to families in
  proportion to their standing: the best family gets four turns for each one the third gets.
  Without ``training.trials`` it runs while the budget lasts; with it, it runs exactly that many
  trials and ignores the clock, so a fixed seed gives the same result.
- ``grid``: every combination of ``training.param_grid``, in order, while the budget lasts.
- ``none``: the defaults only.

With ``compute: {engine: ray}`` the same search runs on a Ray cluster (``distributed.py``): the
folds of each candidate, and several trials at once, run there as tasks.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections import deque
from collections.abc import Callable, Generator
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats
from sklearn.base import clone
from sklearn.compose import TransformedTargetRegressor
from sklearn.model_selection import ParameterGrid

from shipml.config import ComputeConfig, TrainingConfig
from shipml.errors import ConfigError, ShipmlError
from shipml.evaluation.metrics import METRICS
from shipml.models.bagged import stack_features
from shipml.models.catalog import TARGET_SHIFT, TARGET_TRANSFORM, Family, Params
from shipml.training.ensemble import greedy_ensemble
from shipml.training.folds import Fold, FoldSet
from shipml.training.leaderboard import CandidateResult, Leaderboard, fold_metrics, fold_output

EventHandler = Callable[..., None]

CLASSIFICATION_CV_METRICS = ("roc_auc", "accuracy", "balanced_accuracy", "f1_macro", "log_loss")
REGRESSION_CV_METRICS = ("rmse", "mae", "r2")
KEEP_MODELS = 10  # candidates whose fold models are kept for the final (bagged) model
ENSEMBLE_SHARE, ENSEMBLE_MAX_S = 0.05, 10.0  # of the budget, kept for the ensemble's rounds
TURNS = (4, 2, 1)  # search turns per round for the best, second and other families
# A search trial may cost more than the default it starts from (more trees, more leaves).
TRIAL_COST_FACTOR = 2.0
STACK = "stack"  # the second layer's leaderboard name
STACK_FAMILY = "lightgbm"  # its model: fast, and strong on columns of mixed kinds
STACK_INPUTS = 4  # first-layer families it sees (each family's best candidate)
# Of LightGBM's defaults' time: with the first layer's columns it took 2.9 times as long.
STACK_COST_FACTOR = 3.0
AUTO = "auto"  # target_transform: learn both ways on the first strong family, keep the better
LOG_SUFFIX = "-log"  # the name of that family's defaults fitted on log1p(y)


def cv_metrics(task: str, primary: str) -> tuple[str, ...]:
    """The metrics computed on every fold: the primary one first."""
    pool = CLASSIFICATION_CV_METRICS if task == "classification" else REGRESSION_CV_METRICS
    return (primary, *[m for m in pool if m != primary])


@dataclass
class TransformChoice:
    """How the regression target is learned: as is, or on log1p(y), and why. With
    ``target_transform: auto`` the first strong family's defaults were cross-validated both
    ways on the same folds (``scores``: the project's metric, "log" and "none")."""

    transform: str | None  # "log" or None
    setting: str  # training.target_transform
    reason: str
    family: str = ""
    metric: str = ""
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.transform or "none"

    def line(self) -> str:
        """One line for the terminal and the report."""
        if not self.scores:
            return f"target transform: {self.name} ({self.reason})"
        log, none = self.scores.get("log", math.nan), self.scores.get("none", math.nan)
        chosen, other = (("log1p(y)", log), ("y as is", none))[:: 1 if self.transform else -1]
        return (
            f"target transform: {self.name}, by cross-validation of {self.family}: "
            f"{self.metric} {_score(chosen[1])} learning {chosen[0]} vs {_score(other[1])} "
            f"learning {other[0]}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "transform": self.name,
            "setting": self.setting,
            "reason": self.reason,
            "compared_on": self.family or None,
            "metric": self.metric or None,
            "cv_scores": dict(self.scores),
        }


def _score(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


@dataclass
class SearchResult:
    """The leaderboard and what building the final model needs."""

    leaderboard: Leaderboard
    folds: FoldSet
    history: list[dict[str, Any]] = field(default_factory=list)
    trials: int = 0  # search trials run after the defaults
    target_transform: TransformChoice | None = None  # regression only


@dataclass
class FoldOutcome:
    """One candidate on one fold: its output on the validation rows and their scores (and the
    fitted model), or why the fit failed."""

    output: np.ndarray | None = None
    scores: dict[str, float] = field(default_factory=dict)
    model: Any = None
    seconds: float = 0.0
    error: str = ""


def failure(err: Exception) -> str:
    """Why a fit failed, in one line for the leaderboard."""
    lines = str(err).splitlines()
    return f"{type(err).__name__}: {lines[0][:200] if lines else ''}"


def fit_fold(
    estimator: Any, fold: Fold, task: str, classes: np.ndarray | None, metrics: tuple[str, ...]
) -> FoldOutcome:
    """Fit a clone of ``estimator`` on one fold and score it on the fold's validation rows."""
    started = time.monotonic()
    model = clone(estimator)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(fold.X_train, fold.y_train)
            output = fold_output(model, fold.X_valid, task)
            scores = fold_metrics(fold.y_valid, output, classes, metrics)
    except ShipmlError:  # the user's to fix (a Keras build_model file, say): stop
        raise
    except Exception as err:  # a failing candidate must not end the whole training
        return FoldOutcome(seconds=time.monotonic() - started, error=failure(err))
    return FoldOutcome(output, scores, model, time.monotonic() - started)


class Search:
    """One training's search: holds the folds, the results so far and the clock."""

    def __init__(
        self,
        families: list[Family],
        folds: FoldSet,
        task: str,
        metric: str,
        training: TrainingConfig,
        deadline: float,
        class_weight: str | None,
        on_event: EventHandler | None = None,
        reserve: Callable[[list[CandidateResult]], float] | None = None,
        target_transform: str | None = None,
        fixed: dict[str, Params] | None = None,
        transform_reason: str = "",
    ) -> None:
        self.families = families
        self.folds = folds
        self.task = task
        self.metric = metric
        self.metrics = cv_metrics(task, metric)
        self.training = training
        self.seed = training.seed
        self.deadline = deadline
        self.class_weight = class_weight  # "balanced" for the defaults, or None
        # "log" for every regression family, None, or "auto" until compare_transforms decides
        self.target_transform = target_transform
        self.transform_reason = transform_reason
        self.transform_choice: TransformChoice | None = None
        if task == "regression" and target_transform != AUTO:
            self.transform_choice = TransformChoice(
                target_transform, training.target_transform, transform_reason
            )
        self.fixed = fixed or {}  # training.params: per family, values every trial keeps
        self.emit = on_event or (lambda *a, **k: None)
        self.reserve = reserve or (lambda results: 0.0)
        self.sign = 1.0 if METRICS[metric].greater_is_better else -1.0
        self.results: list[CandidateResult] = []
        self.started = time.monotonic()
        self.trials = 0
        self.parallel = 1  # search trials in flight at once (more on a cluster)

    # --- one candidate ---------------------------------------------------------------------

    @property
    def ensemble_reserve(self) -> float:
        """Seconds kept for choosing the ensemble (its rounds stop at the deadline)."""
        if not self.training.ensemble:
            return 0.0
        return min(ENSEMBLE_SHARE * (self.deadline - self.started), ENSEMBLE_MAX_S)

    @property
    def stack_reserve(self) -> float:
        """Seconds kept for the second layer: what LightGBM's defaults took, with room for the
        first layer's columns (nothing until they are measured, or where it cannot run)."""
        if not self.stacking:
            return 0.0
        runs = [s for r, s in self.measured(STACK_FAMILY) if r.trial == 0]
        if not runs:
            return 0.0
        # ...and the cross-fitting of its likely inputs (see cross_fitted_columns).
        crossfit = sum(r.fit_seconds * (len(self.folds) - 1) / 2 for r in self.stack_inputs())
        return STACK_COST_FACTOR * runs[0] + crossfit

    @property
    def stacking(self) -> bool:
        """Whether a second layer can run: it is on, LightGBM is a candidate family, and every
        training row is predicted out of fold exactly once (one pass of k folds, not repeated
        on a small table, not forward in time)."""
        return (
            self.training.ensemble
            and self.training.stack
            and any(f.name == STACK_FAMILY for f in self.families)
            and not self.folds.ordered
            and self.folds.per_repeat == len(self.folds)
            and len(self.folds) >= 3  # a pair of folds out still leaves rows to fit on
        )

    def time_left(self) -> float:
        return self._left() - self.stack_reserve

    def _left(self) -> float:
        """Seconds left for the second layer (and, after it, the ensemble's reserve)."""
        return self.deadline - time.monotonic() - self.reserve(self.results) - self.ensemble_reserve

    def evaluate(
        self,
        family: Family,
        trial: int,
        config: Params,
        report: Callable[[int, float], bool] | None = None,
        budgeted: bool = True,
        launched: Any = None,
        name: str = "",
    ) -> CandidateResult:
        """Cross-validate ``family`` with ``config`` fold by fold. ``report(step, value)``
        returning True prunes it; with ``budgeted``, it stops when the clock says its
        remaining folds would not finish in time. ``launched``: what ``launch`` returned when
        its folds were started ahead. A model of log1p(y) gets its back-transform's bias
        corrected out of fold (``debias``)."""
        name = name or (family.name if trial == 0 else f"{family.name}#{trial}")
        estimator = family.build(self.seed, config)
        result = CandidateResult(
            name,
            family.description,
            family.baseline,
            _plain_params(estimator),
            family=family.name,
            trial=trial,
            config=dict(config),
            started_s=time.monotonic() - self.started,
        )
        self.results.append(result)
        n = len(self.folds)
        self.emit("candidate_start", name=name, folds=n)
        models: list[Any] = []
        with closing(self.fold_outcomes(estimator, family, budgeted, launched)) as outcomes:
            for i, outcome in enumerate(outcomes):
                if outcome is None:
                    result.status = "stopped"
                    result.reason = f"time budget: stopped after {i}/{n} folds"
                    break
                if not self._record(result, outcome, models, i):
                    break
                if (
                    report is not None
                    and i + 1 < n
                    and report(i, self.sign * result.mean(self.metric))
                ):
                    result.status, result.reason = "pruned", f"pruned after {i + 1}/{n} folds"
                    break
        if config.get(TARGET_TRANSFORM) == "log":
            self.debias(result, models)
        if result.status == "ok" and family.bag and not self.folds.ordered:
            # One pass over the rows is enough to bag; more would only slow predictions down.
            result.fold_models = models[: self.folds.per_repeat]
            self._keep_best_models()
        self.emit("candidate_done", result=result, folds=n, metric=self.metric)
        return result

    def _record(
        self, result: CandidateResult, outcome: FoldOutcome, models: list[Any], i: int
    ) -> bool:
        """Add fold ``i``'s outcome to ``result`` (its model to ``models``); False when the
        fit failed (``result`` then says why)."""
        result.fit_seconds += outcome.seconds
        if outcome.error:
            result.status, result.reason = "failed", outcome.error
            return False
        assert outcome.output is not None
        result.fold_outputs.append(outcome.output)
        models.append(outcome.model)
        for m, v in outcome.scores.items():
            result.fold_scores.setdefault(m, []).append(v)
        self.emit("fold_done", name=result.name, fold=i + 1, score=outcome.scores[self.metric])
        return True

    def debias(self, result: CandidateResult, models: list[Any]) -> None:
        """Correct the back-transform of a candidate fitted on log1p(y) (see ``debias_shifts``):
        each fold's output and model by the shift learned on the other folds, its scores
        recomputed; the shift learned on every fold goes into its config, for a refit."""
        targets = [f.y_valid for f in self.folds.folds[: len(result.fold_outputs)]]
        shifts = debias_shifts(result.fold_outputs, targets, self.folds.per_repeat)
        if shifts is None:
            return
        per_fold, overall = shifts
        result.fold_scores = {}
        for k, (fold, shift) in enumerate(zip(self.folds.folds, per_fold, strict=False)):
            corrected = np.expm1(np.log1p(result.fold_outputs[k]) + shift)
            result.fold_outputs[k] = corrected
            for m, v in fold_metrics(fold.y_valid, corrected, None, self.metrics).items():
                result.fold_scores.setdefault(m, []).append(v)
            transformer = getattr(models[k] if k < len(models) else None, "transformer_", None)
            if transformer is not None:
                transformer.shift = shift
        result.config[TARGET_SHIFT] = overall
        result.params["target_bias_factor"] = round(math.exp(overall), 6)

    def launch(self, family: Family, config: Params) -> Any:
        """Start cross-validating a candidate ahead of ``evaluate`` (a cluster does: see
        distributed.py). Here nothing starts: ``evaluate`` fits the folds itself."""
        return None

    def fold_outcomes(
        self, estimator: Any, family: Family, budgeted: bool, launched: Any
    ) -> Generator[FoldOutcome | None, None, None]:
        """Each fold's outcome in fold order, or None where, ``budgeted``, the clock says the
        remaining folds would not finish in time. Here a fold is fitted only when asked for, so
        a pruned candidate fits no more."""
        started = time.monotonic()
        n = len(self.folds)
        for i, fold in enumerate(self.folds.folds):
            if budgeted and i and (time.monotonic() - started) / i * (n - i) > self.time_left():
                yield None
                return
            yield fit_fold(estimator, fold, self.task, self.folds.classes, self.metrics)

    def _ranked(self, results: list[CandidateResult]) -> list[CandidateResult]:
        """Each family's best first (best first), then the rest: the ensemble's pool is the
        first ``KEEP_MODELS``, so tuned copies of one family do not crowd out other families."""
        ordered = sorted(results, key=lambda r: -self.sign * r.mean(self.metric))
        seen: set[str] = set()
        leaders: list[CandidateResult] = []
        others: list[CandidateResult] = []
        for r in ordered:
            family = r.family or r.name
            (others if family in seen else leaders).append(r)
            seen.add(family)
        return leaders + others

    def _keep_best_models(self) -> None:
        """Fold models cost memory: only the candidates the ensemble may use keep theirs."""
        holders = self._ranked([r for r in self.results if r.fold_models])
        for r in holders[KEEP_MODELS:]:
            r.fold_models = []

    def skipped(
        self,
        family: Family,
        reason: str,
        trial: int = 0,
        config: Params | None = None,
        name: str = "",
    ) -> None:
        result = CandidateResult(
            name or (family.name if trial == 0 else f"{family.name}#{trial}"),
            family.description,
            family.baseline,
            dict(config or {}),
            family=family.name,
            trial=trial,
            config=dict(config or {}),
        )
        result.status, result.reason = "skipped", reason
        self.results.append(result)
        self.emit("candidate_done", result=result, folds=len(self.folds), metric=self.metric)

    # --- the phases ------------------------------------------------------------------------

    def defaults_config(self, family: Family) -> Params:
        config = {**family.defaults, **self.fixed.get(family.name, {})}
        if family.class_weight and self.class_weight:
            config["class_weight"] = self.class_weight
        return self._with_transform(family, config)

    def _with_transform(self, family: Family, config: Params) -> Params:
        """``config`` with the target transform decided so far (none while ``auto`` waits for
        ``compare_transforms``)."""
        config.pop(TARGET_TRANSFORM, None)
        if self.target_transform == "log" and family.target_transform:
            config[TARGET_TRANSFORM] = "log"
        return config

    def compares(self, family: Family) -> bool:
        """Whether ``family``'s defaults decide ``target_transform: auto``: the first strong
        family (not a baseline) that can learn a transformed target."""
        return (
            self.target_transform == AUTO
            and self.transform_choice is None
            and family.target_transform
            and not family.baseline
        )

    def compare_transforms(self, family: Family, config: Params, launched: Any = None) -> None:
        """Cross-validate ``family``'s defaults as is and on log1p(y), on the same folds, and
        keep the log only where it scores better on the project's metric (over the folds both
        finished). Every later candidate learns the target the way chosen."""
        plain = self.evaluate(family, 0, config, budgeted=True, launched=launched)
        logged_config = {**config, TARGET_TRANSFORM: "log"}
        name = family.name + LOG_SUFFIX
        if self.time_left() <= self.opening_cost(family, 0, config):
            self.skipped(family, "time budget used up", 0, logged_config, name=name)
            self.decide(family, plain, None)
        else:
            logged = self.evaluate(family, 0, logged_config, budgeted=True, name=name)
            self.decide(family, plain, logged)

    def decide(
        self, family: Family, plain: CandidateResult, logged: CandidateResult | None
    ) -> None:
        none_scores = plain.fold_scores.get(self.metric, [])
        log_scores = logged.fold_scores.get(self.metric, []) if logged else []
        shared = min(len(none_scores), len(log_scores))
        scores: dict[str, float] = {}
        if shared:
            scores = {
                "log": float(np.mean(log_scores[:shared])),
                "none": float(np.mean(none_scores[:shared])),
            }
            chosen = "log" if self.sign * scores["log"] > self.sign * scores["none"] else None
            reason = f"cross-validated both ways on {family.name}"
            if shared < len(self.folds):
                reason += f" ({shared} of {len(self.folds)} folds)"
        elif log_scores:
            chosen, reason = "log", f"{family.name} failed as is, not on log1p(y)"
        else:
            chosen, reason = None, f"not compared: {family.name} on log1p(y) did not run"
        self.target_transform = chosen
        self.transform_choice = TransformChoice(
            chosen, AUTO, f"{self.transform_reason}; {reason}", family.name, self.metric, scores
        )
        self.emit("note", text=self.transform_choice.line())

    def portfolio_config(self, family: Family, config: Params) -> Params:
        """A portfolio configuration as a trial runs it: the defaults' class weighting."""
        weight = self.defaults_config(family).get("class_weight")
        if family.class_weight and self.task == "classification":
            config = {**config, "class_weight": weight}
        return self._with_transform(family, {**config, **self.fixed.get(family.name, {})})

    def opening(self) -> list[tuple[Family, int, Params]]:
        """What runs before the search, in order: each family's defaults (trial 0), then its
        early portfolio configurations (trials 1, 2, ...)."""
        plan = []
        for family in self.families:
            plan.append((family, 0, self.defaults_config(family)))
            for i, config in enumerate(family.portfolio[: family.early]):
                plan.append((family, i + 1, self.portfolio_config(family, config)))
        return plan

    def run_defaults(self) -> None:
        for family, trial, config in self.opening():
            config = self._with_transform(family, config)  # decided since the plan was made
            if not family.baseline and self.time_left() <= self.opening_cost(family, trial, config):
                self.skipped(family, "time budget used up", trial, config)
                continue
            if trial == 0 and self.compares(family):
                self.compare_transforms(family, config)
                continue
            self.evaluate(family, trial, config, budgeted=not family.baseline)
        self.settle_transform()

    def settle_transform(self) -> None:
        """``auto`` with no strong family run to compare on: the target is learned as is."""
        if self.target_transform == AUTO:
            self.target_transform = None
            self.transform_choice = TransformChoice(
                None, AUTO, f"{self.transform_reason}; not compared: no strong family ran"
            )

    def opening_cost(self, family: Family, trial: int, config: Params) -> float:
        """The least a run of the opening is expected to take: an early portfolio configuration
        from its work, a family's defaults (whose cost nothing tells yet) no less than the
        cheapest defaults so far (one cut short counting at what all its folds would have
        taken). A run expected not to finish is not started: it would be stopped after a fold,
        its time lost to the search."""
        if trial > 0:
            expected = self.cost(family, config)
            return 0.0 if math.isinf(expected) else expected
        spent = [
            seconds
            for r, seconds in self.measured()
            if not r.baseline and r.trial == 0 and r.family
        ]
        return min(spent) if spent else 0.0

    def measured(self, family: str | None = None) -> list[tuple[CandidateResult, float]]:
        """The runs (of ``family``, or all) that fitted at least a fold, each with what all its
        folds took or would have taken: a run cut short (pruned, or stopped for time) counts at
        its seconds per fold times the folds."""
        return [
            (r, r.fit_seconds * len(self.folds) / len(r.fold_outputs))
            for r in self.results
            if (family is None or r.family == family)
            and r.status in ("ok", "pruned", "stopped")
            and r.fold_outputs
        ]

    def cost(self, family: Family, config: Params | None = None) -> float:
        """Seconds one more trial of ``family`` is expected to take: of ``config`` (known for
        a portfolio configuration), from the family's seconds per unit of work so far;
        otherwise from its trials so far, or a multiple of its defaults' time. A trial cut
        short (pruned, or stopped for time) counts at what all its folds would have taken, so
        a family whose trials keep being stopped after a fold stops starting them."""
        if not any(r.family == family.name and r.status == "ok" for r in self.results):
            return math.inf
        runs = self.measured(family.name)
        if config is not None and family.work is not None:
            work = family.work
            rate = np.mean([seconds / max(work(r.config), 1e-9) for r, seconds in runs])
            return float(rate * work(config))
        tuned = [seconds for r, seconds in runs if r.trial > family.early]
        if tuned:
            return float(np.mean(tuned))
        return TRIAL_COST_FACTOR * next(seconds for r, seconds in runs if r.status == "ok")

    def best_of(self, family: Family) -> float:
        scores = [
            self.sign * r.mean(self.metric)
            for r in self.results
            if r.family == family.name and r.status == "ok"
        ]
        return max(scores) if scores else -math.inf

    def next_family(self, candidates: list[Family], turns_taken: dict[str, int]) -> Family:
        ranked = sorted(candidates, key=lambda f: -self.best_of(f))
        turns = {f.name: TURNS[min(i, len(TURNS) - 1)] for i, f in enumerate(ranked)}
        # The family furthest behind its share goes next; catalog order breaks ties.
        return min(candidates, key=lambda f: (turns_taken[f.name] + 1) / turns[f.name])

    def run_optuna(self, fixed_trials: int | None) -> None:
        import optuna

        optuna.logging.set_verbosity(logging.WARNING)
        tunable = [
            f
            for f in self.families
            if f.space is not None
            and any(r.family == f.name and r.status == "ok" for r in self.results)
        ]
        if not tunable:
            return
        studies = {}
        for i, family in enumerate(self.families):
            if family in tunable:
                studies[family.name] = optuna.create_study(
                    direction="maximize",
                    sampler=optuna.samplers.TPESampler(
                        seed=self.seed + i, n_startup_trials=5, multivariate=True
                    ),
                    pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
                )
                self._seed_study(studies[family.name], family)
        turns_taken = {f.name: 0 for f in tunable}
        # Trials are asked for up to `parallel` ahead and told back in the order asked, so a
        # fixed number of trials with one seed gives the same trials wherever they run.
        in_flight: deque[tuple[Any, Family, Any, Params, Any]] = deque()
        while True:
            while len(in_flight) < self.parallel:
                next_up = self._next_turn(tunable, turns_taken, fixed_trials)
                if next_up is None:
                    break
                turns_taken[next_up.name] += 1
                self.trials += 1
                study = studies[next_up.name]
                trial = study.ask()
                config = self._space(next_up, trial)
                in_flight.append((study, next_up, trial, config, self.launch(next_up, config)))
            if not in_flight:
                return
            self._optuna_trial(*in_flight.popleft(), budgeted=fixed_trials is None)

    def _next_turn(
        self, tunable: list[Family], turns_taken: dict[str, int], fixed_trials: int | None
    ) -> Family | None:
        """The family the next trial goes to, or None when the search is over."""
        if fixed_trials is not None:
            if self.trials >= fixed_trials:
                return None
            candidates = tunable
        else:
            left = self.time_left()
            candidates = [f for f in tunable if self.cost(f, self._queued(f, turns_taken)) < left]
            if not candidates:
                return None
        # Portfolio configurations first (they are strong where the defaults are not),
        # then turns by standing.
        pending = [f for f in candidates if self._queued(f, turns_taken) is not None]
        return pending[0] if pending else self.next_family(candidates, turns_taken)

    def _queued(self, family: Family, turns_taken: dict[str, int]) -> Params | None:
        """The portfolio configuration ``family``'s next trial runs, if one is still queued."""
        index = family.early + turns_taken[family.name]
        if index >= len(family.portfolio):
            return None
        return self.portfolio_config(family, family.portfolio[index])

    def _space(self, family: Family, trial: Any) -> Params:
        assert family.space is not None
        config = family.space(trial)
        if family.class_weight and self.task == "classification":
            weight = trial.suggest_categorical("class_weight", ["none", "balanced"])
            config["class_weight"] = None if weight == "none" else weight
        config.update(self.fixed.get(family.name, {}))
        return self._with_transform(family, config)

    def _seed_study(self, study: Any, family: Family) -> None:
        """The runs before the search (the defaults, the early portfolio configurations) are
        the study's first trials, so TPE starts from them; the rest of the portfolio is
        queued to go next."""
        import optuna

        fixed = self.fixed.get(family.name, {})
        weighted = family.class_weight and self.task == "classification"

        def as_trial(config: Params) -> Params:
            values = {
                k: v
                for k, v in config.items()
                if k not in (TARGET_TRANSFORM, TARGET_SHIFT) and k not in fixed
            }
            if weighted:
                values["class_weight"] = config.get("class_weight") or "none"
            return values

        chosen = "log" if self.target_transform == "log" and family.target_transform else None
        opened = sorted(
            (
                r
                for r in self.results
                if r.family == family.name
                and r.trial <= family.early
                and r.config.get(TARGET_TRANSFORM) == chosen  # not the other way compared
            ),
            key=lambda r: r.trial,
        )
        for r in opened:
            study.enqueue_trial(as_trial(r.config))
            trial = study.ask()
            self._space(family, trial)  # registers the distributions with the enqueued values
            if r.status == "ok":
                study.tell(trial, self.sign * r.mean(self.metric))
            else:  # stopped or skipped for time: nothing learned
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
        weight = self.defaults_config(family).get("class_weight") or "none"
        for config in family.portfolio[family.early :]:
            extra = {"class_weight": weight} if weighted else {}
            study.enqueue_trial({**config, **extra}, skip_if_exists=True)

    def _optuna_trial(
        self, study: Any, family: Family, trial: Any, config: Params, launched: Any, budgeted: bool
    ) -> None:
        import optuna

        def report(step: int, value: float) -> bool:
            trial.report(value, step)
            return bool(trial.should_prune())

        result = self.evaluate(
            family, trial.number, config, report=report, budgeted=budgeted, launched=launched
        )
        if result.status == "ok":
            study.tell(trial, self.sign * result.mean(self.metric))
        elif result.status == "pruned":
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)

    def run_grid(self, grid: dict[str, dict[str, list[Any]]]) -> None:
        for family in self.families:
            if family.name not in grid:
                continue
            for i, combination in enumerate(ParameterGrid(grid[family.name])):
                config = {**self.defaults_config(family), **combination}
                if self.time_left() <= 0:
                    self.skipped(family, "time budget used up", i + 1, config)
                    continue
                self.trials += 1
                self.evaluate(family, i + 1, config)

    def stack_inputs(self) -> list[CandidateResult]:
        """The second layer's inputs: the best fully cross-validated candidate of each of the
        ``STACK_INPUTS`` best families (baselines aside); none when fewer than two."""
        done = [
            r
            for r in self.results
            if r.status == "ok"
            and r.family
            and not r.baseline
            and len(r.fold_outputs) == len(self.folds)
        ]
        leaders = self._ranked(done)[: min(STACK_INPUTS, len({r.family for r in done}))]
        return leaders if len(leaders) >= 2 else []

    def run_stack(self, exact: bool = False) -> CandidateResult | None:
        """The second layer, as AutoGluon stacks: LightGBM's defaults on each fold's columns
        plus the first layer's predictions (``stack_inputs``), cross-validated on the same
        folds. A validation row's first-layer columns are its out-of-fold predictions; a
        training row's are *cross-fitted* (``cross_fitted_columns``): from models that saw
        neither it nor the validation fold, so no validation label reaches the second layer
        through them and its score is not optimistic. At prediction time the columns come from
        the first layer's final models. It joins the leaderboard and the ensemble's pool like
        any candidate. With ``exact`` (a fixed number of trials) it runs whatever the clock
        says."""
        if not self.stacking:
            return None
        inputs = self.stack_inputs()
        family = next(f for f in self.families if f.name == STACK_FAMILY)
        if not inputs:
            return None
        config = self.defaults_config(family)
        estimator = family.build(self.seed, config)
        result = CandidateResult(
            STACK,
            f"{family.description} on the columns plus the predictions of "
            + ", ".join(r.name for r in inputs),
            False,
            {**_plain_params(estimator), "inputs": ",".join(r.name for r in inputs)},
            config=dict(config),
            started_s=time.monotonic() - self.started,
            stack_inputs=[r.name for r in inputs],
        )
        n = len(self.folds)
        if not exact and self._left() <= 0:
            result.status, result.reason = "skipped", "time budget used up"
            self.results.append(result)
            self.emit("candidate_done", result=result, folds=n, metric=self.metric)
            return result
        self.results.append(result)
        self.emit("candidate_start", name=STACK, folds=n)
        layer = stacked_columns(inputs, self.folds, self.task)
        crossfit_started = time.monotonic()
        try:
            training_layers = self.cross_fitted_columns(inputs, exact)
        except ShipmlError:
            raise
        except Exception as err:  # like a failing candidate, it must not end the training
            training_layers = None
            result.status = "failed"
            result.reason = f"cross-fitting: {failure(err)}"
        result.fit_seconds += time.monotonic() - crossfit_started
        if training_layers is None:
            if result.status == "ok":
                result.status = "stopped"
                result.reason = "time budget: stopped while cross-fitting the first layer"
            self.emit("candidate_done", result=result, folds=n, metric=self.metric)
            return result
        started = time.monotonic()
        models: list[Any] = []
        for i, fold in enumerate(self.folds.folds):
            # The ensemble's reserve may shrink for it: the ensemble's rounds stop in time.
            left = self._left() + self.ensemble_reserve
            if not exact and i and (time.monotonic() - started) / i * (n - i) > left:
                result.status = "stopped"
                result.reason = f"time budget: stopped after {i}/{n} folds"
                break
            augmented = Fold(
                fold.train_index,
                fold.valid_index,
                fold.preprocessor,
                np.hstack([fold.X_train, training_layers[i]]),
                fold.y_train,
                np.hstack([fold.X_valid, layer[fold.valid_index]]),
                fold.y_valid,
            )
            outcome = fit_fold(estimator, augmented, self.task, self.folds.classes, self.metrics)
            if not self._record(result, outcome, models, i):
                break
        if config.get(TARGET_TRANSFORM) == "log":
            self.debias(result, models)
        if result.status == "ok":
            result.fold_models = models
        self.emit("candidate_done", result=result, folds=n, metric=self.metric)
        return result

    def cross_fitted_columns(
        self, inputs: list[CandidateResult], exact: bool
    ) -> list[np.ndarray] | None:
        """For each fold k, the first-layer columns of its training rows (in ``train_index``
        order), each row j's from a model fitted on the rows of neither fold j nor fold k: one
        model per pair of folds, on fold k's preprocessed columns (the preprocessor learns
        nothing from the target), predicts fold j's rows for fold k and fold k's for fold j.
        None when the clock runs out first (unless ``exact``)."""
        folds = self.folds.folds
        n_rows = sum(len(f.valid_index) for f in folds)
        position = []  # row -> its place in fold k's training rows
        for fold in folds:
            where = np.full(n_rows, -1)
            where[fold.train_index] = np.arange(len(fold.train_index))
            position.append(where)
        classes = self.folds.classes
        width = 1 if classes is None else len(classes) - 1
        layers = [np.full((len(f.train_index), width * len(inputs)), np.nan) for f in folds]
        for c, r in enumerate(inputs):
            # (k - 1) / 2 models per fold: about the candidate's own cross-validation times
            # (k - 1) / 2 (each fits fewer rows, but fixed costs do not shrink: measured 2.1x
            # with five folds).
            expected = r.fit_seconds * (len(folds) - 1) / 2
            if not exact and expected > self._left() + self.ensemble_reserve:
                return None
            family = next(f for f in self.families if f.name == r.family)
            estimator = family.build(self.seed, r.config)
            block = slice(c * width, (c + 1) * width)
            for k, outer in enumerate(folds):
                for j in range(k + 1, len(folds)):
                    inner = folds[j]
                    in_j = np.isin(outer.train_index, inner.valid_index)
                    model = clone(estimator)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        model.fit(outer.X_train[~in_j], outer.y_train.iloc[~in_j])
                        on_j = fold_output(model, outer.X_train[in_j], self.task)
                        on_k = fold_output(model, outer.X_valid, self.task)
                    layers[k][in_j, block] = stack_features([on_j], self.task)
                    layers[j][position[j][outer.valid_index], block] = stack_features(
                        [on_k], self.task
                    )
        return layers

    def run_ensemble(self) -> None:
        pool = self._ranked(
            [r for r in self.results if r.status == "ok" and len(r.fold_outputs) == len(self.folds)]
        )
        ensemble = greedy_ensemble(
            pool[:KEEP_MODELS],
            self.folds.targets,
            self.folds.classes,
            self.metric,
            self.metrics,
            deadline=self.deadline - self.reserve(self.results),
        )
        if ensemble is not None:
            self.results.append(ensemble)
            self.emit("candidate_done", result=ensemble, folds=len(self.folds), metric=self.metric)

    def history(self) -> list[dict[str, Any]]:
        return [
            {
                "family": r.family,
                "trial": r.trial,
                "name": r.name,
                "value": r.mean(self.metric),
                "status": r.status,
                "elapsed_s": r.started_s + r.fit_seconds,
            }
            for r in self.results
            if r.family and r.status != "skipped"
        ]


def run_search(
    families: list[Family],
    folds: FoldSet,
    task: str,
    metric: str,
    training: TrainingConfig,
    deadline: float,
    grid: dict[str, dict[str, list[Any]]] | None = None,
    class_weight: str | None = None,
    on_event: EventHandler | None = None,
    reserve: Callable[[list[CandidateResult]], float] | None = None,
    target_transform: str | None = None,
    fixed: dict[str, Params] | None = None,
    compute: ComputeConfig | None = None,
    transform_reason: str = "",
) -> SearchResult:
    """Defaults, then the configured search, then the ensemble: see the module docstring.
    ``target_transform``: "log", None, or "auto" (``Search.compare_transforms``)."""
    args = (families, folds, task, metric, training, deadline, class_weight, on_event, reserve)
    transform = (target_transform, fixed, transform_reason)
    if compute is not None and compute.engine == "ray":
        from shipml.training import distributed

        with distributed.connect(compute) as cluster:
            search: Search = distributed.RaySearch(
                cluster, *args, *transform, parallel=compute.parallel_trials
            )
            return _searched(search, training, grid)
    return _searched(Search(*args, *transform), training, grid)


def _searched(
    search: Search, training: TrainingConfig, grid: dict[str, dict[str, list[Any]]] | None
) -> SearchResult:
    if search.transform_choice is not None:  # decided already (auto decides in run_defaults)
        search.emit("note", text=search.transform_choice.line())
    search.run_defaults()
    if training.search == "optuna":
        search.run_optuna(training.trials)
    elif training.search == "grid" and grid:
        search.run_grid(grid)
    if training.ensemble:
        search.run_stack(exact=training.trials is not None)
        search.run_ensemble()
    board = Leaderboard(metric=search.metric, metrics=search.metrics, results=search.results)
    return SearchResult(
        board, search.folds, search.history(), search.trials, search.transform_choice
    )


def stacked_columns(inputs: list[CandidateResult], folds: FoldSet, task: str) -> np.ndarray:
    """The second layer's extra columns for every training row: each input's out-of-fold
    output for that row (its validation fold's), as ``stack_features`` lays them out."""
    n = sum(len(f.valid_index) for f in folds.folds)
    outputs = []
    for r in inputs:
        first = r.fold_outputs[0]
        full = np.zeros((n, *first.shape[1:]))
        for fold, output in zip(folds.folds, r.fold_outputs, strict=True):
            full[fold.valid_index] = output
        outputs.append(full)
    return stack_features(outputs, task)


def debias_shifts(
    outputs: list[np.ndarray], targets: list[pd.Series], per_repeat: int | None = None
) -> tuple[list[float], float] | None:
    """The back-transform's bias correction of a model fitted on log1p(y), from its
    out-of-fold predictions (``outputs``, fold by fold, already back-transformed): for each
    fold, the shift learned on the *other* folds' rows (of its own pass over the rows, where
    k-fold is repeated every ``per_repeat`` folds and another pass holds the fold's own rows;
    every other fold where its pass was cut short); and the shift learned on all of them (for
    a model refitted on every row). None with fewer than two folds.

    The correction is a mean-matching factor on (1 + y): exp(shift) = sum(1 + y) /
    sum(1 + prediction) over rows the model did not see, so predictions scaled by it sum to
    the true total out of fold. Duan's smearing estimate, the mean of exp(residual), is the
    textbook alternative, but it assumes the log-scale errors do not depend on the row: on a
    count with many zeros they are far wider for the small counts than for the large ones, and
    smearing then over-corrects the large predictions. The ratio of totals needs no such
    assumption and is what a user adding predictions up sees. Learned out of fold, because a
    model's residuals on its own training rows are too small (boosted trees fit part of the
    noise) and would under-correct."""
    if len(outputs) < 2:
        return None
    truth = np.array([float(np.sum(np.asarray(y, dtype=float) + 1.0)) for y in targets])
    predicted = np.array([float(np.sum(np.asarray(o, dtype=float) + 1.0)) for o in outputs])
    if not (np.all(np.isfinite(truth)) and np.all(np.isfinite(predicted))):
        return None
    index = np.arange(len(outputs))
    passes = index // (per_repeat or len(outputs))
    others = []
    for k in index:
        mates = (passes == passes[k]) & (index != k)
        if not mates.any():
            mates = index != k
        others.append(math.log(truth[mates].sum() / predicted[mates].sum()))
    return others, math.log(truth.sum() / predicted.sum())


def _plain_params(estimator: Any) -> dict[str, Any]:
    if isinstance(estimator, TransformedTargetRegressor):
        return {**_plain_params(estimator.regressor), TARGET_TRANSFORM: "log"}
    params = estimator.get_params(deep=False)
    return {k: v for k, v in params.items() if isinstance(v, int | float | str | bool | type(None))}


def class_weight_policy(
    setting: str, metric: str, y: pd.Series, task: str
) -> tuple[str | None, str]:
    """('balanced' or None for the defaults, why). ``auto`` weights classes when the smallest
    class has under half the rows of the largest and the metric counts every class alike;
    the search may still try either way."""
    if task != "classification" or setting == "none":
        return None, "off"
    if setting == "balanced":
        return "balanced", "training.class_weight: balanced"
    counts = y.value_counts()
    ratio = float(counts.min() / counts.max())
    even_handed = metric in ("balanced_accuracy", "f1_macro", "recall_macro", "precision_macro")
    if ratio < 0.5 and even_handed:
        return "balanced", f"smallest/largest class = {ratio:.2f} and {metric} weighs classes alike"
    return None, f"smallest/largest class = {ratio:.2f}"


# A positive target skewed at least this much is learned on the log scale.
LOG_TARGET_SKEW = 1.0


def target_transform_policy(setting: str, y: pd.Series, task: str) -> tuple[str | None, str]:
    """('log', None or 'auto', why). With ``auto``, a non-negative, right-skewed regression
    target (prices, counts, durations) is a candidate for log1p(y): the trees then split on
    relative differences and the squared error no longer chases the few largest values. But
    skew alone does not say it helps (a count with many zeros is skewed and learned worse on
    the log scale), so 'auto' is returned and the search decides by cross-validation."""
    if task != "regression":
        return None, "off"
    if setting == "none":
        return None, "training.target_transform: none"
    values = pd.to_numeric(y, errors="coerce").astype(float)
    lowest = float(values.min())
    if setting == "log":
        if lowest < 0:
            raise ConfigError(
                f"training.target_transform: log needs a target >= 0; its lowest value is "
                f"{lowest:g}",
                "use target_transform: none (or auto)",
            )
        return "log", "training.target_transform: log"
    skew = float(scipy.stats.skew(values.dropna().to_numpy()))
    if lowest >= 0 and skew >= LOG_TARGET_SKEW:
        return AUTO, f"target >= 0 with skewness {skew:.2f}"
    return None, f"skewness {skew:.2f}" + ("" if lowest >= 0 else ", negative values")
