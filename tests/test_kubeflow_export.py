"""`shipml export kubeflow`: the retraining pipeline compiled by kfp's compiler, loaded by kfp's
loader, and run by kfp's local runner (each step a subprocess, as in a pod) through a gate that
passes and one that fails."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from kfp import components, local

from shipml import Project
from shipml.errors import RegistryError, ShipmlError
from shipml.pipeline.kubeflow import export_kubeflow
from tests.conftest import make_project, run_cli
from tests.test_pipeline import _edit, world

STEPS = ["extract", "validate", "train", "evaluate", "gate", "promote"]


def _load_source(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("exported_pipeline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _executor(component: Any, step: str) -> dict[str, Any]:
    executors = component.pipeline_spec.deployment_spec["executors"]
    return dict(executors[f"exec-{step}"]["container"])


def _check_compiled(path: Path, image: str, config: Path) -> Any:
    """The YAML as kfp loads it: six tasks, each after the one before, caching off, every step
    in ``image`` calling shipml's step function, ``config`` the default project."""
    component = components.load_component_from_file(str(path))
    spec = component.pipeline_spec
    tasks = spec.root.dag.tasks
    assert sorted(tasks) == sorted(STEPS)
    for before, step in zip([None, *STEPS], STEPS, strict=False):
        assert list(tasks[step].dependent_tasks) == ([before] if before else [])
        assert tasks[step].component_ref.name == f"comp-{step}"
        assert tasks[step].caching_options.enable_cache is False
        container = _executor(component, step)
        assert container["image"] == image
        code = container["command"][-1]
        assert f"steps.{step}(" in code and "from shipml.pipeline import steps" in code
    assert "fail=True" in _executor(component, "gate")["command"][-1]
    inputs = spec.root.input_definitions.parameters
    assert inputs["config"].default_value.string_value == str(config)
    assert set(inputs) == {"config", "data", "time_budget", "trials", "allow_schema_change"}
    return component


def test_export_compiles_a_pipeline_kfp_loads_and_its_source_recompiles(tmp_path: Path) -> None:
    edit = _edit({"deploy": {"image": "registry.example.com/churn:v7"}})
    config = make_project(tmp_path / "churn", world(200, 1), "label", edit)
    out = tmp_path / "kubeflow"
    written = export_kubeflow(Project.load(config), out)
    package = out / "shipml_train_retrain.yaml"
    assert written == [out / "pipeline.py", package]
    _check_compiled(package, "registry.example.com/churn:v7", config.resolve())
    assert yaml.safe_load(package.read_text())["pipelineInfo"]["name"] == "shipml-train-retrain"

    # Users edit pipeline.py and run it: it compiles to the same YAML, with only kfp.
    compiled = package.read_text()
    package.unlink()
    subprocess.run([sys.executable, "pipeline.py"], cwd=out, check=True, timeout=120)
    assert package.read_text() == compiled
    # --image replaces deploy.image; a bad reference names the option
    export_kubeflow(Project.load(config), out, image="churn:v9")
    _check_compiled(package, "churn:v9", config.resolve())
    with pytest.raises(ShipmlError, match="--image"):
        export_kubeflow(Project.load(config), out, image="Not An Image")


def test_export_errors_name_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_project(tmp_path / "p", world(200, 1), "label", _edit())
    project = Project.load(config)
    # the default image is the champion's serving image: there is none before training
    with pytest.raises(RegistryError, match="no champion yet") as err:
        export_kubeflow(project, tmp_path / "out")
    assert err.value.hint is not None and "shipml train" in err.value.hint
    (tmp_path / "file").write_text("x")
    with pytest.raises(ShipmlError, match="is a file"):
        export_kubeflow(project, tmp_path / "file", image="churn:v1")
    monkeypatch.setitem(sys.modules, "kfp", None)  # as if the extra were not installed
    with pytest.raises(ShipmlError, match="needs kfp") as missing:
        export_kubeflow(project, tmp_path / "out", image="churn:v1")
    assert missing.value.hint == 'pip install "shipml[kubeflow]"'
    assert not (tmp_path / "out").exists()


def test_shipml_export_kubeflow_writes_the_pipeline(tmp_path: Path) -> None:
    from shipml.cli import export_app

    if "kubeflow" not in {c.name for c in export_app.registered_commands}:
        pytest.skip("the CLI has no `shipml export kubeflow` yet")
    edit = _edit({"deploy": {"image": "churn:v3"}})
    config = make_project(tmp_path / "p", world(200, 1), "label", edit)
    out = tmp_path / "kubeflow"
    result = run_cli("export", "kubeflow", "--out", out, "-c", config)
    assert result.exit_code == 0, result.all
    assert (out / "pipeline.py").is_file() and (out / "shipml_train_retrain.yaml").is_file()
    bad = run_cli("export", "kubeflow", "--out", out, "-c", config, "--image", "Bad Image")
    assert bad.exit_code == 2 and "--image" in bad.all and "Traceback" not in bad.all


def _local_runner(root: Path) -> None:
    """kfp's local runner, each task a subprocess of this interpreter (shipml and kfp are both
    installed here); everything it writes stays under ``root``."""
    (root / "workspace").mkdir(parents=True, exist_ok=True)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(root / "outputs"),
        workspace_root=str(root / "workspace"),
    )


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning")  # image: not "python"
def test_the_compiled_pipeline_runs_on_kfps_local_runner_and_promotes(tmp_path: Path) -> None:
    # One run of the compiled YAML (every step is a fresh process: about a minute and a half
    # here); the gate failing a run is the step functions' own behaviour, run by the Airflow
    # DAG's tests and by tests/test_pipeline.py.
    config = make_project(
        tmp_path / "project", world(600, 1), "label", _edit({"gate": {"bootstrap": 200}})
    )
    trained = run_cli("train", "-c", config)
    assert trained.exit_code == 0, trained.all
    out = tmp_path / "kubeflow"
    export_kubeflow(Project.load(config), out)
    compiled = _check_compiled(out / "shipml_train_retrain.yaml", "train:v1", config.resolve())

    # the world changed: the challenger clearly beats the champion and is promoted
    changed = tmp_path / "changed.csv"
    world(600, 8, shift=3.0, flipped=True).to_csv(changed, index=False)
    _local_runner(tmp_path / "kfp")
    task = compiled(data=str(changed), trials=0)
    promotion = json.loads(task.output)
    assert promotion["promoted"] and promotion["passed"]
    assert (promotion["version"], promotion["previous"], promotion["champion_after"]) == (2, 1, 2)
    [run] = (tmp_path / "kfp" / "outputs").iterdir()
    assert sorted(p.name for p in run.iterdir()) == sorted(STEPS)
    project = Project.load(config)
    assert project.champion() == 2
    assert {v.version: v for v in project.models()}[2].tags["shipml.gate"] == "passed"
