"""Classes as users code them, through the whole loop: strings, integers (0/1, 1/2, ten
classes), booleans and floats like 1.0, each trained once and then evaluated, scored, served
with /feedback, monitored, gated and retrained, reproduced; the real Airflow DAG (`airflow dags
test`) and the kfp local run retrain three of them.

Classes coded as integers once trained and served fine but crashed retraining in the evaluate
step (the holdout's labels became an object array, which scikit-learn's metrics call
"unknown"), left the challenger registered and never gated, and kept an Airflow task retrying
for eleven minutes. Labels now go through one function (shipml.data.labels.to_classes) on every
path, and these tests hold every path to it.
"""

from __future__ import annotations

import errno
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from kfp import components

from shipml import Project, registry
from shipml.data.labels import class_array, to_classes
from shipml.errors import DataError, EnvironmentFault, InputSchemaError
from shipml.pipeline import steps
from shipml.pipeline.airflow import dag_id, retryable, run_step
from shipml.pipeline.kubeflow import export_kubeflow, package_name
from shipml.scoring import Model
from tests.conftest import make_project, run_cli
from tests.serving_helpers import Server
from tests.test_airflow_export import _constant, airflow_home, dags_test, task_states
from tests.test_kubeflow_export import _local_runner

__all__ = ["airflow_home"]  # the session fixture, used here too

ROWS = 300
HOLDOUT = 60  # rows kept out of training: labelled.csv / new.csv
FEEDBACK = 30  # rows scored by the server and given their label through /feedback


def _binary(positive: np.ndarray, no: Any, yes: Any) -> np.ndarray:
    return np.where(positive, yes, no)


@dataclass(frozen=True)
class Kind:
    """One way users code their classes: the labels of a score, and the classes the model
    should hold (what training makes of them: 1.0/0.0 are the integers 0 and 1)."""

    name: str
    labels: Callable[[np.ndarray], np.ndarray]
    classes: list[Any]


def _ten(score: np.ndarray) -> np.ndarray:
    return np.digitize(score, np.quantile(score, np.linspace(0, 1, 11)[1:-1]))


KINDS = {
    k.name: k
    for k in (
        Kind("strings", lambda s: _binary(s > 0, "bad", "good"), ["bad", "good"]),
        Kind("int01", lambda s: (s > 0).astype(int), [0, 1]),
        Kind("int12", lambda s: _binary(s > 0, 1, 2), [1, 2]),
        Kind("ten", _ten, list(range(10))),
        Kind("bool", lambda s: s > 0, [False, True]),
        Kind("float", lambda s: (s > 0).astype(float), [0, 1]),
    )
}
# The real Airflow and kfp runs cost a minute or more each, so they run on three kinds: the two
# integer codings that broke retraining, and booleans, the one kind whose classes are neither
# numbers nor text (their own dtype in the holdout, true/false in JSON).
RUNNER_KINDS = ["int12", "int01", "bool"]


def table(kind: Kind, n: int = ROWS, seed: int = 0) -> pd.DataFrame:
    """A few columns and a label that x0 and x1 mostly decide."""
    rng = np.random.default_rng(seed)
    x0, x1 = rng.normal(0, 1, n), rng.normal(0, 1, n)
    score = 2.0 * x0 + x1 + rng.normal(0, 0.7, n)
    group = rng.choice(["a", "b", "c"], n)
    return pd.DataFrame({"x0": x0, "x1": x1, "group": group, "label": kind.labels(score)})


class Projects:
    """One trained project per kind of label, made when a test first asks for it."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self.factory = factory
        self.made: dict[str, Path] = {}

    def __call__(self, name: str) -> Path:
        if name not in self.made:
            kind = KINDS[name]
            folder = self.factory.mktemp(f"labels-{name}")

            def edit(raw: dict) -> None:
                raw["name"] = f"labels_{name}"
                raw["training"].update(
                    models=["lightgbm"], trials=0, cv=2, ensemble=False, time_budget_s=5
                )
                # The real comparison with the champion, with room enough that a challenger
                # from the same world passes: the runners' tests then run every step.
                raw["gate"] = {"bootstrap": 200, "tolerance": 1.0}
                raw["monitoring"] = {"window": 200}

            config = make_project(folder, table(kind), "label", edit, holdout=HOLDOUT)
            trained = run_cli("train", "-c", config, "--time-budget", "5")
            assert trained.exit_code == 0, trained.all
            table(kind, seed=1).to_csv(folder / "batch.csv", index=False)
            self.made[name] = config
        return self.made[name]


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> Projects:
    return Projects(tmp_path_factory)


def _same_classes(got: list[Any], kind: Kind) -> None:
    assert got == kind.classes and [type(c) for c in got] == [type(c) for c in kind.classes]


def _accuracy(output: str) -> float:
    found = re.search(r"accuracy\s*│\s*([0-9.]+)", output)
    assert found, output
    return float(found.group(1))


# ------------------------------------------------------------------ the one label function


@pytest.mark.parametrize(
    ("values", "classes", "expected"),
    [
        (["good", "bad"], ["bad", "good"], ["good", "bad"]),
        ([1, "2", 2.0, np.int64(1)], [1, 2], [1, 2, 2, 1]),
        ([0.0, 1.0, "1", " 0 "], [0, 1], [0, 1, 1, 0]),
        (["9", 3, 0.0], list(range(10)), [9, 3, 0]),
        ([True, "false", np.bool_(False), "True"], [False, True], [True, False, False, True]),
        ([0.5, "1.5"], [0.5, 1.5], [0.5, 1.5]),
        ([1, "1", "a"], ["1", "a"], ["1", "1", "a"]),  # a mixed target's category strings
    ],
)
def test_labels_become_the_models_classes_of_its_own_type(
    values: list, classes: list, expected: list
) -> None:
    got = to_classes(pd.Series(values, dtype=object), classes)
    assert got.tolist() == expected
    assert got.dtype == class_array(classes).dtype
    assert [type(v) for v in got.tolist()] == [type(v) for v in expected]


@pytest.mark.parametrize(
    ("values", "classes", "shown"),
    [([1, 3], [1, 2], "'3'"), ([True], [0, 1], "'True'"), (["maybe"], [False, True], "'maybe'")],
)
def test_a_label_that_is_no_class_is_named(values: list, classes: list, shown: str) -> None:
    with pytest.raises(InputSchemaError, match="never saw") as err:
        to_classes(values, classes, "new.csv", "risk")
    assert "new.csv: target 'risk'" in err.value.message and shown in err.value.message
    assert err.value.hint is not None and "the model knows" in err.value.hint
    with pytest.raises(InputSchemaError, match="missing values"):
        to_classes([1, None], [1, 2])


# ------------------------------------------------------------------ Airflow's retry policy


class Fail(Exception):
    """Stands in for Airflow's AirflowFailException: the task fails without its retries."""


def _raise(err: BaseException) -> Callable[[], steps.StepResult]:
    def run() -> steps.StepResult:
        raise err

    return run


def test_a_dag_task_retries_only_faults_of_the_environment() -> None:
    lost = OSError(errno.ECONNREFUSED, "connection refused")
    for fault in (lost, EnvironmentFault("disk full"), MemoryError(), TimeoutError()):
        assert retryable(fault)
        with pytest.raises(type(fault)):
            run_step(Fail, _raise(fault))
    wrapped = RuntimeError("could not write")
    wrapped.__cause__ = OSError(errno.ENOSPC, "no space left")
    assert retryable(wrapped)
    bug = ValueError("Classification metrics can't handle a mix of unknown and binary targets")
    bug.add_note("version 2 stays registered, marked shipml.gate=failed (not gated)")
    with pytest.raises(Fail, match="ValueError: Classification metrics") as failed:
        run_step(Fail, _raise(bug))
    assert "not retried" in str(failed.value) and "marked shipml.gate=failed" in str(failed.value)
    with pytest.raises(Fail, match=r"new.csv: bad \(fix it\)"):
        run_step(Fail, _raise(DataError("new.csv: bad", "fix it")))
    # The step's own arguments pass through, `fail` (the gate's) among them.
    with pytest.raises(Fail, match="AttributeError: 'NoneType' object has no attribute"):
        run_step(Fail, steps.gate, None, fail=True)


def test_the_exported_dag_retries_briefly(tmp_path: Path) -> None:
    config = make_project(tmp_path / "p", table(KINDS["int12"], 60), "label")
    result = run_cli("export", "airflow", "--out", tmp_path / "dags", "-c", config)
    assert result.exit_code == 0, result.all
    [path] = (tmp_path / "dags").iterdir()
    source = path.read_text()
    assert '"retries": 2, "retry_delay": timedelta(seconds=30)' in source
    assert "run_step(AirflowFailException, run" in source
    assert _constant(source, "CONFIG") == str(config.resolve())


# -------------------------------------------------------------- every path, every kind


@pytest.mark.slow
@pytest.mark.parametrize("name", list(KINDS))
def test_train_evaluate_and_predict(projects: Projects, name: str, tmp_path: Path) -> None:
    kind = KINDS[name]
    config = projects(name)
    folder = config.parent
    project = Project.load(config)
    _same_classes(Model(registry.load(project.store, 1)).classes or [], kind)

    evaluated = run_cli("evaluate", folder / "labelled.csv", "-c", config)
    assert evaluated.exit_code == 0, evaluated.all
    accuracy = _accuracy(evaluated.output)
    assert accuracy > (0.3 if name == "ten" else 0.7)
    # The same labels as text ('2', 'True', '1.0' in a Parquet file of strings) evaluate alike.
    as_text = pd.read_csv(folder / "labelled.csv")
    as_text["label"] = as_text["label"].astype(str)
    as_text.to_parquet(tmp_path / "labelled.parquet")
    again = run_cli("evaluate", tmp_path / "labelled.parquet", "-c", config)
    assert again.exit_code == 0, again.all
    assert _accuracy(again.output) == accuracy

    out = tmp_path / "scored.csv"
    scored = run_cli("predict", folder / "new.csv", "--out", out, "-c", config)
    assert scored.exit_code == 0, scored.all
    predictions = pd.read_csv(out)
    assert set(predictions["prediction"]) <= set(kind.classes)
    assert {f"proba_{c}" for c in kind.classes} <= set(predictions.columns)


def _json_label(value: Any) -> Any:
    """A label as a client sends it in JSON: numpy's values as JSON's own."""
    return value.item() if isinstance(value, np.generic) else value


@pytest.mark.slow
@pytest.mark.parametrize("name", list(KINDS))
def test_serve_feedback_and_monitor(projects: Projects, name: str, tmp_path: Path) -> None:
    kind = KINDS[name]
    config = projects(name)
    rows = table(kind, FEEDBACK, seed=2)
    labels = [_json_label(v) for v in rows.pop("label")]
    records = json.loads(rows.to_json(orient="records"))
    with Server(config) as server:
        answers = [server.post("/predict", {"features": r}).json() for r in records]
        for answer in answers:
            got = answer["prediction"]
            assert got in kind.classes and type(got) is type(kind.classes[0]), answer
        for answer, label in zip(answers, labels, strict=True):
            sent = server.post("/feedback", {"request_id": answer["request_id"], "label": label})
            assert sent.status_code == 200, sent.text
        wrong = server.post("/feedback", {"request_id": answers[0]["request_id"], "label": 7.5})
        assert wrong.status_code == 422 and "not a class" in wrong.text
    truth = to_classes(labels, kind.classes)
    hits = sum(a["prediction"] == t for a, t in zip(answers, truth, strict=True))
    out = tmp_path / "monitor.json"
    monitored = run_cli("monitor", "-c", config, "--from-log", "--json", out)
    assert monitored.exit_code == 0, monitored.all
    performance = json.loads(out.read_text())["performance"]
    assert performance["n_labelled"] == FEEDBACK
    assert performance["live_metrics"]["accuracy"] == pytest.approx(hits / FEEDBACK)


def _new_versions(project: Project, before: int) -> list[Any]:
    return [v for v in project.models() if v.version > before]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(KINDS))
def test_retrain_gates_the_challenger(projects: Projects, name: str) -> None:
    config = projects(name)
    project = Project.load(config)
    before = max(v.version for v in project.models())
    batch = config.parent / "batch.csv"
    result = run_cli("retrain", "-c", config, "--data", batch, "--time-budget", "5")
    assert result.exit_code == 0, result.all
    assert "Traceback" not in result.all and "accuracy" in result.output
    assert "gate passed" in result.output
    [new] = _new_versions(Project.load(config), before)
    assert new.tags["shipml.gate"] == "passed" and "vs champion" in new.tags["shipml.gate_reasons"]


@pytest.mark.slow
def test_a_class_that_came_with_the_batch_stops_evaluate_and_marks_the_challenger(
    projects: Projects,
) -> None:
    """The champion's probabilities follow its own classes: with a class it never saw, no
    comparison on the same rows holds. The challenger is marked, never left ungated."""
    config = projects("int12")
    project = Project.load(config)
    champion, before = project.champion(), max(v.version for v in project.models())
    batch = table(KINDS["int12"], seed=3)
    batch.loc[batch["x0"] > 1.0, "label"] = 3
    path = config.parent / "three.csv"
    batch.to_csv(path, index=False)
    result = run_cli("retrain", "-c", config, "--data", path, "--time-budget", "5")
    assert result.exit_code == 2 and "Traceback" not in result.all, result.all
    text = " ".join(result.stderr.split())
    assert f"classes differ from champion version {champion}'s; new: 3" in text
    assert "stays registered, marked shipml.gate=failed (not gated)" in text
    [marked] = _new_versions(Project.load(config), before)
    assert marked.tags["shipml.gate"] == "failed" and Project.load(config).champion() == champion
    assert "not gated: the evaluate step stopped" in marked.tags["shipml.gate_reasons"]


@pytest.mark.slow
@pytest.mark.parametrize("name", RUNNER_KINDS)  # a whole retraining each: the runners' kinds
def test_reproduce(projects: Projects, name: str, tmp_path: Path) -> None:
    config = projects(name)
    result = run_cli("reproduce", "1", "-c", config, "--out", tmp_path / "rebuilt")
    assert result.exit_code == 0, result.all
    assert "reproduced" in result.output


# --------------------------------------------------------- the real Airflow and kfp runs


@pytest.mark.slow
@pytest.mark.parametrize("name", RUNNER_KINDS)
def test_the_airflow_dag_retrains(projects: Projects, name: str, airflow_home: Path) -> None:
    config = projects(name)
    project = Project.load(config)
    before = max(v.version for v in project.models())
    dags = config.parent / "dags"
    if not dags.exists():
        exported = run_cli("export", "airflow", "--out", dags, "-c", config)
        assert exported.exit_code == 0, exported.all
    dag = dag_id(project.config.name)
    code, output = dags_test(airflow_home, dags, dag, {"data": str(config.parent / "batch.csv")})
    assert code == 0, output[-6000:]
    run, tasks = task_states(airflow_home, dag)
    assert run == "success" and tasks == {t: ("success", 1) for t in steps.STEPS}
    [new] = _new_versions(Project.load(config), before)
    assert new.tags["shipml.gate"] == "passed" and Project.load(config).champion() == new.version


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning")  # image: not "python"
@pytest.mark.parametrize("name", RUNNER_KINDS)
def test_the_kfp_pipeline_retrains(projects: Projects, name: str, tmp_path: Path) -> None:
    config = projects(name)
    project = Project.load(config)
    before = max(v.version for v in project.models())
    out = tmp_path / "kubeflow"
    export_kubeflow(project, out, image="labels:v1")
    compiled = components.load_component_from_file(str(out / package_name(project.config.name)))
    _local_runner(tmp_path / "kfp")
    task = compiled(data=str(config.parent / "batch.csv"), trials=0)
    promotion = json.loads(task.output)
    assert promotion["passed"] and promotion["version"] > before
    [new] = _new_versions(Project.load(config), before)
    assert new.tags["shipml.gate"] == "passed"
