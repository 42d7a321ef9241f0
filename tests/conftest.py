"""Shared fixtures: real data sets shipped with scikit-learn, real projects, a real MLflow store."""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from typer.testing import CliRunner

from shipml.cli import app


@dataclass
class CliResult:
    exit_code: int
    output: str
    stderr: str

    @property
    def all(self) -> str:
        return self.output + self.stderr


def run_cli(*args: str | Path) -> CliResult:
    """Run `shipml ARGS` in-process, as a user would type it."""
    runner = CliRunner()
    result = runner.invoke(
        app, [str(a) for a in args], catch_exceptions=False, env={"COLUMNS": "200"}
    )
    return CliResult(result.exit_code, result.stdout, result.stderr)


def breast_cancer_frame() -> pd.DataFrame:
    """Binary: scikit-learn's breast cancer data, plus an id and a categorical with gaps."""
    data = load_breast_cancer(as_frame=True)
    df = data.frame.drop(columns="target")
    df.columns = [c.replace(" ", "_") for c in df.columns]
    rng = np.random.default_rng(0)
    df.insert(0, "patient_id", [f"P{i:05d}" for i in range(len(df))])
    clinic = rng.choice(["north", "south", "east"], len(df)).astype(object)
    clinic[rng.random(len(df)) < 0.1] = None
    df["clinic"] = clinic
    df["diagnosis"] = np.where(data.target == 1, "benign", "malignant")
    return df


def wine_frame() -> pd.DataFrame:
    """Multiclass: scikit-learn's wine data (three cultivars)."""
    data = load_wine(as_frame=True)
    df = data.frame.rename(columns={"target": "cultivar"})
    df["cultivar"] = df["cultivar"].map({0: "barolo", 1: "grignolino", 2: "barbera"})
    return df


def diabetes_frame() -> pd.DataFrame:
    """Regression: scikit-learn's diabetes progression data."""
    return load_diabetes(as_frame=True).frame.rename(columns={"target": "progression"})


def make_project(
    folder: Path,
    df: pd.DataFrame,
    target: str,
    edit: Callable[[dict], None] | None = None,
    holdout: int = 40,
) -> Path:
    """Write data, run `shipml init`, then apply ``edit`` to the config; returns the config path.

    The last ``holdout`` rows are kept out of training, as new data for predict/evaluate.
    """
    folder.mkdir(parents=True, exist_ok=True)
    train, new = df.iloc[:-holdout], df.iloc[-holdout:]
    train.to_csv(folder / "train.csv", index=False)
    new.to_csv(folder / "labelled.csv", index=False)
    new.drop(columns=[target]).to_csv(folder / "new.csv", index=False)
    config = folder / "shipml.yaml"
    result = run_cli("init", folder / "train.csv", "--target", target, "--out", config)
    assert result.exit_code == 0, result.all
    raw = yaml.safe_load(config.read_text())
    raw["training"]["cv"] = 3
    raw["training"]["time_budget_s"] = 120
    # A couple of search trials exercise the search without filling the whole budget.
    raw["training"]["trials"] = 2
    # Every family but CatBoost, which alone costs about 20 s per training on these small
    # tables (its own tests: test_search, test_fastpath, test_train_search); the quickstart
    # tests keep `models: auto`.
    raw["training"]["models"] = [
        "lightgbm",
        "hist_gradient_boosting",
        "random_forest",
        "extra_trees",
    ]
    if edit:
        edit(raw)
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    return config


@pytest.fixture(scope="session")
def trained_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A breast-cancer project trained once; tests must not change its registry."""
    folder = tmp_path_factory.mktemp("binary")
    config = make_project(folder, breast_cancer_frame(), "diagnosis")
    result = run_cli("train", "-c", config)
    assert result.exit_code == 0, result.all
    return config
