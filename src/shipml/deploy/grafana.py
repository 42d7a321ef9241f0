"""`shipml export grafana`: a Grafana dashboard over the metrics `shipml serve` exposes, with
the provisioning files that load it (and a Prometheus data source) when Grafana starts, and a
Prometheus scrape config for the service.

Every series carries ``model`` (the project's name): the dashboard's ``$model`` variable picks
one model and every query is filtered by it, so one Prometheus may scrape many services."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml

from shipml.deploy.docker import resource_name
from shipml.errors import ConfigError

# Every series the dashboard may query, as Prometheus stores them (prometheus_client adds _total
# to counters and _bucket/_sum/_count to histograms). Panel expressions use no other name. Each
# also carries {model}, the project's name.
METRIC_NAMES: tuple[str, ...] = (
    "shipml_predictions_total",  # {model_version}
    "shipml_prediction_latency_seconds_bucket",  # {model_version, le}
    "shipml_prediction_latency_seconds_sum",
    "shipml_prediction_latency_seconds_count",
    "shipml_prediction_confidence_bucket",  # {model_version, le}; le 0.5 ... 0.99, 1.0
    "shipml_prediction_confidence_sum",
    "shipml_prediction_confidence_count",
    "shipml_prediction_errors_total",  # {kind}
    "shipml_model_info",  # {model_version, family, inference}; 1 while served
    "shipml_drift_score",  # {model_version, column, method}
    "shipml_drift_detected",  # {model_version, column}
    "shipml_dataset_drift",  # {model_version}
    "shipml_drift_share",  # {model_version}
    "shipml_drift_window_rows",  # {model_version}
)
SCRAPE_FILE = "prometheus.yml"

DASHBOARDS_PATH = "/var/lib/grafana/dashboards"
PROMETHEUS_URL = "http://prometheus:9090"
_DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_MODEL = 'model="$model"'
_MV = f'{_MODEL},model_version=~"$model_version"'


def _rate(series: str, by: str = "model_version", match: str = _MV) -> str:
    return f"sum by ({by}) (rate({series}{{{match}}}[5m]))"


def _panel(
    kind: str,
    title: str,
    unit: str,
    grid: tuple[int, int, int, int],
    description: str,
    targets: list[tuple[str, str]],
    **extra: Any,
) -> dict[str, Any]:
    """One panel at grid (x, y, w, h); targets are (expr, legend) pairs; a table or stat panel
    queries instant values, a time series panel ranges."""
    x, y, w, h = grid
    instant = kind != "timeseries"
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": dict(_DATASOURCE),
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit, **extra.pop("defaults", {})}, "overrides": []},
        "targets": [
            {
                "refId": "ABCDEFGH"[i],
                "datasource": dict(_DATASOURCE),
                "expr": expr,
                "legendFormat": legend,
                "instant": instant,
                "range": not instant,
                "format": "table" if kind == "table" else "time_series",
            }
            for i, (expr, legend) in enumerate(targets)
        ],
        **extra,
    }


_V = "{{model_version}}"
_TABLE = {
    "transformations": [
        {
            "id": "organize",
            "options": {"excludeByName": dict.fromkeys(("Time", "Value", "__name__", "job"), True)},
        }
    ]
}
_SHARE = {"defaults": {"min": 0, "max": 1}}
_STAT = {"options": {"colorMode": "background", "reduceOptions": {"calcs": ["lastNotNull"]}}}
_NO, _YES = {"text": "no drift", "color": "green"}, {"text": "drift", "color": "red"}
_YES_NO = {
    "mappings": [{"type": "value", "options": {"0": _NO, "1": _YES}}],
    "thresholds": {
        "mode": "absolute",
        "steps": [{"color": "green", "value": None}, {"color": "red", "value": 1}],
    },
}
_LATENCY = _rate("shipml_prediction_latency_seconds_bucket", "le, model_version")
_CONFIDENCE = _rate("shipml_prediction_confidence_count")


def _panels() -> list[dict[str, Any]]:
    """The panels, laid out on Grafana's 24-column grid: (x, y, width, height)."""
    below = _rate("shipml_prediction_confidence_bucket", match=f'le="0.7",{_MV}')
    mean = _rate("shipml_prediction_confidence_sum")
    # fmt: off
    return [
        _panel("table", "Model in service", "none", (0, 0, 12, 6),
            "The model version each replica serves, with its family and inference path.",
            [(f"shipml_model_info{{{_MODEL}}} == 1", "")], **_TABLE),
        _panel("stat", "Dataset drift", "none", (12, 0, 4, 6),
            "Whether the data of the latest drift window drifted as a whole (0 = no, 1 = yes).",
            [(f"max(shipml_dataset_drift{{{_MV}}})", "")], defaults=_YES_NO, **_STAT),
        _panel("stat", "Drifted columns", "percentunit", (16, 0, 4, 6),
            "Share of the input columns that drifted in the latest window, per model version.",
            [(f"max by (model_version) (shipml_drift_share{{{_MV}}})", _V)], **_SHARE, **_STAT),
        _panel("stat", "Drift window", "short", (20, 0, 4, 6),
            "Rows in the window of recent predictions that the drift figures are computed on.",
            [(f"max by (model_version) (shipml_drift_window_rows{{{_MV}}})", _V)]),
        _panel("timeseries", "Traffic", "suffix: rows/s", (0, 6, 12, 8),
            "Rows predicted per second, by the model version that predicted them.",
            [(_rate("shipml_predictions_total"), _V)]),
        _panel("timeseries", "Errors by kind", "reqps", (12, 6, 12, 8),
            "Requests answered with an error, per second, by kind (bad_request, "
            "body_too_large, not_ready, unsupported_media_type, internal).",
            [(_rate("shipml_prediction_errors_total", "kind", _MODEL), "{{kind}}")]),
        _panel("timeseries", "Latency", "s", (0, 14, 12, 8),
            "Time from request received to answer ready, per request: p50, p95 and p99.",
            [(f"histogram_quantile({q / 100}, {_LATENCY})", f"p{q} {_V}") for q in (50, 95, 99)]),
        _panel("timeseries", "Confidence", "percentunit", (12, 14, 12, 8),
            "Mean probability of the predicted class, and the share of rows predicted with "
            "confidence below 0.7 (classification models only).",
            [(f"{mean} / {_CONFIDENCE}", f"mean {_V}"),
             (f"{below} / {_CONFIDENCE}", f"below 0.7 {_V}")], **_SHARE),
        _panel("timeseries", "Drift score by column", "none", (0, 22, 12, 8),
            "Drift score of each input column, by test: p-values (ks, chisquare, z) drift when "
            "low, distances (wasserstein, jensenshannon, psi) when high.",
            [(f"max by (column, method) (shipml_drift_score{{{_MV}}})", "{{column}} {{method}}")]),
        _panel("table", "Drifted columns", "none", (12, 22, 12, 8),
            "The input columns whose drift was detected in the latest window.",
            [(f"shipml_drift_detected{{{_MV}}} == 1", "")], **_TABLE),
    ]
    # fmt: on


def _uid(name: str) -> str:
    """Grafana uids: at most 40 of [A-Za-z0-9_-]; a hash keeps long or dotted names distinct."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")
    if slug == name and len(slug) <= 33:
        return f"shipml-{slug}"
    return f"shipml-{slug[:24]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def dashboard(name: str) -> dict[str, Any]:
    """The Grafana dashboard (JSON model, schema 39) of project `name`'s prediction service."""
    panels = copy.deepcopy(_panels())  # no nested object shared between panels
    for number, panel in enumerate(panels, start=1):
        panel["id"] = number
    model_query = "label_values(shipml_model_info, model)"
    version_query = f"label_values(shipml_predictions_total{{{_MODEL}}}, model_version)"
    return {
        "uid": _uid(name),
        "title": f"shipml — {name}",
        "description": f"Traffic, errors, latency, confidence and drift of `shipml serve` ({name})",
        "tags": ["shipml"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                },
                {
                    # One model at a time: versions of two models are never added up.
                    "name": "model",
                    "label": "Model",
                    "type": "query",
                    "datasource": dict(_DATASOURCE),
                    "definition": model_query,
                    "query": model_query,
                    "refresh": 2,
                    "multi": False,
                    "includeAll": False,
                    "current": {"text": name, "value": name},
                    "sort": 1,
                },
                {
                    "name": "model_version",
                    "label": "Model version",
                    "type": "query",
                    "datasource": dict(_DATASOURCE),
                    "definition": version_query,
                    "query": version_query,
                    "refresh": 2,  # on time range change: new versions show up
                    "multi": True,
                    "includeAll": True,
                    "allValue": ".*",  # also versions with drift but no traffic yet
                    "current": {"text": ["All"], "value": ["$__all"]},
                    "sort": 3,
                },
            ]
        },
        "panels": panels,
    }


_DASHBOARDS_HEADER = f"""\
# Grafana provisioning: load the shipml dashboards from {DASHBOARDS_PATH}.
# Mount this folder at /etc/grafana/provisioning and the shipml-*-dashboard.json files
# at {DASHBOARDS_PATH} (or change `path` below).
"""
_DATASOURCES_HEADER = f"""\
# Grafana provisioning: the Prometheus server that scrapes `shipml serve` (/metrics).
# Change `url` to where your Prometheus answers; {PROMETHEUS_URL} is its name in docker compose.
"""


def scrape_config(name: str, target: str) -> str:
    """prometheus.yml: one job scraping the service of project `name` at `target` (host:port)
    every 15 s, and (commented out) the Kubernetes job that finds its pods instead."""
    config = {
        "global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
        "scrape_configs": [
            {
                "job_name": f"shipml-{name}",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [target]}],
            }
        ],
    }
    return (
        _SCRAPE_HEADER.format(name=name, target=target)
        + yaml.safe_dump(config, sort_keys=False)
        + _SCRAPE_KUBERNETES.format(name=name, app=resource_name(name))
    )


_SCRAPE_HEADER = """\
# Prometheus: scrape `shipml serve` of '{name}' (GET /metrics). Every series carries
# model="{name}", so one Prometheus may scrape several services: add each export's job to
# scrape_configs, and pick the model in the dashboard. Set `targets` to where the service
# answers ({target} is its name in docker compose); check with `promtool check config`.
"""
_SCRAPE_KUBERNETES = """\
# In Kubernetes, instead of static_configs, find the pods `shipml export k8s` runs by their
# labels and prometheus.io/* annotations:
# - job_name: shipml-{name}-pods
#   kubernetes_sd_configs: [{{role: pod}}]
#   relabel_configs:
#     - source_labels: [__meta_kubernetes_pod_label_app_kubernetes_io_name]
#       regex: {app}
#       action: keep
#     - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape]
#       regex: "true"
#       action: keep
#     - source_labels: [__address__, __meta_kubernetes_pod_annotation_prometheus_io_port]
#       regex: ([^:]+)(?::\\d+)?;(\\d+)
#       replacement: $1:$2
#       target_label: __address__
"""


def export_grafana(out: Path, name: str, port: int = 8000) -> list[Path]:
    """Write the dashboard, the Grafana provisioning files and a Prometheus scrape config (of
    the service on `port`) under `out`; the written paths."""
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"project name {name!r} cannot name a dashboard file",
            "use letters, digits, '_', '.' and '-', starting with a letter or digit",
        )
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file", "choose a folder for the Grafana files")
    providers = {
        "apiVersion": 1,
        "providers": [
            {
                "name": "shipml",
                "orgId": 1,
                "folder": "shipml",
                "type": "file",
                "disableDeletion": False,
                "allowUiUpdates": True,
                "updateIntervalSeconds": 30,
                "options": {"path": DASHBOARDS_PATH},
            }
        ],
    }
    sources = {
        "apiVersion": 1,
        "datasources": [
            {"name": "Prometheus", "type": "prometheus", "access": "proxy", "url": PROMETHEUS_URL}
        ],
    }
    files = {
        out / f"shipml-{name}-dashboard.json": json.dumps(dashboard(name), indent=2) + "\n",
        out / "provisioning" / "dashboards" / "shipml.yaml": _DASHBOARDS_HEADER
        + yaml.safe_dump(providers, sort_keys=False),
        out / "provisioning" / "datasources" / "prometheus.yaml": _DATASOURCES_HEADER
        + yaml.safe_dump(sources, sort_keys=False),
        out / SCRAPE_FILE: scrape_config(name, f"{resource_name(name)}:{port}"),
    }
    try:
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot write the Grafana files under {out}: {e}") from e
    return list(files)
