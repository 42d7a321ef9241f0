"""The train service: load, validate, split, cross-validate, refit, evaluate, track, register."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shipml import registry
from shipml.config import ProjectConfig
from shipml.data.coerce import coerce_frame, coerce_target
from shipml.data.infer import infer_schema
from shipml.data.schema import Schema
from shipml.data.sources import fingerprint, load_table, mask_url, read_data_file
from shipml.data.split import split_table
from shipml.data.validate import ValidationReport, drop_missing_target, validate_table
from shipml.errors import ConfigError, TrainingError, ValidationFailed, half_written
from shipml.evaluation.metrics import (
    METRICS,
    classification_metrics,
    classification_report_dict,
    confusion,
    default_metric,
    regression_metrics,
)
from shipml.models import checkpoints
from shipml.models.bagged import BaggedEnsemble
from shipml.models.catalog import families_for, resolve_grid, resolve_params
from shipml.monitoring.profile import (
    IMPORTANCE_ARTIFACT,
    PROFILE_ARTIFACT,
    Profile,
    reference_profile,
)
from shipml.project import report_file
from shipml.training.final import (
    build_final_model,
    choose_threshold,
    full_fit_seconds,
    learning_estimator,
    refit_seconds,
    threshold_metric,
)
from shipml.training.folds import prepare_folds
from shipml.training.leaderboard import Leaderboard
from shipml.training.reporting import (
    MIN_REPORT_S,
    ScoredModel,
    finish_reserve,
    plan_report,
    report_notes,
    write_training_report,
)
from shipml.training.search import (
    EventHandler,
    TransformChoice,
    class_weight_policy,
    run_search,
    target_transform_policy,
)

# MLflow 3 writes "View run ... at: <url>" and "View experiment at: <url>" to stdout whenever a
# run on a tracking server ends: two lines per trial (each is a child run) in the middle of the
# progress output. The run's address is in the summary; a user who wants the lines back sets
# the variable to false.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

# Seconds kept back from the budget for the refit's bookkeeping: evaluation and MLflow logging
# (on a budget under 20 s, 15 % of it: 1.5 s of 10 s, where the finish reserve keeps 3.5 s more).
_FIXED_OVERHEAD_S = 3.0


def budget_overhead(budget: float) -> float:
    """Seconds of ``budget`` the search's deadline leaves for the bookkeeping after it."""
    return max(min(_FIXED_OVERHEAD_S, 0.15 * budget), 0.05 * budget)


@dataclass
class TrainResult:
    """What one `shipml train` produced."""

    model_name: str
    version: int
    alias: str
    run_id: str
    metric: str
    best: str
    leaderboard: Leaderboard
    test_metrics: dict[str, float]
    validation: ValidationReport
    schema: Schema
    n_train: int
    n_test: int
    elapsed_s: float
    budget_s: float
    paths: dict[str, Path] = field(default_factory=dict)
    threshold: float | None = None
    search_trials: int = 0
    inference: str = "native"  # "fast": a verified ONNX/numpy copy serves it (shipml serve)
    inference_note: str = ""
    # With --resume: {"loaded": finished network fits loaded, "continued": fits that went on
    # mid-way, "from_epochs": the epochs they went on from}; None on a fresh run.
    resumed: dict[str, Any] | None = None


def load_training_table(config: ProjectConfig, root: Path, data: str | Path | None) -> pd.DataFrame:
    if data is not None:
        return read_data_file(Path(data), config.data)
    return load_table(config.data, root, config.target)


def _git_info(root: Path) -> dict[str, str]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return {}
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=5
        )
        return {
            "shipml.git_commit": commit.stdout.strip(),
            "shipml.git_dirty": str(bool(dirty.stdout.strip())).lower(),
        }
    except (OSError, subprocess.SubprocessError):
        return {}


MANIFEST_FORMAT = 1


def build_manifest(
    config: ProjectConfig,
    root: Path,
    config_text: str,
    data: str | Path | None,
    prepared: PreparedData,
    *,
    budget: float,
    elapsed: float,
    trials: int,
    candidates: int,
    family: str,
    test_metrics: dict[str, float],
    target_transform: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything needed to rebuild a version and check the rebuild (`shipml reproduce`):
    the config as used, the data's fingerprint, seeds, code and environment, search and
    results."""
    git = _git_info(root)
    source: dict[str, str | None]
    if data is not None:
        source = {"kind": "file", "path": str(Path(data).resolve()), "from": "--data"}
    elif config.data.path:
        source = {"kind": "file", "path": config.data.path, "from": "data.path"}
    else:
        source = {"kind": "sql", "url": mask_url(config.data.url or ""), "query": config.data.query}
    return {
        "format": MANIFEST_FORMAT,
        "project": config.name,
        "created": datetime.now(UTC).isoformat(),
        "config": redact_secrets(config_text, config),
        "overrides": {
            "trials": config.training.trials,
            "time_budget_s": budget,
            "data": None if data is None else str(Path(data).resolve()),
        },
        "data": {
            "source": source,
            "sha256": prepared.data_sha256,
            "rows": prepared.n_rows,
            "train_rows": len(prepared.X_train),
            "test_rows": len(prepared.X_test),
        },
        "seeds": {"split": config.split.seed, "training": config.training.seed},
        "search": {
            "trials": trials,
            "fixed_trials": config.training.trials is not None,
            "candidates": candidates,
            "budget_s": round(budget, 3),
            "used_s": round(elapsed, 3),
        },
        "model": {"family": family, "target_transform": target_transform},
        "git": {
            "commit": git.get("shipml.git_commit"),
            "dirty": git.get("shipml.git_dirty") == "true" if git else None,
        },
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": registry.all_package_versions(),
        "test_metrics": test_metrics,
    }


def redact_secrets(text: str, config: ProjectConfig) -> str:
    """The config text with passwords in URLs masked, for logging to the tracking store."""
    for url in (config.data.url, config.tracking_uri):
        if url and mask_url(url) != url:
            text = text.replace(url, mask_url(url))
    return text


def validate_for_training(
    df: pd.DataFrame, config: ProjectConfig, report_dir: Path
) -> tuple[Schema | None, ValidationReport, Path]:
    """Infer the schema and validate the table; the report is always saved as JSON."""
    schema: Schema | None = None
    if config.target in df.columns:  # otherwise validate_table reports the missing target
        schema = infer_schema(df, config.target, config.task, config.features)
    report = validate_table(df, config.target, schema, config.validation, config.task)
    report_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    path = report_dir / f"validation-{stamp}.json"
    report.write_json(path)
    return schema, report, path


def _test_metrics(
    schema: Schema, pipeline: Any, X: pd.DataFrame, y: pd.Series
) -> tuple[dict[str, float], dict[str, Any]]:
    predictions = pipeline.predict(X)
    if schema.task == "regression":
        return regression_metrics(y, predictions), {}
    classes = list(pipeline.classes_)
    proba = pipeline.predict_proba(X)
    metrics = classification_metrics(y, predictions, proba, classes)
    extras = {
        "confusion_matrix": confusion(y, predictions, classes),
        "classification_report": classification_report_dict(y, predictions, classes),
    }
    return metrics, extras


@dataclass
class PreparedData:
    """The training table after validation, split and type coercion."""

    schema: Schema
    report: ValidationReport
    report_path: Path
    data_sha256: str
    n_rows: int
    X_train: pd.DataFrame
    y_train: pd.Series
    X_test: pd.DataFrame
    y_test: pd.Series
    metric: str


def prepare_data(
    config: ProjectConfig, root: Path, data: str | Path | None, emit: EventHandler
) -> PreparedData:
    """Load, validate (fatal findings raise ValidationFailed), split and coerce the table."""
    emit("stage", name="Loading data")
    df = load_training_table(config, root, data)
    data_sha = fingerprint(df)
    emit("stage", name="Validating data")
    schema, report, report_path = validate_for_training(df, config, root / ".shipml" / "reports")
    emit("validation", report=report, path=report_path)
    if not report.ok or schema is None:
        first = report.fatal[0] if report.fatal else None
        raise ValidationFailed(
            f"data validation failed: {first.message if first else 'no usable schema'}",
            f"fix the data or shipml.yaml; every finding is in {report_path}",
            report=report,
        )
    df = drop_missing_target(df, config.target)
    train_df, test_df = split_table(df, schema, config.split)
    n_classes = len(schema.classes) if schema.classes else None
    metric = config.training.metric or default_metric(schema.task, n_classes)
    if METRICS[metric].task != schema.task:
        raise TrainingError(
            f"training.metric '{metric}' does not fit the {schema.task} task of target "
            f"'{config.target}'",
            "choose a metric for this task, or set `task` in shipml.yaml",
        )
    return PreparedData(
        schema=schema,
        report=report,
        report_path=report_path,
        data_sha256=data_sha,
        n_rows=len(df),
        X_train=coerce_frame(train_df, schema),
        y_train=coerce_target(train_df[config.target], schema.task),
        X_test=coerce_frame(test_df, schema),
        y_test=coerce_target(test_df[config.target], schema.task),
        metric=metric,
    )


def _fast_copy(
    model: BaggedEnsemble, schema: Schema, X_test: pd.DataFrame, recorder: registry.RunRecorder
) -> tuple[str, str, str | None]:
    """Build the fast-inference copy (ONNX trees, numpy preprocessing) and keep it only when it
    matches the model on the held-out split: ("fast" | "native", why, sha256 of the copy)."""
    from shipml.models.fastpath import build_verified

    try:
        fast, how, check = build_verified(model, schema, X_test)
        if fast is None or check is None:
            return "native", how, None
        sha = recorder.log_bytes(fast.to_bytes(), registry.FAST_ARTIFACT)
    except Exception as err:  # the fast path is an optimisation: never fail a training for it
        return "native", f"fast copy failed: {type(err).__name__}: {err}"[:300], None
    note = (
        f"matches the model on {check.rows} test rows (labels identical, largest difference "
        f"{check.max_abs_diff:.1e}; {how})"
    )
    return "fast", note, sha


def _reference_profile(schema: Schema, prepared: PreparedData, scored: ScoredModel) -> Profile:
    """What monitoring compares live data with: the training split's columns and target, and
    the model's predictions (and their confidence) on the held-out split."""
    predictions = scored.predict(prepared.X_test)
    confidence = None
    if schema.task == "classification":
        proba = scored.predict_proba(prepared.X_test)
        position = {label: i for i, label in enumerate(scored.classes_)}
        columns = np.fromiter((position[p] for p in predictions), dtype=np.int64)
        confidence = proba[np.arange(len(columns)), columns]
    return reference_profile(prepared.X_train, prepared.y_train, schema, predictions, confidence)


def _with_user_files(fixed: dict[str, dict[str, Any]], root: Path) -> dict[str, dict[str, Any]]:
    """A Keras ``build_model`` file named in training.params, resolved against the project's
    folder and checked (it exists, imports, defines build_model) before any training starts."""
    keras = fixed.get("keras", {})
    if keras.get("build_model"):
        from shipml.models.keras_backend import ensure_backend, load_user_module

        ensure_backend(keras.get("backend", "torch"))  # before the file imports keras
        path = Path(keras["build_model"])
        path = path if path.is_absolute() else (root / path).resolve()
        module = load_user_module(path)
        if not callable(getattr(module, "build_model", None)):
            raise ConfigError(
                f"training.params.keras.build_model: {path} defines no build_model function",
                "define build_model(n_features, n_outputs, task) returning a keras.Model",
            )
        keras["build_model"] = str(path)
    return fixed


def _log_keras_files(model: BaggedEnsemble, recorder: registry.RunRecorder) -> None:
    """Each Keras network of the model in its native .keras format, beside the registered
    model (which holds the same bytes), for users who load them with Keras itself."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        for name, index, estimator in model.parts:
            if hasattr(estimator, "save_keras"):
                member = name.replace("#", "-")
                path = estimator.save_keras(Path(folder) / f"{member}-{index}.keras")
                recorder.log_file(path, "keras")


def epoch_series(model: BaggedEnsemble) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch curves of the neural networks in the model (their ``history_``), as MLflow step
    metrics: '<member>/<fold>/train_loss', '.../val_loss', '.../val_score', '.../learning_rate'
    (a trial's member 'mlp#2' is written 'mlp-2')."""
    series: dict[str, list[tuple[int, float]]] = {}
    for name, index, estimator in model.parts:
        fitted = getattr(estimator, "regressor_", estimator)  # inside a log-target wrapper
        for epoch in getattr(fitted, "history_", None) or []:
            for key in ("train_loss", "val_loss", "val_score", "learning_rate"):
                value = epoch.get(key)
                if value is not None:
                    member = name.replace("#", "-")  # MLflow metric names: no '#'
                    series.setdefault(f"{member}/{index}/{key}", []).append(
                        (int(epoch["epoch"]), float(value))
                    )
    return series


def transform_params(choice: TransformChoice | None) -> dict[str, Any]:
    """How the target was learned, as run params: the transform, why, and with ``auto`` both
    cross-validated scores."""
    if choice is None:
        return {"target_transform": "none", "target_transform_reason": "off"}
    params: dict[str, Any] = {
        "target_transform": choice.name,
        "target_transform_reason": choice.reason,
    }
    for way, score in choice.scores.items():
        params[f"target_transform_cv_{choice.metric}_{way}"] = f"{score:.6g}"
    return params


def _no_model_error(leaderboard: Leaderboard) -> TrainingError:
    reasons: dict[str, list[str]] = {}
    for r in leaderboard.results:
        reasons.setdefault(r.reason or r.status, []).append(r.name)
    shown = "; ".join(f"{', '.join(names)}: {why}" for why, names in reasons.items())
    return TrainingError(
        f"no candidate model could be trained ({shown})",
        "check the data types in the validation report, or give a larger --time-budget",
    )


def _log_evaluation(
    recorder: registry.RunRecorder,
    test_metrics: dict[str, float],
    extras: dict[str, Any],
    model: ScoredModel,
    X: pd.DataFrame,
    y: pd.Series,
) -> None:
    recorder.log_metrics({f"test_{k}": v for k, v in test_metrics.items()})
    for name, payload in extras.items():
        recorder.log_dict(payload, f"evaluation/{name}.json")
    if "confusion_matrix" in extras:  # the report's figure, also as an artifact of its own
        from shipml.evaluation.plots import confusion_matrix_figure

        figure = confusion_matrix_figure(y, model.predict(X), list(model.classes_))
        recorder.log_figure(figure, "evaluation/confusion_matrix.png")


CHECKPOINTS_DIR = "checkpoints"  # under .shipml/


def _checkpoint_store(
    config: ProjectConfig, root: Path, resume: bool, emit: EventHandler
) -> checkpoints.CheckpointStore | None:
    """Where this run's network fits checkpoint (None when the config turns them off); a
    fresh run clears what an earlier one left."""
    every = config.training.checkpoint_every_s
    directory = root / ".shipml" / CHECKPOINTS_DIR
    store = checkpoints.CheckpointStore(directory, every_s=every or 0.0, resume=resume)
    if resume:
        found = len(store.files())
        emit(
            "note",
            text=f"resuming: {found} checkpointed network fit(s) in {directory}"
            if found
            else f"--resume: no checkpoints in {directory}; training from the start",
        )
    else:
        store.clear()
    return None if every is None else store


def _resume_summary(store: checkpoints.CheckpointStore | None) -> dict[str, Any] | None:
    if store is None or not store.resume or not (store.loaded or store.continued):
        return None
    return {
        "loaded": store.loaded,
        "continued": len(store.continued),
        "from_epochs": list(store.continued),
    }


def _close_failed_run(recorder: registry.RunRecorder, err: BaseException, root: Path) -> None:
    """Mark the run FAILED. When the disk filled up, the file whose write failed is removed
    first: it holds only part of what was meant, and the store needs the space it took to
    record the failure. Where the store itself cannot be written, the run stays RUNNING until
    the next `shipml train` marks it KILLED; the error that stopped the training is raised."""
    partial = half_written(err, root / ".shipml")
    if partial is not None:
        partial.unlink(missing_ok=True)
    with contextlib.suppress(Exception):  # the error that stopped the training is the news
        recorder.finish("FAILED")


def train(
    config: ProjectConfig,
    root: Path,
    config_text: str,
    data: str | Path | None = None,
    time_budget: float | None = None,
    on_event: EventHandler | None = None,
    resume: bool = False,
    gated: bool = False,
) -> TrainResult:
    """Train, evaluate, track and register a model for the project at ``root``.

    Network fits save checkpoints to ``.shipml/checkpoints/`` as they train; with ``resume``
    the checkpoints an interrupted run left are picked up (finished fits load, the one cut off
    goes on from its last epoch); without, they are cleared first. They are removed once the
    model is registered. ``gated`` (the retraining pipeline) registers even a first version as
    the challenger, for the gate to decide.

    Nothing reaches the registry until the model is refit and scored: a failure (or a kill) before
    that leaves at most a FAILED (or, on the next run, KILLED) MLflow run, never a new version.
    """
    emit = on_event or (lambda *a, **k: None)
    started = time.monotonic()
    budget = float(time_budget if time_budget is not None else config.training.time_budget_s)
    if budget <= 0:
        raise TrainingError(f"time budget must be positive (got {budget})", "pass a number > 0")
    emit("budget", seconds=budget)
    deadline = started + budget - budget_overhead(budget)
    if config.compute.engine == "ray":  # no Ray or no cluster: say so before reading the data
        from shipml.training import distributed

        distributed.preflight(config.compute)
    prepared = prepare_data(config, root, data, emit)
    schema, metric = prepared.schema, prepared.metric
    families = families_for(
        schema.task, config.training.models, config.training.baselines, schema.image is not None
    )
    seed = config.training.seed

    store = registry.open_store(root, config.name, config.tracking_uri, config.artifact_location)
    registry.close_stale_runs(store)
    # Registration needs skops, whose first import takes seconds (it lists every scikit-learn
    # estimator, importing torch on the way): paid here, inside the budget the search adapts
    # to, not after the search where the run would go over its time.
    registry.import_serializer()
    recorder = registry.RunRecorder(
        store,
        datetime.now(UTC).strftime("train-%Y%m%d-%H%M%S"),
        {
            "shipml.kind": "train",
            "shipml.data_sha256": prepared.data_sha256,
            "shipml.python": platform.python_version(),
            **_git_info(root),
        },
    )
    try:
        recorder.log_params(
            {
                "task": schema.task,
                "target": config.target,
                "metric": metric,
                "cv": config.training.cv,
                "training_seed": seed,
                "split_seed": config.split.seed,
                "test_size": config.split.test_size,
                "time_budget_s": budget,
                "models": ",".join(f.name for f in families),
                "n_rows": prepared.n_rows,
                "n_train": len(prepared.X_train),
                "n_test": len(prepared.X_test),
                "n_features": len(schema.input_columns),
            }
        )
        recorder.log_text(redact_secrets(config_text, config), "config/shipml.yaml")
        recorder.log_dict(prepared.report.to_dict(), "validation/validation.json")
        recorder.log_dict(schema.to_dict(), "schema/schema.json")
        recorder.log_dict(registry.package_versions(_ENV_PACKAGES), "environment/packages.json")

        def on_candidate(kind: str, **info: Any) -> None:
            if kind == "candidate_done" and info["result"].status != "skipped":
                r = info["result"]
                recorder.log_child(r.name, r.params, r.fold_scores, r.summary(), r.status)
            emit(kind, **info)

        ordered = config.split.time_column is not None
        class_weight, weight_reason = class_weight_policy(
            config.training.class_weight, metric, prepared.y_train, schema.task
        )
        target_transform, transform_reason = target_transform_policy(
            config.training.target_transform, prepared.y_train, schema.task
        )
        fixed = _with_user_files(
            resolve_params(schema.task, families, config.training.params), root
        )
        if schema.image and any(f.name == "cnn" for f in families):
            shape = tuple(schema.image[k] for k in ("height", "width", "channels"))
            fixed["cnn"] = {**fixed.get("cnn", {}), "image_shape": shape}
        grid = None
        if config.training.search == "grid":
            grid = resolve_grid(schema.task, families, config.training.param_grid)
        emit("stage", name="Preparing cross-validation folds")
        folds = prepare_folds(
            prepared.X_train,
            prepared.y_train,
            schema,
            config.features,
            config.training.cv,
            seed,
            ordered,
        )

        def reserve(results: list[Any]) -> float:
            return refit_seconds(results, metric) + finish_reserve(budget, results, metric)

        checkpoint_store = _checkpoint_store(config, root, resume, emit)
        emit("stage", name="Cross-validating candidates")
        with checkpoints.activated(checkpoint_store):
            search = run_search(
                families,
                folds,
                schema.task,
                metric,
                config.training,
                deadline,
                grid=grid,
                class_weight=class_weight,
                on_event=on_candidate,
                reserve=reserve,
                target_transform=target_transform,
                transform_reason=transform_reason,
                fixed=fixed,
                compute=config.compute,
            )
        leaderboard = search.leaderboard
        recorder.log_dict(leaderboard.to_records(), "leaderboard/leaderboard.json")
        recorder.log_dict(search.history, "search/history.json")
        best = leaderboard.best
        if best is None:
            raise _no_model_error(leaderboard)

        threshold = None
        choice = None
        setting = config.training.threshold
        if schema.task == "classification" and folds.classes is not None:
            if len(folds.classes) == 2 and setting == "auto":
                chosen_for = threshold_metric(metric, class_weight)
                choice = choose_threshold(
                    best.fold_outputs, folds.targets, folds.classes, chosen_for
                )
                threshold = choice.threshold
            elif len(folds.classes) == 2 and isinstance(setting, float):
                threshold = setting
        recorder.log_params(
            {
                "search": config.training.search,
                "search_trials": search.trials,
                "class_weight": class_weight or "none",
                "class_weight_reason": weight_reason,
                **transform_params(search.target_transform),
                "decision_threshold": "none" if threshold is None else f"{threshold:.4f}",
            }
        )
        if choice is not None:
            recorder.log_metrics(
                {
                    f"cv_{choice.metric}_at_threshold": choice.score,
                    f"cv_{choice.metric}_at_0.5": choice.score_at_half,
                }
            )

        what = "Bagging" if best.fold_models or best.members else "Refitting"
        emit("stage", name=f"{what} {best.name} on the training split")
        with checkpoints.activated(checkpoint_store):
            model = build_final_model(
                best,
                leaderboard,
                folds,
                prepared.X_train,
                prepared.y_train,
                schema,
                config.features,
                seed,
                threshold,
            )
        recorder.log_series(epoch_series(model))
        _log_keras_files(model, recorder)
        emit("stage", name="Scoring the test split")
        scoring_started = time.monotonic()
        # One prediction pass over the test rows serves the metrics, the plots and the report.
        scored = ScoredModel(model, prepared.X_test)
        score_seconds = time.monotonic() - scoring_started
        test_metrics, extras = _test_metrics(schema, scored, prepared.X_test, prepared.y_test)
        _log_evaluation(recorder, test_metrics, extras, scored, prepared.X_test, prepared.y_test)
        recorder.log_metrics({f"best_{k}": v for k, v in best.summary().items()})
        emit("stage", name="Profiling the reference data for monitoring")
        recorder.log_text(_reference_profile(schema, prepared, scored).to_json(), PROFILE_ARTIFACT)

        emit("stage", name="Checking the fast inference path")
        inference, inference_note, fast_sha = _fast_copy(model, schema, prepared.X_test, recorder)

        emit("stage", name="Registering the model")
        meta = {
            "family": best.name,
            "metric": metric,
            "test_metrics": test_metrics,
            "cv_mean": best.mean(metric),
            "cv_std": best.std(metric),
            "members": model.weights,
            "threshold": threshold,
            "data_sha256": prepared.data_sha256,
            "run_id": recorder.run_id,
        }
        model_uri, sha = recorder.log_model(model, schema, prepared.X_train.head(5), meta)
        manifest = build_manifest(
            config,
            root,
            config_text,
            data,
            prepared,
            budget=budget,
            elapsed=time.monotonic() - started,
            trials=search.trials,
            candidates=len(leaderboard.results),
            family=best.name,
            test_metrics=test_metrics,
            target_transform=(
                search.target_transform.to_dict() if search.target_transform else None
            ),
        )
        recorder.log_dict(manifest, registry.MANIFEST_ARTIFACT)
        version = registry.register(
            store,
            model_uri,
            sha,
            {
                "shipml.family": best.name,
                "shipml.metric": metric,
                "shipml.test_metrics": json.dumps(test_metrics),
                "shipml.cv_mean": f"{best.mean(metric):.6g}",
                "shipml.threshold": "" if threshold is None else f"{threshold:.6g}",
                "shipml.run_id": recorder.run_id,
                "shipml.inference": inference,
                "shipml.inference_note": inference_note,
                **({registry.FAST_SHA_TAG: fast_sha} if fast_sha else {}),
                registry.MANIFEST_SHA_TAG: registry.manifest_digest(manifest),
            },
        )
        alias = registry.assign_new_version_alias(store, version, gated)
        recorder.set_tags({"shipml.version": str(version), "shipml.alias": alias})
        resumed = _resume_summary(checkpoint_store)
        if resumed:
            recorder.log_params(
                {
                    "resumed_fits_loaded": resumed["loaded"],
                    "resumed_fits_continued": resumed["continued"],
                }
            )
        if checkpoint_store is not None:
            checkpoint_store.clear()  # the version is registered: nothing left to resume

        emit("stage", name="Writing the report")
        learner = learning_estimator(best, leaderboard, schema, config.features, seed)
        plan = plan_report(
            max(started + budget - time.monotonic() - 1.0, MIN_REPORT_S),
            len(prepared.X_test),
            len(schema.input_columns),
            score_seconds / max(len(prepared.X_test), 1),
            len(prepared.X_train),
            full_fit_seconds(best, leaderboard),
        )
        report_path, importances = write_training_report(
            report_file(root, config.name, version),
            {
                "project": config.name,
                "version": version,
                "schema": schema,
                "validation": prepared.report,
                "metric": metric,
                "leaderboard": leaderboard,
                "test_metrics": test_metrics,
                "model": scored,
                "X_train": prepared.X_train,
                "y_train": prepared.y_train,
                "X_test": prepared.X_test,
                "y_test": prepared.y_test,
                "search_history": search.history,
                "threshold": threshold,
                "seed": seed,
                "notes": report_notes(
                    config, search.trials, weight_reason, choice, search.target_transform
                ),
            },
            plan,
            learner,
        )
        recorder.log_file(report_path, "report")
        if importances is not None:  # the drift rule's important columns (shipml monitor)
            ranked = [
                [str(f), float(m)]
                for f, m in zip(importances["feature"], importances["mean"], strict=True)
            ]
            recorder.log_text(json.dumps(ranked), IMPORTANCE_ARTIFACT)
        recorder.finish("FINISHED")
    except BaseException as err:
        _close_failed_run(recorder, err, root)
        raise
    return TrainResult(
        model_name=config.name,
        version=version,
        alias=alias,
        run_id=recorder.run_id,
        metric=metric,
        best=best.name,
        leaderboard=leaderboard,
        test_metrics=test_metrics,
        validation=prepared.report,
        schema=schema,
        n_train=len(prepared.X_train),
        n_test=len(prepared.X_test),
        elapsed_s=time.monotonic() - started,
        budget_s=budget,
        paths={
            "validation_report": prepared.report_path,
            "store": root / ".shipml",
            "report": report_path,
        },
        threshold=threshold,
        search_trials=search.trials,
        inference=inference,
        inference_note=inference_note,
        resumed=resumed,
    )


_ENV_PACKAGES = (
    "shipml",
    "scikit-learn",
    "lightgbm",
    "catboost",
    "pandas",
    "numpy",
    "scipy",
    "pyarrow",
    "mlflow",
    "skops",
    "sqlalchemy",
    "optuna",
)
