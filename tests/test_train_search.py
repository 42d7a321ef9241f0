"""End to end: the search (reproducible trials, grid, child runs), class weights and the decision
threshold, and the HTML report (`shipml report`)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shipml import Project
from tests.conftest import breast_cancer_frame, diabetes_frame, make_project, run_cli

pytestmark = pytest.mark.slow


def _imbalanced() -> pd.DataFrame:
    """Breast cancer with most malignant rows dropped: about one malignant in nine."""
    df = breast_cancer_frame()
    malignant = df[df["diagnosis"] == "malignant"].head(45)
    return pd.concat([df[df["diagnosis"] == "benign"], malignant]).sample(frac=1, random_state=0)


def _child_runs(project: Project, run_id: str) -> list:
    client = project.store.client
    return client.search_runs(
        [project.store.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'", max_results=1000
    )


def test_fixed_trials_reproduce_the_same_model(tmp_path: Path) -> None:
    def edit(raw: dict) -> None:
        # Two folds (six with the repeats of a small table) are enough to tell runs apart.
        raw["training"].update(trials=4, models=["lightgbm", "random_forest"], cv=2)

    results = []
    for name in ("a", "b"):
        config = make_project(tmp_path / name, breast_cancer_frame(), "diagnosis", edit)
        assert run_cli("train", "-c", config).exit_code == 0
        project = Project.load(config)
        version = project.models()[-1]
        run = project.store.client.get_run(version.run_id)
        assert run.data.params["search"] == "optuna" and run.data.params["search_trials"] == "4"
        board = [
            (r.info.run_name, r.data.metrics.get("cv_roc_auc_mean"))
            for r in _child_runs(project, version.run_id)
        ]
        new = pd.read_csv(config.parent / "new.csv")
        results.append((sorted(board), version.test_metrics, project.predict(new)))
    (board_a, test_a, scored_a), (board_b, test_b, scored_b) = results
    assert board_a == board_b
    # Every candidate and trial is a child run: baselines, defaults, LightGBM's early portfolio
    # configuration, 4 trials, maybe the ensemble.
    names = [n for n, _ in board_a]
    assert {"majority", "logistic_regression", "lightgbm", "lightgbm#1", "random_forest"} <= set(
        names
    )
    assert len([n for n in names if "#" in n]) == 1 + 4
    assert test_a == test_b
    pd.testing.assert_frame_equal(scored_a, scored_b)


def test_cli_trials_option_overrides_the_config(tmp_path: Path) -> None:
    config = make_project(
        tmp_path,
        breast_cancer_frame(),
        "diagnosis",
        lambda raw: raw["training"].update(models=["lightgbm"]),
    )
    result = run_cli("train", "-c", config, "--trials", "1")
    assert result.exit_code == 0, result.all
    assert "1 search trials" in result.output
    project = Project.load(config)
    run = project.store.client.get_run(project.models()[0].run_id)
    assert run.data.params["search_trials"] == "1"


def test_grid_search_from_a_cheat_sheet_grid(tmp_path: Path) -> None:
    def edit(raw: dict) -> None:
        raw["training"].pop("trials")
        raw["training"].update(
            search="grid",
            models=["random_forest"],
            param_grid={"n_estimators": [30, 60], "max_depth": [None, 4], "min_samples_leaf": [1]},
        )

    config = make_project(tmp_path, diabetes_frame(), "progression", edit)
    result = run_cli("train", "-c", config)
    assert result.exit_code == 0, result.all
    project = Project.load(config)
    version = project.models()[0]
    names = sorted(r.info.run_name for r in _child_runs(project, version.run_id))
    assert [n for n in names if "#" in n] == [f"random_forest#{i}" for i in range(1, 5)]
    params = {
        r.info.run_name: (r.data.params["n_estimators"], r.data.params["max_depth"])
        for r in _child_runs(project, version.run_id)
        if "#" in r.info.run_name
    }
    assert sorted(params.values()) == [("30", "4"), ("30", "None"), ("60", "4"), ("60", "None")]


@pytest.mark.parametrize(
    ("training", "needle"),
    [
        ({"search": "grid"}, "training: search: grid needs a param_grid"),
        ({"param_grid": {"max_depth": [3]}}, "set search: grid"),
        (
            {"search": "grid", "param_grid": {"random_forest": {"depth": [3]}}},
            "param_grid.random_forest.depth",
        ),
        ({"threshold": 1.5}, "training.threshold"),
        ({"search": "bayes"}, "training.search"),
    ],
)
def test_bad_search_settings_are_user_errors(tmp_path: Path, training: dict, needle: str) -> None:
    config = make_project(
        tmp_path, diabetes_frame(), "progression", lambda raw: raw["training"].update(training)
    )
    result = run_cli("train", "-c", config)
    assert result.exit_code == 2, result.all
    assert needle in result.stderr and "Traceback" not in result.all


def test_imbalanced_binary_gets_class_weights_and_a_tuned_threshold(tmp_path: Path) -> None:
    def edit(raw: dict) -> None:
        raw["training"].update(metric="balanced_accuracy", models=["lightgbm"])

    config = make_project(tmp_path, _imbalanced(), "diagnosis", edit, holdout=60)
    assert run_cli("train", "-c", config).exit_code == 0
    project = Project.load(config)
    version = project.models()[0]
    run = project.store.client.get_run(version.run_id)
    assert run.data.params["class_weight"] == "balanced"
    threshold = float(version.tags["shipml.threshold"])
    assert run.data.params["decision_threshold"] == f"{threshold:.4f}"
    model = project.load_model("champion")
    assert model.pipeline.threshold == pytest.approx(threshold)
    # predict uses the stored threshold: malignant (the second class) at or above it.
    out = tmp_path / "scored.csv"
    assert run_cli("predict", config.parent / "new.csv", "--out", out, "-c", config).exit_code == 0
    scored = pd.read_csv(out)
    expected = np.where(scored["proba_malignant"] >= threshold, "malignant", "benign")
    assert (scored["prediction"] == expected).all()
    picked = scored["probability"].to_numpy()
    winner = np.where(expected == "malignant", scored["proba_malignant"], scored["proba_benign"])
    np.testing.assert_allclose(picked, winner)
    # evaluate scores the labels predict gives, not argmax
    result = project.evaluate(pd.read_csv(config.parent / "labelled.csv"))
    labelled = pd.read_csv(config.parent / "labelled.csv")
    hits = (expected == labelled["diagnosis"].to_numpy()).mean()
    assert result.metrics["accuracy"] == pytest.approx(hits)


def test_threshold_none_keeps_the_most_probable_class(tmp_path: Path) -> None:
    def edit(raw: dict) -> None:
        raw["training"].update(threshold="none", models=["lightgbm"], class_weight="none")

    config = make_project(tmp_path, _imbalanced(), "diagnosis", edit, holdout=60)
    assert run_cli("train", "-c", config).exit_code == 0
    project = Project.load(config)
    version = project.models()[0]
    assert version.tags["shipml.threshold"] == ""
    run = project.store.client.get_run(version.run_id)
    assert run.data.params["class_weight"] == "none"
    scored = project.predict(pd.read_csv(config.parent / "new.csv"))
    expected = np.where(scored["proba_malignant"] > scored["proba_benign"], "malignant", "benign")
    assert (scored["prediction"] == expected).all()


def test_report_is_written_logged_and_found_by_shipml_report(
    trained_binary: Path, tmp_path: Path
) -> None:
    project = Project.load(trained_binary)
    name = project.config.name
    result = run_cli("report", "-c", trained_binary)
    assert result.exit_code == 0, result.all
    path = Path(result.output.strip())
    assert path == trained_binary.parent / ".shipml" / "reports" / f"{name}-v1.html"
    html = path.read_text(encoding="utf-8")
    for anchor in (
        "data",
        "validation",
        "leaderboard",
        "test-metrics",
        "confusion-matrix",
        "roc",
        "precision-recall",
        "calibration",
        "importance",
        "learning-curves",
        "search-history",
    ):
        assert f'id="{anchor}"' in html, anchor
    # confusion matrix, ROC, precision-recall, calibration, importance, learning curves, search
    assert len(re.findall(r'src="data:image/png;base64,', html)) == 7
    assert not re.search(r'(src|href)="https?://', html)
    # the same file is an artifact of the version's MLflow run
    version = project.models()[0]
    artifacts = [a.path for a in project.store.client.list_artifacts(version.run_id, "report")]
    assert artifacts == [f"report/{name}-v1.html"]
    # by version number, and an unknown version is a user error
    assert run_cli("report", "-c", trained_binary, "--version", "1").output.strip() == str(path)
    missing = run_cli("report", "-c", trained_binary, "--version", "9")
    assert missing.exit_code == 2 and "no version 9" in missing.stderr


def test_report_is_fetched_from_mlflow_when_not_on_disk(tmp_path: Path) -> None:
    config = make_project(
        tmp_path,
        diabetes_frame(),
        "progression",
        lambda raw: raw["training"].update(trials=0, models=["ridge"]),
    )
    assert run_cli("train", "-c", config).exit_code == 0
    project = Project.load(config)
    local = project.report(1)
    original = local.read_bytes()
    assert b'id="residuals"' in original and b'id="predicted-vs-actual"' in original
    local.unlink()
    result = run_cli("report", "-c", config)
    assert result.exit_code == 0 and Path(result.output.strip()) == local
    assert local.read_bytes() == original


def test_skewed_positive_target_is_learned_on_the_log_scale(tmp_path: Path) -> None:
    """Prices: exp of a linear signal. The registered CatBoost (and ridge) learn log1p(price),
    save and load through skops, and predict positive prices on the original scale."""
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"size": rng.uniform(20, 200, 400), "rooms": rng.integers(1, 6, 400)})
    df["price"] = np.exp(9 + 0.02 * df["size"] + 0.1 * df["rooms"] + rng.normal(0, 0.2, 400))

    def edit(raw: dict) -> None:
        raw["training"].update(models=["catboost"], trials=0, ensemble=False)

    config = make_project(tmp_path, df, "price", edit)
    assert run_cli("train", "-c", config).exit_code == 0
    project = Project.load(config)
    version = project.models()[0]
    run = project.store.client.get_run(version.run_id)
    assert run.data.params["target_transform"] == "log"
    assert "skewness" in run.data.params["target_transform_reason"]
    children = {r.info.run_name: r.data.params for r in _child_runs(project, version.run_id)}
    # auto cross-validated CatBoost's defaults both ways, and kept the log
    assert children["catboost-log"]["target_transform"] == "log"
    assert "target_transform" not in children["catboost"]
    assert "target_transform" not in children["mean"]
    labelled = pd.read_csv(config.parent / "labelled.csv")
    scored = project.predict(labelled.drop(columns="price"))
    assert (scored["prediction"] > 0).all()
    assert project.evaluate(labelled).metrics["r2"] > 0.5
