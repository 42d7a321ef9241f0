"""Image data sets in the same loop: `shipml init` on an image folder or an .npz, training on
their pixels, clear errors for bad folders. scikit-learn's bundled digits, written as PNGs."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from sklearn.datasets import load_digits

from shipml import Project
from tests.conftest import run_cli
from tests.serving_helpers import Server

pytestmark = pytest.mark.slow


def _digits_folder(root: Path, per_class: int = 40) -> Path:
    digits = load_digits()
    counts: dict[int, int] = {}
    for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        if counts.get(label, 0) >= per_class:
            continue
        counts[label] = counts.get(label, 0) + 1
        folder = root / "digits" / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 255 / 16).astype(np.uint8)).save(folder / f"{i:04d}.png")
    return root / "digits"


def _quick(config: Path, models: list[str]) -> None:
    raw = yaml.safe_load(config.read_text())
    raw["training"].update(models=models, cv=3, time_budget_s=60, trials=0, ensemble=False)
    config.write_text(yaml.safe_dump(raw, sort_keys=False))


def test_an_image_folder_is_initialised_and_trained(tmp_path: Path) -> None:
    folder = _digits_folder(tmp_path)
    config = tmp_path / "shipml.yaml"
    result = run_cli("init", folder, "--target", "digit", "--out", config)
    assert result.exit_code == 0, result.all
    raw = yaml.safe_load(config.read_text())
    assert raw["data"]["images"] == {"size": [8, 8], "channels": 1, "on_mismatch": "resize"}
    assert raw["features"]["numeric"] == []  # the 64 pixel columns come from the image itself
    _quick(config, ["lightgbm"])
    trained = run_cli("train", "-c", config)
    assert trained.exit_code == 0, trained.all
    model = Project.load(config).load_model("champion")
    assert model.schema.image == {"height": 8, "width": 8, "channels": 1, "resize": True}
    assert model.test_metrics["f1_macro"] > 0.8
    assert "file" not in model.schema.input_columns
    # `shipml predict` scores a flat folder of new images (and an .npz) into the usual file.
    digits = load_digits()
    new = tmp_path / "new"
    new.mkdir()
    for i in range(1700, 1720):
        image = (digits.images[i] * 255 / 16).astype(np.uint8)
        Image.fromarray(image).save(new / f"{i}-{digits.target[i]}.png")
    scored_path = tmp_path / "scored.csv"
    scored = run_cli("predict", new, "--out", scored_path, "-c", config)
    assert scored.exit_code == 0, scored.all
    table = pd.read_csv(scored_path)
    assert list(table.columns[:3]) == ["file", "prediction", "probability"]
    assert not any(c.startswith("pixel_") for c in table.columns)
    truth = table["file"].str.extract(r"-(\d)\.png$")[0].astype(int)
    assert (table["prediction"] == truth).mean() > 0.8
    np.savez(tmp_path / "new.npz", X=digits.images[1700:1720] * 255 / 16)
    from_npz = run_cli("predict", tmp_path / "new.npz", "--out", tmp_path / "n.csv", "-c", config)
    assert from_npz.exit_code == 0, from_npz.all
    assert list(pd.read_csv(tmp_path / "n.csv")["prediction"]) == list(table["prediction"])
    # /predict takes a base64 image (or the pixel values as a list), like `shipml predict`.
    first = sorted(new.iterdir())[0]
    encoded = base64.b64encode(first.read_bytes()).decode("ascii")
    pixels = (digits.images[1700] * 255 / 16).astype(np.uint8).astype(float).ravel().tolist()
    with Server(config) as server:
        by_image = server.post("/predict", {"image": encoded})
        assert by_image.status_code == 200, by_image.text
        assert str(by_image.json()["prediction"]) == str(table["prediction"][0])
        by_list = server.post("/predict", {"features": pixels}).json()
        assert by_list["prediction"] == by_image.json()["prediction"]
        bad = server.post("/predict", {"image": "bm90IGFuIGltYWdl"})
        assert bad.status_code == 422 and "not an image" in bad.text
        assert server.get("/openapi.json").status_code == 200


def test_an_npz_is_initialised(tmp_path: Path) -> None:
    digits = load_digits()
    path = tmp_path / "digits.npz"
    np.savez(path, X=digits.images[:300], digit=digits.target[:300])
    config = tmp_path / "shipml.yaml"
    result = run_cli("init", path, "--target", "digit", "--out", config)
    assert result.exit_code == 0, result.all
    assert "300 rows" in config.read_text()
    missing = run_cli("init", path, "--target", "label", "--out", tmp_path / "x.yaml")
    assert missing.exit_code == 2 and "label" in missing.stderr


def test_bad_image_folders_are_clear_errors(tmp_path: Path) -> None:
    folder = _digits_folder(tmp_path, per_class=3)
    (folder / "10").mkdir()  # an empty class folder
    result = run_cli("init", folder, "--target", "digit", "--out", tmp_path / "a.yaml")
    assert result.exit_code == 2 and "10" in result.stderr and "Traceback" not in result.all
    (folder / "10").rmdir()
    (folder / "3" / "broken.png").write_bytes(b"not a png at all")
    result = run_cli("init", folder, "--target", "digit", "--out", tmp_path / "b.yaml")
    assert result.exit_code == 2 and "broken.png" in result.stderr


def test_the_cnn_trains_on_an_image_folder(tmp_path: Path) -> None:
    folder = _digits_folder(tmp_path, per_class=60)
    config = tmp_path / "shipml.yaml"
    assert run_cli("init", folder, "--target", "digit", "--out", config).exit_code == 0
    _quick(config, ["cnn"])
    raw = yaml.safe_load(config.read_text())
    raw["training"]["baselines"] = False
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    trained = run_cli("train", "-c", config)
    assert trained.exit_code == 0, trained.all
    project = Project.load(config)
    [version] = project.models()
    assert version.family == "cnn"
    model = project.load_model("champion")
    network = model.pipeline.parts[0][2]
    assert tuple(network.image_shape) == (8, 8, 1)
    assert model.test_metrics["f1_macro"] > 0.85
    report = project.report("champion").read_text()  # the mistakes, as pictures
    assert "Misclassified examples" in report
    assert "test images misclassified" in report or "No test image was misclassified" in report
    keys = project.store.client.get_run(version.run_id).data.metrics
    assert any(k.startswith("cnn/") and k.endswith("/val_loss") for k in keys)


def test_the_cnn_needs_image_data() -> None:
    from shipml.errors import ConfigError
    from shipml.models.catalog import families_for

    with pytest.raises(ConfigError, match="for image data sets"):
        families_for("classification", ["cnn"])
    assert "cnn" not in [f.name for f in families_for("classification", "auto")]
    assert "cnn" in [f.name for f in families_for("classification", "auto", images=True)]
