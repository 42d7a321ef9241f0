"""The PyTorch MLP in the training loop: searched, bagged, tracked per epoch, registered,
served and monitored like any other family."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from shipml import Project
from shipml.errors import ConfigError
from shipml.models import catalog
from tests.conftest import breast_cancer_frame, make_project, run_cli
from tests.serving_helpers import Server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mlp_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("mlp")

    def edit(raw: dict) -> None:
        raw["training"].update(models=["mlp"], baselines=False, trials=2, ensemble=False)

    config = make_project(folder, breast_cancer_frame(), "diagnosis", edit)
    result = run_cli("train", "-c", config)
    assert result.exit_code == 0, result.all
    return config


def test_the_mlp_is_trained_bagged_and_registered(mlp_project: Path) -> None:
    project = Project.load(mlp_project)
    [version] = project.models()
    assert version.family.startswith("mlp")
    assert version.tags["shipml.inference"] == "native"  # no exact fast copy of a network
    model = project.load_model("champion")
    assert model.test_metrics["roc_auc"] > 0.97
    new = pd.read_csv(mlp_project.parent / "labelled.csv")
    scored = model.score(new.drop(columns=["diagnosis"]), allow_extra=True)
    assert (scored["prediction"] == new["diagnosis"]).mean() > 0.9


def test_every_epoch_is_an_mlflow_step_metric(mlp_project: Path) -> None:
    project = Project.load(mlp_project)
    [version] = project.models()
    client = project.store.client
    keys = {k for k in client.get_run(version.run_id).data.metrics if k.endswith("/val_loss")}
    assert len(keys) == 3  # one bagged network per cross-validation fold
    for key in keys:
        history = client.get_metric_history(version.run_id, key)
        steps = [m.step for m in history]
        assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 5
        losses = [m.value for m in history]
        assert min(losses) < losses[0]  # it learned


def test_the_mlp_serves_and_its_predictions_are_logged(mlp_project: Path) -> None:
    rows = json.loads(
        pd.read_csv(mlp_project.parent / "new.csv")
        .drop(columns=["patient_id"])
        .head(3)
        .to_json(orient="records")
    )
    expected = Project.load(mlp_project).predict(pd.DataFrame(rows), allow_extra=True)
    with Server(mlp_project) as server:
        model = server.get("/model").json()
        assert model["inference"] == "native"
        for row, want in zip(rows, expected["prediction"], strict=True):
            answer = server.post("/predict", {"features": row}).json()
            assert answer["prediction"] == want
    monitored = run_cli("monitor", "-c", mlp_project, "--from-log")
    assert monitored.exit_code == 0, monitored.all
    assert "prediction" in monitored.output


def test_naming_the_mlp_without_pytorch_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(catalog, "deep_available", lambda: False)
    with pytest.raises(ConfigError, match="needs PyTorch") as raised:
        catalog.families_for("classification", ["mlp"])
    assert "shipml[deep]" in (raised.value.hint or "")
    auto = [f.name for f in catalog.families_for("classification", "auto")]
    assert "mlp" not in auto and "lightgbm" in auto


KERAS_FILE = """
import keras


def build_model(n_features, n_outputs, task):
    inputs = keras.Input(shape=(n_features,))
    hidden = keras.layers.Dense(32, activation="relu", name="users_hidden")(inputs)
    outputs = keras.layers.Dense(n_outputs, activation="softmax", name="users_output")(hidden)
    return keras.Model(inputs, outputs)
"""


def _keras_project(folder: Path, build_model: str) -> Path:
    def edit(raw: dict) -> None:
        raw["training"].update(
            models=["keras"],
            baselines=False,
            trials=0,
            ensemble=False,
            params={"keras": {"build_model": build_model, "max_epochs": 30}},
        )

    return make_project(folder, breast_cancer_frame(), "diagnosis", edit)


def test_a_users_keras_model_is_trained_registered_and_served(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text(KERAS_FILE)
    config = _keras_project(tmp_path, "net.py")  # relative to the config's folder
    result = run_cli("train", "-c", config)
    assert result.exit_code == 0, result.all
    project = Project.load(config)
    [version] = project.models()
    assert version.family == "keras"
    model = project.load_model("champion")
    fitted = model.pipeline.parts[0][2]
    assert {"users_hidden", "users_output"} <= {layer.name for layer in fitted.model_.layers}
    assert model.test_metrics["roc_auc"] > 0.95
    # The networks are also in MLflow in Keras's own format.
    artifacts = project.store.client.list_artifacts(version.run_id, "keras")
    assert [a.path.endswith(".keras") for a in artifacts] == [True] * 3
    rows = json.loads(
        pd.read_csv(config.parent / "new.csv")
        .drop(columns=["patient_id"])
        .head(2)
        .to_json(orient="records")
    )
    with Server(config) as server:
        answer = server.post("/predict", {"features": rows[0]}).json()
    assert answer["prediction"] in ("benign", "malignant") and answer["model_version"] == "1"
    # and retraining: the pipeline trains, gates and records a Keras challenger like any other
    retrained = run_cli("retrain", "-c", config)
    assert retrained.exit_code == 0, retrained.all
    v2 = next(v for v in Project.load(config).models() if v.version == 2)
    assert v2.family == "keras" and v2.tags["shipml.gate"] in ("passed", "failed")


def test_a_bad_build_model_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = _keras_project(tmp_path / "a", "nowhere.py")
    result = run_cli("train", "-c", missing)
    assert result.exit_code == 2
    assert "nowhere.py does not exist" in result.stderr and "Traceback" not in result.all
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "net.py").write_text(
        "def build_model(n_features, n_outputs, task):\n    return 3\n"
    )
    wrong = _keras_project(tmp_path / "b", "net.py")
    result = run_cli("train", "-c", wrong)
    assert result.exit_code == 2, result.all
    assert "net.py" in result.stderr and "Traceback" not in result.all
