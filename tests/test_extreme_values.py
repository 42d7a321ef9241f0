"""Numbers at the float64 limit (±1.7e308) and huge finite values: every drift statistic, the
reference profile and the drift report stay finite and finish; the column is flagged."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shipml.data.schema import Schema
from shipml.monitoring.drift import DriftSettings, detect_drift
from shipml.monitoring.profile import Profile, profile_table, reference_profile
from shipml.monitoring.summary import NumericSummary
from tests.conftest import run_cli

LIMIT = 1.7e308


def _strict_json(text: str) -> object:
    """JSON as other languages read it: NaN and Infinity are not JSON."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} in JSON")

    return json.loads(text, parse_constant=refuse)


def _with_extremes(values: np.ndarray) -> np.ndarray:
    out = values.astype("float64").copy()
    out[::7] = LIMIT
    out[3::7] = -LIMIT
    out[5::11] = 1e300
    out[6::13] = -1e200
    return out


def _tables(rows: int, distinct: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(rows)
    values = rng.normal(100, 30, rows) if distinct else np.round(rng.normal(100, 30, rows), 1)
    reference = pd.DataFrame({"amount": values, "age": rng.integers(18, 80, rows)})
    current = reference.sample(frac=1.0, random_state=1).reset_index(drop=True)
    current["amount"] = _with_extremes(current["amount"].to_numpy())
    return reference, current


# 300 rows: a KS test; 3,000: the normed Wasserstein distance; 30,000 distinct values: a sketch.
@pytest.mark.parametrize(("rows", "distinct"), [(300, False), (3000, False), (30_000, True)])
def test_drift_statistics_stay_finite_at_the_float64_limit(rows: int, distinct: bool) -> None:
    reference, current = _tables(rows, distinct)
    with np.errstate(over="raise", invalid="raise"):  # no overflow, not even a silent one
        for settings in (DriftSettings(), DriftSettings(columns={"amount": {"method": "psi"}})):
            for ref, cur in ((reference, current), (current, reference)):
                result = detect_drift(ref, cur, settings)
                amount = result.columns["amount"]
                assert math.isfinite(amount.score) and math.isfinite(amount.psi), amount
                assert amount.drift, amount
                assert not result.columns["age"].drift
        same = detect_drift(current, current).columns["amount"]
    assert not same.drift and same.psi == 0.0
    summary = NumericSummary().add(current["amount"])
    assert summary.n == rows and math.isfinite(summary.mean) and summary.std > 0
    assert summary.quantiles(np.array([0.0, 1.0])).tolist() == [-LIMIT, LIMIT]


def test_the_profile_of_extreme_values_is_plain_json_and_gives_the_same_drift() -> None:
    reference, current = _tables(3000)
    chunks = [current.iloc[i : i + 700] for i in range(0, len(current), 700)]
    profile = profile_table(iter(chunks), {"amount": "numeric", "age": "numeric"})
    whole = profile_table(current, {"amount": "numeric", "age": "numeric"})
    amount = profile.columns["amount"]
    assert isinstance(amount, NumericSummary) and math.isfinite(amount.mean)
    assert amount.mean == pytest.approx(float(np.mean(current["amount"] / 2.0**1023)) * 2.0**1023)
    assert amount.std == pytest.approx(whole.columns["amount"].std, rel=1e-9)
    back = Profile.from_dict(_strict_json(profile.to_json()))  # type: ignore[arg-type]
    first = detect_drift(reference, profile).columns["amount"]
    again = detect_drift(reference, back).columns["amount"]
    assert (first.score, first.psi) == (again.score, again.psi)


def test_the_reference_profile_of_training_data_at_the_limit_is_plain_json() -> None:
    reference, current = _tables(500)
    current["target"] = np.where(reference["amount"] > 100, "yes", "no")
    schema = Schema.from_dict(
        {
            "target": "target",
            "task": "classification",
            "classes": ["no", "yes"],
            "columns": [
                {"name": "amount", "role": "numeric", "dtype": "float64"},
                {"name": "age", "role": "numeric", "dtype": "int64"},
            ],
        }
    )
    profile = reference_profile(current[["amount", "age"]], current["target"], schema)
    saved = _strict_json(profile.to_json())
    assert isinstance(saved, dict)
    assert math.isfinite(saved["columns"]["amount"]["mean"])


def test_monitor_a_file_with_values_at_the_float64_limit(
    trained_binary: Path, tmp_path: Path
) -> None:
    """`shipml monitor --current` on data holding ±1.7e308 finishes, flags that column and
    draws every figure of the report."""
    data = pd.read_csv(trained_binary.parent / "labelled.csv")
    data["mean_radius"] = _with_extremes(data["mean_radius"].to_numpy())
    current = tmp_path / "extreme.csv"
    data.to_csv(current, index=False)
    report, out = tmp_path / "drift.html", tmp_path / "drift.json"
    result = run_cli(
        "monitor", "-c", trained_binary, "--current", current, "--report", report, "--json", out
    )
    assert result.exit_code == 0, result.all
    assert "Traceback" not in result.all
    saved = _strict_json(out.read_text())
    assert isinstance(saved, dict)
    assert "mean_radius" in saved["drifted_columns"]
    html = report.read_text()
    assert "could not be drawn" not in html
    assert html.count("data:image/png;base64,") >= len(saved["columns"])


@pytest.mark.slow
def test_train_on_a_column_at_the_float64_limit(tmp_path: Path) -> None:
    """`shipml train` on a column holding ±1.7e308 and huge finite values finishes and stores a
    plain-JSON reference profile."""
    from tests.conftest import breast_cancer_frame, make_project

    df = breast_cancer_frame()
    df["mean_radius"] = _with_extremes(df["mean_radius"].to_numpy())

    def fast(raw: dict) -> None:
        raw["training"]["models"] = ["lightgbm"]
        raw["training"]["time_budget_s"] = 20

    config = make_project(tmp_path, df, "diagnosis", fast)
    result = run_cli("train", "-c", config)
    assert result.exit_code == 0, result.all
    profiles = list((tmp_path / ".shipml").rglob("profile.json"))
    assert len(profiles) == 1
    _strict_json(profiles[0].read_text())


def test_logged_predictions_at_the_float64_limit_give_finite_drift() -> None:
    """What the server's drift thread computes every round: the latest logged rows (two of them
    at ±1.7e308) against the served version's reference profile."""
    from shipml.monitoring.drift import compare
    from shipml.monitoring.service import log_profile

    reference, _ = _tables(1500)
    profile = profile_table(reference, {"amount": "numeric", "age": "numeric"})
    profile.meta = {"task": "classification"}
    inputs = reference.sample(200, random_state=2).to_dict("records")
    inputs[0]["amount"], inputs[1]["amount"] = LIMIT, -LIMIT
    rows = [
        {"inputs": row, "prediction": "yes", "confidence": 0.9, "request_id": str(i)}
        for i, row in enumerate(inputs)
    ]
    with np.errstate(over="raise", invalid="raise"):
        result = compare(profile, log_profile(rows, profile, {}), DriftSettings())
    amount = result.columns["amount"]
    assert math.isfinite(amount.score) and math.isfinite(amount.psi), amount
    assert not result.columns["age"].drift


def test_predict_names_a_column_the_model_cannot_read(trained_binary: Path, tmp_path: Path) -> None:
    """Trees that read float32 (the forests in this champion) cannot take ±1.7e308: one line
    naming the column and a value, exit 2, no output file."""
    data = pd.read_csv(trained_binary.parent / "new.csv")
    data["mean_radius"] = _with_extremes(data["mean_radius"].to_numpy())
    source, out = tmp_path / "extreme.csv", tmp_path / "scored.csv"
    data.to_csv(source, index=False)
    result = run_cli("predict", source, "--out", out, "-c", trained_binary)
    assert result.exit_code == 2, result.all
    assert "column 'mean_radius' holds" in result.stderr and "1.7e+308" in result.stderr
    assert not out.exists()
