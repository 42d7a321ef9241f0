"""The retraining pipeline as pure step functions: extract → validate → train → evaluate →
gate → promote.

Each step takes the previous step's result (a plain dataclass of JSON-friendly values, so an
orchestrator can pass it between processes: ``to_dict`` / ``from_dict``) and returns its own.
The local runner (`shipml retrain`), the scheduler, the Airflow DAG and the Kubeflow pipeline
all call these same functions. Files a step hands on (the extracted table) live in the run's
folder under ``.shipml/pipeline/<run>/``.

Nothing here moves the champion except ``promote``, and only for a challenger that passed the
gate: a failure anywhere before leaves the registry's aliases as they were.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self, TypeVar

import numpy as np
import pandas as pd

from shipml import registry
from shipml.data.coerce import category_str
from shipml.data.labels import to_classes
from shipml.errors import ConfigError, DataError, GateFailed, ShipmlError, ValidationFailed
from shipml.evaluation.metrics import (
    METRICS,
    classification_metrics,
    default_metric,
    mape_defined,
    metric_value,
    regression_metrics,
)
from shipml.project import Project

PIPELINE_DIR = "pipeline"  # under .shipml/
WATERMARK_FILE = "watermark.json"
SNAPSHOT = "data.parquet"
MIN_FEEDBACK_ROWS = 1

T = TypeVar("T", bound="StepResult")


@dataclass(kw_only=True)
class StepResult:
    """What every step hands on: the project and this pipeline run's folder."""

    config: str  # path of shipml.yaml
    run_dir: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def project(self) -> Project:
        return Project.load(self.config)


@dataclass(kw_only=True)
class Extracted(StepResult):
    data: str  # the extracted table, a Parquet snapshot in the run folder
    rows: int
    source: str
    watermark: Any = None  # the batch's highest watermark_column value (SQL sources)


@dataclass(kw_only=True)
class Validated(Extracted):
    report: str  # the validation report (JSON)
    champion: int | None = None
    schema_changes: list[str] = field(default_factory=list)  # allowed by config or flag


@dataclass(kw_only=True)
class Trained(Validated):
    version: int
    run_id: str
    metric: str  # the training metric


@dataclass(kw_only=True)
class Evaluated(Trained):
    gate_metric: str
    holdout_rows: int
    challenger_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None = None  # on the same rows
    difference: float | None = None  # challenger − champion, signed: > 0 is better
    ci_low: float | None = None
    ci_high: float | None = None
    confidence: float = 0.95
    feedback_rows: int = 0
    feedback: dict[str, dict[str, float]] = field(default_factory=dict)  # {"challenger": ...}


@dataclass(kw_only=True)
class Decision(Evaluated):
    passed: bool
    reasons: list[str]


@dataclass(kw_only=True)
class Promotion(Decision):
    promoted: bool
    champion_after: int | None
    previous: int | None = None


# ------------------------------------------------------------------------------- extract


def _pipeline_dir(project: Project) -> Path:
    return project.root / ".shipml" / PIPELINE_DIR


def _new_run_dir(project: Project) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    folder = _pipeline_dir(project) / f"{stamp}-{uuid.uuid4().hex[:6]}"
    folder.mkdir(parents=True)
    _prune_runs(project, keep=project.config.retrain.keep_runs)
    return folder


def _prune_runs(project: Project, keep: int) -> None:
    runs = sorted(p for p in _pipeline_dir(project).iterdir() if p.is_dir())
    for old in runs[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def stored_watermark(project: Project) -> Any:
    """The watermark of the last promoted retrain (None before the first)."""
    path = _pipeline_dir(project) / WATERMARK_FILE
    if not path.is_file():
        return None
    stored = json.loads(path.read_text())
    if stored.get("column") != project.config.data.watermark_column:
        return None  # another column now: start over
    return stored.get("value")


def _plain(value: Any) -> Any:
    if isinstance(value, pd.Timestamp | datetime):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    return value


def extract(
    config: str | os.PathLike[str], data: str | os.PathLike[str] | None = None
) -> Extracted:
    """The new batch: ``data`` when given, else the configured source (for SQL with
    ``data.watermark_column``, only the rows past the stored watermark), saved as a snapshot
    so every later step sees the same rows."""
    from shipml.data.sources import load_table, read_data_file, read_sql_past

    project = Project.load(Path(config))
    cfg = project.config
    watermark = None
    if data is not None:
        df = read_data_file(Path(data), cfg.data)
        source = str(data)
    elif cfg.data.watermark_column:
        column = cfg.data.watermark_column
        df = read_sql_past(cfg.data, project.root, column, stored_watermark(project))
        if column not in df.columns:
            raise ConfigError(
                f"data.watermark_column '{column}' is not a column of data.query's result",
                f"the query returns: {', '.join(map(str, df.columns[:20]))}",
            )
        watermark = _plain(df[column].max())
        source = "data.query"
    else:
        df = load_table(cfg.data, project.root, cfg.target)
        source = cfg.data.path or "data.query"
    if df.empty:
        raise DataError(f"{source}: the new batch has no rows", "there is nothing to retrain on")
    run_dir = _new_run_dir(project)
    snapshot = run_dir / SNAPSHOT
    df.to_parquet(snapshot, index=False)
    return Extracted(
        config=str(project.path),
        run_dir=str(run_dir),
        data=str(snapshot),
        rows=len(df),
        source=source,
        watermark=watermark,
    )


# ------------------------------------------------------------------------------ validate


def schema_differences(old: Any, new: Any) -> list[str]:
    """How the new batch's input columns differ from the champion's: missing, new, retyped."""
    before = {c: old.columns[c] for c in old.input_columns}
    after = {c: new.columns[c] for c in new.input_columns}
    changes = [f"column '{c}' is missing" for c in before if c not in new.columns]
    changes += [f"column '{c}' is new" for c in after if c not in before]
    for name, info in before.items():
        if name in after and after[name].role != info.role:
            changes.append(f"column '{name}' was {info.role}, is now {after[name].role}")
    if old.task != new.task:
        changes.append(f"the task was {old.task}, is now {new.task}")
    return changes


def validate(extracted: Extracted, allow_schema_change: bool | None = None) -> Validated:
    """The batch's columns and types against the champion's (a difference stops the pipeline
    unless ``retrain.allow_schema_change``, or ``allow_schema_change``, says it is intended),
    then the data checks training runs (fatal findings stop it too)."""
    from shipml.training.train import validate_for_training

    project = extracted.project()
    df = pd.read_parquet(extracted.data)
    allowed = project.config.retrain.allow_schema_change
    if allow_schema_change is not None:
        allowed = allow_schema_change
    champion = project.champion()
    old = registry.load_schema(project.store, champion) if champion is not None else None
    changes: list[str] = []
    if old is not None:
        changes = [f"column '{c}' is missing" for c in old.input_columns if c not in df]
        known = {*old.columns, old.target}
        changes += [f"column '{c}' is new" for c in df.columns if c not in known]
        _stop_on_changes(extracted, champion, changes, allowed)
    schema, report, report_path = validate_for_training(
        df, project.config, project.root / ".shipml" / "reports"
    )
    if not report.ok or schema is None:
        first = report.fatal[0] if report.fatal else None
        raise ValidationFailed(
            f"{extracted.source}: data validation failed: "
            f"{first.message if first else 'no usable schema'}",
            f"fix the new data; every finding is in {report_path}",
            report=report,
        )
    if old is not None:
        retyped = [c for c in schema_differences(old, schema) if c not in changes]
        _stop_on_changes(extracted, champion, retyped, allowed)
        changes += retyped
    return Validated(
        **extracted.to_dict(),
        report=str(report_path),
        champion=champion,
        schema_changes=changes,
    )


def _stop_on_changes(
    extracted: Extracted, champion: int | None, changes: list[str], allowed: bool
) -> None:
    if changes and not allowed:
        raise DataError(
            f"{extracted.source}: the new batch's schema differs from champion version "
            f"{champion}'s: {'; '.join(changes[:8])}",
            "fix the data, or if the change is intended set retrain.allow_schema_change: true "
            "(or pass --allow-schema-change); the champion is unchanged",
        )


# --------------------------------------------------------------------------------- train


def train(
    validated: Validated,
    time_budget: float | None = None,
    trials: int | None = None,
    on_event: Any = None,
) -> Trained:
    """Train on the batch and register the result as the challenger (never the champion).
    ``on_event`` receives the training service's progress events."""
    from shipml.training.train import train as train_service

    project = validated.project()
    if trials is not None:
        project.config.training.trials = trials
    budget = time_budget or project.config.retrain.time_budget_s
    text = project.path.read_text(encoding="utf-8")
    result = train_service(
        project.config, project.root, text, validated.data, budget, on_event, gated=True
    )
    return Trained(
        **validated.to_dict(), version=result.version, run_id=result.run_id, metric=result.metric
    )


# ------------------------------------------------------------------------------ evaluate


def _outputs(model: Any, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
    if model.schema.task == "regression":
        return np.asarray(model.predict(X, "holdout"), dtype=float), None
    return model.predict_with_proba(X, "holdout")


def _all_metrics(
    task: str, y: np.ndarray, pred: np.ndarray, proba: np.ndarray | None, classes: list[Any]
) -> dict[str, float]:
    if task == "regression":
        return regression_metrics(y, pred)
    return classification_metrics(y, pred, proba, classes)


def _same_classes(theirs: list[Any], ours: list[Any], champion: int, challenger: int) -> None:
    """The champion is compared on the challenger's classes; where those differ (a class came
    or went with the new batch), its probabilities do not line up, and no comparison holds."""
    if [category_str(c) for c in theirs] != [category_str(c) for c in ours]:
        came = sorted({category_str(c) for c in ours} - {category_str(c) for c in theirs})
        went = sorted({category_str(c) for c in theirs} - {category_str(c) for c in ours})
        raise DataError(
            f"the new batch's classes differ from champion version {champion}'s"
            + (f"; new: {', '.join(came[:10])}" if came else "")
            + (f"; gone: {', '.join(went[:10])}" if went else ""),
            f"the two cannot be compared on the same rows: check version {challenger} "
            f"(`shipml evaluate`) and promote it by hand (`shipml promote {challenger}`)",
        )


def paired_bootstrap(
    metric: str,
    y: np.ndarray,
    challenger: tuple[np.ndarray, np.ndarray | None],
    champion: tuple[np.ndarray, np.ndarray | None],
    classes: list[Any],
    resamples: int,
    confidence: float,
    seed: int,
) -> tuple[float, float, float]:
    """(difference, low, high): the metric of challenger minus champion on the same rows,
    signed so that > 0 is better, and its percentile bootstrap interval (rows resampled with
    replacement, both models on the same resample)."""
    sign = 1.0 if METRICS[metric].greater_is_better else -1.0

    def diff(rows: np.ndarray | slice) -> float:
        a = metric_value(metric, y[rows], challenger[0][rows], _rows(challenger[1], rows), classes)
        b = metric_value(metric, y[rows], champion[0][rows], _rows(champion[1], rows), classes)
        return sign * (a - b)

    rng = np.random.default_rng(seed)
    n = len(y)
    draws = np.array([diff(rng.integers(0, n, n)) for _ in range(resamples)])
    draws = draws[~np.isnan(draws)]
    if len(draws) == 0:
        return math.nan, math.nan, math.nan
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return diff(slice(None)), float(low), float(high)


def _rows(proba: np.ndarray | None, rows: np.ndarray | slice) -> np.ndarray | None:
    return None if proba is None else proba[rows]


def _feedback_frame(project: Project) -> pd.DataFrame:
    """The logged predictions that received a label through /feedback: inputs + target."""
    from shipml.serving.predlog import latest_labels, recent_predictions

    folder = project.root / ".shipml" / "predictions"
    if not folder.is_dir():
        return pd.DataFrame()
    labels = latest_labels(folder)
    if not labels:
        return pd.DataFrame()
    window = project.config.monitoring.window
    rows = [r for r in recent_predictions(folder, window) if r.get("request_id") in labels]
    frame = pd.DataFrame([r.get("inputs") or {} for r in rows])
    if not frame.empty:
        frame[project.config.target] = [labels[r["request_id"]] for r in rows]
    return frame


def _gate_metric(project: Project, trained: Trained, task: str, n_classes: int | None) -> str:
    metric = project.config.gate.metric or trained.metric or default_metric(task, n_classes)
    if METRICS[metric].task != task:
        raise ConfigError(
            f"gate.metric '{metric}' does not fit the {task} task of target "
            f"'{project.config.target}'",
            "choose a gate metric for this task in shipml.yaml",
        )
    return metric


def evaluate(trained: Trained) -> Evaluated:
    """The challenger and the champion on the same holdout (the batch's test split) with a
    paired bootstrap of the gate metric, and both on the latest labelled feedback. Should it
    fail, the challenger is marked as failed (not gated) before the error goes on."""
    project = trained.project()
    with not_gated_on_failure(project, trained.version, "evaluate"):
        return _evaluate(project, trained)


def _evaluate(project: Project, trained: Trained) -> Evaluated:
    from shipml.scoring import Model
    from shipml.scoring import evaluate as evaluate_on
    from shipml.training.train import prepare_data

    gate = project.config.gate
    prepared = prepare_data(project.config, project.root, trained.data, lambda *a, **k: None)
    challenger = Model(registry.load(project.store, trained.version))
    task = challenger.schema.task
    classes = challenger.classes or []
    metric = _gate_metric(project, trained, task, len(classes) or None)
    y = np.asarray(prepared.y_test)
    if task == "classification":
        # The holdout's labels as the challenger's classes, of the type it predicts.
        y = to_classes(y, classes, f"{trained.source} (holdout)", project.config.target)
    elif metric == "mape" and not mape_defined(y):
        raise ConfigError(
            f"gate.metric 'mape' means nothing on this batch: target '{project.config.target}' "
            "has values at or near zero, and MAPE divides by them",
            "gate on mae or rmse in shipml.yaml",
        )
    ours = _outputs(challenger, prepared.X_test)
    result = Evaluated(
        **trained.to_dict(),
        gate_metric=metric,
        holdout_rows=len(y),
        challenger_metrics=_all_metrics(task, y, *ours, classes),
        confidence=gate.confidence,
    )
    champion_version = project.champion()
    models = {"challenger": challenger}
    if champion_version is not None and champion_version != trained.version:
        champion = Model(registry.load(project.store, champion_version))
        _same_classes(champion.classes or [], classes, champion_version, trained.version)
        models["champion"] = champion
        theirs = _outputs(champion, prepared.X_test)
        result.champion = champion_version
        result.champion_metrics = _all_metrics(task, y, *theirs, classes)
        result.difference, result.ci_low, result.ci_high = paired_bootstrap(
            metric,
            y,
            ours,
            theirs,
            classes,
            gate.bootstrap,
            gate.confidence,
            project.config.training.seed,
        )
    feedback = _feedback_frame(project)
    if len(feedback) >= MIN_FEEDBACK_ROWS:
        result.feedback_rows = len(feedback)
        for role, model in models.items():
            result.feedback[role] = evaluate_on(model, feedback, "feedback").metrics
    return result


# ---------------------------------------------------------------------------------- gate


@contextmanager
def not_gated_on_failure(project: Project, version: int, step: str) -> Iterator[None]:
    """Inside, an error leaves a mark before it goes on: the challenger ``version`` is
    recorded as failed with the reason "not gated" (never left registered and ungated without a
    word), and the error says so."""
    try:
        yield
    except GateFailed:
        raise  # the gate's own decision, recorded already
    except Exception as err:
        text = err.message if isinstance(err, ShipmlError) else f"{type(err).__name__}: {err}"
        reason = f"FAILED: not gated: the {step} step stopped: {text}"
        try:
            registry.record_gate(project.store, version, {"passed": False, "reasons": [reason]})
            mark = "marked shipml.gate=failed (not gated)"
        except Exception:  # the store itself may be what failed: say so, keep the first error
            mark = "not gated (marking it failed in the registry failed too)"
        note = f"version {version} stays registered, {mark}; the champion is unchanged"
        if isinstance(err, ShipmlError):
            err.hint = f"{err.hint}; {note}" if err.hint else note
        else:
            err.add_note(note)
        raise


def _fmt(value: float | None) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.4g}"
    )


def gate(evaluated: Evaluated, fail: bool = False) -> Decision:
    """Apply ``gate.min`` and ``gate.must_beat_champion`` to the evidence; the decision and
    its evidence go to MLflow (a tag on the version, gate/decision.json and gate_* metrics on
    its run). With ``fail``, a failed gate raises GateFailed (exit 1) after recording it."""
    project = evaluated.project()
    with not_gated_on_failure(project, evaluated.version, "gate"):
        decision, evidence = _decide(project, evaluated)
        registry.record_gate(project.store, evaluated.version, evidence)
    if fail and not decision.passed:
        raise GateFailed(
            f"version {evaluated.version} failed the gate: "
            + "; ".join(r for r in decision.reasons if r.startswith("FAILED")),
            f"the champion (version {evaluated.champion}) is unchanged",
        )
    return decision


def _decide(project: Project, evaluated: Evaluated) -> tuple[Decision, dict[str, Any]]:
    cfg = project.config.gate
    metric = evaluated.gate_metric
    higher = METRICS[metric].greater_is_better
    value = evaluated.challenger_metrics.get(metric, math.nan)
    reasons: list[str] = []
    passed = True
    if cfg.min is not None:
        ok = not math.isnan(value) and (value >= cfg.min if higher else value <= cfg.min)
        word = "at least" if higher else "at most"
        reasons.append(
            f"{'ok' if ok else 'FAILED'}: challenger {metric} {_fmt(value)} on "
            f"{evaluated.holdout_rows} holdout rows must be {word} gate.min {cfg.min:g}"
        )
        passed &= ok
    if cfg.must_beat_champion and evaluated.champion_metrics is not None:
        theirs = evaluated.champion_metrics.get(metric, math.nan)
        allowed = cfg.tolerance * abs(theirs) if not math.isnan(theirs) else 0.0
        low = evaluated.ci_low
        ok = low is not None and not math.isnan(low) and low >= -allowed
        pct = round(evaluated.confidence * 100)
        reasons.append(
            f"{'ok' if ok else 'FAILED'}: challenger {metric} {_fmt(value)} vs champion "
            f"(version {evaluated.champion}) {_fmt(theirs)} on the same rows: difference "
            f"{_signed(evaluated.difference)} (better > 0), {pct}% CI "
            f"[{_signed(low)}, {_signed(evaluated.ci_high)}]; its low end must be >= "
            f"-{allowed:.4g} (tolerance {cfg.tolerance:g} of the champion's value)"
        )
        passed &= ok
    elif cfg.must_beat_champion:
        reasons.append("ok: no champion to beat")
    decision = Decision(**evaluated.to_dict(), passed=passed, reasons=reasons)
    evidence = {
        "passed": passed,
        "reasons": reasons,
        "metric": metric,
        "challenger": value,
        "champion": None
        if evaluated.champion_metrics is None
        else evaluated.champion_metrics.get(metric),
        "champion_version": evaluated.champion,
        "difference": evaluated.difference,
        "ci_low": evaluated.ci_low,
        "ci_high": evaluated.ci_high,
        "confidence": evaluated.confidence,
        "tolerance": cfg.tolerance,
        "min": cfg.min,
        "holdout_rows": evaluated.holdout_rows,
        "feedback_rows": evaluated.feedback_rows,
        "feedback": evaluated.feedback,
        "challenger_metrics": evaluated.challenger_metrics,
        "champion_metrics": evaluated.champion_metrics,
    }
    return decision, evidence


def _signed(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:+.4g}"


# ------------------------------------------------------------------------------- promote


def promote(decision: Decision) -> Promotion:
    """Move the champion alias to a challenger that passed (one atomic write; running
    servers pick it up within serving.reload_interval_s) and advance the SQL watermark.
    A challenger that failed stays registered, never champion."""
    project = decision.project()
    store = project.store
    if not decision.passed:
        return Promotion(**decision.to_dict(), promoted=False, champion_after=project.champion())
    previous = project.champion()
    if previous != decision.version:
        registry.promote(store, decision.version)
    if decision.watermark is not None and project.config.data.watermark_column:
        path = _pipeline_dir(project) / WATERMARK_FILE
        partial = path.with_suffix(".tmp")
        partial.write_text(
            json.dumps(
                {
                    "column": project.config.data.watermark_column,
                    "value": decision.watermark,
                    "version": decision.version,
                    "time": datetime.now(UTC).isoformat(),
                }
            )
        )
        os.replace(partial, path)
    return Promotion(
        **decision.to_dict(),
        promoted=True,
        champion_after=decision.version,
        previous=previous,
    )


STEPS = ("extract", "validate", "train", "evaluate", "gate", "promote")
