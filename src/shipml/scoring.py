"""Batch scoring and evaluation with a registered model: the services behind predict/evaluate."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shipml.data.coerce import Unreadable, check_input
from shipml.data.labels import to_classes
from shipml.data.schema import Schema
from shipml.errors import DataError, InputSchemaError, faults_named
from shipml.models.bagged import BaggedEnsemble, labels_for
from shipml.models.fastpipeline import FastPipeline
from shipml.registry_read import LoadedModel


class Model:
    """A registered model version ready to score DataFrames with the training columns."""

    def __init__(self, loaded: LoadedModel) -> None:
        self._loaded = loaded
        self.version = loaded.version
        self.schema: Schema = loaded.schema
        self.pipeline = loaded.pipeline
        self.metadata = loaded.metadata

    @property
    def _fast(self) -> bool:
        """Scores with the version's fast copy (shipml.models.fastpipeline)."""
        return isinstance(self.pipeline, FastPipeline)

    @property
    def classes(self) -> list[Any] | None:
        classes = getattr(self.pipeline, "classes_", None)
        return None if classes is None else [_plain(c) for c in classes]

    @property
    def test_metrics(self) -> dict[str, float]:
        return self._loaded.test_metrics

    def _inputs(
        self,
        df: pd.DataFrame,
        source: str,
        allow_extra: bool,
        unreadable: list[Unreadable] | None = None,
    ) -> pd.DataFrame:
        return check_input(df, self.schema, source, allow_extra, unreadable)

    def _call(
        self,
        method: str,
        df: pd.DataFrame,
        source: str,
        allow_extra: bool,
        unreadable: list[Unreadable] | None = None,
    ) -> np.ndarray:
        X = self._inputs(df, source, allow_extra, unreadable)
        with warnings.catch_warnings(), _unreadable_numbers(X, source, self._fast):
            warnings.simplefilter("ignore")
            return np.asarray(getattr(self.pipeline, method)(X))

    def predict(
        self, df: pd.DataFrame, source: str = "input", allow_extra: bool = True
    ) -> np.ndarray:
        return self._call("predict", df, source, allow_extra)

    def predict_proba(
        self, df: pd.DataFrame, source: str = "input", allow_extra: bool = True
    ) -> np.ndarray:
        if self.schema.task != "classification":
            raise InputSchemaError(
                f"model version {self.version} is a regression model: it has no probabilities",
                "use predict()",
            )
        return self._call("predict_proba", df, source, allow_extra)

    def predict_with_proba(
        self,
        df: pd.DataFrame,
        source: str = "input",
        allow_extra: bool = True,
        unreadable: list[Unreadable] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Class labels (after the model's decision threshold) and probabilities. A shipml model
        computes its parts' outputs once for both; calling predict and predict_proba would run
        every fold model twice. ``unreadable``: as in ``score``."""
        X = self._inputs(df, source, allow_extra, unreadable)
        with warnings.catch_warnings(), _unreadable_numbers(X, source, self._fast):
            warnings.simplefilter("ignore")
            proba = np.asarray(self.pipeline.predict_proba(X))
            if isinstance(self.pipeline, BaggedEnsemble):
                return labels_for(proba, self.pipeline.classes_, self.pipeline.threshold), proba
            return np.asarray(self.pipeline.predict(X)), proba

    def score(
        self,
        df: pd.DataFrame,
        source: str = "input",
        allow_extra: bool = False,
        unreadable: list[Unreadable] | None = None,
    ) -> pd.DataFrame:
        """The input columns plus `prediction`; for classification also `probability` (of the
        predicted class) and one `proba_<class>` column per class. A value that cannot be read
        (text in a numeric column, 3 in a yes/no column) raises InputSchemaError; with
        ``unreadable`` given, it is scored as missing instead and its column is added there."""
        out = df.reset_index(drop=True).copy()
        if self.schema.task != "classification":
            out["prediction"] = self._call("predict", df, source, allow_extra, unreadable)
            return out
        labels, proba = self.predict_with_proba(df, source, allow_extra, unreadable)
        classes = self.classes or []
        winner = _class_index(labels, np.asarray(self.pipeline.classes_))
        out["prediction"] = [classes[i] for i in winner]
        out["probability"] = proba[np.arange(len(proba)), winner]
        for i, c in enumerate(classes):
            out[f"proba_{c}"] = proba[:, i]
        return out


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _refuse_beyond_float32(X: pd.DataFrame, source: str) -> None:
    """InputSchemaError naming the first numeric column of ``X`` with a number past ±3.4e38."""
    for name in X.columns:
        values = X[name]
        if pd.api.types.is_numeric_dtype(values.dtype):
            with np.errstate(invalid="ignore"):
                big = values[np.abs(values.to_numpy(dtype="float64")) > _FLOAT32_MAX]
            if len(big):
                raise InputSchemaError(
                    f"{source}: column '{name}' holds {len(big)} value(s) beyond ±3.4e38, "
                    f"such as {big.iloc[0]:.3g}, which this model cannot read",
                    "correct or leave out those rows",
                )


@contextmanager
def _unreadable_numbers(X: pd.DataFrame, source: str, fast: bool) -> Iterator[None]:
    """A model whose trees read float32 (scikit-learn's forests) fails on a number past
    ±3.4e38 with a ValueError; that becomes an InputSchemaError naming the column and a value.
    The fast copy (``fast``) reads such a number as infinite without a word: it is refused the
    same way before scoring, so both answer alike."""
    if fast:
        _refuse_beyond_float32(X, source)
    try:
        yield
    except ValueError as err:
        if "too large for dtype('float32')" not in str(err):
            raise
        _refuse_beyond_float32(X, source)
        raise


@dataclass
class ScoredFile:
    """A scored input file: the table to write, the columns whose unreadable values were
    scored as missing, and the text encoding it was read in where that was not UTF-8."""

    table: pd.DataFrame
    unreadable: list[Unreadable] = field(default_factory=list)
    encoding: str | None = None


def score_input(
    model: Model,
    path: Path,
    allow_extra: bool = False,
    strict: bool = False,
    encoding: str = "auto",
) -> ScoredFile:
    """Score a CSV/Parquet file (a CSV in ``encoding``, "auto" to detect it), or, for a model
    trained on images, an image folder (flat or with class sub-folders), one image file or an
    .npz of `X`: then the output holds the `file` column (not the pixels) plus the predictions.
    Values that cannot be read are scored as missing and listed, unless ``strict``: then the
    first one stops it (InputSchemaError)."""
    from shipml.data.images import FILE_COLUMN, ImageSpec, read_images_for_prediction
    from shipml.data.sources import not_utf8, read_table_file

    unreadable: list[Unreadable] | None = None if strict else []
    image = model.schema.image
    if image is None or path.suffix.lower() in (".csv", ".parquet", ".pq", ".tsv", ".txt"):
        df = read_table_file(path, encoding=encoding)
        scored = model.score(df, str(path), allow_extra, unreadable)
        return ScoredFile(scored, unreadable or [], not_utf8(df.attrs.get("encoding")))
    spec = ImageSpec.from_dict(image)
    scored = model.score(read_images_for_prediction(path, spec), str(path), True, unreadable)
    table = scored.drop(columns=[c for c in spec.columns if c != FILE_COLUMN])
    return ScoredFile(table, unreadable or [])


def issues_path(out: Path) -> Path:
    """Where ``shipml predict --out OUT`` lists the values it scored as missing:
    ``OUT.issues.json`` beside the output."""
    return out.with_name(out.name + ".issues.json")


def write_issues(scored: ScoredFile, source: str, out: Path) -> Path | None:
    """Write the unreadable values' counts per column to ``issues_path(out)``, or remove a
    stale one from an earlier run when there are none; the path written, or None."""
    path = issues_path(out)
    if not scored.unreadable:
        path.unlink(missing_ok=True)
        return None
    payload = {
        "input": source,
        "output": str(out),
        "rows": len(scored.table),
        "unreadable": {u.column: u.count for u in scored.unreadable},
        "columns": {u.column: u.to_dict() for u in scored.unreadable},
    }
    with faults_named(path):
        path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


@dataclass
class EvaluationResult:
    """A model version's metrics on a labelled table, beside its test metrics at training time."""

    version: int
    task: str
    n_rows: int
    metrics: dict[str, float]
    reference: dict[str, float]
    extras: dict[str, Any] = field(default_factory=dict)


def evaluate(model: Model, df: pd.DataFrame, source: str = "input") -> EvaluationResult:
    # Imported here, a measured start-up cost: scikit-learn's metrics take seconds to import,
    # which `shipml predict` (this module, without evaluate) does not pay.
    from shipml.evaluation.metrics import (
        classification_metrics,
        classification_report_dict,
        confusion,
        regression_metrics,
    )

    target = model.schema.target
    if target not in df.columns:
        raise InputSchemaError(
            f"{source}: has no target column '{target}', so there is nothing to evaluate against",
            "evaluate needs labelled data; use `shipml predict` for unlabelled data",
        )
    df = df[df[target].notna()].reset_index(drop=True)
    if df.empty:
        raise InputSchemaError(f"{source}: every value of '{target}' is missing", None)
    y = df[target]
    if model.schema.task == "classification":
        classes = model.classes or []
        # The labels as the model's classes, of the type it predicts ('2' and 2.0 are 2).
        labels = to_classes(y, classes, source, target)
        # The model's own labels, after its decision threshold.
        predictions, proba = model.predict_with_proba(df, source)
        metrics = classification_metrics(labels, predictions, proba, classes)
        extras = {
            "confusion_matrix": confusion(labels, predictions, classes),
            "classification_report": classification_report_dict(labels, predictions, classes),
        }
    else:
        y = pd.to_numeric(y, errors="coerce")
        if y.isna().any():
            raise InputSchemaError(f"{source}: target '{target}' has non-numeric values", None)
        metrics = regression_metrics(y, model.predict(df, source))
        extras = {}
    return EvaluationResult(
        version=model.version,
        task=model.schema.task,
        n_rows=len(df),
        metrics=metrics,
        reference=model.test_metrics,
        extras=extras,
    )


def _class_index(labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The column of each predicted label in ``classes`` (sorted, as scikit-learn keeps them)."""
    return np.searchsorted(classes, labels)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def write_table(df: pd.DataFrame, path: Path) -> None:
    """Write CSV or Parquet by extension, atomically: a crash never leaves half a file."""
    suffix = "".join(path.suffixes[-2:]).lower()
    if not (suffix.endswith(".csv") or suffix.endswith(".parquet") or suffix.endswith(".pq")):
        raise DataError(f"--out {path}: use a .csv or .parquet file name", None)
    if not path.parent.exists():
        raise DataError(f"--out {path}: folder {path.parent} does not exist", "create it first")
    tmp = None
    try:
        with faults_named(path):
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.close(fd)
            if suffix.endswith(".csv"):
                df.to_csv(tmp, index=False)
            else:
                df.to_parquet(tmp, index=False)
            os.replace(tmp, path)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
