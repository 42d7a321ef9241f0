"""`shipml ui`: a real MLflow UI server on the project's store, opened on the training runs,
stopped whole by SIGTERM; with a tracking server, that server's own UI."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import requests

from shipml.project import Project
from shipml.tracking_ui import PARENT_RUNS_FILTER, group_members
from tests.conftest import breast_cancer_frame, make_project, run_cli
from tests.serving_helpers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _small(raw: dict) -> None:
    raw["training"].update(models=["logistic_regression", "random_forest"], trials=1, cv=2)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = make_project(tmp_path_factory.mktemp("ui"), breast_cancer_frame(), "diagnosis", _small)
    for _ in range(2):
        trained = run_cli("train", "-c", config)
        assert trained.exit_code == 0, trained.all
    return config


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _port_free(port: int) -> bool:
    """Nothing listens on the port and a new server may bind it (as servers do, past the
    TIME_WAIT of the connections the old one closed)."""
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _parent_runs_filter(url: str) -> str:
    fragment = urlsplit(url).fragment  # /experiments/<id>/runs?searchFilter=...
    return unquote(fragment.split("searchFilter=", 1)[1])


def test_ui_opens_on_the_training_runs_and_sigterm_stops_every_process(
    project: Path, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "ui.log"
    with log.open("w") as out:
        ui = subprocess.Popen(
            [sys.executable, "-m", "shipml.cli", "ui", "-c", str(project), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "COLUMNS": "300"},
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert ui.poll() is None, log.read_text()
            try:
                if requests.get(base + "/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        printed = log.read_text()
        store = Project.load(project).store
        runs = next(line.split()[-1] for line in printed.splitlines() if "runs:" in line)
        assert runs.startswith(f"{base}/#/experiments/{store.experiment_id}/runs?searchFilter=")
        assert _parent_runs_filter(runs) == PARENT_RUNS_FILTER
        registry_page = next(
            line.split()[-1] for line in printed.splitlines() if "registry:" in line
        )
        assert registry_page == f"{base}/#/models/{store.model_name}"
        assert "<html" in requests.get(base + "/", timeout=10).text.lower()

        # The filter the page applies, asked of the same server: the two trainings, no candidate.
        found = requests.post(
            base + "/api/2.0/mlflow/runs/search",
            json={"experiment_ids": [store.experiment_id], "filter": PARENT_RUNS_FILTER},
            timeout=30,
        ).json()["runs"]
        trainings = {v.run_id for v in Project.load(project).models()}
        assert {r["info"]["run_id"] for r in found} == trainings
        everything = requests.post(
            base + "/api/2.0/mlflow/runs/search",
            json={"experiment_ids": [store.experiment_id], "max_results": 1000},
            timeout=30,
        ).json()["runs"]
        assert len(everything) > len(found)
        model = requests.get(
            base + "/api/2.0/mlflow/registered-models/get",
            params={"name": store.model_name},
            timeout=30,
        )
        assert model.status_code == 200

        workers = _descendants(ui.pid)
        assert len(workers) >= 2  # the MLflow server and its workers
        ui.send_signal(signal.SIGTERM)
        assert ui.wait(timeout=60) == 0
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in workers) or not _port_free(port):
            assert time.monotonic() < deadline, [p for p in workers if _alive(p)]
            time.sleep(0.2)
        groups = {os.getpgid(pid) for pid in workers if _alive(pid)}
        assert not any(group_members(g) for g in groups)
    finally:
        left = _descendants(ui.pid)  # before shipml ends: then they have another parent
        if ui.poll() is None:
            ui.kill()
            ui.wait(timeout=30)
        for pid in left:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_ui_with_a_tracking_server_prints_its_own_ui(tmp_path: Path) -> None:
    from tests.test_deploy_export import _mlflow_server

    with _mlflow_server(tmp_path / "mlflow") as tracking:

        def edit(raw: dict) -> None:
            _small(raw)
            raw["tracking_uri"] = tracking

        config = make_project(tmp_path / "project", breast_cancer_frame(), "diagnosis", edit)
        assert run_cli("train", "-c", config).exit_code == 0
        shown = run_cli("ui", "-c", config)
        assert shown.exit_code == 0, shown.all
        assert "Traceback" not in shown.all
        store = Project.load(config).store
        expected = f"{tracking}/#/experiments/{store.experiment_id}/runs?searchFilter="
        runs = next(line.split()[-1] for line in shown.output.splitlines() if "runs:" in line)
        assert runs.startswith(expected) and _parent_runs_filter(runs) == PARENT_RUNS_FILTER
        assert f"{tracking}/#/models/{store.model_name}" in shown.output
        assert requests.get(tracking + "/", timeout=10).status_code == 200
