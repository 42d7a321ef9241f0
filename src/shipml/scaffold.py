"""`shipml init`: infer a project's config from its data and write it, commented."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml
from pydantic import ValidationError

from shipml.config import DataConfig, Task, parse_config
from shipml.data.infer import infer_schema
from shipml.data.schema import Schema
from shipml.data.sources import load_table
from shipml.data.validate import ValidationReport, validate_table
from shipml.errors import ConfigError
from shipml.evaluation.metrics import default_metric
from shipml.models.catalog import CATALOG


@dataclass
class InitResult:
    path: Path
    schema: Schema
    n_rows: int
    metric: str
    validation: ValidationReport


def _q(value: str) -> str:
    """A YAML scalar that round-trips: JSON strings are valid YAML."""
    return json.dumps(value, ensure_ascii=False)


def _name_from(source: str) -> str:
    stem = Path(source).name.split(".")[0] if "://" not in source else "project"
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-._") or "project"
    return name[:100]


def _role_block(schema: Schema, role: str, key: str, blurb: str) -> list[str]:
    # An image's pixel columns (and its file column) take their roles from the image itself.
    listed = [c for c in schema.columns.values() if c.note != "set in image"]
    cols = [c for c in listed if c.role == role]
    if role == "excluded":
        cols += [c for c in listed if c.role == "identifier"]
    if not cols:
        return [f"  {key}: []{' ' * max(1, 22 - len(key))}# {blurb}"]
    lines = [f"  {key}:{' ' * max(1, 24 - len(key))}# {blurb}"]
    for c in cols:
        note = c.note or f"{c.missing_share:.0%} missing"
        lines.append(f"    - {_q(c.name)}  # {note}")
    return lines


def render_config(
    name: str, data: DataConfig, source_label: str, n_rows: int, schema: Schema, metric: str
) -> str:
    """The commented shipml.yaml text for a project."""
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    n_classes = len(schema.classes) if schema.classes else 0
    why = (
        f"{n_classes} distinct values"
        if schema.task == "classification"
        else "numeric with many values"
    )
    if data.path and schema.image:
        h, w, c = (schema.image[k] for k in ("height", "width", "channels"))
        data_lines = [
            f"  path: {_q(data.path)}  # images, relative to this file",
            f"  images: {{size: [{h}, {w}], channels: {c}, on_mismatch: resize}}"
            "  # every image as this many pixel columns; other sizes resized (or: error)",
        ]
    elif data.path:
        data_lines = [f"  path: {_q(data.path)}  # CSV or Parquet, relative to this file"]
    else:
        data_lines = [f"  url: {_q(data.url or '')}", f"  query: {_q(data.query or '')}"]
    if data.date_format is not None:
        written = (
            _q(data.date_format)
            if isinstance(data.date_format, str)
            else "{" + ", ".join(f"{_q(k)}: {_q(v)}" for k, v in data.date_format.items()) + "}"
        )
        data_lines.append(f"  date_format: {written}  # how text dates are written (strftime)")
    families = ", ".join(CATALOG[schema.task])
    lines = [
        "# shipml project config: edit freely, then run `shipml train`.",
        "# Every key is described in the README's config reference.",
        f"# Written by `shipml init` from {source_label} ({n_rows:,} rows) on {today}.",
        f"name: {_q(name)}  # the registered model's name",
        "data:  # or, for SQL: {url: 'postgresql://user@host/db', query: 'SELECT ...'}",
        *data_lines,
        f"target: {_q(schema.target)}",
        f"task: {schema.task}  # inferred: {why} (classification | regression)",
        "",
        "features:",
        "  # Roles inferred from the data. Move a column to another list to change how it is used.",
        *_role_block(schema, "numeric", "numeric", "median-imputed, scaled"),
        *_role_block(schema, "categorical", "categorical", "'Unknown'-imputed, one-hot"),
        *_role_block(schema, "boolean", "boolean", "as 0/1"),
        *_role_block(schema, "datetime", "datetime", "year, month, day, weekday, hour"),
        *_role_block(schema, "text", "text", "free text: flagged, not used by the model"),
        *_role_block(schema, "excluded", "exclude", "identifiers and unusable columns"),
        "  derived: {}  # new columns from expressions, e.g. {ratio: 'income / household_size'}",
        "  max_categories: 30  # one-hot columns per categorical, rarer values grouped",
        "  min_category_frequency: 5  # values seen fewer times are grouped as infrequent",
        "",
        "split:",
        "  test_size: 0.2  # held-out share, scored once at the end",
        "  seed: 42",
        "  # time_column: signup_date  # set to split by time instead of at random",
        "",
        "training:",
        f"  models: auto  # or a list of: {families}",
        "  baselines: true  # also cross-validate the baselines (majority or mean, linear)",
        "  cv: 5  # cross-validation folds",
        f"  metric: {metric}  # ranks the leaderboard",
        "  time_budget_s: 120  # bounds the whole `shipml train`; the search fills it",
        "  seed: 42",
        "  search: optuna  # optuna (TPE per family, pruned), grid (param_grid) or none",
        "  # trials: 50  # a fixed number of search trials: reproducible, ignores the clock",
        "  # param_grid: {n_estimators: [100, 300], max_depth: [null, 10]}  # with search: grid",
        "  # params: {random_forest: {n_estimators: 100}}  # fixed per family, in every trial",
        "  ensemble: true  # a weighted ensemble of the best candidates, when it scores higher",
        "  stack: false  # a cross-validated second layer on the best families' predictions",
        "  class_weight: auto  # auto, balanced or none",
        "  threshold: auto  # binary: auto (chosen on out-of-fold predictions), none or 0-1",
        "  target_transform: auto  # regression: auto (log1p where cross-validation prefers it),"
        " log or none",
        "  checkpoint_every_s: 5  # network fits save state this often, for `train --resume`",
        "",
        "validation:",
        "  max_missing_share: 0.5  # warn above this share of missing values",
        "  leakage_threshold: 0.98  # warn when one column alone scores this well",
        "  imbalance_ratio: 0.1  # warn when the rarest class is below this share",
        "  min_rows: 20",
        "",
        "# tracking_uri: http://mlflow.example:5000  # default: .shipml/mlflow.db beside this file",
        "",
    ]
    return "\n".join(lines)


def init_project(
    data: str,
    target: str,
    task: str | None = None,
    name: str | None = None,
    out: Path = Path("shipml.yaml"),
    query: str | None = None,
    force: bool = False,
    date_format: str | dict[str, str] | None = None,
) -> InitResult:
    """Infer task and column roles from ``data`` and write a commented config to ``out``;
    ``date_format`` (data.date_format) says how text dates are written where the values
    cannot (04/05/2023 with no day above 12)."""
    out = Path(out)
    try:  # the formats given on the command line, checked before the data is read
        DataConfig(path=".", date_format=date_format)
    except ValidationError as err:
        why = str(err.errors()[0]["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"--date-format: {why}", None) from None
    if out.exists() and not force:
        raise ConfigError(f"{out} already exists", "pass --force to overwrite it, or --out PATH")
    if not out.parent.exists():
        raise ConfigError(f"--out {out}: folder {out.parent} does not exist", "create it first")
    if "://" in data:
        if not query:
            raise ConfigError(f"{data.split('://')[0]} source needs --query 'SELECT ...'", None)
        source = DataConfig(url=data, query=query, date_format=date_format)
        label = "a SQL query"
    else:
        path = Path(data).resolve()
        rel = os.path.relpath(path, out.parent.resolve())
        source = DataConfig(path=Path(rel).as_posix(), date_format=date_format)
        label = Path(data).name
    df = load_table(source, out.parent.resolve(), target)
    chosen_task: Task | None = "regression" if task == "regression" else None
    if task == "classification":
        chosen_task = "classification"
    schema = infer_schema(df, target, chosen_task)
    n_classes = len(schema.classes) if schema.classes else None
    metric = default_metric(schema.task, n_classes)
    project_name = name or _name_from(data)
    text = render_config(project_name, source, label, len(df), schema, metric)
    config = parse_config(yaml.safe_load(text), out)  # what we write must load back
    report = validate_table(df, target, schema, config.validation, schema.task)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    return InitResult(out, schema, len(df), metric, report)
