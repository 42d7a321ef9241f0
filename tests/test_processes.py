"""The installed `shipml` console script as a real process: SIGKILL mid-train, the MLflow UI,
--help on every command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from shipml.project import Project
from tests.conftest import breast_cancer_frame, make_project, run_cli
from tests.serving_helpers import free_port

SHIPML = str(Path(sys.executable).parent / "shipml")
COMMANDS = [
    "init",
    "train",
    "models",
    "predict",
    "evaluate",
    "promote",
    "rollback",
    "ui",
    "quickstart",
    "serve",
    "monitor",
    "retrain",
    "schedule",
    "reproduce",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command: str) -> None:
    result = run_cli(command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.output
    assert len(result.output.splitlines()) > 5


def test_console_script_runs() -> None:
    done = subprocess.run([SHIPML, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("shipml ")


@pytest.mark.slow
def test_sigkill_mid_train_leaves_champion_and_rerun_succeeds(tmp_path: Path) -> None:
    # One family without a search: the kill comes as the first candidate is logged, seconds
    # before the training could end.
    config = make_project(
        tmp_path,
        breast_cancer_frame(),
        "diagnosis",
        lambda raw: raw["training"].update(models=["lightgbm"], trials=0),
    )
    assert run_cli("train", "-c", config).exit_code == 0
    project = Project.load(config)
    client, experiment = project.store.client, project.store.experiment_id
    assert project.champion() == 1

    proc = subprocess.Popen(
        [SHIPML, "train", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "120"},
    )
    try:
        deadline = time.monotonic() + 120
        parents: list = []
        while time.monotonic() < deadline and proc.poll() is None:
            parents = client.search_runs(
                [experiment],
                filter_string="attributes.status = 'RUNNING' and tags.`shipml.kind` = 'train'",
            )
            if parents:
                parent_id = parents[0].info.run_id
                children = client.search_runs(
                    [experiment], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
                )
                if children:  # cross-validation is under way: kill it mid-training
                    break
            time.sleep(0.05)
        assert proc.poll() is None, "train finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_run = parents[0].info.run_id

    project = Project.load(config)
    assert project.champion() == 1
    assert [v.version for v in project.models()] == [1]

    rerun = run_cli("train", "-c", config)
    assert rerun.exit_code == 0, rerun.all
    project = Project.load(config)
    assert project.champion() == 1
    assert [v.version for v in project.models()] == [1, 2]
    assert project.store.client.get_run(killed_run).info.status == "KILLED"


@pytest.mark.slow
def test_ui_serves_the_project_store(trained_binary: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [SHIPML, "ui", "-c", str(trained_binary), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    name = Project.load(trained_binary).config.name
    try:
        deadline = time.monotonic() + 120
        body = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                url = f"http://127.0.0.1:{port}/api/2.0/mlflow/registered-models/get?name={name}"
                with urllib.request.urlopen(url, timeout=5) as response:
                    body = json.loads(response.read())
                break
            except OSError:
                time.sleep(0.5)
        assert body is not None, "the MLflow UI never answered"
        assert body["registered_model"]["name"] == name
        aliases = {a["alias"] for a in body["registered_model"].get("aliases", [])}
        assert "champion" in aliases
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert response.status == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
