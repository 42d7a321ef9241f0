"""``target_transform: auto`` decided by cross-validation, and the log target's back-transform
corrected for its bias: on a claim count with many zeros (where log1p loses) and on house
prices (where it wins), through a real `shipml train`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from shipml import registry
from shipml.config import FeaturesConfig, TrainingConfig
from shipml.data.infer import infer_schema
from shipml.models.catalog import families_for
from shipml.project import Project
from shipml.training.folds import prepare_folds
from shipml.training.search import debias_shifts, run_search, target_transform_policy

pytestmark = pytest.mark.slow
SHIPML = str(Path(sys.executable).parent / "shipml")  # the command a user runs


def claim_counts(n: int = 1500, seed: int = 0) -> pd.DataFrame:
    """Motor insurance policies and their claim counts: negative binomial (overdispersed
    Poisson) around a log-linear rate, so about 30 % of the policies have no claim."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "driver_age": rng.integers(18, 80, n),
            "exposure_months": rng.uniform(1, 36, n).round(1),
            "region": rng.choice(["north", "south", "east", "west"], n, p=[0.4, 0.3, 0.2, 0.1]),
            "vehicle_power": rng.integers(4, 15, n),
            "bonus_malus": rng.integers(50, 150, n),
        }
    )
    rate = np.exp(
        -0.3
        + 0.05 * df["exposure_months"]
        + 0.012 * (df["bonus_malus"] - 100)
        + 0.08 * (df["vehicle_power"] - 8)
        - 0.01 * (df["driver_age"] - 45)
        + df["region"].map({"north": 0.0, "south": 0.4, "east": -0.2, "west": 0.7})
    )
    dispersion = 1.5
    df["claims"] = rng.negative_binomial(dispersion, dispersion / (dispersion + rate))
    return df


def house_prices(n: int = 1500, seed: int = 0) -> pd.DataFrame:
    """Sale prices: a product of effects (log-normal noise), right-skewed and positive."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "living_area": rng.uniform(20, 250, n).round(1),
            "rooms": rng.integers(1, 7, n),
            "district": rng.choice(list("abcde"), n),
            "age_years": rng.integers(0, 100, n),
        }
    )
    log_price = (
        10
        + 0.012 * df["living_area"]
        + 0.15 * df["rooms"]
        - 0.01 * df["age_years"]
        + df["district"].map({"a": 0.0, "b": 0.6, "c": -0.5, "d": 1.0, "e": 0.2})
        + rng.normal(0, 0.25, n)
    )
    df["price"] = np.exp(log_price).round(-2)
    return df


def project(folder: Path, df: pd.DataFrame, target: str, **training: object) -> Path:
    folder.mkdir(parents=True)
    df.to_csv(folder / "train.csv", index=False)
    init = subprocess.run(
        [SHIPML, "init", "train.csv", "--target", target],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert init.returncode == 0, init.stderr
    config = folder / "shipml.yaml"
    raw = yaml.safe_load(config.read_text())
    # LightGBM alone, its defaults (both ways under auto) and the baselines: enough to
    # decide, fast enough for a test.
    raw["training"].update(models=["lightgbm"], cv=3, trials=0, ensemble=False, **training)
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    return config


def shipml_train(config: Path, budget: int = 60) -> str:
    env = {**os.environ, "COLUMNS": "120", "MLFLOW_DISABLE_TELEMETRY": "true"}
    done = subprocess.run(
        [SHIPML, "train", "-c", str(config), "--time-budget", str(budget)],
        capture_output=True,
        text=True,
        env=env,
        timeout=budget + 120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def cv_scores(project: Project, run_id: str) -> dict[str, float]:
    children = project.store.client.search_runs(
        [project.store.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'"
    )
    return {r.info.run_name: r.data.metrics["cv_rmse_mean"] for r in children}


def test_debias_shifts_match_the_totals_out_of_fold() -> None:
    targets = [pd.Series([0.0, 1.0, 5.0]), pd.Series([2.0, 0.0, 0.0]), pd.Series([3.0, 3.0, 0.0])]
    outputs = [np.array([0.5, 0.5, 2.0]), np.array([1.0, 0.2, 0.2]), np.array([1.0, 1.5, 0.3])]
    shifts = debias_shifts(outputs, targets)
    assert shifts is not None
    per_fold, overall = shifts
    # fold 0's shift comes from folds 1 and 2 only: (1 + y) totals 14 there, (1 + output) 10.2
    assert per_fold[0] == pytest.approx(np.log(14 / 10.2))
    corrected = [(o + 1) * np.exp(overall) - 1 for o in outputs]
    assert np.concatenate(corrected).sum() == pytest.approx(sum(t.sum() for t in targets))
    assert debias_shifts(outputs[:1], targets[:1]) is None
    # auto no longer decides from the skew alone; it asks for the comparison
    assert target_transform_policy("auto", claim_counts()["claims"], "regression")[0] == "auto"


def test_auto_decides_a_count_with_many_zeros_by_cross_validation(tmp_path: Path) -> None:
    """A claim count (30 % zeros, skewed) used to be learned on log1p for its skew alone, and
    its predictions came back a third low. Now LightGBM's defaults are cross-validated both
    ways on the same folds and the better kept; the choice is in the terminal (with both
    scores), the report, the run's params and the manifest; the predictions' mean is the
    target's."""
    df = claim_counts()
    assert 0.25 < (df["claims"] == 0).mean() < 0.35 and df["claims"].skew() > 2
    config = project(tmp_path / "claims", df, "claims")
    out = shipml_train(config)
    lines = [line for line in out.splitlines() if "target transform:" in line]
    assert len(lines) == 1, out
    assert "by cross-validation of lightgbm: rmse" in lines[0]
    assert "learning y as is" in lines[0] and "learning log1p(y)" in lines[0]

    trained = Project.load(config)
    version = trained.models()[0]
    run = trained.store.client.get_run(version.run_id)
    params = run.data.params
    scores = cv_scores(trained, version.run_id)
    # both ways on the same folds, and the better one kept
    chosen = "log" if scores["lightgbm-log"] < scores["lightgbm"] else "none"
    assert params["target_transform"] == chosen
    assert lines[0].lstrip(" i").startswith(f"target transform: {chosen}, by cross-validation")
    assert "skewness" in params["target_transform_reason"]
    assert float(params["target_transform_cv_rmse_none"]) == pytest.approx(
        scores["lightgbm"], rel=1e-5
    )
    assert float(params["target_transform_cv_rmse_log"]) == pytest.approx(
        scores["lightgbm-log"], rel=1e-5
    )
    manifest = registry.load_manifest(trained.store, version.version)
    assert manifest["model"]["target_transform"]["transform"] == chosen
    assert set(manifest["model"]["target_transform"]["cv_scores"]) == {"log", "none"}
    report = trained.report(version.version).read_text()
    assert f"target transform: {chosen}, by cross-validation of lightgbm" in report

    predicted = trained.load_model("champion").predict(df.drop(columns="claims"))
    assert np.mean(predicted) == pytest.approx(df["claims"].mean(), rel=0.03)


def test_auto_learns_prices_on_the_log_scale_with_their_mean_kept(tmp_path: Path) -> None:
    df = house_prices()
    config = project(tmp_path / "prices", df, "price")
    out = shipml_train(config)
    assert "target transform: log, by cross-validation of lightgbm" in out
    trained = Project.load(config)
    version = trained.models()[0]
    scores = cv_scores(trained, version.run_id)
    assert scores["lightgbm-log"] < scores["lightgbm"]
    params = trained.store.client.get_run(version.run_id).data.params
    assert params["target_transform"] == "log"
    predicted = trained.load_model("champion").predict(df.drop(columns="price"))
    assert np.mean(predicted) == pytest.approx(df["price"].mean(), rel=0.03)


def test_a_forced_log_target_keeps_the_counts_mean(tmp_path: Path) -> None:
    """target_transform: log on the count still learns log1p(y), but its predictions no
    longer come back a third low: the back-transform is scaled by a factor learned out of
    fold."""
    df = claim_counts()
    config = project(tmp_path / "claims-log", df, "claims", target_transform="log")
    out = shipml_train(config)
    assert "target transform: log (training.target_transform: log)" in out
    trained = Project.load(config)
    version = trained.models()[0]
    run = trained.store.client.get_run(version.run_id)
    assert run.data.params["target_transform"] == "log"
    predicted = trained.load_model("champion").predict(df.drop(columns="claims"))
    assert np.mean(predicted) == pytest.approx(df["claims"].mean(), rel=0.03)
    assert np.mean(predicted) > 0


def test_the_search_compares_on_the_first_strong_family_and_follows_its_choice() -> None:
    """In the search itself: the baselines as they are, LightGBM's defaults both ways on the
    same folds, and every later LightGBM trial the way that won, its bias corrected."""
    df = house_prices(400)
    X, y = df.drop(columns="price"), df["price"]
    schema = infer_schema(df, "price", "regression")
    folds = prepare_folds(X, y, schema, FeaturesConfig(), 3, 0, ordered=False)
    notes: list[str] = []

    def on_event(kind: str, **info: object) -> None:
        if kind == "note":
            notes.append(str(info["text"]))

    result = run_search(
        families_for("regression", ["lightgbm"]),
        folds,
        "regression",
        "rmse",
        TrainingConfig(trials=2, ensemble=False),
        1e12,
        target_transform="auto",
        transform_reason="target >= 0 with skewness 2",
        on_event=on_event,
    )
    choice = result.target_transform
    assert choice is not None and choice.family == "lightgbm"
    by_name = {r.name: r for r in result.leaderboard.results}
    plain, logged = by_name["lightgbm"], by_name["lightgbm-log"]
    assert "target_transform" not in plain.config
    assert logged.config["target_transform"] == "log" and "target_shift" in logged.config
    assert choice.scores == {"log": logged.mean("rmse"), "none": plain.mean("rmse")}
    assert choice.transform == ("log" if logged.mean("rmse") < plain.mean("rmse") else None)
    assert notes == [choice.line()]
    later = [r for r in result.leaderboard.results if r.family == "lightgbm" and r.trial > 0]
    assert later and all(r.config.get("target_transform") == choice.transform for r in later)
    # the corrected out-of-fold predictions of the log model add up to the target's total
    oof = np.concatenate(logged.fold_outputs)
    truth = np.concatenate([f.y_valid for f in folds.folds])
    assert oof.sum() == pytest.approx(truth.sum(), rel=0.03)
