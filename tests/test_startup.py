"""What keeps the read-only commands quick (figures: benchmarks/startup_bench.py): `shipml
models` and `shipml report` read a local registry without importing MLflow, and `shipml predict`
scores with the verified fast copy without importing MLflow or skops; the local reader answers
as MLflow does, and steps aside for a store it does not know."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from alembic.script import ScriptDirectory
from mlflow.store.db.utils import _get_alembic_config

from shipml import registry, registry_read
from shipml.project import Project
from shipml.registry_read import LocalRegistry
from tests.conftest import make_project, run_cli, wine_frame

pytestmark = pytest.mark.slow


def _imported(config: Path, *args: str | Path) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run `shipml ARGS -c config` in a fresh interpreter; its exit and every module imported."""
    done = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "shipml.cli",
            *map(str, args),
            "-c",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=config.parent,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    modules = {
        line.split("|")[-1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    }
    return done, modules


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A multiclass project with two versions (champion and challenger), each with a fast copy."""

    def edit(raw: dict) -> None:
        raw["training"].update(models=["random_forest", "logistic_regression"], trials=0, cv=2)

    config = make_project(tmp_path_factory.mktemp("startup"), wine_frame(), "cultivar", edit)
    for _ in range(2):
        trained = run_cli("train", "-c", config)
        assert trained.exit_code == 0, trained.all
    return config


def test_models_and_report_do_not_import_mlflow(two_versions: Path) -> None:
    listed, modules = _imported(two_versions, "models")
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "champion" in listed.stdout and "challenger" in listed.stdout
    assert not {m for m in modules if m.split(".")[0] in ("mlflow", "sqlalchemy", "sklearn")}

    reported, modules = _imported(two_versions, "report", "--alias", "challenger")
    assert reported.returncode == 0, reported.stderr[-2000:]
    assert reported.stdout.strip().endswith("-v2.html")
    assert not {m for m in modules if m.split(".")[0] in ("mlflow", "sqlalchemy", "sklearn")}


def test_predict_scores_with_the_fast_copy_without_mlflow_or_skops(two_versions: Path) -> None:
    folder = two_versions.parent
    rows = folder / "ten.csv"
    pd.read_csv(folder / "new.csv").head(10).to_csv(rows, index=False)
    done, modules = _imported(two_versions, "predict", rows, "--out", folder / "fast.csv")
    assert done.returncode == 0, done.stderr[-2000:]
    heavy = ("mlflow", "skops", "sqlalchemy", "sklearn", "scipy")
    assert not {m for m in modules if m.split(".")[0] in heavy}

    # The same rows through MLflow and the native model: the same table.
    project = Project.load(two_versions)
    from shipml.scoring import Model

    native = Model(registry.load(project.store, "champion")).score(pd.read_csv(rows))
    fast = pd.read_csv(folder / "fast.csv")
    assert list(fast.columns) == list(native.columns)
    assert (fast["prediction"].to_numpy() == native["prediction"].to_numpy()).all()
    probabilities = [c for c in native.columns if c.startswith("proba")]
    np.testing.assert_allclose(fast[probabilities], native[probabilities], atol=1e-5)


def test_a_changed_fast_copy_is_not_used(two_versions: Path, tmp_path: Path) -> None:
    """A fast copy whose bytes no longer match the registered sha256 is passed over: the
    native model (verified by its own sha256) scores."""
    copy = tmp_path / "project"
    shutil.copytree(two_versions.parent, copy)
    project = Project.load(copy / "shipml.yaml")
    local = project._local
    assert local is not None and local.fast_copy(1) is not None
    # The copied store still points at the original artifacts: repoint one run's folder.
    with sqlite3.connect(local.database) as db:
        run_id, uri = db.execute(
            "SELECT r.run_uuid, r.artifact_uri FROM runs r JOIN model_versions v "
            "ON v.run_id = r.run_uuid WHERE v.version = 1"
        ).fetchone()
        moved = tmp_path / "run-artifacts"
        shutil.copytree(registry_read.local_path(uri), moved)
        db.execute("UPDATE runs SET artifact_uri = ? WHERE run_uuid = ?", (moved.as_uri(), run_id))
    (moved / registry_read.FAST_ARTIFACT).write_bytes(b"SHIPMLFP tampered")
    assert local.fast_copy(1) is None
    assert type(project.load_model(2, fast=True).pipeline).__name__ == "FastPipeline"
    model = project.load_model(1, fast=True)
    assert type(model.pipeline).__name__ != "FastPipeline"
    assert len(model.score(pd.read_csv(copy / "new.csv"))) == 40


def test_a_changed_model_file_keeps_the_fast_copy_out(two_versions: Path, tmp_path: Path) -> None:
    """As a server does, predict uses the fast copy only while the model file it stands for
    also matches its registered sha256."""
    copy = tmp_path / "project"
    shutil.copytree(two_versions.parent, copy)
    local = Project.load(copy / "shipml.yaml")._local
    assert local is not None and local.fast_copy(2) is not None
    with sqlite3.connect(local.database) as db:
        (uri,) = db.execute(
            "SELECT storage_location FROM model_versions WHERE version = 2"
        ).fetchone()
        moved = tmp_path / "model"
        shutil.copytree(registry_read.local_path(uri), moved)
        db.execute(
            "UPDATE model_versions SET storage_location = ? WHERE version = 2", (moved.as_uri(),)
        )
    assert local.fast_copy(2) is not None
    model_file = next(moved.glob("model.skops"))
    model_file.write_bytes(model_file.read_bytes() + b"\0")
    assert local.fast_copy(2) is None


def test_the_local_reader_answers_as_mlflow(two_versions: Path) -> None:
    project = Project.load(two_versions)
    local = project._local
    assert local is not None
    store = project.store
    assert local.versions() == registry.list_versions(store)
    for ref in ("champion", "challenger", 1, "2"):
        assert local.resolve(ref) == registry.resolve(store, ref)
    for version in (1, 2):
        mv = store.client.get_model_version(store.model_name, str(version))
        assert local.version_tags(version) == dict(mv.tags)
    for ref in ("staging", 7):
        with pytest.raises(registry.RegistryError) as ours:
            local.resolve(ref)
        with pytest.raises(registry.RegistryError) as theirs:
            registry.resolve(store, ref)
        assert (ours.value.message, ours.value.hint) == (theirs.value.message, theirs.value.hint)


def test_the_reader_knows_the_schema_of_the_pinned_mlflow(tmp_path: Path) -> None:
    """SCHEMA_REVISION is MLflow's newest migration: a new MLflow makes this fail, and then
    registry_read's queries are checked against its schema and the revision updated."""
    heads = ScriptDirectory.from_config(_get_alembic_config("sqlite://")).get_heads()
    assert heads == [registry_read.SCHEMA_REVISION]


def test_an_unknown_store_is_read_through_mlflow(two_versions: Path, tmp_path: Path) -> None:
    copy = tmp_path / "project"
    shutil.copytree(two_versions.parent, copy)
    project = Project.load(copy / "shipml.yaml")
    assert project._local is not None
    with sqlite3.connect(copy / ".shipml" / "mlflow.db") as db:
        db.execute("UPDATE alembic_version SET version_num = 'a0future0rev'")
    assert project._local is None
    assert LocalRegistry.open(copy, "x", "http://127.0.0.1:1") is None
    assert LocalRegistry.open(tmp_path / "empty", "x", None) is None
