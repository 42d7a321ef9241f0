"""Shared fixtures: real data sets shipped with scikit-learn, real projects, a real MLflow store."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
# shipml's console fixes its width when imported: COLUMNS if set, else 120 for captured output.
# pytest-xdist workers inherit COLUMNS=80 (and LINES=24) that importing readline put in their
# parent's C environment, and tables printed 80 wide wrap the names the tests look for.
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under pytest-xdist every core already runs a worker. OpenMP code whose thread count is not
    # set by shipml (scikit-learn's histogram gradient boosting) would start a thread per core in
    # each worker; on a busy machine its many short parallel regions then wait on each other and
    # run several times slower than on one thread. Families with an n_jobs keep theirs.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from typer.testing import CliRunner

from shipml.cli import app
from tests.chaos import figures as chaos_figures


def _keep_absl_off_the_capture_file() -> None:
    """absl (Keras imports it) makes a logging handler on the sys.stderr of that moment, which
    under pytest is pytest's capture file. An in-process ``logging.config.dictConfig`` (uvicorn's,
    when `shipml quickstart` serves the champion) closes every handler, and absl's close() closes
    its stream unless it is sys.stderr right then: inside CliRunner it is not, and every later
    test in the process fails on the closed file. absl writes nothing there unless its app runs."""
    try:
        import absl.logging
    except ImportError:
        return
    absl.logging.get_absl_handler().python_handler.setStream(sys.__stderr__)


_keep_absl_off_the_capture_file()


@dataclass
class CliResult:
    exit_code: int
    output: str
    stderr: str

    @property
    def all(self) -> str:
        return self.output + self.stderr


def run_cli(*args: str | Path) -> CliResult:
    """Run `shipml ARGS` in-process, as a user would type it."""
    runner = CliRunner()
    result = runner.invoke(
        app, [str(a) for a in args], catch_exceptions=False, env={"COLUMNS": "200"}
    )
    return CliResult(result.exit_code, result.stdout, result.stderr)


def breast_cancer_frame() -> pd.DataFrame:
    """Binary: scikit-learn's breast cancer data, plus an id and a categorical with gaps."""
    data = load_breast_cancer(as_frame=True)
    df = data.frame.drop(columns="target")
    df.columns = [c.replace(" ", "_") for c in df.columns]
    rng = np.random.default_rng(0)
    df.insert(0, "patient_id", [f"P{i:05d}" for i in range(len(df))])
    clinic = rng.choice(["north", "south", "east"], len(df)).astype(object)
    clinic[rng.random(len(df)) < 0.1] = None
    df["clinic"] = clinic
    df["diagnosis"] = np.where(data.target == 1, "benign", "malignant")
    return df


def wine_frame() -> pd.DataFrame:
    """Multiclass: scikit-learn's wine data (three cultivars)."""
    data = load_wine(as_frame=True)
    df = data.frame.rename(columns={"target": "cultivar"})
    df["cultivar"] = df["cultivar"].map({0: "barolo", 1: "grignolino", 2: "barbera"})
    return df


def diabetes_frame() -> pd.DataFrame:
    """Regression: scikit-learn's diabetes progression data."""
    return load_diabetes(as_frame=True).frame.rename(columns={"target": "progression"})


def make_project(
    folder: Path,
    df: pd.DataFrame,
    target: str,
    edit: Callable[[dict], None] | None = None,
    holdout: int = 40,
) -> Path:
    """Write data, run `shipml init`, then apply ``edit`` to the config; returns the config path.

    The last ``holdout`` rows are kept out of training, as new data for predict/evaluate.
    """
    folder.mkdir(parents=True, exist_ok=True)
    train, new = df.iloc[:-holdout], df.iloc[-holdout:]
    train.to_csv(folder / "train.csv", index=False)
    new.to_csv(folder / "labelled.csv", index=False)
    new.drop(columns=[target]).to_csv(folder / "new.csv", index=False)
    config = folder / "shipml.yaml"
    result = run_cli("init", folder / "train.csv", "--target", target, "--out", config)
    assert result.exit_code == 0, result.all
    raw = yaml.safe_load(config.read_text())
    raw["training"]["cv"] = 3
    raw["training"]["time_budget_s"] = 120
    # A couple of search trials exercise the search without filling the whole budget.
    raw["training"]["trials"] = 2
    # Every family but CatBoost, which alone costs about 20 s per training on these small
    # tables (its own tests: test_search, test_fastpath, test_train_search); the quickstart
    # tests keep `models: auto`.
    raw["training"]["models"] = [
        "lightgbm",
        "hist_gradient_boosting",
        "random_forest",
        "extra_trees",
    ]
    if edit:
        edit(raw)
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    return config


def _shared_fixture_groups(items: list[pytest.Item]) -> dict[str, str]:
    """Test id -> group for the tests that share a fixture of this suite beyond one test (most
    train a model): a module with a module-scoped fixture is one group, so its tests also keep
    their order; the tests using a session-scoped fixture form one group named after it."""
    modules: set[str] = set()
    sessions: dict[str, str] = {}
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        for name, definitions in (info.name2fixturedefs if info else {}).items():
            fixture = definitions[-1]  # the one the test gets
            if not fixture.func.__module__.startswith("tests."):
                continue  # pytest's own (tmp_path_factory, ...) and plugins'
            if fixture.scope == "module":
                modules.add(item.nodeid.split("::")[0])
            elif fixture.scope == "session":
                sessions.setdefault(item.nodeid, name)
    groups = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        group = module if module in modules else sessions.get(item.nodeid)
        if group is not None:
            groups[item.nodeid] = group
    return groups


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist with ``--dist loadgroup``, each group of tests sharing a fixture runs
    on one worker (see ``_shared_fixture_groups``), so the fixture is built once, not once per
    worker; a test's own ``xdist_group`` mark wins.

    xdist 3.8 passes a test's group to its scheduler by appending '@group' to the test's id, in
    an attribute pytest 9.2 no longer reads, so no test would be grouped at all
    (pytest-dev/pytest-xdist#1386): until a release fixes it, the id is extended here."""
    if not getattr(config.option, "loadgroup", False):  # set on xdist's workers only
        return
    shared = _shared_fixture_groups(items)
    for item in items:
        marks = item.iter_markers("xdist_group")
        names = sorted({str(m.args[0] if m.args else m.kwargs["name"]) for m in marks})
        if not names and item.nodeid in shared:
            names = [shared[item.nodeid]]
        suffix = "@" + "_".join(names)
        if names and not item.nodeid.endswith(suffix):  # xdist's own rename did not take
            from _pytest.nodeid import NodeId

            item._id = NodeId.parse(item.nodeid + suffix)


def pytest_configure(config: pytest.Config) -> None:
    """The chaos suite's figures go to a file of this run's own (xdist's workers inherit the
    variable), so runs side by side do not mix or clear each other's figures."""
    if not hasattr(config, "workerinput"):
        path = chaos_figures.figures_file(os.getpid())
        os.environ[chaos_figures.FIGURES_ENV] = str(path)
        path.unlink(missing_ok=True)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """What the chaos suite tried and what held, as one table (tests/chaos/figures.py)."""
    text = chaos_figures.table()
    if text:
        terminalreporter.write_sep("=", "chaos suite: what was tried and what held")
        terminalreporter.write_line(text)


@pytest.fixture(scope="session")
def trained_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A breast-cancer project trained once; tests must not change its registry."""
    folder = tmp_path_factory.mktemp("binary")
    config = make_project(folder, breast_cancer_frame(), "diagnosis")
    result = run_cli("train", "-c", config)
    assert result.exit_code == 0, result.all
    return config
