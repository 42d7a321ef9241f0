"""What the project's store promises: a version's model file is loaded only against the checksum
recorded with it (a missing checksum is refused, never skipped), and a training run is FINISHED
only once everything is written, so a killed one is never mistaken for a finished one.

``registered_project`` here registers a small real model in a real store in a few seconds,
without a training: the security and chaos tests build on it."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lightgbm import LGBMClassifier

from shipml import Project, registry
from shipml.config import FeaturesConfig
from shipml.data.schema import ColumnInfo, Schema
from shipml.errors import RegistryError
from shipml.features import build_preprocessor
from shipml.models.bagged import BaggedEnsemble
from shipml.models.fastpath import build_verified
from tests.conftest import make_project, run_cli
from tests.serving_helpers import SHIPML

SCHEMA = Schema(
    "churned",
    "classification",
    {name: ColumnInfo(name, "numeric", "float64") for name in ("usage", "tenure")},
    classes=["no", "yes"],
)


def small_frame(n: int = 160) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"usage": rng.normal(size=n), "tenure": rng.normal(size=n)})
    signal_ = df["usage"] + 0.5 * df["tenure"] + rng.normal(scale=0.5, size=n)
    df["churned"] = np.where(signal_ > 0, "yes", "no")
    return df


def small_model(df: pd.DataFrame) -> BaggedEnsemble:
    """A fitted model of the shape training registers: a preprocessor and a LightGBM part."""
    X, y = df[list(SCHEMA.input_columns)], df[SCHEMA.target]
    preprocessor = build_preprocessor(SCHEMA, FeaturesConfig()).fit(X, y)
    estimator = LGBMClassifier(n_estimators=10, num_leaves=4, verbose=-1, n_jobs=1)
    estimator.fit(np.asarray(preprocessor.transform(X), dtype=np.float64), y)
    return BaggedEnsemble(
        "classification",
        [preprocessor],
        [("lightgbm", 0, estimator)],
        {"lightgbm": 1.0},
        classes=np.asarray(["no", "yes"], dtype=object),
    )


def registered_project(folder: Path) -> Path:
    """A project (its data, shipml.yaml, a fresh store) whose version 1, the champion, is a
    small real model with a fast copy and a manifest, registered as training registers one."""
    df = small_frame()
    config = make_project(folder, df, SCHEMA.target)
    store = Project.load(config).store
    model = small_model(df)
    recorder = registry.RunRecorder(store, "train-small", {"shipml.kind": "train"})
    X = df[list(SCHEMA.input_columns)]
    fast, _, _ = build_verified(model, SCHEMA, X)
    assert fast is not None
    fast_sha = recorder.log_bytes(fast.to_bytes(), registry.FAST_ARTIFACT)
    uri, sha = recorder.log_model(model, SCHEMA, X.head(5), {"family": "lightgbm"})
    manifest = {"name": "small", "seeds": {"training": 0}}
    version = registry.register(
        store,
        uri,
        sha,
        {
            "shipml.family": "lightgbm",
            "shipml.inference": "fast",
            registry.FAST_SHA_TAG: fast_sha,
            registry.MANIFEST_SHA_TAG: registry.manifest_digest(manifest),
        },
    )
    recorder.log_dict(manifest, registry.MANIFEST_ARTIFACT)
    registry.assign_new_version_alias(store, version)
    recorder.finish()
    return config


def model_file(store: registry.Store, version: int) -> Path:
    """The verified local copy of ``version``'s model file (in the cache registry.load fills)."""
    registry.load(store, version, native=False)
    folder = store.shipml_dir / "cache" / store.model_name / str(version)
    return folder / registry._model_file(folder)


def register_file(config: Path, data: bytes, tags: dict[str, str] | None = None) -> int:
    """Register ``data`` as a new version's model file, as anyone who can write to the store
    can: the folder of version 1 with its model file replaced, and that file's own checksum."""
    store = Project.load(config).store
    source = config.parent / f"registered-{time.monotonic_ns()}"
    shutil.copytree(model_file(store, 1).parent, source)
    (source / registry._model_file(source)).write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    return registry.register(store, str(source), sha, tags or {})


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return registered_project(tmp_path_factory.mktemp("store-safety"))


def test_a_version_whose_checksum_tag_was_deleted_is_refused(project: Path) -> None:
    store = Project.load(project).store
    version = register_file(project, model_file(store, 1).read_bytes())
    assert registry.load(store, version).pipeline is not None  # verified: it loads
    store.client.delete_model_version_tag(store.model_name, str(version), "shipml.model_sha256")

    with pytest.raises(RegistryError, match=f"version {version} has no recorded model checksum"):
        registry.load(store, version)
    with pytest.raises(RegistryError, match="no recorded model checksum"):
        registry.load(store, version, native=False)  # a server with a fast copy checks it too
    new = project.parent / "new.csv"
    result = run_cli(
        "predict", new, "--out", project.parent / "out.csv", "--version", version, "-c", project
    )
    assert result.exit_code == 2, result.all
    assert "no recorded model checksum" in result.stderr and "Traceback" not in result.all


def test_a_fast_copy_whose_checksum_tag_was_deleted_is_not_used(project: Path) -> None:
    store = Project.load(project).store
    assert registry.load_fast(store, 1) is not None
    tags = {"shipml.inference": "fast", registry.FAST_SHA_TAG: "0" * 64}
    version = register_file(project, model_file(store, 1).read_bytes(), tags)
    store.client.delete_model_version_tag(store.model_name, str(version), registry.FAST_SHA_TAG)
    with pytest.raises(RegistryError, match="fast-inference copy has no recorded checksum"):
        registry.load_fast(store, version)


def test_logging_the_model_leaves_the_run_running(tmp_path: Path) -> None:
    """Only ``finish`` ends the run: a process killed after the model is logged leaves a run
    that a later command marks KILLED, never one that claims to be FINISHED."""
    df = small_frame()
    config = make_project(tmp_path, df, SCHEMA.target)
    store = Project.load(config).store
    recorder = registry.RunRecorder(store, "train-small", {"shipml.kind": "train"})
    X = df[list(SCHEMA.input_columns)]
    recorder.log_model(small_model(df), SCHEMA, X.head(5), {"family": "lightgbm"})
    assert store.client.get_run(recorder.run_id).info.status == "RUNNING"
    assert any((tmp_path / ".shipml" / "artifacts").rglob("MLmodel"))  # in the project's store
    recorder.finish()
    assert store.client.get_run(recorder.run_id).info.status == "FINISHED"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_training_killed_once_its_model_is_logged_is_not_finished(tmp_path: Path) -> None:
    config = make_project(
        tmp_path,
        small_frame(400),
        SCHEMA.target,
        lambda raw: raw["training"].update(models=["lightgbm"], trials=0, time_budget_s=30),
    )
    artifacts = tmp_path / ".shipml" / "artifacts"
    proc = subprocess.Popen(
        [SHIPML, "train", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "120"},
    )
    try:
        # The manifest is the first thing written after the model (the model's own folder
        # appears while MLflow is still logging it).
        deadline = time.monotonic() + 240
        while not any(artifacts.rglob("manifest.json")) and proc.poll() is None:
            assert time.monotonic() < deadline, "no model was logged in 240 s"
            time.sleep(0.01)
        assert proc.poll() is None, "training ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    store = Project.load(config).store
    runs = store.client.search_runs(
        [store.experiment_id], filter_string="tags.`shipml.kind` = 'train'"
    )
    assert [run.info.status for run in runs] == ["RUNNING"]
    assert registry.close_stale_runs(store) == 1
    assert store.client.get_run(runs[0].info.run_id).info.status == "KILLED"
    listed = run_cli("models", "-c", config)
    assert listed.exit_code == 0 and "Traceback" not in listed.all, listed.all
