"""Monitoring end to end: train (stores the reference profile), monitor files and the prediction
log of a real server, performance on labels, drift gauges on /metrics, Evidently's report."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from shipml import Project
from shipml.demo import generate_customers
from shipml.monitoring.service import load_profile
from tests.conftest import make_project, run_cli
from tests.serving_helpers import Server

pytestmark = pytest.mark.slow

WINDOW = 60


def _customers(n: int, seed: int) -> pd.DataFrame:
    df = generate_customers(n, seed)
    df["signup_date"] = df["signup_date"].astype(str)
    return df


def _shifted(df: pd.DataFrame) -> pd.DataFrame:
    """Older, richer, longer-standing customers on premium plans who call support a lot: six
    of the ten columns move."""
    out = df.copy()
    out["age"] = out["age"] + 25
    out["income"] = out["income"] * 3
    out["plan"] = "premium"
    out["tenure_months"] = out["tenure_months"] + 40
    out["monthly_charges"] = out["monthly_charges"] * 2
    out["support_calls"] = out["support_calls"] + 5
    return out


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("monitor")

    def edit(raw: dict) -> None:
        raw["features"]["exclude"] = ["customer_id"]
        raw["training"].update(models=["lightgbm"], baselines=False, trials=0, ensemble=False)
        raw["monitoring"] = {"window": WINDOW, "interval_s": 0.3}

    config = make_project(folder, _customers(800, 21), "churned", edit, holdout=200)
    result = run_cli("train", "-c", config)
    assert result.exit_code == 0, result.all
    return config


def test_training_stores_a_reference_profile(project: Path) -> None:
    p = Project.load(project)
    version, profile = load_profile(p, "champion")
    assert version == 1
    n_table = len(pd.read_csv(project.parent / "train.csv"))
    assert 0.7 * n_table < profile.rows < n_table  # the training split, not the test split
    assert set(profile.kinds) == {
        "age",
        "income",
        "household_size",
        "plan",
        "contract",
        "region",
        "tenure_months",
        "monthly_charges",
        "support_calls",
        "has_partner",
    }  # model inputs that can drift; the date and the id are not tested
    assert profile.kinds["has_partner"] == "boolean"
    assert profile.target is not None and set(profile.target.counts) == {"yes", "no"}
    assert profile.prediction is not None and profile.prediction.n > 0
    assert profile.confidence is not None and 0.5 <= profile.confidence.mean <= 1.0


def test_monitor_a_file_with_labels(project: Path, tmp_path: Path) -> None:
    labelled = project.parent / "labelled.csv"
    report = tmp_path / "drift.html"
    result = run_cli("monitor", "-c", project, "--current", labelled, "--report", report)
    assert result.exit_code == 0, result.all
    assert "Dataset drift: no" in result.output
    assert re.search(r"Performance: ok: roc_auc 0\.\d{4} on 200 labelled rows", result.output)
    [saved] = (project.parent / ".shipml" / "monitoring").glob("drift-*.json")
    payload = json.loads(saved.read_text())
    assert payload["model_version"] == 1 and payload["n_current"] == 200
    assert payload["prediction"]["column"] == "prediction"
    assert payload["target"]["method"] == "z"  # two classes, a reference of <= 1000 rows
    assert payload["performance"]["n_labelled"] == 200 and not payload["performance"]["degraded"]
    html = report.read_text()
    assert "Predictions, labels and performance" in html and "Confidence" in html


def test_degraded_performance_and_drift_are_flagged(project: Path, tmp_path: Path) -> None:
    df = pd.read_csv(project.parent / "labelled.csv")
    df["churned"] = df["churned"].map({"yes": "no", "no": "yes"})  # the world turned around
    flipped = tmp_path / "flipped.csv"
    df.to_csv(flipped, index=False)
    result = run_cli("monitor", "-c", project, "--current", flipped, "--fail-on-drift")
    assert "Performance: degraded" in result.output, result.all
    assert result.exit_code == 0  # labels flipped, inputs unchanged: no data drift
    shifted = tmp_path / "shifted.parquet"
    _shifted(df).to_parquet(shifted)
    drifted = run_cli("monitor", "-c", project, "--current", shifted, "--fail-on-drift")
    assert drifted.exit_code == 1, drifted.all
    [age] = [line for line in drifted.output.splitlines() if line.startswith("│ age ")]
    assert "DRIFT" in age


def test_schema_differences_in_the_current_file_are_reported(project: Path, tmp_path: Path) -> None:
    df = pd.read_csv(project.parent / "new.csv").drop(columns=["region"])
    df["age"] = df["age"].astype(object)
    df.loc[0, "age"] = "forty"
    df["income"] = None
    df["coupon"] = "x"
    odd = tmp_path / "odd.csv"
    df.to_csv(odd, index=False)
    result = run_cli("monitor", "-c", project, "--current", odd)
    assert result.exit_code == 0, result.all
    text = " ".join(result.output.split())
    assert "column 'region' is missing: not tested" in text
    assert "column 'age' is numeric in the reference but has text such as 'forty'" in text
    assert "column 'income' has no values: not tested" in text
    assert "column 'coupon' is not in the reference: not tested" in text
    # The model cannot score rows without 'region': the finding says so, nothing crashes.
    assert "schema:" in result.output


def _feedback(server: Server, answers: list[dict[str, Any]], labels: list[str]) -> None:
    for answer, label in zip(answers, labels, strict=True):
        r = server.post("/feedback", {"request_id": answer["request_id"], "label": label})
        assert r.status_code == 200, r.text


def _gauges(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        match = re.match(
            r'shipml_drift_score\{column="(\w+)",method="\w+",model="train",model_version="1"\}',
            line,
        )
        if match:
            out[match.group(1)] = float(line.rsplit(" ", 1)[1])
    return out


def test_the_server_log_monitored_and_its_drift_gauges(project: Path, tmp_path: Path) -> None:
    rows = _shifted(pd.read_csv(project.parent / "labelled.csv")).head(WINDOW)
    labels = list(rows.pop("churned"))
    records = json.loads(rows.drop(columns=["customer_id"]).to_json(orient="records"))
    with Server(project) as server:
        answers = [server.post("/predict", {"features": r}).json() for r in records[:40]]
        batch = server.post("/predict/batch", {"instances": records[40:]}).json()
        answers += [{"request_id": i} for i in batch["request_ids"]]
        _feedback(server, answers, labels)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            metrics = server.get("/metrics").text
            gauges = _gauges(metrics)
            window = 'shipml_drift_window_rows{model="train",model_version="1"} 60.0'
            if window in metrics and gauges:
                break
            time.sleep(0.3)
        else:
            raise AssertionError("no drift gauges on /metrics within 30 s")
        assert 'shipml_dataset_drift{model="train",model_version="1"} 1.0' in metrics
        assert 'shipml_drift_detected{column="age",model="train",model_version="1"} 1.0' in metrics
    out = tmp_path / "log.json"
    report = tmp_path / "evidently.html"
    result = run_cli(
        "monitor", "-c", project, "--from-log", "--window", str(WINDOW), "--json", out,
        "--engine", "evidently", "--report", report,
    )  # fmt: skip
    assert result.exit_code == 0, result.all
    payload = json.loads(out.read_text())
    assert payload["n_current"] == WINDOW and payload["dataset_drift"] is True
    ours = {c["column"]: c["score"] for c in payload["columns"]}
    assert gauges == pytest.approx(ours, rel=1e-9)  # the server computed the same drift
    assert payload["performance"]["n_labelled"] == WINDOW
    assert payload["target"] is not None
    evidently_html = report.read_text()  # Evidently's own report, on the same rows
    assert "Dataset Drift" in evidently_html and "K-S p_value" in evidently_html
    since = run_cli("monitor", "-c", project, "--from-log", "--since", "2999-01-01")
    assert since.exit_code == 2 and "no logged predictions" in since.stderr
    everything = run_cli("monitor", "-c", project, "--from-log", "--since", "2000-01-01")
    assert everything.exit_code == 0, everything.all
    assert f"{WINDOW} rows since 2000-01-01" in " ".join(everything.output.split())
    smaller = run_cli("monitor", "-c", project, "--from-log", "--window", "10")
    assert "10 latest rows" in " ".join(smaller.output.split())


def test_export_grafana_writes_the_dashboard(project: Path, tmp_path: Path) -> None:
    result = run_cli("export", "grafana", "-c", project, "--out", tmp_path / "g")
    assert result.exit_code == 0, result.all
    name = Project.load(project).config.name
    board = json.loads((tmp_path / "g" / f"shipml-{name}-dashboard.json").read_text())
    assert any("shipml_drift_score" in json.dumps(p) for p in board["panels"])
