"""compute: {engine: ray}: the search on a real Ray instance on this machine, started once for the
module by shipml's own connect; every trial on the leaderboard, the same result as the local
engine with one trial in flight, reproducible with more; `shipml train` end to end; errors."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml
from sklearn.datasets import load_breast_cancer

import shipml
from shipml import Project
from shipml.config import ComputeConfig, FeaturesConfig, TrainingConfig
from shipml.data.infer import infer_schema
from shipml.errors import ClusterError
from shipml.models.catalog import families_for
from shipml.training import distributed
from shipml.training.folds import FoldSet, prepare_folds
from shipml.training.search import SearchResult, run_search
from tests.conftest import breast_cancer_frame, make_project, run_cli

ray = pytest.importorskip("ray")

RAY = ComputeConfig(engine="ray")


@pytest.fixture(scope="module")
def cluster() -> Iterator[distributed.Cluster]:
    """Ray on this machine (2 CPUs), up for the whole module; shut down after."""
    assert not ray.is_initialized()
    with (
        pytest.MonkeyPatch.context() as env,
        distributed.connect(_ray_here(env)) as started,
    ):
        assert ray.is_initialized() and started.cpus == 2
        # Both workers up, with shipml and the model libraries imported: the time-budget test
        # then measures the search, not the workers' start.
        warm = ray.remote(
            lambda: [__import__(m) for m in ("shipml.training.distributed", "lightgbm")]
        )
        ray.get([warm.options(num_cpus=1).remote() for _ in range(2)])
        yield started
    assert not ray.is_initialized()


def _ray_here(env: pytest.MonkeyPatch) -> ComputeConfig:
    # A throwaway instance: no token file under ~/.ray, no usage report.
    env.setenv("RAY_AUTH_MODE", "disabled")
    env.setenv("RAY_USAGE_STATS_ENABLED", "0")
    env.delenv("RAY_ADDRESS", raising=False)
    return ComputeConfig(engine="ray", num_cpus=2)


@pytest.fixture(scope="module")
def folds() -> FoldSet:
    data = load_breast_cancer(as_frame=True)
    df = data.frame.sample(300, random_state=0).reset_index(drop=True)
    schema = infer_schema(df, "target")
    X, y = df.drop(columns="target"), df["target"]
    return prepare_folds(X, y, schema, FeaturesConfig(), 2, 0, ordered=False)


def _search(
    folds: FoldSet, compute: ComputeConfig | None, events: list[str] | None = None
) -> SearchResult:
    training = TrainingConfig(trials=4, ensemble=False)
    families = families_for("classification", ["lightgbm"])

    def on_event(kind: str, **info: object) -> None:
        if events is not None and kind == "candidate_done":
            events.append(info["result"].name)  # type: ignore[attr-defined]

    far = time.monotonic() + 3600
    return run_search(
        families, folds, "classification", "roc_auc", training, far, on_event=on_event,
        compute=compute,
    )  # fmt: skip


def _board(result: SearchResult) -> list[tuple]:
    return [
        (r.name, r.status, r.reason, r.config, r.fold_scores, len(r.fold_models))
        for r in result.leaderboard.results
    ]


@pytest.mark.slow
def test_one_trial_in_flight_gives_the_local_leaderboard(
    cluster: distributed.Cluster, folds: FoldSet
) -> None:
    started = time.monotonic()
    local = _search(folds, None)
    local_s = time.monotonic() - started
    events: list[str] = []
    started = time.monotonic()
    on_ray = _search(folds, ComputeConfig(engine="ray", parallel_trials=1), events)
    ray_s = time.monotonic() - started
    print(f"local {local_s:.1f} s, ray (1 trial in flight) {ray_s:.1f} s")
    assert on_ray.trials == local.trials == 4
    # The same trials, pruned at the same folds, with the same scores: the same best model.
    assert _board(on_ray) == _board(local)
    assert on_ray.leaderboard.best is not None and local.leaderboard.best is not None
    assert on_ray.leaderboard.best.name == local.leaderboard.best.name
    # Every candidate and trial reached the driver's event handler (which logs child runs).
    assert events == [r.name for r in on_ray.leaderboard.results]
    # Four search trials, after LightGBM's early portfolio configuration (lightgbm#1).
    assert len([n for n in events if "#" in n]) == 1 + 4
    # Bagged families carry their fold models back from the workers.
    lightgbm = next(r for r in on_ray.leaderboard.results if r.name == "lightgbm")
    assert len(lightgbm.fold_models) == folds.per_repeat


@pytest.mark.slow
def test_trials_in_flight_together_are_reproducible(
    cluster: distributed.Cluster, folds: FoldSet
) -> None:
    compute = ComputeConfig(engine="ray", parallel_trials=3)
    first, second = _search(folds, compute), _search(folds, compute)
    assert first.trials == second.trials == 4
    assert _board(first) == _board(second)
    tuned = [r for r in first.leaderboard.results if r.trial > 0]  # lightgbm#1 runs early
    assert len(tuned) == 1 + 4 and {r.status for r in tuned} <= {"ok", "pruned"}
    assert len(first.history) == len(first.leaderboard.results)


@pytest.mark.slow
def test_a_time_budget_stops_the_search_on_ray(
    cluster: distributed.Cluster, folds: FoldSet
) -> None:
    families = families_for("classification", ["lightgbm", "random_forest", "extra_trees"])
    compute = ComputeConfig(engine="ray", parallel_trials=2)
    started = time.monotonic()
    result = run_search(
        families, folds, "classification", "roc_auc", TrainingConfig(ensemble=False),
        started + 3, compute=compute,
    )  # fmt: skip
    assert time.monotonic() - started < 6  # folds still out when the budget ends are not awaited
    statuses = {r.name: r.status for r in result.leaderboard.results}
    opening = [f.name for f in families]
    opening.insert(opening.index("lightgbm") + 1, "lightgbm#1")  # its early portfolio config
    assert list(statuses)[: len(opening)] == opening
    assert statuses["majority"] == statuses["logistic_regression"] == "ok"  # baselines always
    assert set(statuses.values()) <= {"ok", "pruned", "stopped", "skipped"}


@pytest.mark.slow
def test_shipml_train_on_ray_registers_a_model(
    cluster: distributed.Cluster, tmp_path: Path
) -> None:
    def edit(raw: dict) -> None:
        raw["training"].update(models=["lightgbm"], trials=3, cv=2, time_budget_s=30)
        raw["compute"] = {"engine": "ray", "parallel_trials": 2}

    config = make_project(tmp_path, breast_cancer_frame(), "diagnosis", edit)
    result = run_cli("train", "-c", config)
    assert result.exit_code == 0, result.all
    assert "the search runs on Ray (local, 2 CPUs): 6 folds per candidate and 2 trial(s)" in (
        " ".join(result.all.split())
    )
    project = Project.load(config)
    version = project.models()[-1]
    assert version.version == 1
    client = project.store.client
    children = client.search_runs(
        [project.store.experiment_id], f"tags.mlflow.parentRunId = '{version.run_id}'"
    )
    names = {r.info.run_name for r in children}
    assert {"majority", "logistic_regression", "lightgbm"} <= names
    assert len([n for n in names if "#" in n]) == 1 + 3  # the early lightgbm#1, three trials
    assert len(project.predict(pd.read_csv(tmp_path / "new.csv"))) == 40


def test_an_unreachable_address_is_a_user_error_before_the_data_is_read(tmp_path: Path) -> None:
    def edit(raw: dict) -> None:
        raw["compute"] = {"engine": "ray", "address": "ray://127.0.0.1:1"}

    config = make_project(tmp_path, breast_cancer_frame(), "diagnosis", edit)
    (tmp_path / "train.csv").unlink()  # were it read, the error would be about the data
    started = time.monotonic()
    result = run_cli("train", "-c", config)
    assert result.exit_code == 2, result.all
    assert "cannot reach the Ray cluster at ray://127.0.0.1:1" in result.stderr
    assert "ray start --head" in result.stderr and "Traceback" not in result.all
    assert time.monotonic() - started < 15


@pytest.mark.parametrize(
    ("compute", "needle"),
    [
        ({"engine": "spark"}, "compute.engine"),
        ({"engine": "ray", "address": "http://head:8265"}, "compute.address: a Ray address is"),
        ({"address": "ray://head:10001"}, "address is a setting of the Ray engine"),
        ({"engine": "ray", "address": "auto", "num_cpus": 4}, "num_cpus sizes the Ray started"),
        ({"engine": "ray", "parallel_trials": 0}, "compute.parallel_trials"),
    ],
)
def test_bad_compute_settings_are_user_errors(tmp_path: Path, compute: dict, needle: str) -> None:
    config = tmp_path / "shipml.yaml"
    raw = {"name": "x", "data": {"path": "d.csv"}, "target": "y", "compute": compute}
    config.write_text(yaml.safe_dump(raw))
    result = run_cli("train", "-c", config)
    assert result.exit_code == 2, result.all
    assert needle in result.stderr and "Traceback" not in result.all


@pytest.mark.slow  # it starts Ray
def test_workers_with_another_shipml_are_refused(cluster: distributed.Cluster) -> None:
    distributed.check_workers(ray)  # the same installation: fine
    refused = f"workers have shipml {shipml.__version__}, this machine 9.9.9"
    with pytest.raises(ClusterError, match=re.escape(refused)):
        distributed.check_workers(ray, expected="9.9.9")


def test_without_ray_installed_the_error_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if not installed
    with pytest.raises(ClusterError) as caught:
        distributed.preflight(RAY)
    assert caught.value.hint == 'pip install "shipml[ray]"'
