"""promote, rollback and predict's --out as a user meets them on a project with two versions."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipml.project import Project
from tests.conftest import breast_cancer_frame, make_project, run_cli


def _aliases(config: Path) -> dict[int, list[str]]:
    return {v.version: v.aliases for v in Project.load(config).models()}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    def edit(raw: dict) -> None:
        raw["training"].update(models=["logistic_regression"], trials=0, cv=2)

    config = make_project(
        tmp_path_factory.mktemp("aliases"), breast_cancer_frame(), "diagnosis", edit
    )
    for _ in range(2):
        trained = run_cli("train", "-c", config)
        assert trained.exit_code == 0, trained.all
    return config


def test_promoting_the_champion_is_a_no_op_that_says_so(project: Path) -> None:
    assert _aliases(project) == {1: ["champion"], 2: ["challenger"]}
    again = run_cli("promote", "1", "-c", project)
    assert again.exit_code == 0, again.all
    assert "version 1 is already the champion: nothing changed" in again.output
    assert _aliases(project) == {1: ["champion"], 2: ["challenger"]}


def test_rollback_gives_the_demoted_version_its_challenger_alias_back(project: Path) -> None:
    assert run_cli("promote", "2", "-c", project).exit_code == 0
    assert _aliases(project) == {1: [], 2: ["champion"]}
    back = run_cli("rollback", "-c", project)
    assert back.exit_code == 0, back.all
    assert _aliases(project) == {1: ["champion"], 2: ["challenger"]}
    assert Project.load(project).load_model("challenger").version == 2


def test_predict_refuses_an_output_it_cannot_write_before_loading_anything(
    project: Path, tmp_path: Path
) -> None:
    new = project.parent / "new.csv"
    for out, expected in (
        (tmp_path / "scored.xlsx", "use a .csv or .parquet file name"),
        (tmp_path / "missing" / "scored.csv", "does not exist"),
    ):
        # Not even the config is read: a missing one is not what it complains about.
        refused = run_cli("predict", new, "--out", out, "-c", tmp_path / "nowhere.yaml")
        assert refused.exit_code == 2
        assert refused.all.strip().splitlines()[0] == f"error: --out {out}: " + (
            "use a .csv or .parquet file name"
            if out.suffix == ".xlsx"
            else f"folder {out.parent} does not exist"
        )
        assert expected in refused.all and "Traceback" not in refused.all
        assert not out.exists()
