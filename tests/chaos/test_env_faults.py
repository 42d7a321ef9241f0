"""Faults of the machine, on real file systems: a full disk (a small tmpfs) during `shipml train`
and under `shipml predict --out`, and a read-only `.shipml/` (a read-only bind mount: chmod does
not stop root) under `shipml train` and `shipml promote`. Each is one line naming the path and
the cause, exit 2, and nothing half-done: a failed run is FAILED, no half-written file is left,
the champion and the registry are as they were.

Mounting needs root; each test skips, saying why, where it is not root or a mount fails."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.chaos.figures import record
from tests.conftest import breast_cancer_frame, make_project
from tests.serving_helpers import SHIPML

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

ENV = {**os.environ, "COLUMNS": "200", "MLFLOW_DISABLE_TELEMETRY": "true"}


def _mount(*args: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs or a read-only bind mount needs root")
    done = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"mount {' '.join(args)} failed: {done.stderr.strip()}")


def _umount(path: Path) -> None:
    done = subprocess.run(["umount", str(path)], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:  # still busy: detach it now, it goes once the last file closes
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


@contextmanager
def small_disk(folder: Path, kib: int, keep: bool = True) -> Iterator[Path]:
    """``folder`` on a tmpfs of ``kib`` KiB, holding a copy of what was there (``keep``); on
    exit the tmpfs goes and the folder is as it was before."""
    saved = Path(tempfile.mkdtemp(prefix="shipml-saved-"))
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(folder, saved, dirs_exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(folder))
    try:
        if keep:
            shutil.copytree(saved, folder, dirs_exist_ok=True)
        yield folder
    finally:
        _umount(folder)
        shutil.rmtree(saved, ignore_errors=True)


@contextmanager
def read_only(folder: Path) -> Iterator[Path]:
    _mount("--bind", str(folder), str(folder))
    try:
        _mount("-o", "remount,ro,bind", str(folder))
        yield folder
    finally:
        _umount(folder)


def shipml(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SHIPML, *map(str, args)], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300
    )


def _store(config: Path) -> Path:
    return config.parent / ".shipml" / "mlflow.db"


def run_statuses(config: Path) -> dict[str, str]:
    """run name -> status of every run that is not a candidate's child run."""
    uri = f"file:{_store(config)}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as db:
        rows = db.execute(
            "SELECT name, status FROM runs WHERE run_uuid NOT IN "
            "(SELECT run_uuid FROM tags WHERE key = 'mlflow.parentRunId')"
        ).fetchall()
    return dict(rows)


def registry_state(config: Path) -> tuple[list[int], dict[str, int]]:
    """(registered versions, alias -> version)."""
    uri = f"file:{_store(config)}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as db:
        versions = [v for (v,) in db.execute("SELECT version FROM model_versions ORDER BY 1")]
        aliases = dict(db.execute("SELECT alias, version FROM registered_model_aliases"))
    return versions, aliases


def one_error_line(done: subprocess.CompletedProcess[str], path: Path, cause: str) -> str:
    """The command failed with exit 2 and one `error:` line naming ``path`` and ``cause``."""
    everything = done.stdout + done.stderr
    assert done.returncode == 2, everything
    assert "Traceback" not in everything, everything
    errors = [line for line in everything.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, everything
    assert str(path) in errors[0] and cause in errors[0].lower(), errors[0]
    return errors[0]


def _fast(raw: dict) -> None:
    raw["training"]["models"] = ["random_forest"]
    raw["training"]["time_budget_s"] = 20
    raw["training"]["trials"] = 0


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A breast-cancer project trained twice on an ordinary disk: two versions, one the
    champion."""
    folder = tmp_path_factory.mktemp("faults")
    config = make_project(folder, breast_cancer_frame(), "diagnosis", _fast)
    for _ in range(2):
        done = shipml("train", "-c", config)
        assert done.returncode == 0, done.stdout + done.stderr
    return config


@dataclass
class FullDiskTrain:
    done: subprocess.CompletedProcess[str]
    shipml_dir: Path
    runs_before: dict[str, str]
    runs_after: dict[str, str]
    registry_before: tuple[list[int], dict[str, int]]
    registry_after: tuple[list[int], dict[str, int]]
    models_before: list[Path]
    models_after: list[Path]
    listed: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def full_disk_train(project: Path) -> FullDiskTrain:
    """`shipml train` with the store on a disk that has room for half a model more."""
    shipml_dir = project.parent / ".shipml"
    models = sorted(shipml_dir.rglob("model.skops"))
    largest = max(p.stat().st_size for p in models)
    used = sum(p.stat().st_size for p in shipml_dir.rglob("*") if p.is_file())
    kib = (used + largest // 2) // 1024 + 64
    before, runs = registry_state(project), run_statuses(project)
    with small_disk(shipml_dir, kib):
        done = shipml("train", "-c", project)
        return FullDiskTrain(
            done,
            shipml_dir,
            runs,
            run_statuses(project),
            before,
            registry_state(project),
            models,
            sorted(shipml_dir.rglob("model.skops")),
            shipml("models", "-c", project),
        )


def test_a_disk_that_fills_up_during_train(full_disk_train: FullDiskTrain) -> None:
    """One line naming the file and the cause, exit 2; the run is FAILED, the half-written
    model is gone, nothing is registered, the champion stays, the store still reads."""
    t = full_disk_train
    one_error_line(t.done, t.shipml_dir, "no space left on the device")
    new = {name: status for name, status in t.runs_after.items() if name not in t.runs_before}
    assert list(new.values()) == ["FAILED"], t.runs_after
    assert t.registry_after == t.registry_before
    assert t.models_after == t.models_before  # the whole ones only
    assert t.listed.returncode == 0, t.listed.stderr
    record("a full disk or a read-only folder under the command line", "faults", 1)


def test_predict_out_to_a_full_disk_leaves_no_file(project: Path, tmp_path: Path) -> None:
    rows = breast_cancer_frame().drop(columns=["diagnosis"])
    source = tmp_path / "all.csv"
    rows.to_csv(source, index=False)
    out_dir = tmp_path / "out"
    with small_disk(out_dir, 32, keep=False):
        out = out_dir / "scored.csv"
        done = shipml("predict", source, "--out", out, "-c", project)
        one_error_line(done, out, "no space left on the device")
        assert list(out_dir.iterdir()) == []
    scored = tmp_path / "scored.csv"  # on an ordinary disk the same command writes it whole
    assert shipml("predict", source, "--out", scored, "-c", project).returncode == 0
    assert len(pd.read_csv(scored)) == len(rows)
    record("a full disk or a read-only folder under the command line", "faults", 1)


def test_train_and_promote_on_a_read_only_store(project: Path) -> None:
    shipml_dir = project.parent / ".shipml"
    before = registry_state(project)
    runs = run_statuses(project)
    with read_only(shipml_dir):
        trained = shipml("train", "-c", project)
        one_error_line(trained, shipml_dir, "read-only")
        other = next(v for v in before[0] if v != before[1]["champion"])
        promoted = shipml("promote", str(other), "-c", project)
        one_error_line(promoted, shipml_dir, "read-only")
        listed = shipml("models", "-c", project)  # reading still works
        assert listed.returncode == 0, listed.stdout + listed.stderr
    assert registry_state(project) == before
    assert run_statuses(project) == runs
    record("a full disk or a read-only folder under the command line", "faults", 1)


def test_monitor_json_to_a_full_disk_leaves_no_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    table = pd.DataFrame(rng.normal(size=(200, 100)), columns=[f"c{i}" for i in range(100)])
    reference, current = tmp_path / "ref.csv", tmp_path / "cur.csv"
    table.to_csv(reference, index=False)
    (table + 1).to_csv(current, index=False)
    out_dir = tmp_path / "out"
    with small_disk(out_dir, 8, keep=False):
        out = out_dir / "drift.json"
        done = shipml("monitor", "--reference", reference, "--current", current, "--json", out)
        one_error_line(done, out, "no space left on the device")
        assert list(out_dir.iterdir()) == []
    record("a full disk or a read-only folder under the command line", "faults", 1)


def test_a_new_project_in_a_read_only_folder_is_a_fault_not_a_config_error(
    project: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "fresh"
    (folder / ".shipml").mkdir(parents=True)
    config = folder / "shipml.yaml"
    config.write_text(project.read_text())
    shutil.copy(project.parent / "train.csv", folder / "train.csv")
    with read_only(folder / ".shipml"):
        listed = shipml("models", "-c", config)
    line = one_error_line(listed, folder / ".shipml", "read-only")
    assert "tracking_uri" not in listed.stderr, line
    record("a full disk or a read-only folder under the command line", "faults", 1)
