"""The retraining pipeline: extract → validate → train → evaluate → gate → promote, run by
`shipml retrain`, `shipml schedule` and drift; the gate's paired bootstrap; bad input; and the
whole loop against a running server."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from shipml import Project
from shipml.pipeline import steps
from shipml.pipeline.local import next_run, schedule_log
from tests.conftest import CliResult, make_project, run_cli
from tests.serving_helpers import Load, Server


def world(n: int, seed: int, shift: float = 0.0, flipped: bool = False) -> pd.DataFrame:
    """A binary problem; ``shift`` moves x0 (data drift), ``flipped`` reverses how x0 drives
    the label (concept drift: a model of the old world is now wrong)."""
    rng = np.random.default_rng(seed)
    x0 = rng.normal(shift, 1.0, n)
    x1 = rng.normal(0.0, 1.0, n)
    group = rng.choice(["a", "b", "c"], n)
    effect = -(x0 - shift) if flipped else (x0 - shift)
    logit = 2.5 * effect + x1 + np.where(group == "a", 0.5, 0.0)
    label = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "yes", "no")
    return pd.DataFrame({"x0": x0, "x1": x1, "group": group, "label": label})


def _edit(extra: dict | None = None):
    def edit(raw: dict) -> None:
        raw["training"].update(models=["lightgbm"], trials=0, cv=2, ensemble=False)
        raw["serving"] = {"reload_interval_s": 0.5}
        for section, values in (extra or {}).items():
            raw.setdefault(section, {}).update(values)

    return edit


def _config(tmp_path: Path, extra: dict | None = None, df: pd.DataFrame | None = None) -> Path:
    config = make_project(tmp_path, world(800, 1) if df is None else df, "label", _edit(extra))
    trained = run_cli("train", "-c", config)
    assert trained.exit_code == 0, trained.all
    return config


def _said(result: CliResult) -> str:
    return " ".join(result.all.split())


# --------------------------------------------------------------------------- the bootstrap


def test_paired_bootstrap_of_identical_and_of_better_models() -> None:
    rng = np.random.default_rng(0)
    y = np.where(rng.random(400) < 0.5, "yes", "no").astype(object)
    good = np.clip((y == "yes") * 0.6 + rng.random(400) * 0.4, 0, 1)
    bad = rng.random(400)
    as_model = lambda p: (np.where(p > 0.5, "yes", "no"), np.c_[1 - p, p])  # noqa: E731
    classes = ["no", "yes"]
    same = steps.paired_bootstrap(
        "roc_auc", y, as_model(good), as_model(good), classes, 200, 0.95, 1
    )
    assert same == (0.0, 0.0, 0.0)
    diff, low, high = steps.paired_bootstrap(
        "roc_auc", y, as_model(good), as_model(bad), classes, 500, 0.95, 1
    )
    assert low > 0.3 and low < diff < high  # clearly better, the interval around the estimate
    # an error metric: lower is better, so the signed difference flips
    t = rng.normal(size=300)
    near, far = (t + 0.1, None), (t + 1.0, None)
    d, lo, hi = steps.paired_bootstrap("rmse", t, near, far, [], 300, 0.9, 2)
    assert d == pytest.approx(0.9) and lo > 0.8 and hi < 1.0


def test_cron_schedules_are_checked(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    start = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert next_run("0 3 * * *", start) == datetime(2026, 1, 2, 3, 0, tzinfo=UTC)
    config = make_project(tmp_path, world(200, 1), "label", _edit({"retrain": {"schedule": "x"}}))
    result = run_cli("models", "-c", config)
    assert result.exit_code == 2 and "retrain.schedule" in result.all
    assert "not a cron schedule" in result.all and "Traceback" not in result.all


def test_a_gate_metric_that_does_not_exist_or_fit_is_a_config_error(tmp_path: Path) -> None:
    config = make_project(tmp_path, world(200, 1), "label", _edit({"gate": {"metric": "auc"}}))
    result = run_cli("retrain", "-c", config)
    assert result.exit_code == 2 and "gate.metric" in result.all and "roc_auc" in result.all
    raw = yaml.safe_load(config.read_text())
    raw["gate"]["metric"] = "rmse"
    raw["task"] = "classification"
    config.write_text(yaml.safe_dump(raw))
    result = run_cli("retrain", "-c", config)
    assert result.exit_code == 2 and "gate.metric 'rmse' does not fit task" in _said(result)


# ------------------------------------------------------------------------- retrain and gate


@pytest.mark.slow
def test_schema_changes_stop_the_pipeline_and_gate_min_is_a_floor_on_schedule(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path)
    batch = world(400, 4).drop(columns=["group"]).assign(extra=1.5)
    batch.to_csv(tmp_path / "batch.csv", index=False)
    result = run_cli("retrain", "-c", config, "--data", tmp_path / "batch.csv")
    assert result.exit_code == 2 and "Traceback" not in result.all
    said = _said(result)
    assert "schema differs from champion version 1's" in said
    assert "column 'group' is missing" in said and "column 'extra' is new" in said
    assert "--allow-schema-change" in said
    assert [v.version for v in Project.load(config).models()] == [1]

    # An absolute floor no model reaches, run by the scheduler: logged as a failed gate.
    raw = yaml.safe_load(config.read_text())
    raw["gate"] = {"min": 0.9999, "must_beat_champion": False}
    config.write_text(yaml.safe_dump(raw))
    ran = run_cli("schedule", "-c", config, "--cron", "* * * * * *", "--max-runs", "1")
    assert ran.exit_code == 0, ran.all
    assert "must be at least gate.min 0.9999" in _said(ran)
    [record] = schedule_log(Project.load(config))
    assert record["status"] == "gate failed" and record["version"] == 2
    assert Project.load(config).champion() == 1
    bad = run_cli("schedule", "-c", config, "--cron", "at noon")
    assert bad.exit_code == 2 and "not a cron schedule" in bad.all


@pytest.mark.slow
def test_sql_source_extracts_only_rows_past_the_watermark(tmp_path: Path) -> None:
    db = tmp_path / "shop.db"
    first = world(600, 5).assign(row_id=range(600))
    with sqlite3.connect(db) as conn:
        first.to_sql("events", conn, index=False)
    config = make_project(tmp_path, first, "label", _edit())
    raw = yaml.safe_load(config.read_text())
    raw["data"] = {
        "url": f"sqlite:///{db}",
        "query": "SELECT * FROM events",
        "watermark_column": "row_id",
    }
    raw.setdefault("features", {})["exclude"] = ["row_id"]
    config.write_text(yaml.safe_dump(raw))
    assert run_cli("train", "-c", config).exit_code == 0

    result = run_cli("retrain", "-c", config)  # no watermark yet: every row
    assert result.exit_code == 0, result.all
    assert "600 rows from data.query, watermark 599" in _said(result)
    assert Project.load(config).champion() == 2
    again = run_cli("retrain", "-c", config)
    assert again.exit_code == 2 and "no rows past the watermark row_id > 599" in _said(again)
    assert Project.load(config).champion() == 2
    newer = world(300, 6).assign(row_id=range(600, 900))
    with sqlite3.connect(db) as conn:
        newer.to_sql("events", conn, index=False, if_exists="append")
    third = run_cli("retrain", "-c", config)
    assert third.exit_code == 0, third.all
    assert "300 rows from data.query, watermark 899" in _said(third)


# ------------------------------------------------------------------------- the whole loop


@pytest.mark.slow
def test_the_whole_loop_drift_retrain_gate_promote_hot_swap(tmp_path: Path) -> None:
    monitoring = {"retrain_on_drift": True, "window": 200, "drift_share": 0.3}
    config = _config(tmp_path, {"monitoring": monitoring})
    drifted = world(300, 7, shift=3.0, flipped=True)
    rows = json.loads(drifted.drop(columns=["label"]).to_json(orient="records"))
    # traffic for the whole test: monitor, retrain and a second retrain take minutes on 2 cores
    with Server(config) as running, Load(running, rows, max_seconds=900) as load:
        load.wait_for(250, timeout=120)  # drifted traffic
        # The new labelled data arrives where the config reads it; monitoring sees the drift
        # in the served traffic and retrains.
        world(800, 8, shift=3.0, flipped=True).to_csv(config.parent / "train.csv", index=False)
        monitored = run_cli("monitor", "-c", config, "--from-log")
        assert monitored.exit_code == 0, monitored.all
        said = _said(monitored)
        assert "retrain_on_drift is on" in said and "version 2 is the champion (was 1)" in said
        load.wait_for_version("2", streak=1, timeout=60)
        load.wait_for(load.count + 50, timeout=60)

        # a worse challenger: the gate fails and version 2 keeps serving
        noise = world(800, 9, shift=3.0)
        noise["label"] = np.random.default_rng(1).permutation(noise["label"].to_numpy())
        noise.to_csv(tmp_path / "noise.csv", index=False)
        worse = run_cli("retrain", "-c", config, "--data", tmp_path / "noise.csv")
        assert worse.exit_code == 0 and "version 2 keeps serving" in _said(worse)
        assert "FAILED: challenger roc_auc" in _said(worse)
        time.sleep(1.5)  # three reload intervals
        load.wait_for(load.count + 50, timeout=60)
    assert not load.failures, dict(load.failures)
    versions = [version for _, version in load.answered]
    assert versions[0] == "1" and versions[-1] == "2" and "3" not in versions

    # The registry: v2 passed and is champion, v3 failed and stays a challenger; the decision
    # and its evidence are on each version's MLflow run.
    project = Project.load(config)
    assert project.champion() == 2
    versions_ = {v.version: v for v in project.models()}
    assert versions_[2].tags["shipml.gate"] == "passed"
    assert versions_[3].tags["shipml.gate"] == "failed" and "challenger" in versions_[3].aliases
    client = project.store.client
    run = versions_[2].run_id
    decision = json.loads(
        Path(client.download_artifacts(run, "gate/decision.json", str(tmp_path))).read_text()
    )
    assert decision["passed"] and decision["champion_version"] == 1
    assert decision["challenger"] > decision["champion"]
    assert 0 < decision["ci_low"] < decision["difference"] < decision["ci_high"]
    assert client.get_run(run).data.metrics["gate_ci_low"] == pytest.approx(decision["ci_low"])
    failed = run_cli("retrain", "-c", config, "--data", tmp_path / "noise.csv", "--fail-on-gate")
    assert failed.exit_code == 1 and Project.load(config).champion() == 2
    assert run_cli("rollback", "-c", config).exit_code == 0  # a promotion is undone
    assert Project.load(config).champion() == 1
