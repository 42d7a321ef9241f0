"""Profiles: per-column summaries of a table, built in one pass over chunks.

The *reference profile* is computed at training time from the training split (features, target)
and the test split's predictions, stored with the model version (``monitoring/profile.json`` in
its MLflow run), so monitoring never reloads the training table. A *current* profile is built the
same way from the data being checked, streaming chunk by chunk; what does not fit the reference
(a missing or new column, text in a numeric column, a column with no values) becomes a finding.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shipml.data.coerce import (
    blank_to_missing,
    coerce_boolean,
    is_bool_dtype,
    is_datetime_dtype,
    show_value,
)
from shipml.errors import InputSchemaError
from shipml.monitoring.summary import (
    CategoricalSummary,
    NumericSummary,
    Summary,
    new_summary,
    summary_from_dict,
)

PROFILE_ARTIFACT = "monitoring/profile.json"
# The permutation importance of each input column on the test split: [[column, mean], ...],
# largest first (written with the report; versions trained without it have none).
IMPORTANCE_ARTIFACT = "monitoring/importance.json"
PROFILE_FORMAT = 1
# Rows per chunk: small enough that a column's temporaries stay a few MB (measured: 100,000
# rows keep detect_drift's peak 40 MB above the data at 1,000,000 rows, 1,000,000 rows 150 MB),
# large enough that merging chunk summaries costs nothing that shows.
CHUNK_ROWS = 100_000
# Schema roles and how drift treats them; datetime, text and identifiers are not tested.
# Booleans are tested as categories, after the same yes/no/1/0 reading as at training time.
KIND_OF_ROLE = {"numeric": "numeric", "categorical": "categorical", "boolean": "boolean"}


@dataclass
class Finding:
    """A difference between the current data and the reference that is not a drift score."""

    column: str
    kind: str  # missing_column | new_column | changed_type | all_missing | no_rows
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"column": self.column, "kind": self.kind, "message": self.message}


@dataclass
class Profile:
    """Summaries of a table's columns; for a reference, also of its target and predictions."""

    kinds: dict[str, str]  # column -> numeric | categorical, in table order
    columns: dict[str, Summary]
    rows: int = 0
    target: Summary | None = None
    prediction: Summary | None = None
    confidence: NumericSummary | None = None
    extra_columns: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    created: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        def maybe(s: Summary | None) -> dict[str, Any] | None:
            return None if s is None else s.to_dict()

        return {
            "format": PROFILE_FORMAT,
            "created": self.created,
            "rows": self.rows,
            "kinds": self.kinds,
            "columns": {name: s.to_dict() for name, s in self.columns.items()},
            "target": maybe(self.target),
            "prediction": maybe(self.prediction),
            "confidence": maybe(self.confidence),
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        def maybe(d: dict[str, Any] | None) -> Any:
            return None if d is None else summary_from_dict(d)

        return cls(
            kinds=dict(data["kinds"]),
            columns={name: summary_from_dict(s) for name, s in data["columns"].items()},
            rows=int(data["rows"]),
            target=maybe(data.get("target")),
            prediction=maybe(data.get("prediction")),
            confidence=maybe(data.get("confidence")),
            created=str(data.get("created", "")),
            meta=dict(data.get("meta") or {}),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def read(cls, path: Path) -> Profile:
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


def infer_kinds(df: pd.DataFrame) -> dict[str, str]:
    """Column kinds for a table with no schema: numbers are numeric, datetimes are left out,
    everything else (text, booleans, categories) is categorical."""
    kinds: dict[str, str] = {}
    for name in df.columns:
        s = df[name]
        if is_datetime_dtype(s):
            continue
        numeric = pd.api.types.is_numeric_dtype(s.dtype) and not is_bool_dtype(s)
        kinds[str(name)] = "numeric" if numeric else "categorical"
    return kinds


def kinds_from_schema(schema: Any) -> dict[str, str]:
    """Column kinds from a model's input schema (shipml.data.schema.Schema)."""
    return {
        name: KIND_OF_ROLE[info.role]
        for name, info in schema.columns.items()
        if info.role in KIND_OF_ROLE
    }


def as_numbers(s: pd.Series, column: str) -> tuple[pd.Series, Finding | None]:
    """float64 values of a column meant to be numeric; text that is not a number is left out
    of the numbers and reported (the column's type changed)."""
    s = blank_to_missing(s)
    if pd.api.types.is_numeric_dtype(s.dtype) or is_bool_dtype(s):
        return (s if s.dtype == "float64" else s.astype("float64")), None
    out = pd.to_numeric(s.astype(object), errors="coerce")
    bad = s.notna().to_numpy() & pd.isna(out)
    if not bad.any():
        return pd.Series(out, index=s.index, dtype="float64"), None
    first = s[bad].iloc[0]
    return pd.Series(np.nan, index=s.index, dtype="float64"), Finding(
        column,
        "changed_type",
        f"column '{column}' is numeric in the reference but has text such as "
        f"{show_value(first)} ({int(bad.sum())} rows): the column is not tested",
    )


class ProfileBuilder:
    """Folds chunks of a table into a Profile of the given column kinds."""

    def __init__(self, kinds: dict[str, str]) -> None:
        self.kinds = dict(kinds)
        self.columns: dict[str, Summary] = {name: new_summary(k) for name, k in kinds.items()}
        self.rows = 0
        self.seen: set[str] = set()
        self.extra: list[str] = []
        self.changed: dict[str, Finding] = {}

    def add(self, chunk: pd.DataFrame) -> ProfileBuilder:
        self.rows += len(chunk)
        names = {str(c) for c in chunk.columns}
        self.seen |= names
        self.extra += sorted(n for n in names - set(self.kinds) if n not in self.extra)
        for name, kind in self.kinds.items():
            if name not in names or name in self.changed:
                continue
            values = chunk[name]
            summary = self.columns[name]
            if kind == "numeric":
                numbers, finding = as_numbers(values, name)
                if finding is not None:
                    self.changed[name] = finding
                    continue
                summary.add(numbers)
            elif kind == "boolean":
                try:
                    summary.add(coerce_boolean(values, name, "current data"))
                except InputSchemaError as err:
                    self.changed[name] = Finding(
                        name, "changed_type", f"{err.message}: the column is not tested"
                    )
            else:
                summary.add(values)
        return self

    def build(self, extra_ignored: Iterable[str] = ()) -> Profile:
        findings: list[Finding] = []
        columns: dict[str, Summary] = {}
        for name in self.kinds:
            if name not in self.seen:
                findings.append(
                    Finding(name, "missing_column", f"column '{name}' is missing: not tested")
                )
            elif name in self.changed:
                findings.append(self.changed[name])
            elif self.columns[name].n == 0:
                findings.append(
                    Finding(name, "all_missing", f"column '{name}' has no values: not tested")
                )
                columns[name] = self.columns[name]
            else:
                columns[name] = self.columns[name]
        ignored = set(extra_ignored)
        extra = [n for n in self.extra if n not in ignored]
        findings += [
            Finding(n, "new_column", f"column '{n}' is not in the reference: not tested")
            for n in extra
        ]
        return Profile(
            kinds={n: k for n, k in self.kinds.items() if n in columns},
            columns=columns,
            rows=self.rows,
            extra_columns=extra,
            findings=findings,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
        )


def chunks_of(df: pd.DataFrame, rows: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    for start in range(0, max(len(df), 1), rows):
        yield df.iloc[start : start + rows]


def profile_table(
    chunks: Iterable[pd.DataFrame] | pd.DataFrame,
    kinds: dict[str, str],
    extra_ignored: Iterable[str] = (),
) -> Profile:
    """One pass over ``chunks`` (or a whole DataFrame) into a Profile of ``kinds``."""
    if isinstance(chunks, pd.DataFrame):
        chunks = chunks_of(chunks)
    builder = ProfileBuilder(kinds)
    for chunk in chunks:
        builder.add(chunk)
    return builder.build(extra_ignored)


def summarize(values: Any, kind: str) -> Summary:
    """A summary of one array of values (a target, predictions, confidences)."""
    summary = new_summary(kind)
    if isinstance(summary, NumericSummary):
        summary.add(np.asarray(values, dtype="float64"))
    else:
        summary.add(pd.Series(values))
    return summary


def reference_profile(
    X: pd.DataFrame,
    y: pd.Series,
    schema: Any,
    predictions: Any = None,
    confidence: Any = None,
) -> Profile:
    """The reference profile stored with a model version: the training split's columns and
    target, and the model's predictions (and confidences) on the held-out split."""
    kinds = kinds_from_schema(schema)
    profile = profile_table(X, kinds)
    profile.findings = []
    target_kind = "numeric" if schema.task == "regression" else "categorical"
    profile.target = summarize(y, target_kind)
    if predictions is not None:
        profile.prediction = summarize(predictions, target_kind)
    if confidence is not None:
        summary = summarize(confidence, "numeric")
        assert isinstance(summary, NumericSummary)
        profile.confidence = summary
    profile.meta = {"task": schema.task, "target": schema.target}
    return profile


__all__ = [
    "IMPORTANCE_ARTIFACT",
    "PROFILE_ARTIFACT",
    "CategoricalSummary",
    "Finding",
    "NumericSummary",
    "Profile",
    "ProfileBuilder",
    "infer_kinds",
    "kinds_from_schema",
    "profile_table",
    "reference_profile",
]
