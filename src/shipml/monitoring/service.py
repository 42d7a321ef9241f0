"""The monitor service: drift and performance of current data against a model version's
reference profile (or of one file against another), as `shipml monitor` and
`Project.monitor` run it."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from shipml import registry
from shipml.data.sources import AUTO_ENCODING, iter_table_file, not_utf8
from shipml.errors import DataError, RegistryError, ShipmlError, faults_named
from shipml.monitoring.drift import IMPORTANCE_META, DriftResult, DriftSettings, compare
from shipml.monitoring.performance import Performance, log_performance, performance, strings
from shipml.monitoring.profile import (
    IMPORTANCE_ARTIFACT,
    PROFILE_ARTIFACT,
    Finding,
    Profile,
    ProfileBuilder,
    infer_kinds,
    summarize,
)
from shipml.monitoring.summary import NumericSummary

if TYPE_CHECKING:
    from shipml.project import Project
    from shipml.scoring import Model


@dataclass
class MonitorResult:
    """What `shipml monitor` found."""

    drift: DriftResult
    source: str
    reference: str
    version: int | None = None
    performance: Performance | None = None
    reference_profile: Profile | None = None
    current_profile: Profile | None = None
    current_frame: pd.DataFrame | None = None  # the rows checked, when they came from the log
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "source": self.source,
            "reference": self.reference,
            "model_version": self.version,
            **self.drift.to_dict(),
            "performance": None if self.performance is None else self.performance.to_dict(),
        }

    def write_json(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        try:
            with faults_named(path):
                tmp.write_text(json.dumps(self.to_dict(), indent=2), encoding="utf-8")
                tmp.replace(path)
        finally:  # a full disk leaves no half-written file behind
            tmp.unlink(missing_ok=True)
        return path


# --- the reference ----------------------------------------------------------------------------


def load_profile(project: Project, ref: str | int = "champion") -> tuple[int, Profile]:
    """A version's reference profile, fetched once from its MLflow run into .shipml/profiles/."""
    version = registry.resolve(project.store, ref)
    folder = project.root / ".shipml" / "profiles" / f"{project.config.name}-v{version}"
    path = folder / Path(PROFILE_ARTIFACT).name
    if not path.is_file() and not registry.fetch_artifact(
        project.store, version, PROFILE_ARTIFACT, folder
    ):
        raise RegistryError(
            f"version {version} of '{project.config.name}' has no reference profile",
            "versions trained before shipml 0.4 have none: retrain to get one, or compare two "
            "files with --reference FILE --current FILE",
        )
    profile = Profile.read(path)
    importance = folder / Path(IMPORTANCE_ARTIFACT).name
    if importance.is_file() or registry.fetch_artifact(
        project.store, version, IMPORTANCE_ARTIFACT, folder
    ):
        profile.meta[IMPORTANCE_META] = json.loads(importance.read_text(encoding="utf-8"))
    return version, profile


# --- current data from a file -----------------------------------------------------------------


class _Scorer:
    """Scores chunks with the version's model, for prediction drift and performance."""

    def __init__(self, model: Model, target: str, task: str) -> None:
        self.model, self.target, self.task = model, target, task
        self.classes = None if model.classes is None else strings(model.classes)
        self.predictions: list[Any] = []
        self.confidence: list[float] = []
        self.labels: list[Any] = []
        self.labelled_predictions: list[Any] = []
        self.labelled_proba: list[np.ndarray] = []
        self.failed: str | None = None

    def add(self, chunk: pd.DataFrame) -> None:
        if self.failed is not None:
            return
        try:
            if self.task == "classification":
                labels, proba = self.model.predict_with_proba(chunk, source="current data")
                classes = np.asarray(self.model.pipeline.classes_)
                position = {c: i for i, c in enumerate(classes)}
                picked = np.fromiter((position[p] for p in labels), dtype=np.int64)
                self.confidence += proba[np.arange(len(picked)), picked].tolist()
            else:
                labels = self.model.predict(chunk, source="current data")
                proba = None
        except ShipmlError as err:
            self.failed = err.message
            return
        self.predictions += list(labels)
        if self.target in chunk.columns:
            has_label = chunk[self.target].notna().to_numpy()
            self.labels += list(chunk[self.target][has_label])
            self.labelled_predictions += list(np.asarray(labels)[has_label])
            if proba is not None:
                self.labelled_proba.append(proba[has_label])


Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def _profile_file(
    path: Path,
    reference: Profile,
    ignored: set[str],
    scorer: _Scorer | None,
    target: str | None,
    progress: Progress = _quiet,
    encoding: str = AUTO_ENCODING,
) -> Profile:
    builder = ProfileBuilder(reference.kinds)
    target_values: list[Any] = []
    used = None
    for chunk in iter_table_file(path, encoding=encoding):
        used = chunk.attrs.get("encoding")
        builder.add(chunk)
        progress(f"{builder.rows:,} rows of {path.name} read")
        if scorer is not None:
            scorer.add(chunk)
        if target and target in chunk.columns:
            target_values += list(chunk[target].dropna())
    current = builder.build(ignored)
    task = reference.meta.get("task")
    kind = "numeric" if task == "regression" else "categorical"
    if target_values:
        current.target = summarize(target_values, kind)
    if scorer is not None and scorer.predictions:
        current.prediction = summarize(scorer.predictions, kind)
        if scorer.confidence:
            confidence = summarize(scorer.confidence, "numeric")
            assert isinstance(confidence, NumericSummary)
            current.confidence = confidence
    if scorer is not None and scorer.failed:
        current.findings.append(Finding("prediction", "not_scored", scorer.failed))
    if not_utf8(used):
        current.meta["encoding"] = used
    return current


def _named(path: Path, profile: Profile) -> str:
    """The file as the result names it, with its encoding where that is not UTF-8."""
    encoding = profile.meta.get("encoding")
    return f"{path} (read as {encoding})" if encoding else str(path)


def monitor_files(
    reference: Path, current: Path, settings: DriftSettings, progress: Progress = _quiet
) -> MonitorResult:
    """Drift of one file against another (no project needed)."""
    first = next(iter(iter_table_file(reference, chunk_rows=10_000)))
    kinds = infer_kinds(first)
    builder = ProfileBuilder(kinds)
    used = None
    for chunk in iter_table_file(reference):
        used = chunk.attrs.get("encoding")
        builder.add(chunk)
        progress(f"{builder.rows:,} rows of {reference.name} read")
    ref_profile = builder.build()
    ref_profile.findings = []
    if not_utf8(used):
        ref_profile.meta["encoding"] = used
    cur_profile = _profile_file(current, ref_profile, set(), None, None, progress)
    return MonitorResult(
        drift=compare(ref_profile, cur_profile, settings),
        source=_named(current, cur_profile),
        reference=_named(reference, ref_profile),
        reference_profile=ref_profile,
        current_profile=cur_profile,
    )


def monitor_file(
    project: Project,
    current: Path,
    ref: str | int,
    settings: DriftSettings,
    progress: Progress = _quiet,
) -> MonitorResult:
    """Drift (features, predictions, target) and, with labels, performance of a file."""
    from shipml.scoring import Model

    version, profile = load_profile(project, ref)
    model = Model(registry.load(project.store, version))
    schema = model.schema
    scorer = _Scorer(model, schema.target, schema.task)
    cur_profile = _profile_file(
        current,
        profile,
        schema.known_columns,
        scorer,
        schema.target,
        progress,
        project.config.data.encoding,
    )
    result = MonitorResult(
        drift=compare(profile, cur_profile, settings),
        source=_named(current, cur_profile),
        reference=f"version {version}",
        version=version,
        reference_profile=profile,
        current_profile=cur_profile,
    )
    if scorer.labels:
        proba = np.concatenate(scorer.labelled_proba) if scorer.labelled_proba else None
        result.performance = performance(
            _metric(project, version),
            schema.task,
            strings(scorer.labels) if schema.task == "classification" else scorer.labels,
            strings(scorer.labelled_predictions)
            if schema.task == "classification"
            else scorer.labelled_predictions,
            proba,
            scorer.classes,
            model.test_metrics,
            project.config.monitoring.performance_tolerance,
        )
    return result


def _metric(project: Project, version: int) -> str:
    for info in registry.list_versions(project.store):
        if info.version == version and info.tags.get("shipml.metric"):
            return info.tags["shipml.metric"]
    from shipml.evaluation.metrics import default_metric

    return project.config.training.metric or default_metric("classification")


# --- current data from the prediction log -----------------------------------------------------


def log_inputs(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame([r.get("inputs") or {} for r in rows])


def log_profile(rows: list[dict[str, Any]], reference: Profile, labels: dict[str, Any]) -> Profile:
    """A current profile of logged predictions: their inputs, outputs, confidences, and the
    labels sent to /feedback for them."""
    inputs = log_inputs(rows)
    builder = ProfileBuilder(reference.kinds)
    builder.add(inputs)
    current = builder.build()
    kind = "numeric" if reference.meta.get("task") == "regression" else "categorical"
    current.prediction = summarize([r.get("prediction") for r in rows], kind)
    confidences = [r["confidence"] for r in rows if r.get("confidence") is not None]
    if confidences:
        confidence = summarize(confidences, "numeric")
        assert isinstance(confidence, NumericSummary)
        current.confidence = confidence
    labelled = [labels[r["request_id"]] for r in rows if r.get("request_id") in labels]
    if labelled:
        current.target = summarize(labelled, kind)
    return current


def monitor_log(
    project: Project,
    ref: str | int,
    settings: DriftSettings,
    window: int | None = None,
    since: datetime | None = None,
) -> MonitorResult:
    """Drift of the latest logged predictions (``window`` rows, or since a time) and
    performance on those that received a label through /feedback."""
    from shipml.serving.predlog import latest_labels, recent_predictions

    version, profile = load_profile(project, ref)
    folder = project.root / ".shipml" / "predictions"
    rows = window or project.config.monitoring.window
    when = None if since is None else since.timestamp()
    recent = recent_predictions(folder, None if since is not None else rows, when)
    if not recent:
        raise DataError(
            f"no logged predictions in {folder}"
            + (f" since {since.isoformat()}" if since is not None else ""),
            "serve the model (`shipml serve`) and send it requests first, or monitor a file "
            "with --current FILE",
        )
    labels = latest_labels(folder)
    current = log_profile(recent, profile, labels)
    result = MonitorResult(
        drift=compare(profile, current, settings),
        source=f"prediction log: {len(recent)} latest rows"
        if since is None
        else f"prediction log: {len(recent)} rows since {since.isoformat()}",
        reference=f"version {version}",
        version=version,
        reference_profile=profile,
        current_profile=current,
        current_frame=log_inputs(recent),
    )
    info = next(v for v in registry.list_versions(project.store) if v.version == version)
    result.performance = log_performance(
        [r for r in recent if str(r.get("model_version")) == str(version)],
        labels,
        str(profile.meta.get("task", "classification")),
        _metric(project, version),
        info.test_metrics,
        project.config.monitoring.performance_tolerance,
    )
    return result


def run_monitor(
    project: Project | None,
    *,
    current: Path | None = None,
    reference: Path | None = None,
    window: int | None = None,
    since: datetime | None = None,
    ref: str | int = "champion",
    report: Path | None = None,
    json_out: Path | None = None,
    engine: str = "shipml",
    progress: Progress = _quiet,
) -> tuple[MonitorResult, dict[str, Path]]:
    """`shipml monitor`: check, then save the JSON result (always, inside a project) and the
    HTML report; returns the result and what was written where."""
    settings = DriftSettings.from_config(project.config.monitoring) if project else DriftSettings()
    if reference is not None:
        if current is None:
            raise DataError(
                "--reference compares two files: give --current FILE as well",
                "or leave out --reference to use the model's reference profile",
            )
        result = monitor_files(reference, current, settings, progress)
    elif project is None:
        raise DataError("no project", "give -c shipml.yaml, or --reference FILE")
    elif current is not None:
        result = monitor_file(project, current, ref, settings, progress)
    else:
        result = monitor_log(project, ref, settings, window, since)
    saved: dict[str, Path] = {}
    if project is not None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        saved["result"] = result.write_json(
            project.root / ".shipml" / "monitoring" / f"drift-{stamp}.json"
        )
    if json_out is not None:
        saved["json"] = result.write_json(json_out)
    if report is not None:
        progress(f"writing {report.name}")
        name = project.config.name if project else (current.stem if current else "drift")
        if engine == "evidently":
            from shipml.monitoring.evidently_engine import write_evidently_report

            saved["Evidently report"] = write_evidently_report(
                result, report, reference, current, project
            )
        else:
            from shipml.monitoring.report import write_monitor_report

            saved["report"] = write_monitor_report(result, report, name)
    return result, saved
