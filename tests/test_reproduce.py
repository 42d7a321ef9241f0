"""Reproducibility: every version's manifest, `shipml reproduce N` rebuilding it to identical
predictions (tree families and the MLP), refusing changed data, warning on changed packages,
and detecting a tampered manifest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from shipml import Project, registry
from shipml.reproduce import Reproduction, package_changes
from tests.conftest import breast_cancer_frame, make_project, run_cli

SHIPML = str(Path(sys.executable).parent / "shipml")


def test_package_changes_and_the_verdict() -> None:
    changes = package_changes({"a": "1", "b": "2", "gone": "1"}, {"a": "1", "b": "3", "new": "1"})
    assert changes == [("b", "2", "3"), ("gone", "1", None), ("new", None, "1")]

    def result(diff: float | None, differing: int = 0, proba: float | None = 0.0) -> Reproduction:
        return Reproduction(
            version=1,
            scratch=Path("."),
            tolerance=1e-6,
            metrics=[("roc_auc", 0.9, None if diff is None else 0.9 + diff, diff)],
            rows=10,
            predictions_differing=differing,
            max_probability_difference=proba,
            package_changes=[],
        )

    assert result(0.0).ok and result(5e-7).ok
    assert not result(1e-3).ok  # a metric moved
    assert not result(None).ok  # a metric the rebuild lacks
    assert not result(0.0, differing=1).ok  # a prediction changed
    assert not result(0.0, proba=1e-3).ok  # a probability moved


@pytest.mark.slow
def test_train_then_reproduce_refuse_warn_and_detect_tampering(tmp_path: Path) -> None:
    def edit(raw: dict) -> None:
        raw["training"].update(models=["lightgbm", "mlp"], trials=1, cv=2)

    config = make_project(tmp_path / "p", breast_cancer_frame(), "diagnosis", edit)
    assert run_cli("train", "-c", config).exit_code == 0
    project = Project.load(config)

    shown = run_cli("models", "-c", config, "--version", "1", "--manifest")
    assert shown.exit_code == 0, shown.all
    manifest = json.loads(shown.output)
    assert manifest["config"] == config.read_text()
    assert manifest["data"]["source"] == {"kind": "file", "path": "train.csv", "from": "data.path"}
    assert len(manifest["data"]["sha256"]) == 64 and manifest["data"]["rows"] == 529
    assert manifest["seeds"] == {"split": 42, "training": 42}
    assert manifest["search"]["trials"] == 1 and manifest["search"]["fixed_trials"]
    assert 0 < manifest["search"]["used_s"] <= manifest["search"]["budget_s"]
    assert manifest["packages"]["scikit-learn"] and manifest["packages"]["lightgbm"]
    assert manifest["python"].count(".") == 2 and "dirty" in manifest["git"]
    assert manifest["test_metrics"] == project.models()[0].test_metrics

    # A "package upgrade": another version of an installed distribution first on sys.path.
    fake = tmp_path / "site"
    info = fake / "tabulate-0.0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tabulate\nVersion: 0.0.1\n")
    env = {**os.environ, "PYTHONPATH": str(fake), "COLUMNS": "200"}
    out = tmp_path / "rebuild"
    done = subprocess.run(
        [SHIPML, "reproduce", "1", "-c", str(config), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    said = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 0, said
    assert "0 predictions differ, largest probability difference 0" in said
    assert f"tabulate: {manifest['packages']['tabulate']} at training, 0.0.1 now" in said
    assert "reproduced: every difference is within 1e-06" in said
    assert Project.load(config).champion() == 1 and len(Project.load(config).models()) == 1
    assert (out / ".shipml" / "mlflow.db").is_file()  # the rebuild's own store

    # Changed data is refused, before any training.
    changed = pd.read_csv(config.parent / "train.csv").iloc[:-1]
    changed.to_csv(tmp_path / "changed.csv", index=False)
    refused = run_cli("reproduce", "1", "-c", config, "--data", tmp_path / "changed.csv")
    assert refused.exit_code == 2 and "Traceback" not in refused.all
    assert "does not match version 1's training table" in " ".join(refused.all.split())

    # A manifest changed after registration is detected.
    run = project.store.client.get_run(project.models()[0].run_id)
    artifact_root = Path(run.info.artifact_uri.removeprefix("file://"))
    path = artifact_root / registry.MANIFEST_ARTIFACT
    tampered = json.loads(path.read_text())
    tampered["seeds"]["training"] = 7
    path.write_text(json.dumps(tampered))
    for args in (("models", "--version", "1", "--manifest"), ("reproduce", "1")):
        result = run_cli(*args, "-c", config)
        assert result.exit_code == 2 and "manifest was changed after registration" in result.all


NET = """
import keras


def build_model(n_features, n_outputs, task):
    inputs = keras.Input(shape=(n_features,))
    hidden = keras.layers.Dense({width}, activation="relu")(inputs)
    outputs = keras.layers.Dense(n_outputs, activation="softmax")(hidden)
    return keras.Model(inputs, outputs)
"""


@pytest.mark.slow
def test_a_rebuild_that_differs_is_exit_1_with_the_differences(tmp_path: Path) -> None:
    """The user's build_model file changed after training: the same data and config no longer
    give the same model, and reproduce says so."""
    (tmp_path / "net.py").write_text(NET.format(width=16))

    def edit(raw: dict) -> None:
        raw["training"].update(
            models=["keras"],
            baselines=False,
            trials=0,
            cv=2,
            ensemble=False,
            params={"keras": {"build_model": "net.py", "max_epochs": 5}},
        )

    config = make_project(tmp_path, breast_cancer_frame(), "diagnosis", edit)
    assert run_cli("train", "-c", config).exit_code == 0
    (tmp_path / "net.py").write_text(NET.format(width=48))
    result = run_cli("reproduce", "1", "-c", config, "--out", tmp_path / "rebuild")
    said = " ".join(result.all.split())
    assert result.exit_code == 1, said
    assert "not reproduced within 1e-06 (reproduce.tolerance)" in said
    assert "largest probability difference" in said and " 0 predictions differ" not in said
    assert Project.load(config).champion() == 1
