"""Validation: every check fires on data built to trigger it, and stays quiet on clean data."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes

from shipml.config import FeaturesConfig, Task, ValidationConfig
from shipml.data.infer import infer_schema
from shipml.data.validate import Finding, ValidationReport, drop_missing_target, validate_table
from shipml.errors import DataError

SETTINGS = ValidationConfig()
N = 300


def clean_classification(n: int = N, seed: int = 0) -> pd.DataFrame:
    """A table with signal but no problems: no leak, no gaps, balanced, no duplicates."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    x2 = rng.normal(size=n)
    plan = rng.choice(["basic", "pro", "team"], n)
    score = x1 + 0.5 * (plan == "pro") + rng.normal(scale=1.0, size=n)
    return pd.DataFrame(
        {
            "customer_id": [f"C{i:05d}" for i in range(n)],
            "x1": x1,
            "x2": x2,
            "plan": plan,
            "active": rng.choice(["yes", "no"], n),
            "churned": np.where(score > 0, "yes", "no"),
        }
    )


def clean_regression(n: int = N, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    x2 = rng.normal(size=n)
    return pd.DataFrame({"x1": x1, "x2": x2, "y": x1 + x2 + rng.normal(size=n)})


def run(
    df: pd.DataFrame,
    target: str = "churned",
    task: Task | None = None,
    settings: ValidationConfig = SETTINGS,
    with_schema: bool = True,
) -> ValidationReport:
    schema = infer_schema(df, target, task=task) if with_schema else None
    return validate_table(df, target, schema, settings, task=task)


def only(report: ValidationReport, check: str) -> Finding:
    found = [f for f in report.findings if f.check == check]
    assert len(found) == 1, report.findings
    return found[0]


# --- clean data ----------------------------------------------------------------------------------


@pytest.mark.parametrize("with_schema", [True, False])
def test_clean_classification_has_no_findings(with_schema: bool) -> None:
    report = run(clean_classification(), with_schema=with_schema)
    assert report.ok
    assert report.fatal == []
    assert report.warnings == []
    assert [f.check for f in report.findings] == ["unused_column"]  # customer_id, as info
    assert report.n_rows == N
    assert report.n_columns == 6


def test_clean_regression_has_no_findings() -> None:
    report = run(clean_regression(), target="y")
    assert report.findings == []
    assert report.ok


@pytest.mark.parametrize("loader", [load_breast_cancer, load_diabetes])
def test_bundled_data_is_clean(loader) -> None:  # type: ignore[no-untyped-def]
    df = loader(as_frame=True).frame
    report = run(df, target="target")
    assert report.ok
    assert report.findings == []


# --- fatal checks --------------------------------------------------------------------------------


def test_missing_target() -> None:
    df = clean_classification()
    report = validate_table(df, "label", None, SETTINGS)
    finding = only(report, "missing_target")
    assert finding.level == "fatal"
    assert "'label'" in finding.message
    assert not report.ok


def test_missing_features() -> None:
    df = clean_classification()
    schema = infer_schema(df, "churned")
    report = validate_table(df.drop(columns=["x2", "plan"]), "churned", schema, SETTINGS)
    finding = only(report, "missing_features")
    assert finding.level == "fatal"
    assert "'x2'" in finding.message
    assert "'plan'" in finding.message
    assert finding.value == 2


def test_too_few_rows() -> None:
    report = run(clean_classification(n=12))
    finding = only(report, "too_few_rows")
    assert finding.level == "fatal"
    assert finding.value == 12
    assert "20" in finding.message
    assert run(clean_classification(n=12), settings=ValidationConfig(min_rows=10)).ok


def test_too_few_rows_counts_rows_with_a_target() -> None:
    df = clean_classification(n=30)
    df.loc[:14, "churned"] = np.nan
    assert "too_few_rows" in run(df).checks()


def test_constant_target() -> None:
    df = clean_classification()
    df["churned"] = "no"
    finding = only(run(df), "constant_target")
    assert finding.level == "fatal"
    assert finding.message == "target 'churned' has a single value 'no': nothing to learn"


def test_target_entirely_missing() -> None:
    df = clean_classification()
    df["churned"] = np.nan
    report = run(df)
    finding = only(report, "constant_target")
    assert "entirely missing" in finding.message
    assert not report.ok


def test_target_not_numeric_for_regression() -> None:
    df = clean_classification()
    finding = only(run(df, task="regression"), "target_not_numeric")
    assert finding.level == "fatal"
    assert "'churned'" in finding.message


def test_rare_class() -> None:
    df = clean_classification()
    df.loc[0, "churned"] = "maybe"
    finding = only(run(df), "rare_class")
    assert finding.level == "fatal"
    assert "'maybe'" in finding.message
    assert "merge" in finding.message


def test_no_features() -> None:
    df = clean_classification()[["customer_id", "churned"]]
    report = run(df)
    assert only(report, "no_features").level == "fatal"


def test_no_features_when_everything_is_excluded() -> None:
    df = clean_classification()
    features = FeaturesConfig(exclude=["x1", "x2", "plan", "active"])
    schema = infer_schema(df, "churned", features=features)
    assert "no_features" in validate_table(df, "churned", schema, SETTINGS).checks()


# --- warnings ------------------------------------------------------------------------------------


def test_missing_target_values() -> None:
    df = clean_classification()
    df.loc[:4, "churned"] = np.nan
    report = run(df)
    finding = only(report, "missing_target_values")
    assert finding.level == "warning"
    assert finding.value == 5
    assert "dropped" in finding.message
    assert report.ok


def test_empty_and_constant_columns() -> None:
    df = clean_classification()
    df["nothing"] = np.nan
    df["always"] = "same"
    report = run(df)
    empty = only(report, "empty_column")
    constant = only(report, "constant_column")
    assert (empty.column, empty.level) == ("nothing", "warning")
    assert (constant.column, constant.level) == ("always", "warning")
    assert "'same'" in constant.message
    assert report.ok


def test_high_missing() -> None:
    df = clean_classification()
    df.loc[: int(N * 0.7) - 1, "x2"] = np.nan
    finding = only(run(df), "high_missing")
    assert finding.column == "x2"
    assert finding.value == pytest.approx(0.7)
    assert finding.level == "warning"
    assert "high_missing" not in run(df, settings=ValidationConfig(max_missing_share=0.8)).checks()


def test_duplicate_rows() -> None:
    df = clean_classification().drop(columns=["customer_id"])
    df = pd.concat([df, df.iloc[:7]], ignore_index=True)
    finding = only(run(df), "duplicate_rows")
    assert finding.value == 7
    assert finding.level == "warning"


def test_target_leakage_classification() -> None:
    rng = np.random.default_rng(2)
    df = clean_classification()
    churned = df["churned"] == "yes"
    reasons = rng.choice(["moved", "price", "service"], N)
    df["cancel_reason"] = np.where(churned, reasons, None)  # only known after churning
    df["refund"] = np.where(churned, rng.uniform(5, 50, N).round(2), np.nan)
    report = run(df)
    leaks = {f.column: f for f in report.findings if f.check == "target_leakage"}
    assert set(leaks) == {"cancel_reason", "refund"}
    assert all(f.level == "warning" and (f.value or 0) >= 0.98 for f in leaks.values())
    assert "balanced accuracy" in leaks["refund"].message


def test_target_leakage_many_categories() -> None:
    rng = np.random.default_rng(3)
    df = clean_classification()
    store = rng.integers(0, 40, N)
    df["store"] = [f"S{s}" for s in store]
    df["churned"] = np.where(store % 2 == 0, "yes", "no")  # the store decides the outcome
    assert only(run(df), "target_leakage").column == "store"


def test_target_leakage_regression() -> None:
    df = clean_regression()
    df["y_in_cents"] = df["y"] * 100
    finding = only(run(df, target="y"), "target_leakage")
    assert finding.column == "y_in_cents"
    assert "R²" in finding.message


def test_leakage_threshold_setting() -> None:
    df = clean_regression()
    df["noisy_copy"] = df["y"] + np.random.default_rng(1).normal(scale=0.4, size=N)
    assert "target_leakage" not in run(df, target="y").checks()
    loose = ValidationConfig(leakage_threshold=0.6)
    assert "target_leakage" in run(df, target="y", settings=loose).checks()


def test_class_imbalance() -> None:
    df = clean_classification()
    df["churned"] = "no"
    df.loc[:14, "churned"] = "yes"  # 5%
    finding = only(run(df), "class_imbalance")
    assert finding.value == pytest.approx(15 / N)
    assert "'yes'" in finding.message
    assert (
        "class_imbalance" not in run(df, settings=ValidationConfig(imbalance_ratio=0.04)).checks()
    )


def test_identifier_text_and_excluded_columns_are_skipped() -> None:
    df = clean_classification()
    df["order_no"] = df["churned"].map({"yes": "A", "no": "B"}) + df.index.astype(str)
    df["notes"] = [f"customer said something long about the plan, item {i}" for i in range(N)]
    df["outcome_code"] = df["churned"]  # a perfect leak and a constant column, both excluded
    df["batch"] = "b1"
    features = FeaturesConfig(exclude=["outcome_code", "batch"])
    schema = infer_schema(df, "churned", features=features)
    assert schema.columns["order_no"].role == "identifier"
    assert schema.columns["notes"].role == "text"
    report = validate_table(df, "churned", schema, SETTINGS)
    assert report.warnings == []
    assert {f.column for f in report.infos} == {"customer_id", "order_no", "notes"}


# --- report --------------------------------------------------------------------------------------


def test_report_serialises(tmp_path: Path) -> None:
    df = clean_classification()
    df.loc[0, "churned"] = "maybe"
    df["nothing"] = np.nan
    report = run(df)
    data = report.to_dict()
    assert data["ok"] is False
    assert data["n_rows"] == N
    assert data["n_fatal"] == len(report.fatal) == 1
    assert data["n_warnings"] == len(report.warnings)
    checks = {f["check"] for f in data["findings"]}
    assert {"rare_class", "empty_column"} <= checks
    path = tmp_path / "out" / "validation.json"
    report.write_json(path)
    assert json.loads(path.read_text()) == data


def test_report_properties() -> None:
    report = ValidationReport(
        [Finding("a", "fatal", "x"), Finding("b", "warning", "y"), Finding("c", "info", "z")], 1, 1
    )
    assert [f.check for f in report.fatal] == ["a"]
    assert [f.check for f in report.warnings] == ["b"]
    assert not report.ok
    assert ValidationReport([Finding("b", "warning", "y")], 1, 1).ok


def test_drop_missing_target() -> None:
    df = pd.DataFrame({"x": [1, 2, 3, 4], "y": ["a", None, " ", "b"]}, index=[10, 11, 12, 13])
    out = drop_missing_target(df, "y")
    assert out["x"].tolist() == [1, 4]
    assert out.index.tolist() == [0, 1]
    with pytest.raises(DataError):
        drop_missing_target(df, "nope")


def test_validation_is_fast() -> None:
    rng = np.random.default_rng(0)
    n = 10_000
    columns: dict[str, object] = {f"num{i}": rng.normal(size=n) for i in range(20)}
    columns |= {f"cat{i}": rng.choice([f"c{j}" for j in range(12)], n) for i in range(9)}
    columns["target"] = rng.choice(["a", "b"], n)
    df = pd.DataFrame(columns)
    schema = infer_schema(df, "target")
    validate_table(df.iloc[:100], "target", schema, SETTINGS)  # imports
    start = time.perf_counter()
    report = validate_table(df, "target", schema, SETTINGS)
    elapsed = time.perf_counter() - start
    assert report.ok
    assert elapsed < 3.0  # about 0.5 s on a laptop; generous for slow CI machines


def test_nested_values_do_not_break_validation() -> None:
    df = clean_classification()
    df["tags"] = [["a", "b"] if i % 2 else ["c"] for i in range(N)]
    report = run(df)
    assert report.ok
    schema = infer_schema(df, "churned")
    assert schema.columns["tags"].role == "excluded"
