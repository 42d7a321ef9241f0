"""The command line against bad input: every case exits 2 with one line naming what is wrong
(or, for a malformed command line, the usage error naming the option), never a traceback, and
nothing in the registry changes."""

from __future__ import annotations

import gzip
import itertools
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import yaml

from shipml import Project
from tests.chaos.figures import record
from tests.conftest import breast_cancer_frame, make_project, run_cli

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

Args = Callable[[Path, Path], list[str | Path]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    def edit(raw: dict) -> None:
        raw["training"].update(models=["random_forest"], baselines=False, trials=0)
        raw["training"]["params"] = {"random_forest": {"n_estimators": 10}}
        raw["training"]["ensemble"] = False

    folder = tmp_path_factory.mktemp("chaos-cli")
    config = make_project(folder, breast_cancer_frame(), "diagnosis", edit)
    assert run_cli("train", "-c", config).exit_code == 0
    return config


def _file(root: Path, name: str, content: str | bytes) -> Path:
    path = root / "cases" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _out(root: Path) -> Path:
    """A config path no other case writes."""
    (root / "cases").mkdir(exist_ok=True)
    return root / "cases" / f"init-{next(_OUTS)}.yaml"


_OUTS = itertools.count()


def _config(root: Path, config: Path, name: str, change: Callable[[dict], None]) -> Path:
    """A copy of the project's config with ``change`` applied, beside it (paths resolve)."""
    raw = yaml.safe_load(config.read_text())
    change(raw)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _raw_config(root: Path, name: str, text: str) -> Path:
    path = root / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _csv(
    root: Path,
    config: Path,
    name: str,
    drop: tuple[str, ...] = (),
    rows: int = 5,
    target: object = None,
) -> Path:
    """Rows of the project's data, less the ``drop`` columns; every target set to ``target``
    where given ("" for none)."""
    df = pd.read_csv(root / "train.csv").head(rows).drop(columns=list(drop))
    if target is not None:
        df["diagnosis"] = target
    path = root / "cases" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return path


def _set(path: str, value: object) -> Callable[[dict], None]:
    """A config change: set the dotted ``path`` to ``value``."""

    def change(raw: dict) -> None:
        *parents, last = path.split(".")
        node = raw
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value

    return change


def _drop(key: str) -> Callable[[dict], None]:
    return lambda raw: raw.pop(key)


def _train_with(name: str, change: Callable[[dict], None]) -> Args:
    return lambda root, config: ["train", "-c", _config(root, config, name, change)]


# (id, arguments, what the first line must name); "" for a usage error (exit 2, Typer's message)
CASES: list[tuple[str, Args, str]] = [
    # init: the data file
    (
        "init: no such file",
        lambda r, c: ["init", r / "nope.csv", "-t", "y", "-o", _out(r)],
        "nope.csv",
    ),
    ("init: a folder", lambda r, c: ["init", r, "-t", "y", "-o", _out(r)], "folder"),
    (
        "init: an .xlsx",
        lambda r, c: ["init", _file(r, "a.xlsx", b"PK\x03\x04"), "-t", "y", "-o", _out(r)],
        ".xlsx",
    ),
    (
        "init: an empty file",
        lambda r, c: ["init", _file(r, "empty.csv", ""), "-t", "y", "-o", _out(r)],
        "empty",
    ),
    (
        "init: a header and no rows",
        lambda r, c: ["init", _file(r, "header.csv", "a,b,y\n"), "-t", "y", "-o", _out(r)],
        "no rows",
    ),
    (
        "init: binary garbage",
        lambda r, c: [
            "init",
            _file(r, "garbage.csv", bytes(range(256)) * 40),
            "-t",
            "y",
            "-o",
            _out(r),
        ],
        "garbage.csv",
    ),
    (
        "init: ragged rows",
        lambda r, c: [
            "init",
            _file(r, "ragged.csv", "a,y\n1,2\n1,2,3,4\n"),
            "-t",
            "y",
            "-o",
            _out(r),
        ],
        "ragged.csv",
    ),
    (
        "init: a duplicate header",
        lambda r, c: [
            "init",
            _file(r, "dup.csv", "a,b,a,y\n1,2,3,4\n"),
            "-t",
            "y",
            "-o",
            _out(r),
        ],
        "'a'",
    ),
    (
        "init: a broken gzip",
        lambda r, c: [
            "init",
            _file(r, "broken.csv.gz", gzip.compress(b"a,y\n1,2\n")[:15]),
            "-t",
            "y",
            "-o",
            _out(r),
        ],
        "broken.csv.gz",
    ),
    (
        "init: a broken parquet",
        lambda r, c: [
            "init",
            _file(r, "broken.parquet", b"PAR1" + b"\x00" * 50),
            "-t",
            "y",
            "-o",
            _out(r),
        ],
        "broken.parquet",
    ),
    (
        "init: the target is not a column",
        lambda r, c: ["init", r / "train.csv", "-t", "no_such_column", "-o", _out(r)],
        "no_such_column",
    ),
    (
        "config: the target is entirely empty",
        lambda r, c: [
            "train",
            "-c",
            c,
            "--data",
            _csv(r, c, "emptytarget.csv", rows=60, target=""),
        ],
        "target value",
    ),
    (
        "train: one class only",
        lambda r, c: ["train", "-c", c, "--data", _csv(r, c, "oneclass.csv", rows=60, target="x")],
        "diagnosis",
    ),
    (
        "config: regression on a text target",
        _train_with("regress", _set("task", "regression")),
        "regression",
    ),
    (
        "init: an unknown task",
        lambda r, c: [
            "init",
            r / "train.csv",
            "-t",
            "diagnosis",
            "--task",
            "clustering",
            "-o",
            _out(r),
        ],
        "--task",
    ),
    (
        "init: the config exists",
        lambda r, c: ["init", r / "train.csv", "-t", "diagnosis", "-o", c],
        "shipml.yaml",
    ),
    (
        "init: a bad database URL",
        lambda r, c: [
            "init",
            "postgresql://",
            "-t",
            "y",
            "--query",
            "SELECT 1",
            "-o",
            _out(r),
        ],
        "postgresql",
    ),
    ("init: no --target", lambda r, c: ["init", r / "train.csv"], ""),
    # the config file
    ("config: missing", lambda r, c: ["train", "-c", r / "none.yaml"], "none.yaml"),
    ("config: a folder", lambda r, c: ["train", "-c", r], "config file"),
    ("config: empty", lambda r, c: ["train", "-c", _raw_config(r, "empty", "")], "empty.yaml"),
    (
        "config: not YAML",
        lambda r, c: ["train", "-c", _raw_config(r, "notyaml", "name: [unclosed\n  target: :")],
        "notyaml.yaml",
    ),
    (
        "config: a list",
        lambda r, c: ["train", "-c", _raw_config(r, "alist", "- a\n- b\n")],
        "alist.yaml",
    ),
    (
        "config: a duplicate key",
        lambda r, c: ["train", "-c", _raw_config(r, "dupkey", c.read_text() + "\ntarget: other\n")],
        "target",
    ),
    ("config: an unknown key", _train_with("unknown", _set("trainig", {"cv": 3})), "trainig"),
    ("config: an unknown nested key", _train_with("unknown2", _set("training.folds", 3)), "folds"),
    ("config: no target", _train_with("notarget", _drop("target")), "target"),
    ("config: no data", _train_with("nodata", _drop("data")), "data"),
    ("config: cv as text", _train_with("cvtext", _set("training.cv", "five")), "cv"),
    ("config: cv of 1", _train_with("cv1", _set("training.cv", 1)), "cv"),
    ("config: test_size 1.5", _train_with("testsize", _set("split.test_size", 1.5)), "test_size"),
    (
        "config: an unknown metric",
        _train_with("metric", _set("training.metric", "accurracy")),
        "accurracy",
    ),
    (
        "config: an unknown family",
        _train_with("family", _set("training.models", ["xgboostt"])),
        "xgboostt",
    ),
    (
        "config: a negative budget",
        _train_with("budget", _set("training.time_budget_s", -5)),
        "time_budget_s",
    ),
    ("config: an unknown task", _train_with("task", _set("task", "ranking")), "task"),
    ("config: the target is not a column", _train_with("target", _set("target", "nope")), "nope"),
    (
        "config: data.path missing",
        _train_with("datapath", _set("data.path", "gone.csv")),
        "gone.csv",
    ),
    (
        "config: a malformed data URL",
        _train_with("dataurl", _set("data", {"url": "notaurl", "query": "SELECT 1"})),
        "url",
    ),
    (
        "config: a missing SQLite file",
        _train_with("sqlite", _set("data", {"url": "sqlite:///missing.db", "query": "SELECT 1"})),
        "missing.db",
    ),
    (
        "config: a derived feature with a syntax error",
        _train_with("derived1", _set("features.derived", {"f": "mean_radius +* 2"})),
        "f",
    ),
    (
        "config: a derived feature on an unknown column",
        _train_with("derived2", _set("features.derived", {"f": "nope * 2"})),
        "nope",
    ),
    (
        "config: a derived feature calling __import__",
        _train_with("derived3", _set("features.derived", {"f": "__import__('os').system('true')"})),
        "f",
    ),
    (
        "config: a derived feature reaching an attribute",
        _train_with("derived4", _set("features.derived", {"f": "mean_radius.__class__"})),
        "f",
    ),
    (
        "config: excluding an unknown column",
        _train_with("exclude", _set("features.exclude", ["nope"])),
        "nope",
    ),
    (
        "config: an unknown gate metric",
        _train_with("gate", _set("gate", {"metric": "speed", "min": 0.5})),
        "speed",
    ),
    (
        "config: a time column not in the data",
        _train_with("timecol", _set("split.time_column", "when")),
        "when",
    ),
    ("config: a split seed as text", _train_with("seed", _set("split.seed", "abc")), "seed"),
    (
        "config: a tracking URI of an unknown kind",
        _train_with("tracking", _set("tracking_uri", "ftp://x/y")),
        "ftp",
    ),
    # train's command line
    ("train: --time-budget 0", lambda r, c: ["train", "-c", c, "--time-budget", "0"], ""),
    ("train: --time-budget -5", lambda r, c: ["train", "-c", c, "--time-budget", "-5"], ""),
    ("train: --time-budget abc", lambda r, c: ["train", "-c", c, "--time-budget", "abc"], ""),
    (
        "train: --data missing",
        lambda r, c: ["train", "-c", c, "--data", r / "gone.csv"],
        "gone.csv",
    ),
    ("train: --data a folder", lambda r, c: ["train", "-c", c, "--data", r / "cases"], "folder"),
    (
        "train: --data without the target",
        lambda r, c: [
            "train",
            "-c",
            c,
            "--data",
            _csv(r, c, "notarget.csv", ("diagnosis",), rows=40),
        ],
        "diagnosis",
    ),
    ("train: an unknown option", lambda r, c: ["train", "-c", c, "--fast"], ""),
    # predict
    (
        "predict: no such input",
        lambda r, c: ["predict", r / "gone.csv", "-o", r / "out.csv", "-c", c],
        "gone.csv",
    ),
    (
        "predict: a column missing",
        lambda r, c: [
            "predict",
            _csv(r, c, "short.csv", ("mean_radius",)),
            "-o",
            r / "out.csv",
            "-c",
            c,
        ],
        "mean_radius",
    ),
    (
        "predict: an empty input",
        lambda r, c: ["predict", _file(r, "empty-in.csv", ""), "-o", r / "out.csv", "-c", c],
        "empty",
    ),
    (
        "predict: an .xlsx output",
        lambda r, c: ["predict", r / "new.csv", "-o", r / "out.xlsx", "-c", c],
        ".xlsx",
    ),
    (
        "predict: the output is a folder",
        lambda r, c: ["predict", r / "new.csv", "-o", r / "cases", "-c", c],
        "cases",
    ),
    (
        "predict: an unknown version",
        lambda r, c: ["predict", r / "new.csv", "-o", r / "out.csv", "-c", c, "--version", "99"],
        "99",
    ),
    (
        "predict: an unknown alias",
        lambda r, c: ["predict", r / "new.csv", "-o", r / "out.csv", "-c", c, "--alias", "nosuch"],
        "nosuch",
    ),
    (
        "predict: version 0",
        lambda r, c: ["predict", r / "new.csv", "-o", r / "out.csv", "-c", c, "--version", "0"],
        "",
    ),
    ("predict: no --out", lambda r, c: ["predict", r / "new.csv", "-c", c], ""),
    # evaluate
    ("evaluate: no such file", lambda r, c: ["evaluate", r / "gone.csv", "-c", c], "gone.csv"),
    ("evaluate: no target column", lambda r, c: ["evaluate", r / "new.csv", "-c", c], "diagnosis"),
    (
        "evaluate: an unknown version",
        lambda r, c: ["evaluate", r / "labelled.csv", "-c", c, "--version", "99"],
        "99",
    ),
    # the registry
    ("promote: an unknown version", lambda r, c: ["promote", "99", "-c", c], "99"),
    ("promote: not a number", lambda r, c: ["promote", "abc", "-c", c], ""),
    ("rollback: nothing before", lambda r, c: ["rollback", "-c", c], "roll back"),
    ("report: an unknown version", lambda r, c: ["report", "--version", "99", "-c", c], "99"),
    ("reproduce: an unknown version", lambda r, c: ["reproduce", "99", "-c", c], "99"),
    # monitor
    ("monitor: neither --current nor --from-log", lambda r, c: ["monitor", "-c", c], ""),
    (
        "monitor: no such current file",
        lambda r, c: ["monitor", "-c", c, "--current", r / "gone.csv"],
        "gone.csv",
    ),
    (
        "monitor: an empty current file",
        lambda r, c: ["monitor", "-c", c, "--current", _file(r, "empty-current.csv", "")],
        "empty",
    ),
    (
        "monitor: a bad --since",
        lambda r, c: ["monitor", "-c", c, "--from-log", "--since", "yesterday-ish"],
        "",
    ),
    # retrain, serve, export
    (
        "retrain: --data missing",
        lambda r, c: ["retrain", "-c", c, "--data", r / "gone.csv"],
        "gone.csv",
    ),
    ("serve: port 70000", lambda r, c: ["serve", "-c", c, "--port", "70000"], ""),
    ("serve: 0 workers", lambda r, c: ["serve", "-c", c, "--workers", "0"], ""),
    ("export: an unknown target", lambda r, c: ["export", "helm", "--out", r / "x"], ""),
    (
        "export docker: --out is a file",
        lambda r, c: ["export", "docker", "--out", r / "train.csv", "-c", c],
        "train.csv",
    ),
    ("an unknown command", lambda r, c: ["deploy", "-c", c], ""),
]


@pytest.mark.parametrize(("args", "needle"), [pytest.param(a, n, id=i) for i, a, n in CASES])
def test_bad_input_is_one_line_and_exit_2(trained: Path, args: Args, needle: str) -> None:
    result = run_cli(*args(trained.parent, trained))
    assert result.exit_code == 2, result.all
    assert "Traceback" not in result.all, result.all
    if needle:  # shipml's own error: one line first, naming what is wrong
        assert result.stderr.startswith("error: "), result.all
        assert needle.lower() in result.stderr.splitlines()[0].lower(), result.stderr
    else:  # the command line itself is malformed: the usage error names it
        assert "Usage:" in result.all or "No such" in result.all, result.all
    record("bad input on the command line", "cases", 1)


def test_the_matrix_is_large_and_changed_nothing(trained: Path) -> None:
    assert len(CASES) >= 70
    project = Project.load(trained)
    assert [v.version for v in project.models()] == [1] and project.champion() == 1
    running = project.store.client.search_runs(
        [project.store.experiment_id], filter_string="attributes.status = 'RUNNING'"
    )
    assert running == []
