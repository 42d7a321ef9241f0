"""Writers at once on an existing project: two trainings and four promotions started together.
Each succeeds or says in one line why not, none prints a traceback, the store passes SQLite's
integrity check, every training that succeeded registered one version, and the champion is one
of the registered versions."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from shipml import Project
from tests.chaos.figures import record
from tests.chaos.test_concurrent_first_use import _all_at_once
from tests.conftest import make_project, run_cli
from tests.test_store_safety import SCHEMA, small_frame

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


@pytest.mark.timeout(900)
def test_trainings_and_promotions_at_once_leave_a_whole_registry(tmp_path: Path) -> None:
    def fast(raw: dict) -> None:
        raw["training"].update(models=["random_forest"], baselines=False, trials=0)
        raw["training"]["params"] = {"random_forest": {"n_estimators": 10}}
        raw["training"]["ensemble"] = False

    config = make_project(tmp_path, small_frame(), SCHEMA.target, fast)
    for _ in range(2):  # versions 1 (champion) and 2
        assert run_cli("train", "-c", config).exit_code == 0
    commands = [["train", "-c", str(config)]] * 2
    commands += [["promote", str(v), "-c", str(config)] for v in (2, 1, 2, 1)]
    failures = _all_at_once(commands, tmp_path)

    db = tmp_path / ".shipml" / "mlflow.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        whole = conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    project = Project.load(config)
    versions = [v.version for v in project.models()]
    trained = [
        r
        for r in project.store.client.search_runs([project.store.experiment_id])
        if r.data.tags.get("shipml.kind") == "train" and r.info.status == "FINISHED"
    ]
    held = (
        not failures
        and whole
        and versions == list(range(1, len(versions) + 1))
        and len(versions) == len(trained)
        and project.champion() in versions
    )
    record("trainings and promotions at once", "commands at once", len(commands), held)
    assert not failures, "\n".join(failures)
    assert whole and project.champion() in versions, (versions, project.champion())
    assert len(versions) == len(trained), (versions, len(trained))
