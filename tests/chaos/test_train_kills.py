"""`kill -9` of a real `shipml train` at several points: the champion, the registry and the
store survive every one, each killed run ends up KILLED (never FINISHED), and training again
succeeds."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from shipml import Project
from tests.chaos.figures import record
from tests.conftest import breast_cancer_frame, make_project, run_cli
from tests.serving_helpers import SHIPML

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


def _new_models(artifacts: Path, since: float) -> bool:
    """A model was logged (an MLmodel file written) after ``since``."""
    return any(p.stat().st_mtime > since for p in artifacts.rglob("MLmodel"))


def _kill_when(config: Path, ready: Callable[[Project, str | None], bool]) -> str:
    """Start `shipml train`, SIGKILL it once ``ready(project, run_id)`` holds; the run's id."""
    project = Project.load(config)
    client, experiment = project.store.client, project.store.experiment_id
    proc = subprocess.Popen(
        [SHIPML, "train", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "120"},
    )
    run_id = None
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            parents = client.search_runs(
                [experiment],
                filter_string="attributes.status = 'RUNNING' and tags.`shipml.kind` = 'train'",
            )
            run_id = parents[0].info.run_id if parents else None
            if run_id and ready(project, run_id):
                break
            time.sleep(0.02)
        assert proc.poll() is None, "train ended before the point it was to be killed at"
        assert run_id is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return run_id


def _store_is_whole(config: Path) -> None:
    db = config.parent / ".shipml" / "mlflow.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


@pytest.mark.timeout(600)
def test_sigkill_of_training_at_each_point_keeps_the_champion(tmp_path: Path) -> None:
    config = make_project(
        tmp_path,
        breast_cancer_frame(),
        "diagnosis",
        lambda raw: raw["training"].update(models=["lightgbm", "random_forest"], trials=0),
    )
    assert run_cli("train", "-c", config).exit_code == 0
    artifacts = config.parent / ".shipml" / "artifacts"

    def has_children(project: Project, run_id: str | None) -> bool:
        found = project.store.client.search_runs(
            [project.store.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'"
        )
        return bool(found)

    started = 0.0

    def model_logged(project: Project, run_id: str | None) -> bool:
        return _new_models(artifacts, started)

    points: dict[str, Callable[[Project, str | None], bool]] = {
        "as the run starts": lambda project, run_id: True,
        "during cross-validation": has_children,
        "once the model is logged": model_logged,
    }
    killed = []
    for point, ready in points.items():
        started = time.time()
        killed.append(_kill_when(config, ready))
        project = Project.load(config)
        assert project.champion() == 1, point
        # A kill after registration may leave a new version; it is never the champion.
        assert next(v.version for v in project.models()) == 1, point
        _store_is_whole(config)
        listed = run_cli("models", "-c", config)
        assert listed.exit_code == 0 and "Traceback" not in listed.all, listed.all
        record("SIGKILL of training", f"kill {point}", 1)

    before = [v.version for v in Project.load(config).models()]
    rerun = run_cli("train", "-c", config)
    assert rerun.exit_code == 0, rerun.all
    project = Project.load(config)
    assert project.champion() == 1
    assert [v.version for v in project.models()] == [*before, before[-1] + 1]
    statuses = [project.store.client.get_run(run).info.status for run in killed]
    held = statuses == ["KILLED"] * len(killed)
    record("SIGKILL of training", "store and champion checked after each", 1, held=held)
    assert held, f"killed runs are recorded as {statuses}"
