"""End to end through the CLI: init → train → models → predict → evaluate → promote → rollback,
on real data sets, against a real SQLite MLflow store."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from sklearn.datasets import load_wine

from shipml.project import Project
from tests.conftest import (
    breast_cancer_frame,
    diabetes_frame,
    make_project,
    run_cli,
    wine_frame,
)

pytestmark = pytest.mark.slow


def _client(config: Path) -> tuple[MlflowClient, str]:
    project = Project.load(config)
    return project.store.client, project.store.experiment_id


def test_init_writes_commented_config_with_inferred_roles(tmp_path: Path) -> None:
    df = breast_cancer_frame()
    df.to_csv(tmp_path / "data.csv", index=False)
    result = run_cli(
        "init", tmp_path / "data.csv", "--target", "diagnosis", "--out", tmp_path / "s.yaml"
    )
    assert result.exit_code == 0, result.all
    text = (tmp_path / "s.yaml").read_text()
    assert text.count("#") > 20  # commented for a human
    raw = yaml.safe_load(text)
    assert raw["task"] == "classification"
    assert raw["target"] == "diagnosis"
    assert raw["data"]["path"] == "data.csv"
    assert "patient_id" in raw["features"]["exclude"]
    assert "clinic" in raw["features"]["categorical"]
    assert "mean_radius" in raw["features"]["numeric"]
    assert raw["training"]["metric"] == "roc_auc"
    again = run_cli(
        "init", tmp_path / "data.csv", "--target", "diagnosis", "--out", tmp_path / "s.yaml"
    )
    assert again.exit_code == 2 and "already exists" in again.stderr


def _derived(raw: dict) -> None:
    raw["features"]["derived"] = {
        "area_ratio": "worst_area / mean_area",
        "large": "mean_radius > 15 and clinic in ['north', 'east']",
    }


def test_binary_full_loop(tmp_path: Path) -> None:
    config = make_project(tmp_path, breast_cancer_frame(), "diagnosis", edit=_derived)

    first = run_cli("train", "-c", config)
    assert first.exit_code == 0, first.all
    assert "version 1" in first.output and "champion" in first.output
    assert "Leaderboard" in first.output

    client, experiment_id = _client(config)
    parents = client.search_runs(
        [experiment_id], filter_string="tags.`shipml.kind` = 'train'", max_results=10
    )
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert len(parent.data.tags["shipml.data_sha256"]) == 64
    assert parent.data.params["split_seed"] == "42"
    assert parent.data.params["cv"] == "3"
    assert "test_roc_auc" in parent.data.metrics and parent.data.metrics["test_roc_auc"] > 0.9
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {
        "config",
        "validation",
        "leaderboard",
        "schema",
        "environment",
        "evaluation",
    } <= artifacts
    children = client.search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    names = {c.info.run_name for c in children}
    assert {"majority", "logistic_regression", "random_forest"} <= names
    lr = next(c for c in children if c.info.run_name == "logistic_regression")
    history = client.get_metric_history(lr.info.run_id, "cv_roc_auc")
    # One value per fold: 3 folds, repeated 3 times since the table has under 1,000 rows.
    assert sorted(m.step for m in history) == list(range(9))
    assert "cv_roc_auc_mean" in lr.data.metrics and "cv_roc_auc_std" in lr.data.metrics

    # The model is saved with skops (not pickle), with a signature and an input example.
    project = Project.load(config)
    version = client.get_model_version(project.config.name, "1")
    loaded = project.load_model("champion")
    assert loaded.version == 1
    cache = project.root / ".shipml" / "cache" / project.config.name / "1"
    mlmodel = yaml.safe_load((cache / "MLmodel").read_text())
    assert mlmodel["flavors"]["sklearn"]["serialization_format"] == "skops"
    assert set(loaded.schema.derived) == {"area_ratio", "large"}  # computed inside the model
    for preprocessor in loaded.pipeline.preprocessors:  # one per bagged fold, or one refit
        assert preprocessor.named_steps["derive"].expressions == loaded.schema.derived
    assert "signature" in mlmodel and "saved_input_example_info" in mlmodel
    assert version.tags["shipml.model_sha256"]

    models = run_cli("models", "-c", config)
    assert models.exit_code == 0 and "champion" in models.output

    out = tmp_path / "scored.csv"
    predicted = run_cli("predict", tmp_path / "new.csv", "--out", out, "-c", config)
    assert predicted.exit_code == 0, predicted.all
    scored = pd.read_csv(out)
    new = pd.read_csv(tmp_path / "new.csv")
    assert list(scored.columns) == [
        *new.columns,
        "prediction",
        "probability",
        "proba_benign",
        "proba_malignant",
    ]
    assert len(scored) == len(new)
    assert set(scored["prediction"]) <= {"benign", "malignant"}
    assert ((scored["probability"] >= 0.5) & (scored["probability"] <= 1)).all()
    assert (scored[["proba_benign", "proba_malignant"]].sum(axis=1) - 1).abs().max() < 1e-9
    winner = scored[["proba_benign", "proba_malignant"]].idxmax(axis=1).str.removeprefix("proba_")
    assert (winner == scored["prediction"]).all()

    evaluated = run_cli("evaluate", tmp_path / "labelled.csv", "-c", config)
    assert evaluated.exit_code == 0, evaluated.all
    assert "roc_auc" in evaluated.output and "accuracy" in evaluated.output
    saved = sorted((project.root / ".shipml" / "reports").glob("evaluation-v1-*.json"))
    assert saved and json.loads(saved[-1].read_text())["metrics"]["accuracy"] > 0.8

    # A second training registers a challenger beside the champion, whatever it trains: one
    # family without a search keeps it short.
    raw = yaml.safe_load(config.read_text())
    raw["training"].update(models=["lightgbm"], trials=0, ensemble=False)
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    second = run_cli("train", "-c", config)
    assert second.exit_code == 0, second.all
    assert "challenger" in second.output
    assert Project.load(config).champion() == 1

    assert run_cli("promote", "2", "-c", config).exit_code == 0
    assert Project.load(config).champion() == 2
    assert run_cli("predict", tmp_path / "new.csv", "--out", out, "-c", config).exit_code == 0

    back = run_cli("rollback", "-c", config)
    assert back.exit_code == 0 and "from version 2 to version 1" in back.output
    assert Project.load(config).champion() == 1
    nothing = run_cli("rollback", "-c", config)
    assert nothing.exit_code == 2 and "nothing to roll back" in nothing.stderr

    missing = run_cli("promote", "9", "-c", config)
    assert missing.exit_code == 2 and "no version 9" in missing.stderr

    by_version = run_cli(
        "predict", tmp_path / "new.csv", "--out", out, "--version", "2", "-c", config
    )
    assert by_version.exit_code == 0 and "version 2" in by_version.output


def test_multiclass(tmp_path: Path) -> None:
    config = make_project(tmp_path, wine_frame().sample(frac=1, random_state=0), "cultivar")
    assert yaml.safe_load(config.read_text())["training"]["metric"] == "f1_macro"
    result = run_cli("train", "-c", config)
    assert result.exit_code == 0, result.all
    out = tmp_path / "scored.parquet"
    assert run_cli("predict", tmp_path / "new.csv", "--out", out, "-c", config).exit_code == 0
    scored = pd.read_parquet(out)
    assert {"proba_barbera", "proba_barolo", "proba_grignolino"} <= set(scored.columns)
    evaluation = Project.load(config).evaluate(pd.read_csv(tmp_path / "labelled.csv"))
    assert evaluation.metrics["accuracy"] > 0.85
    assert "roc_auc" in evaluation.metrics  # one-vs-rest


def test_regression(tmp_path: Path) -> None:
    config = make_project(tmp_path, diabetes_frame(), "progression")
    raw = yaml.safe_load(config.read_text())
    assert raw["task"] == "regression" and raw["training"]["metric"] == "rmse"
    result = run_cli("train", "-c", config)
    assert result.exit_code == 0, result.all
    assert "rmse" in result.output
    out = tmp_path / "scored.csv"
    assert run_cli("predict", tmp_path / "new.csv", "--out", out, "-c", config).exit_code == 0
    scored = pd.read_csv(out)
    assert "prediction" in scored.columns and "probability" not in scored.columns
    evaluated = run_cli("evaluate", tmp_path / "labelled.csv", "-c", config)
    assert evaluated.exit_code == 0 and "mae" in evaluated.output
    metrics = Project.load(config).models()[0].test_metrics
    assert set(metrics) >= {"rmse", "mae", "r2", "mape"}
    assert metrics["r2"] > 0.2


def test_quickstart_runs_the_whole_loop_on_demo_data(tmp_path: Path) -> None:
    # Each of the four trainings (two per run) searches until its budget is spent.
    result = run_cli("quickstart", "--dir", tmp_path / "qs", "--time-budget", "10")
    assert result.exit_code == 0, result.all
    folder = tmp_path / "qs"
    scored = pd.read_csv(folder / "scored.csv")
    assert "prediction" in scored.columns
    assert (scored["region"] == "overseas").sum() == 5  # unseen category, still predicted
    assert scored["prediction"].notna().all()
    assert (folder / ".shipml" / "mlflow.db").is_file()
    versions = Project.load(folder / "shipml.yaml").models()
    assert [v.version for v in versions] == [1, 2]
    assert "champion" in versions[0].aliases  # promoted to 2, then rolled back to 1
    assert "Where things are" in result.output
    # Step 8 served the champion over HTTP: the answer names its version, and it was logged.
    assert '"model_version": "1"' in result.output and "/predict" in result.output
    from shipml.serving.predlog import read_predictions

    logged = list(read_predictions(folder / ".shipml" / "predictions"))
    assert len(logged) == 1 and logged[0]["model_version"] == 1
    # Step 9 monitored the new data against the champion's reference profile.
    assert "Dataset drift:" in result.output
    assert "data:image/png" in (folder / "drift.html").read_text()
    runs = Project.load(folder / "shipml.yaml").store.client.search_runs(
        [Project.load(folder / "shipml.yaml").store.experiment_id],
        filter_string="tags.`shipml.kind` = 'train'",
    )
    assert sorted(int(r.data.params["n_rows"]) for r in runs) == [3000, 3600]  # more data, later

    # A rerun (a new process, as a user runs it) resets the demo folder.
    shipml = str(Path(sys.executable).parent / "shipml")
    again = subprocess.run(
        [shipml, "quickstart", "--dir", str(folder), "--time-budget", "10"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr
    assert [v.version for v in Project.load(folder / "shipml.yaml").models()] == [1, 2]  # reset

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("precious")
    refused = run_cli("quickstart", "--dir", tmp_path / "mine")
    assert refused.exit_code == 2 and "not empty" in refused.stderr
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "precious"


def test_sqlite_source(tmp_path: Path) -> None:
    db = tmp_path / "warehouse.db"
    with sqlite3.connect(db) as conn:
        wine_frame().to_sql("wines", conn, index=False)
    url = f"sqlite:///{db}"
    config = tmp_path / "shipml.yaml"
    result = run_cli(
        "init", url, "--query", "SELECT * FROM wines", "--target", "cultivar", "--out", config
    )
    assert result.exit_code == 0, result.all
    raw = yaml.safe_load(config.read_text())
    assert raw["data"] == {"url": url, "query": "SELECT * FROM wines"}
    raw["training"].update(cv=3, models=["logistic_regression", "random_forest"], trials=2)
    config.write_text(yaml.safe_dump(raw))
    trained = run_cli("train", "-c", config)
    assert trained.exit_code == 0, trained.all


def test_python_api(tmp_path: Path) -> None:
    config = make_project(
        tmp_path,
        diabetes_frame(),
        "progression",
        edit=lambda raw: raw["training"].update(models=["ridge", "hist_gradient_boosting"]),
    )
    project = Project.load(config)
    result = project.train(time_budget=60)
    assert result.version == 1 and result.alias == "champion"
    names = [r.name for r in result.leaderboard.results]
    assert result.best in names
    # The defaults, then the two search trials (make_project sets trials: 2), then maybe the
    # ensemble.
    assert names[:3] == ["mean", "ridge", "hist_gradient_boosting"]
    assert len([n for n in names[3:] if "#" in n]) == result.search_trials == 2
    assert names[5:] in ([], ["ensemble"])
    model = project.load_model("champion")
    new = pd.read_csv(tmp_path / "new.csv")
    assert model.predict(new).shape == (len(new),)
    assert project.models()[0].aliases == ["champion"]


def test_time_budget_bounds_the_run(tmp_path: Path) -> None:
    config = make_project(tmp_path, breast_cancer_frame(), "diagnosis")
    result = Project.load(config).train(time_budget=1)
    statuses = {r.name: r.status for r in result.leaderboard.results}
    assert statuses["majority"] == statuses["logistic_regression"] == "ok"  # baselines first
    assert {statuses[n] for n in ("random_forest", "hist_gradient_boosting", "lightgbm")} == {
        "skipped"
    }
    # The best is a baseline, or a mix of baselines (logistic regression trials fit in a second).
    best = next(r for r in result.leaderboard.results if r.name == result.best)
    families = {r.name: r.family for r in result.leaderboard.results}
    assert {families[m] for m in best.members or {best.name: 1}} <= {
        "majority",
        "logistic_regression",
    }
    shown = run_cli("models", "-c", config)
    assert shown.exit_code == 0 and result.best in shown.output


def test_git_commit_and_environment_are_tracked(tmp_path: Path) -> None:
    config = make_project(
        tmp_path,
        wine_frame(),
        "cultivar",
        edit=lambda raw: raw["training"].update(models=["random_forest"], trials=0),
    )
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*git, "add", "shipml.yaml"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "config"], cwd=tmp_path, check=True)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.strip()
    project = Project.load(config)
    result = project.train(time_budget=60)
    run = project.store.client.get_run(result.run_id)
    assert run.data.tags["shipml.git_commit"] == head
    assert run.data.tags["shipml.git_dirty"] == "true"  # the data files are not committed
    local = project.store.client.download_artifacts(result.run_id, "environment", str(tmp_path))
    packages = json.loads((Path(local) / "packages.json").read_text())
    assert {"scikit-learn", "lightgbm", "mlflow", "pandas"} <= set(packages)
    assert run.data.params["training_seed"] == "42"


def test_integer_labels(tmp_path: Path) -> None:
    """0/1 and 0/1/2 targets read from CSV as integers train, predict and evaluate."""
    df = breast_cancer_frame()
    df["diagnosis"] = (df["diagnosis"] == "malignant").astype(int)
    config = make_project(
        tmp_path, df, "diagnosis", edit=lambda raw: raw["training"].update(models=["lightgbm"])
    )
    result = run_cli("train", "-c", config)
    assert result.exit_code == 0, result.all
    project = Project.load(config)
    run_id = project.models()[0].run_id
    board = project.store.client.download_artifacts(run_id, "leaderboard", str(tmp_path))
    records = json.loads((Path(board) / "leaderboard.json").read_text())
    statuses = {r["model"]: r["status"] for r in records}
    defaults = {name: status for name, status in statuses.items() if "#" not in name}
    assert defaults.pop("ensemble", "ok") == "ok"
    assert defaults == {"majority": "ok", "logistic_regression": "ok", "lightgbm": "ok"}
    out = tmp_path / "scored.csv"
    assert run_cli("predict", tmp_path / "new.csv", "--out", out, "-c", config).exit_code == 0
    scored = pd.read_csv(out)
    assert {"proba_0", "proba_1"} <= set(scored.columns)
    assert set(scored["prediction"]) <= {0, 1}
    evaluated = project.evaluate(pd.read_csv(tmp_path / "labelled.csv"))
    assert evaluated.metrics["accuracy"] > 0.85

    wine = load_wine(as_frame=True).frame.sample(frac=1, random_state=1)
    folder = tmp_path / "wine"
    config = make_project(folder, wine, "target")
    assert run_cli("train", "-c", config).exit_code == 0
    evaluated = Project.load(config).evaluate(pd.read_csv(folder / "labelled.csv"))
    assert evaluated.metrics["f1_macro"] > 0.85


def test_a_budget_too_short_for_the_stronger_models_says_so(tmp_path: Path) -> None:
    # Baselines always run; in one second no stronger family's defaults can, and the summary
    # says which were left out and what to change, instead of silently shipping a baseline.
    config = make_project(tmp_path, wine_frame(), "cultivar")
    result = run_cli("train", "-c", config, "--time-budget", "1")
    assert result.exit_code == 0, result.all
    flat = " ".join(result.output.split())
    assert "lightgbm, lightgbm#1" not in flat  # an early portfolio configuration is not trial 0
    assert "did not fit in the 1s budget" in flat and "a larger --time-budget" in flat
    assert "lightgbm, hist_gradient_boosting, random_forest" in flat


def test_a_second_layer_when_asked_for(tmp_path: Path) -> None:
    # training.stack: true where one pass of k folds runs (1,000 training rows and more): the
    # second layer is cross-validated and ranked like any candidate; the model registers, loads.
    from sklearn.datasets import make_classification

    X, y = make_classification(1600, 6, n_informative=4, random_state=3)
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(6)]).assign(label=y)

    def edit(raw: dict) -> None:
        raw["training"].update(models=["logistic_regression", "lightgbm", "random_forest"])
        raw["training"]["stack"] = True

    config = make_project(tmp_path, frame, "label", edit=edit)
    result = run_cli("train", "-c", config)
    assert result.exit_code == 0, result.all
    flat = " ".join(result.output.split())
    assert "✓ stack roc_auc" in flat
    project = Project.load(config)
    run_id = project.models()[0].run_id
    board = project.store.client.download_artifacts(run_id, "leaderboard", str(tmp_path))
    records = {r["model"]: r for r in json.loads((Path(board) / "leaderboard.json").read_text())}
    stack = records["stack"]
    assert stack["status"] == "ok" and stack["rank"] is not None
    assert stack["stack_inputs"] and set(stack["stack_inputs"]) <= set(records)
    model = project.load_model("champion")
    new = pd.read_csv(tmp_path / "new.csv")
    assert model.predict(new).shape == (len(new),)
