"""`shipml reproduce N`: rebuild a registered version from its manifest and check the rebuild.

The manifest (logged with every version, its sha256 registered beside it) holds the config as
used, the training table's fingerprint, the seeds, the number of search trials, the code's
commit and every package's version. A reproduction trains in a scratch project of its own (its
own store: the project's registry and aliases are never touched) on data whose fingerprint
must match, with the recorded number of trials instead of a clock, then compares the rebuilt
model's test metrics and its predictions on the test split with the original's.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from shipml import registry
from shipml.config import ProjectConfig
from shipml.data.sources import fingerprint, load_table, read_data_file
from shipml.errors import DataError
from shipml.project import Project

# Training's budget when rebuilding: the trials are fixed, so the clock must not cut them.
MIN_REBUILD_BUDGET_S = 3600.0


@dataclass
class Reproduction:
    """The outcome of one `shipml reproduce`."""

    version: int
    scratch: Path
    tolerance: float
    metrics: list[tuple[str, float | None, float | None, float | None]]  # name, was, now, diff
    rows: int  # test rows compared
    predictions_differing: int
    max_probability_difference: float | None
    package_changes: list[tuple[str, str | None, str | None]]  # name, at training, now
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        diffs = [abs(d) for _, _, _, d in self.metrics if d is not None]
        missing = any(d is None for _, _, _, d in self.metrics)
        proba = self.max_probability_difference or 0.0
        return (
            not missing
            and all(d <= self.tolerance for d in diffs)
            and self.predictions_differing == 0
            and proba <= self.tolerance
        )


def package_changes(
    recorded: dict[str, str], current: dict[str, str]
) -> list[tuple[str, str | None, str | None]]:
    """Packages whose version differs (or that appeared or went) since training."""
    names = sorted(set(recorded) | set(current), key=str.lower)
    return [
        (n, recorded.get(n), current.get(n)) for n in names if recorded.get(n) != current.get(n)
    ]


def _training_table(
    project: Project, manifest: dict[str, Any], data: Path | None
) -> tuple[pd.DataFrame, str]:
    source = manifest["data"]["source"]
    if data is not None:
        return read_data_file(data, project.config.data), str(data)
    if source["kind"] == "file":
        path = Path(source["path"])
        if not path.is_absolute():
            path = project.root / path
        return read_data_file(path, project.config.data), str(path)
    df = load_table(project.config.data, project.root, project.config.target)
    return df, "data.query"


def _scratch_config(
    project: Project, manifest: dict[str, Any], data_file: Path, scratch: Path
) -> tuple[ProjectConfig, str]:
    """The manifest's config, made to run in ``scratch``: its own store, the data file given,
    paths made absolute, the recorded number of trials and a budget the clock cannot cut."""
    raw = yaml.safe_load(manifest["config"]) or {}
    raw.pop("tracking_uri", None)
    raw["data"] = {
        **{k: v for k, v in (raw.get("data") or {}).items() if k == "images"},
        "path": str(data_file),
    }
    training = raw.setdefault("training", {})
    training["trials"] = int(manifest["search"]["trials"])
    budget = float(manifest["overrides"].get("time_budget_s") or 0.0)
    training["time_budget_s"] = max(budget * 20, MIN_REBUILD_BUDGET_S)
    for params in (training.get("params") or {}).values():  # build_model files and the like
        if isinstance(params, dict) and isinstance(params.get("build_model"), str):
            path = Path(params["build_model"])
            if not path.is_absolute():
                params["build_model"] = str(project.root / path)
    text = yaml.safe_dump(raw, sort_keys=False)
    path = scratch / "shipml.yaml"
    path.write_text(text, encoding="utf-8")
    return Project.load(path).config, text


def _outputs(model: Any, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
    if model.schema.task != "classification":
        return np.asarray(model.predict(X, "test split")), None
    prediction, proba = model.predict_with_proba(X, "test split")
    return prediction, np.asarray(proba, dtype=float)


def reproduce(
    project: Project,
    version: int,
    data: Path | None = None,
    out: Path | None = None,
    on_event: Callable[..., None] | None = None,
    tolerance: float | None = None,
) -> Reproduction:
    """Rebuild ``version`` in a scratch project (``out``, else a new temporary folder) and
    compare it with the registered one. Raises DataError when the data's fingerprint no longer
    matches; RegistryError when the manifest is missing or was changed."""
    from shipml.scoring import Model
    from shipml.training.train import prepare_data, train

    emit = on_event or (lambda *a, **k: None)
    manifest = registry.load_manifest(project.store, version)
    df, where = _training_table(project, manifest, data)
    if fingerprint(df) != manifest["data"]["sha256"]:
        rows = manifest["data"]["rows"]
        raise DataError(
            f"{where}: the data does not match version {version}'s training table "
            f"(sha256 differs; {len(df):,} rows now, {rows:,} at training)",
            "pass --data PATH with the exact table version "
            f"{version} was trained on (its fingerprint is in `shipml models --version "
            f"{version} --manifest`)",
        )
    changes = package_changes(manifest["packages"], registry.all_package_versions())
    if changes:
        shown = ", ".join(f"{n} {a or '-'} -> {b or '-'}" for n, a, b in changes[:6])
        more = f" and {len(changes) - 6} more" if len(changes) > 6 else ""
        emit(
            "note",
            text=f"warning: {len(changes)} package(s) differ from training: {shown}{more}",
        )
    scratch = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="shipml-reproduce-"))
    scratch.mkdir(parents=True, exist_ok=True)
    data_file = scratch / "data.parquet"
    if manifest["data"]["source"]["kind"] == "file" or data is not None:
        data_file = Path(where).resolve()
    else:
        df.to_parquet(data_file, index=False)
    config, text = _scratch_config(project, manifest, data_file, scratch)
    notes: list[str] = []
    if not manifest["search"]["fixed_trials"]:
        notes.append(
            f"version {version}'s search ran on the clock and stopped after "
            f"{manifest['search']['trials']} trials; the rebuild runs that many, which may try "
            "other candidates (set training.trials for rebuilds that match exactly)"
        )
    if manifest["git"].get("dirty"):
        notes.append(f"version {version} was trained from a git tree with uncommitted changes")
    result = train(config, scratch, text, None, None, on_event)
    emit("stage", name="Comparing predictions on the test split")
    prepared = prepare_data(config, scratch, None, lambda *a, **k: None)
    original = Model(registry.load(project.store, version))
    rebuilt = Model(registry.load(Project.load(scratch / "shipml.yaml").store, result.version))
    pred_a, proba_a = _outputs(original, prepared.X_test)
    pred_b, proba_b = _outputs(rebuilt, prepared.X_test)
    limit = tolerance_of(project, tolerance)
    if original.schema.task == "regression":
        a, b = pred_a.astype(float), pred_b.astype(float)
        differing = int(np.sum(np.abs(a - b) > limit * np.maximum(1.0, np.abs(a))))
        max_proba = None
    else:
        differing = int(np.sum(pred_a != pred_b))
        max_proba = float(np.max(np.abs(proba_a - proba_b))) if proba_a is not None else None
    recorded: dict[str, float] = manifest["test_metrics"]
    metrics = []
    for name in sorted(set(recorded) | set(result.test_metrics)):
        was, now = recorded.get(name), result.test_metrics.get(name)
        diff = None if was is None or now is None else float(now) - float(was)
        if diff is not None and math.isnan(diff):
            diff = None
        metrics.append((name, was, now, diff))
    return Reproduction(
        version=version,
        scratch=scratch,
        tolerance=limit,
        metrics=metrics,
        rows=len(prepared.X_test),
        predictions_differing=differing,
        max_probability_difference=max_proba,
        package_changes=changes,
        notes=notes,
    )


def tolerance_of(project: Project, tolerance: float | None) -> float:
    return float(tolerance if tolerance is not None else project.config.reproduce.tolerance)
