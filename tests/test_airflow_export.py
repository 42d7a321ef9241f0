"""`shipml export airflow`: the DAG file parses in Airflow 3, and `airflow dags test` runs the
retraining pipeline through it: a challenger that passes the gate becomes champion; one that
fails fails the run, promote never runs, and it stays registered, marked failed."""

from __future__ import annotations

import ast
import json
import math
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from shipml import Project
from shipml.pipeline import steps
from shipml.pipeline.airflow import dag_id, from_xcom, to_xcom
from tests.conftest import make_project, run_cli

BIN = Path(sys.executable).parent
DAGS_TEST_TIMEOUT_S = 420  # a retry would wait 5 minutes: a run that takes longer retried
# Versions beside Airflow 3.2.2 that break its execution API, so no task can run at all: what
# a run's output then says, and what to pin.
BROKEN_AIRFLOW = {
    "needs a discriminator field": "fastapi newer than 0.156.0 (pin fastapi==0.156.0)",
    "no attribute 'svcs_registry'": "svcs 26.2 (pin svcs==26.1.0)",
}


def batch(n: int, seed: int, shuffled: bool = False) -> pd.DataFrame:
    """A binary problem x0 and x1 decide; ``shuffled`` permutes the labels, so no model
    learns anything (ROC AUC about 0.5)."""
    rng = np.random.default_rng(seed)
    x0 = rng.normal(0.0, 1.0, n)
    x1 = rng.normal(0.0, 1.0, n)
    group = rng.choice(["a", "b", "c"], n)
    logit = 3.0 * x0 + 1.5 * x1
    label = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "yes", "no")
    if shuffled:
        label = rng.permutation(label)
    return pd.DataFrame({"x0": x0, "x1": x1, "group": group, "label": label})


def _project(folder: Path, name: str, df: pd.DataFrame, extra: dict | None = None) -> Path:
    def edit(raw: dict) -> None:
        raw["name"] = name
        raw["training"].update(models=["lightgbm"], trials=0, cv=2, ensemble=False)
        for section, values in (extra or {}).items():
            raw.setdefault(section, {}).update(values)

    return make_project(folder, df, "label", edit)


# ------------------------------------------------------------------------------ Airflow


def _env(home: Path, dags: Path | None, extra: dict[str, str] | None) -> dict[str, str]:
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags or home / "dags"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("SHIPML_CONFIG", None)
    return {**env, **(extra or {})}


def airflow(
    home: Path,
    dags: Path | None,
    *args: str,
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`airflow ARGS` as a user runs it, on the SQLite database in ``home``."""
    return subprocess.run(
        [str(BIN / "airflow"), *args],
        env=_env(home, dags, env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An Airflow home with a migrated SQLite database, made once (about 5 s)."""
    home = tmp_path_factory.mktemp("airflow")
    started = time.monotonic()
    done = airflow(home, None, "db", "migrate")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(f"airflow db migrate: {time.monotonic() - started:.1f}s")
    return home


def _last_json(text: str) -> object:
    """The JSON document Airflow's CLI prints after its log lines."""
    return json.loads(text.strip().splitlines()[-1])


def task_states(home: Path, dag: str) -> tuple[str, dict[str, tuple[str, int]]]:
    """The state of the DAG's latest run and of each of its tasks, with its try number."""
    with sqlite3.connect(home / "airflow.db") as db:
        run_id, state = db.execute(
            "SELECT run_id, state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (dag,)
        ).fetchone()
        rows = db.execute(
            "SELECT task_id, state, try_number FROM task_instance WHERE dag_id = ? AND run_id = ?",
            (dag, run_id),
        ).fetchall()
    return state, {task: (state, tries) for task, state, tries in rows}


def dags_test(
    home: Path, dags: Path, dag: str, conf: dict | None = None, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """`airflow dags test DAG` (one run, in-process, no scheduler): its exit code and output."""
    args = ["dags", "test", dag, *(["--conf", json.dumps(conf)] if conf else [])]
    started = time.monotonic()
    done = airflow(home, dags, *args, timeout=DAGS_TEST_TIMEOUT_S, env=env)
    print(f"airflow dags test {dag}: {time.monotonic() - started:.1f}s")
    output = done.stdout + done.stderr
    for sign, cause in BROKEN_AIRFLOW.items():
        if sign in output:
            pytest.fail(f"Airflow cannot run tasks in this environment: {cause}")
    return done.returncode, output


# ---------------------------------------------------------------------------- the file


def test_the_exported_dag_parses_in_airflow(tmp_path: Path, airflow_home: Path) -> None:
    config = _project(
        tmp_path / "project", "churn-v2.eu", batch(100, 1), {"retrain": {"schedule": "0 3 * * 1"}}
    )
    dags = tmp_path / "dags"
    result = run_cli("export", "airflow", "--out", dags, "-c", config)
    assert result.exit_code == 0, result.all
    dag = dag_id("churn-v2.eu")
    assert dag == "shipml_churn_v2_eu_retrain"
    path = dags / f"{dag}.py"
    assert [p.name for p in dags.iterdir()] == [path.name] and str(path) in result.all
    source = path.read_text()
    assert "from airflow.sdk import DAG" in source and _constant(source, "CONFIG") == str(
        config.resolve()
    )
    assert 'CONFIG_VARIABLE = "shipml_churn_v2_eu_config"' in source
    assert 'CronTriggerTimetable("0 3 * * 1", timezone="UTC")' in source
    _assert_lint_clean(path)

    listed = airflow(
        airflow_home,
        dags,
        *("dags", "list", "--local", "-o", "json"),
        *("--columns", "dag_id,timetable_summary,max_active_runs,owners,fileloc"),
    )
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert "Failed to load" not in listed.stderr, listed.stderr[-3000:]
    listed_dags = _last_json(listed.stdout)
    assert isinstance(listed_dags, list)
    [info] = listed_dags
    assert info["dag_id"] == dag and info["fileloc"] == str(path)
    assert info["timetable_summary"] == "0 3 * * 1" and str(info["max_active_runs"]) == "1"


def _constant(source: str, name: str) -> object:
    """The value the module-level assignment ``name = <literal>`` gives."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == [name]:
            return ast.literal_eval(node.value)
    raise AssertionError(f"no {name} = ... in the source")


def _assert_lint_clean(path: Path) -> None:
    ruff = [str(BIN / "ruff"), "--isolated", "--line-length", "100"]
    for check in (["check", "--select", "E,F,W,I,B,UP,SIM,RUF"], ["format", "--check"]):
        lint = subprocess.run(
            [ruff[0], check[0], *ruff[1:], *check[1:], str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert lint.returncode == 0, lint.stdout + lint.stderr


@pytest.mark.parametrize(("width", "wrapped"), [(40, False), (104, True), (200, False)])
def test_the_dag_file_is_lint_clean_whatever_the_projects_path_length(
    width: int, wrapped: bool
) -> None:
    # CONFIG = "<path>" of ``width`` columns: fits on its line; fits only in parentheses on a
    # line of its own, as ruff formats it; fits nowhere, so ruff leaves it on one line.
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="d") as tmp:
        name_width = width - len(f'CONFIG = "{tmp}//shipml.yaml"')
        folder = Path(tmp, "f" * name_width)
        config = _project(folder, "churn", batch(60, 1))
        out = Path(tmp) / "dags"
        result = run_cli("export", "airflow", "--out", out, "-c", config)
        assert result.exit_code == 0, result.all
        [path] = out.iterdir()
        source = path.read_text()
        assert _constant(source, "CONFIG") == str(config.resolve())
        assert len(f'CONFIG = "{config.resolve()}"') == width
        assert ("CONFIG = (\n    " in source) == wrapped
        _assert_lint_clean(path)


def test_a_bad_schedule_is_a_config_error(tmp_path: Path) -> None:
    config = _project(tmp_path, "churn", batch(100, 1), {"retrain": {"schedule": "at noon"}})
    result = run_cli("export", "airflow", "--out", tmp_path / "dags", "-c", config)
    assert result.exit_code == 2 and "Traceback" not in result.all
    assert "retrain.schedule" in result.all and "not a cron schedule" in result.all
    assert not (tmp_path / "dags").exists()


def test_results_cross_xcom_as_strict_json() -> None:
    """Airflow's XCom refuses NaN; a metric can be NaN (ROC AUC on a holdout of one class)."""
    evaluated = steps.Evaluated(
        config="/p/shipml.yaml",
        run_dir="/p/.shipml/pipeline/1",
        data="/p/.shipml/pipeline/1/data.parquet",
        rows=10,
        source="new.csv",
        report="/p/r.json",
        version=2,
        run_id="abc",
        metric="roc_auc",
        gate_metric="roc_auc",
        holdout_rows=2,
        challenger_metrics={"roc_auc": math.nan, "accuracy": 1.0},
        ci_low=-math.inf,
        feedback={"challenger": {"rmse": math.inf}},
    )
    payload = to_xcom(evaluated)
    text = json.dumps(payload, allow_nan=False)
    back = from_xcom(steps.Evaluated, json.loads(text))
    assert math.isnan(back.challenger_metrics["roc_auc"]) and back.ci_low == -math.inf
    assert back.feedback == {"challenger": {"rmse": math.inf}}
    assert back.challenger_metrics["accuracy"] == 1.0 and back.version == 2


# --------------------------------------------------------------------- runs in Airflow


@pytest.fixture(scope="module")
def retrain_dag(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A project whose champion learned nothing (trained on shuffled labels), gated at ROC
    AUC 0.7 and against the champion, and its exported DAG folder: (config, dags)."""
    folder = tmp_path_factory.mktemp("retrain")
    gate = {"metric": "roc_auc", "min": 0.7, "must_beat_champion": True}
    config = _project(folder, "churn", batch(300, 2, shuffled=True), {"gate": gate})
    assert run_cli("train", "-c", config).exit_code == 0
    batch(300, 3).to_csv(folder / "better.csv", index=False)
    dags = folder / "dags"
    exported = run_cli("export", "airflow", "--out", dags, "-c", config)
    assert exported.exit_code == 0, exported.all
    return config, dags


@pytest.mark.slow
def test_a_challenger_that_passes_the_gate_becomes_champion(
    retrain_dag: tuple[Path, Path], airflow_home: Path
) -> None:
    config, dags = retrain_dag
    before = max(v.version for v in Project.load(config).models())
    better = config.parent / "better.csv"
    code, output = dags_test(airflow_home, dags, dag_id("churn"), {"data": str(better)})
    assert code == 0, output[-6000:]
    run, tasks = task_states(airflow_home, dag_id("churn"))
    assert run == "success"
    assert tasks == {t: ("success", 1) for t in steps.STEPS}
    project = Project.load(config)
    [new] = [v for v in project.models() if v.version > before]
    assert project.champion() == new.version and new.tags["shipml.gate"] == "passed"
    assert "champion" in new.aliases


@pytest.mark.slow
def test_a_challenger_that_fails_the_gate_fails_the_run(
    retrain_dag: tuple[Path, Path], airflow_home: Path
) -> None:
    """The gate fails the gate task at once, without the retries other errors get, and
    promote never runs. The config comes from the Airflow Variable, which wins over the path
    the DAG was exported from: the same project with a floor no model reaches."""
    config, dags = retrain_dag
    strict = config.with_name("strict.yaml")
    raw = yaml.safe_load(config.read_text())
    raw["gate"]["min"] = 0.99
    strict.write_text(yaml.safe_dump(raw, sort_keys=False))
    project = Project.load(config)
    champion = project.champion()
    before = max(v.version for v in project.models())
    variable = {"AIRFLOW_VAR_SHIPML_CHURN_CONFIG": str(strict)}
    code, output = dags_test(airflow_home, dags, dag_id("churn"), env=variable)
    assert code != 0 and "DagRun failed" in output, output[-6000:]
    assert "must be at least gate.min 0.99" in output, output[-6000:]
    run, tasks = task_states(airflow_home, dag_id("churn"))
    assert run == "failed"
    assert tasks["gate"] == ("failed", 1)
    assert tasks["promote"][0] == "upstream_failed"
    assert all(tasks[t] == ("success", 1) for t in steps.STEPS[:4])
    project = Project.load(config)
    assert project.champion() == champion
    [failed] = [v for v in project.models() if v.version > before]
    assert failed.tags["shipml.gate"] == "failed" and "champion" not in failed.aliases
