"""Data validation: checks on the training table that report problems instead of raising."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from shipml.config import ValidationConfig
from shipml.data.coerce import (
    as_category_strings,
    blank_to_missing,
    category_str,
)
from shipml.data.infer import NOTE_USER_EXCLUDED, infer_column, infer_schema, infer_task
from shipml.data.leakage import LEAKAGE_FOLDS, single_feature_scores
from shipml.data.schema import MODEL_ROLES, ColumnInfo, Schema
from shipml.data.sources import not_utf8
from shipml.errors import DataError

Level = Literal["fatal", "warning", "info"]


@dataclass
class Finding:
    """One result of one check."""

    check: str
    level: Level
    message: str
    column: str | None = None
    value: float | None = None


@dataclass
class ValidationReport:
    """Every finding on one table; ``ok`` when none is fatal."""

    findings: list[Finding]
    n_rows: int
    n_columns: int

    @property
    def fatal(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "fatal"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    @property
    def infos(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "info"]

    @property
    def ok(self) -> bool:
        return not self.fatal

    def checks(self) -> set[str]:
        """Names of the checks that produced a finding."""
        return {f.check for f in self.findings}

    def to_dict(self) -> dict[str, Any]:
        findings = []
        for finding in self.findings:
            item = asdict(finding)
            value = item["value"]
            item["value"] = None if value is None or not math.isfinite(value) else float(value)
            findings.append(item)
        return {
            "ok": self.ok,
            "n_rows": self.n_rows,
            "n_columns": self.n_columns,
            "n_fatal": len(self.fatal),
            "n_warnings": len(self.warnings),
            "findings": findings,
        }

    def write_json(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")


def drop_missing_target(df: pd.DataFrame, target: str) -> pd.DataFrame:
    """Rows that have a target value (blank strings count as missing), index reset."""
    if target not in df.columns:
        raise DataError(
            f"target column '{target}' is not in the data",
            "fix `target` in shipml.yaml or pass --target COLUMN",
        )
    keep = blank_to_missing(df[target]).notna().to_numpy()
    return df.loc[keep].reset_index(drop=True)


def _show(value: Any) -> str:
    text = value if isinstance(value, str) else category_str(value)
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _pct(share: float) -> str:
    return f"{100 * share:.0f}%" if share >= 0.01 else f"{100 * share:.2f}%"


def _columns_info(df: pd.DataFrame, target: str, schema: Schema | None) -> dict[str, ColumnInfo]:
    """Column roles for the checks: the schema's for columns it knows, inferred for the rest."""
    if schema is None and target in df.columns:
        schema = infer_schema(df, target, task=None)
    known = schema.columns if schema is not None else {}
    out: dict[str, ColumnInfo] = {}
    for name in df.columns:
        if name == target:
            continue
        key = str(name)
        out[key] = known[key] if key in known else infer_column(df[name], key)
    return out


def _target_findings(
    y_all: pd.Series, target: str, task: str, settings: ValidationConfig
) -> list[Finding]:
    findings: list[Finding] = []
    n_missing = int(y_all.isna().sum())
    y = y_all.dropna()
    if len(y) == 0:
        return [
            Finding(
                "constant_target",
                "fatal",
                f"target '{target}' is entirely missing: nothing to learn",
                target,
            )
        ]
    if n_missing:
        findings.append(
            Finding(
                "missing_target_values",
                "warning",
                f"{n_missing} rows ({_pct(n_missing / len(y_all))}) have no value for target "
                f"'{target}': they are dropped",
                target,
                float(n_missing),
            )
        )
    try:
        n_unique = int(y.nunique())
    except TypeError:
        y = as_category_strings(y)
        n_unique = int(y.nunique())
    if n_unique == 1:
        findings.append(
            Finding(
                "constant_target",
                "fatal",
                f"target '{target}' has a single value {_show(y.iloc[0])}: nothing to learn",
                target,
            )
        )
        return findings
    if task == "regression":
        numbers = pd.to_numeric(y.astype(object), errors="coerce")
        bad = numbers.isna().to_numpy()
        if bad.any() or y.dtype == bool:
            example = y.iloc[int(np.flatnonzero(bad)[0])] if bad.any() else y.iloc[0]
            findings.append(
                Finding(
                    "target_not_numeric",
                    "fatal",
                    f"task is regression but target '{target}' is not numeric (value "
                    f"{_show(example)}); set `task: classification` or fix the target",
                    target,
                )
            )
        return findings
    counts = as_category_strings(y).value_counts()
    rare = counts[counts < 2]
    if len(rare):
        names = ", ".join(_show(v) for v in rare.index[:5]) + (" ..." if len(rare) > 5 else "")
        findings.append(
            Finding(
                "rare_class",
                "fatal",
                f"target '{target}': class{'es' if len(rare) > 1 else ''} {names} "
                f"{'have' if len(rare) > 1 else 'has'} a single row; drop those rows or merge "
                "the class into another",
                target,
                float(len(rare)),
            )
        )
    minority = float(counts.min() / counts.sum())
    if minority < settings.imbalance_ratio:
        findings.append(
            Finding(
                "class_imbalance",
                "warning",
                f"target '{target}' is imbalanced: class {_show(counts.idxmin())} is only "
                f"{_pct(minority)} of rows",
                target,
                minority,
            )
        )
    return findings


def _column_findings(
    df: pd.DataFrame, columns: dict[str, ColumnInfo], settings: ValidationConfig
) -> list[Finding]:
    findings: list[Finding] = []
    for name, info in columns.items():
        if name not in df.columns:
            continue
        if info.role in ("identifier", "text"):
            findings.append(
                Finding("unused_column", "info", f"column '{name}' is not used: {info.note}", name)
            )
            continue
        if info.role == "excluded" and info.note == NOTE_USER_EXCLUDED:
            continue
        values = blank_to_missing(df[name])
        share = float(values.isna().mean()) if len(values) else 0.0
        if share == 1.0:
            findings.append(
                Finding(
                    "empty_column",
                    "warning",
                    f"column '{name}' is entirely missing: it is not used",
                    name,
                    1.0,
                )
            )
            continue
        try:
            n_unique = int(values.nunique())
        except TypeError:
            continue
        if n_unique == 1:
            findings.append(
                Finding(
                    "constant_column",
                    "warning",
                    f"column '{name}' has a single value {_show(values.dropna().iloc[0])}: "
                    "it carries no information",
                    name,
                )
            )
            continue
        if info.role in MODEL_ROLES and share > settings.max_missing_share:
            findings.append(
                Finding(
                    "high_missing",
                    "warning",
                    f"column '{name}' is {_pct(share)} missing (more than "
                    f"{_pct(settings.max_missing_share)}, validation.max_missing_share)",
                    name,
                    share,
                )
            )
    return findings


# --- leakage ------------------------------------------------------------------------------------


def _leakage_findings(
    df: pd.DataFrame,
    target: str,
    columns: dict[str, ColumnInfo],
    task: str,
    threshold: float,
) -> list[Finding]:
    metric = "balanced accuracy" if task == "classification" else "R²"
    return [
        Finding(
            "target_leakage",
            "warning",
            f"column '{name}' alone predicts target '{target}' almost perfectly "
            f"({metric} {score:.3f} in {LEAKAGE_FOLDS}-fold CV): possible target leakage; "
            "if its value is only known after the outcome, add it to features.exclude",
            name,
            score,
        )
        for name, score in single_feature_scores(df, target, columns, task).items()
        if score >= threshold
    ]


# --- entry point ---------------------------------------------------------------------------------


def validate_table(
    df: pd.DataFrame,
    target: str,
    schema: Schema | None,
    settings: ValidationConfig,
    task: str | None = None,
) -> ValidationReport:
    """Run every check on the training table; problems become findings, never exceptions."""
    n_rows, n_columns = int(df.shape[0]), int(df.shape[1])
    findings: list[Finding] = []
    encoding = not_utf8(df.attrs.get("encoding"))
    if encoding is not None:
        findings.append(
            Finding(
                "encoding",
                "info",
                f"the file is not UTF-8: read as {encoding} (data.encoding in shipml.yaml "
                "sets it, should its accents look wrong)",
            )
        )
    has_target = target in df.columns
    if not has_target:
        findings.append(
            Finding(
                "missing_target",
                "fatal",
                f"target column '{target}' is not in the table; fix `target` in shipml.yaml "
                "or pass --target",
                target,
            )
        )
    if schema is not None:
        absent = [c for c in schema.input_columns if c not in df.columns]
        if absent:
            names = ", ".join(f"'{c}'" for c in absent[:10]) + (" ..." if len(absent) > 10 else "")
            findings.append(
                Finding(
                    "missing_features",
                    "fatal",
                    f"the table lacks feature column{'s' if len(absent) > 1 else ''} {names} "
                    "that the schema expects",
                    absent[0],
                    float(len(absent)),
                )
            )
    y_all = blank_to_missing(df[target]) if has_target else None
    n_usable = int(y_all.notna().sum()) if y_all is not None else n_rows
    if n_usable < settings.min_rows:
        which = " with a target value" if has_target and n_usable != n_rows else ""
        findings.append(
            Finding(
                "too_few_rows",
                "fatal",
                f"the table has {n_usable} rows{which}; at least {settings.min_rows} are needed "
                "(validation.min_rows)",
                None,
                float(n_usable),
            )
        )
    columns = _columns_info(df, target, schema)
    if not any(info.role in MODEL_ROLES for info in columns.values()):
        findings.append(
            Finding(
                "no_features",
                "fatal",
                "no usable feature columns: every column is the target, excluded, an identifier, "
                "free text, empty or constant",
            )
        )
    task = task or (schema.task if schema is not None else None)
    if y_all is not None:
        task = task or infer_task(y_all.dropna())
        findings.extend(_target_findings(y_all, target, task, settings))
    findings.extend(_column_findings(df, columns, settings))
    if n_rows:
        try:
            n_duplicates = int(df.duplicated().sum())
        except TypeError:  # unhashable cells
            n_duplicates = 0
        if n_duplicates:
            findings.append(
                Finding(
                    "duplicate_rows",
                    "warning",
                    f"{n_duplicates} rows ({_pct(n_duplicates / n_rows)}) are exact duplicates "
                    "of an earlier row",
                    None,
                    float(n_duplicates),
                )
            )
    target_fatal = any(f.check in ("constant_target", "target_not_numeric") for f in findings)
    if y_all is not None and task is not None and not target_fatal:
        findings.extend(_leakage_findings(df, target, columns, task, settings.leakage_threshold))
    return ValidationReport(findings, n_rows, n_columns)
