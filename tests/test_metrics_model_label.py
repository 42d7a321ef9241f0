"""One real Prometheus scraping two `shipml serve` processes of two models (a churn classifier
and a charges regressor, both at version 1), configured from the scrape configs `shipml export
grafana` writes: every series carries its model's name, the two are told apart, and every query
of each model's dashboard finds that model's series only."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.conftest import make_project, run_cli
from tests.serving_helpers import Prometheus, Server
from tests.test_serving import _customers

pytestmark = pytest.mark.integration

MODELS = {"churn": "churned", "charges": "monthly_charges"}


def _train(folder: Path, name: str, target: str) -> Path:
    def edit(raw: dict[str, Any]) -> None:
        raw["name"] = name
        raw["features"]["exclude"] = ["customer_id"]
        raw["training"].update(models=["random_forest"], baselines=False, trials=0, cv=2)
        raw["training"]["params"] = {"random_forest": {"n_estimators": 20}}
        raw["training"]["ensemble"] = False
        raw["monitoring"] = {"window": 20, "interval_s": 0.5}

    config = make_project(folder / name, _customers(), target, edit)
    result = run_cli("train", "-c", config)
    assert result.exit_code == 0, result.all
    return config


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("two-models")
    return {name: _train(folder, name, target) for name, target in MODELS.items()}


def _rows(config: Path, target: str, n: int) -> list[dict[str, Any]]:
    import pandas as pd

    df = pd.read_csv(config.parent / "labelled.csv").drop(columns=["customer_id", target])
    return list(json.loads(df.head(n).to_json(orient="records")))


def _scraping(prometheus: Prometheus, config: Path, jobs: set[str]) -> None:
    """Make ``prometheus`` run ``config`` (its own file, replaced, then a SIGHUP: Prometheus
    reloads it) and wait until it has loaded ``jobs``."""
    (Path(prometheus.log.name).parent / "prometheus.yml").write_text(config.read_text())
    prometheus.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    found: set[str] = set()
    while time.monotonic() < deadline:
        active = requests.get(prometheus.url + "/api/v1/targets", timeout=10).json()
        found = {t["labels"]["job"] for t in active["data"]["activeTargets"]}
        if found == jobs:
            return
        time.sleep(0.3)
    raise AssertionError(f"prometheus runs the jobs {found}, not {jobs}")


def _scrape_config(tmp_path: Path, projects: dict[str, Path], ports: dict[str, int]) -> Path:
    """The exported scrape configs of both projects, their jobs in one prometheus.yml, each
    target set to where its server listens here, scraped every second."""
    jobs = []
    for name, config in projects.items():
        out = tmp_path / f"grafana-{name}"
        result = run_cli("export", "grafana", "-c", config, "--out", out)
        assert result.exit_code == 0, result.all
        assert (out / "prometheus.yml").is_file() and (out / f"shipml-{name}-dashboard.json")
        exported = yaml.safe_load((out / "prometheus.yml").read_text())
        [job] = exported["scrape_configs"]
        assert job["static_configs"] == [{"targets": [f"{name}:8000"]}]
        job["static_configs"] = [{"targets": [f"127.0.0.1:{ports[name]}"]}]
        jobs.append(job)
    merged = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": jobs,
    }
    path = tmp_path / "both-services.yml"
    path.write_text(yaml.safe_dump(merged, sort_keys=False))
    promtool = shutil.which("promtool")
    if promtool is not None:
        done = subprocess.run(
            [promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
    return path


def _wait_for(prometheus: Prometheus, expr: str, want: Any, seconds: float = 60) -> Any:
    deadline = time.monotonic() + seconds
    seen: Any = None
    while time.monotonic() < deadline:
        seen = {r["metric"].get("model", ""): float(r["value"][1]) for r in prometheus.query(expr)}
        if seen == want:
            return seen
        time.sleep(0.5)
    raise AssertionError(f"{expr}: prometheus saw {seen}, expected {want}")


def _concrete(expr: str, model: str) -> str:
    """A panel's expression as Grafana sends it: this model, every version."""
    return expr.replace("$model_version", ".*").replace("$model", model)


def test_two_models_scraped_by_one_prometheus_stay_apart(
    tmp_path: Path, projects: dict[str, Path]
) -> None:
    with Server(projects["churn"]) as churn, Server(projects["charges"]) as charges:
        servers = {"churn": churn, "charges": charges}
        config = _scrape_config(tmp_path, projects, {n: s.port for n, s in servers.items()})
        prometheus = Prometheus(tmp_path, "127.0.0.1:1")  # its config replaced just below
        try:
            prometheus.wait_ready()
            _scraping(prometheus, config, {f"shipml-{name}" for name in servers})
            sent = {"churn": 0, "charges": 0}
            for name, server in servers.items():
                rows = _rows(projects[name], MODELS[name], 12)
                for row in rows[: 5 if name == "churn" else 2]:
                    assert server.post("/predict", {"features": row}).status_code == 200
                    sent[name] += 1
                r = server.post("/predict/batch", {"instances": rows})
                assert r.status_code == 200, r.text
                sent[name] += len(rows)
            assert churn.post("/predict", {"features": {"age": "x"}}).status_code == 422
            # Both models are at version 1: only the model label keeps them apart.
            _wait_for(
                prometheus,
                'sum by (model) (shipml_predictions_total{model_version="1"})',
                {n: float(k) for n, k in sent.items()},
            )
            _wait_for(
                prometheus,
                'sum by (model) (shipml_prediction_errors_total{kind="bad_request"})',
                {"churn": 1.0, "charges": 0.0},
            )
            _wait_for(prometheus, "sum by (model) (shipml_model_info)", {"churn": 1, "charges": 1})
            # Every shipml series of the server carries its model, and only its own.
            for name in servers:
                series = requests.get(
                    prometheus.url + "/api/v1/series",
                    params={"match[]": f'{{__name__=~"shipml_.+",job="shipml-{name}"}}'},
                    timeout=10,
                ).json()["data"]
                assert series, name
                assert {s.get("model") for s in series} == {name}, name
            labels = requests.get(prometheus.url + "/api/v1/label/model/values", timeout=10)
            assert sorted(labels.json()["data"]) == ["charges", "churn"]  # what $model lists
            # Each model's dashboard: every query runs and sees its own model only.
            for name in servers:
                board = json.loads(
                    (tmp_path / f"grafana-{name}" / f"shipml-{name}-dashboard.json").read_text()
                )
                for panel in board["panels"]:
                    for target in panel["targets"]:
                        expr = target["expr"]
                        assert '"$model"' in expr, f"{panel['title']}: {expr}"
                        answer = requests.get(
                            prometheus.url + "/api/v1/query",
                            params={"query": _concrete(expr, name)},
                            timeout=10,
                        ).json()
                        assert answer["status"] == "success", f"{panel['title']}: {expr}"
                        for result in answer["data"]["result"]:
                            assert result["metric"].get("model", name) == name, (expr, result)
                traffic = next(p for p in board["panels"] if p["title"] == "Traffic")
                expr = _concrete(traffic["targets"][0]["expr"], name)
                assert re.search(r'model="(churn|charges)"', expr)
                info = next(p for p in board["panels"] if p["title"] == "Model in service")
                rows = prometheus.query(_concrete(info["targets"][0]["expr"], name))
                assert [r["metric"]["model"] for r in rows] == [name]
        finally:
            prometheus.close()
