"""The installed `shipml` console script as a real process: the MLflow UI (SIGKILL of training is
in tests/chaos), --help on every command."""

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
from tests.conftest import run_cli
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
