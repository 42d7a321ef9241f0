"""Bad input: each gives one clear line naming what and where, exit code 2, no traceback, and
nothing half written in the registry."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from shipml.project import Project
from tests.conftest import CliResult, breast_cancer_frame, run_cli

pytestmark = pytest.mark.slow


def assert_user_error(result: CliResult, *needles: str) -> None:
    assert result.exit_code == 2, result.all
    assert "Traceback" not in result.all
    assert result.stderr.startswith("error: "), result.all
    first_line = result.stderr.splitlines()[0]
    for needle in needles:
        assert needle in first_line, first_line


def _registry_is_empty(config: Path) -> None:
    project = Project.load(config)
    assert project.models() == []
    runs = project.store.client.search_runs([project.store.experiment_id])
    assert runs == []


def _write_config(folder: Path, **overrides: object) -> Path:
    raw: dict = {"name": "bad", "data": {"path": "data.csv"}, "target": "y"}
    raw.update(overrides)
    path = folder / "shipml.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_missing_data_file(tmp_path: Path) -> None:
    assert_user_error(run_cli("init", tmp_path / "nope.csv", "--target", "y"), "nope.csv")
    config = _write_config(tmp_path)
    from_config = run_cli("train", "-c", config)
    assert_user_error(from_config, "data.csv")
    assert "data.path" in from_config.stderr  # the hint says where the path came from
    # A path given on the command line: the hint does not send the user to shipml.yaml.
    given = run_cli("train", "-c", config, "--data", tmp_path / "other.csv")
    assert_user_error(given, "other.csv")
    assert "check the file name and folder" in given.stderr and "data.path" not in given.stderr
    folder = run_cli("train", "-c", config, "--data", tmp_path)
    assert_user_error(folder, "is a folder")
    assert "data.path" not in folder.stderr


def test_missing_config(tmp_path: Path) -> None:
    assert_user_error(run_cli("train", "-c", tmp_path / "shipml.yaml"), "shipml.yaml", "not found")


@pytest.mark.parametrize(
    ("content", "needle"),
    [(b"", "empty"), (b"\x00\x81\xff\xfe" * 200, "data.csv"), (b"a,b,y\n", "no rows")],
    ids=["empty", "binary", "header-only"],
)
def test_unreadable_or_empty_csv(tmp_path: Path, content: bytes, needle: str) -> None:
    (tmp_path / "data.csv").write_bytes(content)
    config = _write_config(tmp_path)
    result = run_cli("train", "-c", config)
    assert_user_error(result, "data.csv")
    assert needle in result.stderr
    _registry_is_empty(config)


def test_target_absent(tmp_path: Path) -> None:
    breast_cancer_frame().to_csv(tmp_path / "data.csv", index=False)
    result = run_cli(
        "init", tmp_path / "data.csv", "--target", "outcome", "--out", tmp_path / "a.yaml"
    )
    assert_user_error(result, "outcome")
    config = _write_config(tmp_path, target="outcome")
    train = run_cli("train", "-c", config)
    assert_user_error(train, "outcome")
    assert "missing_target" in train.output  # the validation table
    _registry_is_empty(config)
    reports = list((tmp_path / ".shipml" / "reports").glob("validation-*.json"))
    assert reports  # the findings are kept


def test_target_constant(tmp_path: Path) -> None:
    df = breast_cancer_frame()
    df["diagnosis"] = "benign"
    df.to_csv(tmp_path / "data.csv", index=False)
    init = run_cli(
        "init", tmp_path / "data.csv", "--target", "diagnosis", "--out", tmp_path / "i.yaml"
    )
    assert (
        init.exit_code == 0 and "constant_target" in init.output and "fatal problems" in init.output
    )
    config = _write_config(tmp_path, target="diagnosis")
    result = run_cli("train", "-c", config)
    assert_user_error(result, "diagnosis", "single value")
    assert result.output.count("Data validation") == 1  # the findings table, shown once
    _registry_is_empty(config)


def test_unknown_config_key(tmp_path: Path) -> None:
    config = _write_config(tmp_path, training={"cv": 3, "epochz": 4})
    assert_user_error(run_cli("train", "-c", config), "training.epochz", "unknown key")
    config = _write_config(tmp_path, colour="blue")
    assert_user_error(run_cli("models", "-c", config), "colour")


def test_wrong_type_in_config(tmp_path: Path) -> None:
    config = _write_config(tmp_path, training={"cv": "five"})
    assert_user_error(run_cli("train", "-c", config), "training.cv", "five")
    config = _write_config(tmp_path, split={"test_size": 3})
    assert_user_error(run_cli("train", "-c", config), "split.test_size")


def test_invalid_yaml(tmp_path: Path) -> None:
    config = tmp_path / "shipml.yaml"
    config.write_text("name: x\ndata: {path: [unclosed\n")
    assert_user_error(run_cli("train", "-c", config), "not valid YAML")


def test_sql_url_that_cannot_connect(tmp_path: Path) -> None:
    config = _write_config(
        tmp_path,
        data={"url": "postgresql://ann:s3cret@127.0.0.1:1/warehouse", "query": "SELECT 1"},
    )
    result = run_cli("train", "-c", config)
    assert_user_error(result, "127.0.0.1")
    assert "s3cret" not in result.all
    _registry_is_empty(config)


def test_predict_input_problems(trained_binary: Path, tmp_path: Path) -> None:
    config = trained_binary
    new = pd.read_csv(config.parent / "new.csv")
    out = tmp_path / "out.csv"
    before = [v.version for v in Project.load(config).models()]

    new.drop(columns=["mean_radius"]).to_csv(tmp_path / "missing.csv", index=False)
    assert_user_error(
        run_cli("predict", tmp_path / "missing.csv", "--out", out, "-c", config),
        "missing.csv",
        "mean_radius",
    )

    new.assign(favourite_colour="red").to_csv(tmp_path / "extra.csv", index=False)
    assert_user_error(
        run_cli("predict", tmp_path / "extra.csv", "--out", out, "-c", config), "favourite_colour"
    )
    allowed = run_cli(
        "predict", tmp_path / "extra.csv", "--out", out, "--allow-extra", "-c", config
    )
    assert allowed.exit_code == 0, allowed.all
    assert "favourite_colour" in pd.read_csv(out).columns

    wrong = new.astype({"mean_texture": object})
    wrong.loc[3, "mean_texture"] = "very rough"
    wrong.to_csv(tmp_path / "wrong.csv", index=False)
    assert_user_error(
        run_cli(
            "predict", tmp_path / "wrong.csv", "--out", tmp_path / "w.csv", "-c", config, "--strict"
        ),
        "mean_texture",
        "very rough",
    )
    assert not (tmp_path / "w.csv").exists()  # nothing half written

    unseen = new.copy()
    unseen.loc[:5, "clinic"] = "mars"
    unseen.to_csv(tmp_path / "unseen.csv", index=False)
    ok = run_cli("predict", tmp_path / "unseen.csv", "--out", out, "-c", config)
    assert ok.exit_code == 0, ok.all
    assert pd.read_csv(out)["prediction"].notna().all()

    nope = run_cli("predict", tmp_path / "nope.csv", "--out", out, "-c", config)
    assert_user_error(nope, "nope.csv")
    assert "data.path" not in nope.stderr  # the file came from the command line
    assert_user_error(
        run_cli("predict", config.parent / "new.csv", "--out", tmp_path / "x.txt", "-c", config),
        "x.txt",
    )
    assert [v.version for v in Project.load(config).models()] == before


def test_evaluate_needs_labels(trained_binary: Path) -> None:
    result = run_cli("evaluate", trained_binary.parent / "new.csv", "-c", trained_binary)
    assert_user_error(result, "diagnosis")


def test_no_champion_yet(tmp_path: Path) -> None:
    breast_cancer_frame().to_csv(tmp_path / "data.csv", index=False)
    config = _write_config(tmp_path, target="diagnosis")
    assert_user_error(
        run_cli("predict", tmp_path / "data.csv", "--out", tmp_path / "o.csv", "-c", config),
        "no champion",
    )
    assert_user_error(run_cli("rollback", "-c", config), "no champion")


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    result = run_cli("train", "--time-budget", "soon")
    assert result.exit_code == 2
    assert "Traceback" not in result.all
    assert_user_error(
        run_cli("init", tmp_path / "x.csv", "--target", "y", "--task", "clustering"), "clustering"
    )
