"""`shipml export grafana`: the dashboard's JSON model, its provisioning files, its Prometheus
scrape config (checked by promtool), and its panel queries run against a real Prometheus server
that scrapes the service's own metrics (two services of two models: test_metrics_model_label)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests
import yaml
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from shipml.deploy.grafana import METRIC_NAMES, dashboard, export_grafana, scrape_config
from shipml.errors import ConfigError, ShipmlError
from shipml.monitoring.drift import detect_drift
from shipml.serving.metrics import ServingMetrics
from tests.serving_helpers import Prometheus, free_port

NAME = "churn"
SERIES = re.compile(r"\bshipml_[A-Za-z0-9_:]*")
# The series shipml_model_info and the errors (no model_version label) are not filtered by
# version; every series is filtered by model.
UNFILTERED = {"shipml_model_info", "shipml_prediction_errors_total"}


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return list(board["panels"])


def _exprs(board: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, expr) of every query of the dashboard."""
    for panel in _panels(board):
        for target in panel["targets"]:
            yield panel["title"], target["expr"]


def _variables(board: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in board["templating"]["list"]}


def _family(name: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", name)


def _exposed(registry: CollectorRegistry) -> set[str]:
    """The shipml_ sample names a registry's /metrics shows (without prometheus_client's
    _created series)."""
    text = generate_latest(registry).decode()
    return {
        s.name
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("shipml_") and not s.name.endswith("_created")
    }


def _served_metrics() -> ServingMetrics:
    """The service's metrics after a few predictions of model version 3 and one error."""
    metrics = ServingMetrics(NAME)
    metrics.served("3", "lightgbm", "onnx")
    predictions, latency, confidence = metrics.children("3")
    predictions.inc(4)
    for seconds, proba in [(0.003, 0.55), (0.004, 0.65), (0.02, 0.9), (0.2, 0.99)]:
        latency.observe(seconds)
        confidence.observe(proba)
    metrics.error("bad_request")
    rng = np.random.default_rng(0)
    reference = pd.DataFrame(
        {"age": rng.normal(40, 10, 2000), "plan": rng.choice(["a", "b"], 2000)}
    )
    current = pd.DataFrame({"age": rng.normal(55, 10, 500), "plan": rng.choice(["a", "b"], 500)})
    metrics.drift("3", detect_drift(reference, current), 500)
    return metrics


def test_dashboard_is_a_json_model_grafana_loads() -> None:
    board = dashboard(NAME)
    assert json.loads(json.dumps(board)) == board
    assert board["schemaVersion"] == 39
    assert board["title"] == "shipml — churn"
    assert board["refresh"] == "30s"
    assert board["time"] == {"from": "now-6h", "to": "now"}
    assert board["uid"] == "shipml-churn"
    for panel in _panels(board):
        assert panel["type"] in {"timeseries", "stat", "table"}
        assert panel["title"] and panel["description"], panel
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(set(refs)) == len(refs), panel["title"]
    latency = next(p for p in _panels(board) if p["title"] == "Latency")
    assert latency["fieldConfig"]["defaults"]["unit"] == "s"
    assert [t["expr"].split(",")[0] for t in latency["targets"]] == [
        f"histogram_quantile({q}" for q in ("0.5", "0.95", "0.99")
    ]


@pytest.mark.parametrize("name", ["churn.v2", "a" * 100, "churn-v2", "x_y"])
def test_dashboard_uids_are_valid_distinct_and_stable(name: str) -> None:
    uid = dashboard(name)["uid"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", uid), uid
    assert uid == dashboard(name)["uid"]
    assert uid != dashboard(name + "0")["uid"]
    assert dashboard("churn.v2")["uid"] != dashboard("churn-v2")["uid"]


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    panels = _panels(dashboard(NAME))
    ids = [p["id"] for p in panels]
    assert len(set(ids)) == len(ids)
    boxes = [(p["title"], p["gridPos"]) for p in panels]
    for title, g in boxes:
        assert g["x"] >= 0 and g["y"] >= 0 and g["w"] > 0 and g["h"] > 0, title
        assert g["x"] + g["w"] <= 24, f"{title} is wider than the grid"
    for i, (a_title, a) in enumerate(boxes):
        for b_title, b in boxes[i + 1 :]:
            apart = (
                a["x"] + a["w"] <= b["x"]
                or b["x"] + b["w"] <= a["x"]
                or a["y"] + a["h"] <= b["y"]
                or b["y"] + b["h"] <= a["y"]
            )
            assert apart, f"{a_title} overlaps {b_title}"


def test_queries_use_only_known_series_and_show_every_metric() -> None:
    used: set[str] = set()
    for title, expr in _exprs(dashboard(NAME)):
        names = set(SERIES.findall(expr))
        assert names, f"{title}: {expr} queries no shipml series"
        assert names <= set(METRIC_NAMES), f"{title}: unknown {names - set(METRIC_NAMES)}"
        assert expr.count('model="$model"') == expr.count("shipml_"), f"{title}: {expr}"
        if names - UNFILTERED:
            assert 'model_version=~"$model_version"' in expr, f"{title}: {expr}"
        used |= names
    assert {_family(n) for n in used} == {_family(n) for n in METRIC_NAMES}


def test_metric_names_are_the_ones_the_service_exposes() -> None:
    exposed = _exposed(_served_metrics().registry)
    assert exposed <= set(METRIC_NAMES), f"not on the dashboard: {exposed - set(METRIC_NAMES)}"
    assert set(METRIC_NAMES) <= exposed, f"not served: {set(METRIC_NAMES) - exposed}"


def test_every_panel_uses_the_datasource_model_and_model_version_variables() -> None:
    board = dashboard(NAME)
    variables = _variables(board)
    source = variables["datasource"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    model = variables["model"]
    assert model["type"] == "query"
    assert model["query"] == "label_values(shipml_model_info, model)"
    assert model["multi"] is False and model["includeAll"] is False  # never two models summed
    assert model["current"] == {"text": NAME, "value": NAME}
    version = variables["model_version"]
    assert version["type"] == "query"
    assert (
        version["query"] == 'label_values(shipml_predictions_total{model="$model"}, model_version)'
    )
    names = [v["name"] for v in board["templating"]["list"]]
    assert names.index("model") < names.index("model_version")  # versions of the chosen model
    assert version["multi"] is True and version["includeAll"] is True
    assert version["datasource"]["uid"] == "${datasource}"
    for panel in _panels(board):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"]) == panel["datasource"]


def test_export_writes_the_dashboard_and_provisioning(tmp_path: Path) -> None:
    out = tmp_path / "deploy" / "grafana"  # made, parents too
    written = export_grafana(out, NAME)
    dashboard_file = out / "shipml-churn-dashboard.json"
    providers_file = out / "provisioning" / "dashboards" / "shipml.yaml"
    sources_file = out / "provisioning" / "datasources" / "prometheus.yaml"
    scrape_file = out / "prometheus.yml"
    assert written == [dashboard_file, providers_file, sources_file, scrape_file]
    scrape = yaml.safe_load(scrape_file.read_text())
    [job] = scrape["scrape_configs"]
    assert job["job_name"] == "shipml-churn" and job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": ["churn:8000"]}]
    assert export_grafana(out, NAME, port=9000)[-1] == scrape_file
    assert "churn:9000" in scrape_file.read_text()
    assert json.loads(dashboard_file.read_text()) == dashboard(NAME)
    assert dashboard_file.read_text().startswith('{\n  "')  # indented, for diffs
    providers = yaml.safe_load(providers_file.read_text())
    assert providers["apiVersion"] == 1
    [provider] = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    sources = yaml.safe_load(sources_file.read_text())
    assert sources["apiVersion"] == 1
    [source] = sources["datasources"]
    assert (source["type"], source["url"]) == ("prometheus", "http://prometheus:9090")
    assert "# Change `url`" in sources_file.read_text()
    # A second export overwrites the same files.
    dashboard_file.write_text("stale")
    assert export_grafana(out, NAME) == written
    assert json.loads(dashboard_file.read_text()) == dashboard(NAME)


def test_export_to_a_file_is_a_user_error(tmp_path: Path) -> None:
    out = tmp_path / "grafana"
    out.write_text("not a folder")
    with pytest.raises(ConfigError, match="is a file") as raised:
        export_grafana(out, NAME)
    assert isinstance(raised.value, ShipmlError) and raised.value.exit_code == 2
    assert raised.value.hint
    assert out.read_text() == "not a folder"
    with pytest.raises(ConfigError, match="cannot name a dashboard file"):
        export_grafana(tmp_path / "ok", "../escape")
    assert not (tmp_path / "ok").exists()


def _concrete(expr: str) -> str:
    """An expression as Grafana sends it with every model version selected."""
    return (
        expr.replace("$model_version", ".*")
        .replace("$model", NAME)
        .replace("[$__rate_interval]", "[5m]")
    )


@pytest.mark.integration
def test_every_panel_query_runs_on_a_real_prometheus(tmp_path: Path) -> None:
    """Each panel's PromQL is accepted by Prometheus, and finds series once Prometheus has
    scraped the service's metrics twice (rate() needs two samples)."""
    registry = _served_metrics().registry
    fed = _exposed(registry)
    port = free_port()
    exporter, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    prometheus = Prometheus(tmp_path, f"127.0.0.1:{port}")
    try:
        prometheus.wait_ready()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            seen = prometheus.query("count_over_time(shipml_model_info[1m])")
            if seen and float(seen[0]["value"][1]) >= 2:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("prometheus did not scrape the metrics twice in 30 s")
        for title, expr in _exprs(dashboard(NAME)):
            answer = requests.get(
                prometheus.url + "/api/v1/query", params={"query": _concrete(expr)}, timeout=10
            ).json()
            assert answer["status"] == "success", f"{title}: {expr}: {answer.get('error')}"
            if set(SERIES.findall(expr)) <= fed:
                assert answer["data"]["result"], f"{title}: {expr} found no series"
        versions = requests.get(
            prometheus.url + "/api/v1/label/model_version/values",
            params={"match[]": "shipml_predictions_total"},
            timeout=10,
        ).json()
        assert versions["data"] == ["3"]  # what the $model_version variable lists
    finally:
        prometheus.close()
        exporter.shutdown()
        exporter.server_close()


def _promtool(config: Path) -> str:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip("promtool is not installed (Debian: apt-get install -y prometheus)")
    done = subprocess.run(
        [binary, "check", "config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_the_scrape_config_passes_promtool_and_its_kubernetes_job_parses(tmp_path: Path) -> None:
    text = scrape_config(NAME, "churn:8000")
    (tmp_path / "prometheus.yml").write_text(text)
    assert "SUCCESS" in _promtool(tmp_path / "prometheus.yml")
    # The commented Kubernetes job, uncommented into scrape_configs, is valid as well.
    commented = [line for line in text.splitlines() if line.startswith(("# - ", "#   "))]
    assert commented[0] == "# - job_name: shipml-churn-pods"
    uncommented = "\n".join(line[2:] for line in commented)
    (tmp_path / "k8s.yml").write_text(text + uncommented + "\n")
    loaded = yaml.safe_load((tmp_path / "k8s.yml").read_text())
    assert [j["job_name"] for j in loaded["scrape_configs"]] == [
        "shipml-churn",
        "shipml-churn-pods",
    ]
    pods = loaded["scrape_configs"][1]
    assert pods["kubernetes_sd_configs"] == [{"role": "pod"}]
    assert pods["relabel_configs"][0]["regex"] == "churn"  # the label `export k8s` sets
    # (Debian's promtool is built without Kubernetes discovery: only its YAML is checked.)
