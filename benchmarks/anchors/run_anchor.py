"""Fit one AutoML anchor (FLAML or AutoGluon) on a training CSV and predict a test CSV.

Runs inside the anchor's own virtual environment (see README.md), never in shipml's: it imports
nothing from shipml. `train_quality.py` calls it as a subprocess and scores the predictions it
writes with shipml's metric functions, so every contender is scored by the same code.

    .bench/flaml/bin/python benchmarks/anchors/run_anchor.py --tool flaml --train train.csv \
        --test test.csv --target y --task binary --metric roc_auc --budget 60 --out out.json

`--task` is binary, multiclass or regression; `--metric` is shipml's metric name (roc_auc,
f1_macro, rmse, ...), mapped here to each tool's own name. The output JSON holds the predicted
labels (as text), the class probabilities (columns in `classes` order) or the regression
predictions, the fit time measured around the fit call alone, and the tool's version.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# shipml metric name -> (FLAML name, AutoGluon name)
METRIC_NAMES = {
    ("roc_auc", "binary"): ("roc_auc", "roc_auc"),
    ("f1_macro", "multiclass"): ("macro_f1", "f1_macro"),
    ("accuracy", "binary"): ("accuracy", "accuracy"),
    ("accuracy", "multiclass"): ("accuracy", "accuracy"),
    ("log_loss", "binary"): ("log_loss", "log_loss"),
    ("log_loss", "multiclass"): ("log_loss", "log_loss"),
    ("rmse", "regression"): ("rmse", "root_mean_squared_error"),
    ("r2", "regression"): ("r2", "r2"),
    ("mae", "regression"): ("mae", "mean_absolute_error"),
}


def run_flaml(
    train: pd.DataFrame, test: pd.DataFrame, target: str, task: str, metric: str, budget: float
) -> dict[str, Any]:
    import flaml
    from flaml import AutoML

    automl = AutoML()
    X, y = train.drop(columns=[target]), train[target]
    started = time.perf_counter()
    automl.fit(
        X,
        y,
        task="regression" if task == "regression" else "classification",
        metric=metric,
        time_budget=budget,
        n_jobs=2,
        seed=0,
        verbose=0,
    )
    fit_s = time.perf_counter() - started
    X_test = test.drop(columns=[target])
    out: dict[str, Any] = {"fit_s": fit_s, "version": flaml.__version__}
    out["best"] = str(automl.best_estimator)
    if task == "regression":
        out["predictions"] = np.asarray(automl.predict(X_test), dtype=float).tolist()
    else:
        proba = np.asarray(automl.predict_proba(X_test), dtype=float)
        out["classes"] = [str(c) for c in automl.classes_]
        out["proba"] = proba.tolist()
        out["labels"] = [str(c) for c in automl.predict(X_test)]
    return out


def run_autogluon(
    train: pd.DataFrame,
    test: pd.DataFrame,
    target: str,
    task: str,
    metric: str,
    budget: float,
    preset: str,
) -> dict[str, Any]:
    import autogluon.tabular
    from autogluon.tabular import TabularPredictor

    with tempfile.TemporaryDirectory(prefix="ag-") as tmp:
        predictor = TabularPredictor(
            label=target, eval_metric=metric, problem_type=task, path=tmp, verbosity=0
        )
        started = time.perf_counter()
        predictor.fit(train, time_limit=budget, presets=preset, num_cpus=2, num_gpus=0)
        fit_s = time.perf_counter() - started
        X_test = test.drop(columns=[target])
        out: dict[str, Any] = {"fit_s": fit_s, "version": autogluon.tabular.__version__}
        out["best"] = str(predictor.model_best)
        if task == "regression":
            out["predictions"] = np.asarray(predictor.predict(X_test), dtype=float).tolist()
        else:
            proba = predictor.predict_proba(X_test)
            out["classes"] = [str(c) for c in proba.columns]
            out["proba"] = np.asarray(proba, dtype=float).tolist()
            out["labels"] = [str(c) for c in predictor.predict(X_test)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tool", choices=["flaml", "autogluon"], required=True)
    parser.add_argument("--preset", default="medium_quality", help="AutoGluon presets")
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--task", choices=["binary", "multiclass", "regression"], required=True)
    parser.add_argument("--metric", required=True)
    parser.add_argument("--budget", type=float, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if "OMP_WAIT_POLICY" not in os.environ:  # the short OpenMP spin shipml runs with
        os.environ.setdefault("GOMP_SPINCOUNT", "1000")
    flaml_name, ag_name = METRIC_NAMES[(args.metric, args.task)]
    train = pd.read_csv(args.train)
    test = pd.read_csv(args.test)
    if args.task != "regression":
        # Labels travel as text, so '0'/'1' and 'yes'/'no' come back the way they went out.
        train[args.target] = train[args.target].astype(str)
        test[args.target] = test[args.target].astype(str)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if args.tool == "flaml":
            out = run_flaml(train, test, args.target, args.task, flaml_name, args.budget)
        else:
            out = run_autogluon(
                train, test, args.target, args.task, ag_name, args.budget, args.preset
            )
    args.out.write_text(json.dumps(out), encoding="utf-8")


if __name__ == "__main__":
    main()
