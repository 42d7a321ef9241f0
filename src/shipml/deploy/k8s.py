"""`shipml export k8s`: Kubernetes manifests that run the serving image.

DIR/configmap.yaml    the project's shipml.yaml, mounted over the image's copy
DIR/deployment.yaml   replicas of `shipml serve`: probes on /health and /ready, requests and
                      limits, rolling updates that never drop below the wanted replicas, a
                      non-root, read-only container (the prediction log on an emptyDir)
DIR/service.yaml      port 80 to the pods' HTTP port
DIR/hpa.yaml          autoscaling/v2 on CPU utilisation between min and max replicas
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from shipml import registry
from shipml.config import DeployConfig
from shipml.deploy.bundle import pulls_from_registry, served_config
from shipml.deploy.docker import APP_DIR, USER_ID, default_image, resource_name
from shipml.deploy.output import check_out, out_folder, write_files
from shipml.errors import ConfigError
from shipml.registry_reach import budget_s

if TYPE_CHECKING:
    from shipml.project import Project

Manifest = dict[str, Any]
START_S = 120  # from the container's start to /health answering, the registry aside
STARTUP_PERIOD_S = 2


def with_overrides(deploy: DeployConfig, **overrides: Any) -> DeployConfig:
    """``deploy`` with the CLI's options (those not None) in place of its values, validated
    together: a bad value names its option and its config key."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return DeployConfig.model_validate({**deploy.model_dump(exclude_unset=True), **given})
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        where = f"deploy.{key}" if key else "deploy"
        if key in given:
            where = f"--{key.replace('_', '-')} (deploy.{key})"
        msg = first["msg"].removeprefix("Value error, ")
        got = f" (got {first['input']!r})" if key else ""
        raise ConfigError(
            f"{where}: {msg}{got}", "fix the option, or the deploy section of shipml.yaml"
        ) from None


def _labels(name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/component": "model-server",
    }


def _meta(name: str, version: int | None = None, suffix: str = "") -> dict[str, Any]:
    labels = {**_labels(name), "app.kubernetes.io/part-of": "shipml"}
    meta: dict[str, Any] = {"name": name + suffix, "labels": labels}
    if version is not None:
        meta["annotations"] = {"shipml/model-version": str(version)}
    return meta


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def _volumes(name: str, baked: bool) -> tuple[list[Manifest], list[Manifest]]:
    """(volumes, mounts): the config over the image's copy, and emptyDirs where the server
    writes, since the root filesystem is read-only: the whole store when the model is pulled at
    start, else the prediction log and the multi-worker metrics beside the baked store."""
    store = f"{APP_DIR}/.shipml"
    if baked:
        writable = {"predictions": f"{store}/predictions", "serving": f"{store}/serving"}
    else:
        writable = {"store": store}
    writable["tmp"] = "/tmp"
    volumes = [{"name": "config", "configMap": {"name": f"{name}-config"}}]
    volumes += [{"name": v, "emptyDir": {}} for v in writable]
    mounts: list[Manifest] = [
        {
            "name": "config",
            "mountPath": f"{APP_DIR}/shipml.yaml",
            "subPath": "shipml.yaml",
            "readOnly": True,
        }
    ]
    mounts += [{"name": v, "mountPath": path} for v, path in writable.items()]
    return volumes, mounts


def startup_failures(registry_wait_s: float) -> int:
    """The startup probe's failureThreshold: START_S to start the server, plus the longest it
    may wait for its registry (registry_reach.budget_s) before it listens."""
    return math.ceil((START_S + registry_wait_s) / STARTUP_PERIOD_S)


def deployment(
    name: str,
    deploy: DeployConfig,
    image: str,
    version: int | None,
    config_sha: str,
    registry_wait_s: float = 0.0,
) -> Manifest:
    """The Deployment; ``version`` is the baked-in model's (None: pulled at start, after
    waiting up to ``registry_wait_s`` for the registry)."""
    volumes, mounts = _volumes(name, baked=version is not None)
    container = {
        "name": "server",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": deploy.port, "protocol": "TCP"}],
        # MLflow credentials and SHIPML_ADMIN_TOKEN, when the secret exists.
        "envFrom": [{"secretRef": {"name": f"{name}-secrets", "optional": True}}],
        "resources": {
            "requests": {"cpu": deploy.cpu, "memory": deploy.memory},
            "limits": {"cpu": deploy.cpu_limit, "memory": deploy.memory_limit or deploy.memory},
        },
        # Starting (and, pulling the model, reaching the registry) may take a while: liveness
        # starts once /health has answered.
        "startupProbe": _probe("/health", STARTUP_PERIOD_S, startup_failures(registry_wait_s)),
        "livenessProbe": _probe("/health", 10, 3),
        "readinessProbe": _probe("/ready", 5, 2),
        # Let the Service stop sending requests before the server drains and exits.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": mounts,
    }
    annotations = {
        "checksum/config": config_sha,  # a new config rolls the pods
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(deploy.port),
        "prometheus.io/path": "/metrics",
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, version),
        "spec": {
            "replicas": deploy.replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": _labels(name)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {"labels": _labels(name), "annotations": annotations},
                "spec": {
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": USER_ID,
                        "runAsGroup": USER_ID,
                        "fsGroup": USER_ID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def service(name: str, deploy: DeployConfig) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name),
        "spec": {
            "type": deploy.service_type,
            "selector": _labels(name),
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def autoscaler(name: str, deploy: DeployConfig) -> Manifest:
    target = {"type": "Utilization", "averageUtilization": deploy.target_cpu_percent}
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": deploy.min_replicas or deploy.replicas,
            "maxReplicas": deploy.max_replicas,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": target}}],
        },
    }


def config_map(name: str, config_text: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(name, suffix="-config"),
        "data": {"shipml.yaml": config_text},
    }


class _Literal(str):
    """A string YAML writes as a literal block (the config stays readable in the ConfigMap)."""


def _literal(dumper: yaml.SafeDumper, text: _Literal) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(text), style="|")


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Literal, _literal)


def _dump(manifest: Manifest, comment: str) -> str:
    return f"# {comment}\n" + yaml.dump(manifest, Dumper=_Dumper, sort_keys=False, width=100)


def export_k8s(project: Project, out: Path, deploy: DeployConfig | None = None) -> list[Path]:
    """Write the manifests into ``out``; ``deploy`` replaces the config's deploy section."""
    deploy = deploy or project.config.deploy
    check_out(out, "Kubernetes manifests")
    name = resource_name(project.config.name)
    baked = not pulls_from_registry(project.config.tracking_uri)
    version = registry.resolve(project.store, registry.CHAMPION) if baked else None
    out_folder(out, "Kubernetes manifests")
    image = deploy.image or default_image(project.config.name, version)
    serving = project.config.serving
    text = served_config(project)
    # PyYAML writes a literal block only for text without trailing spaces or tabs.
    lines = [line.rstrip() for line in text.replace("\t", "    ").splitlines()]
    config = _Literal("\n".join(lines) + "\n")
    sha = hashlib.sha256(config.encode()).hexdigest()
    apply = f"kubectl apply -f {out}/"
    files = {
        out / "configmap.yaml": _dump(
            config_map(name, config), f"shipml.yaml of '{project.config.name}'. Apply: {apply}"
        ),
        out / "deployment.yaml": _dump(
            deployment(name, deploy, image, version, sha, 0.0 if baked else budget_s(serving)),
            f"`shipml serve` from {image}"
            + (f" (model version {version} baked in)" if version else " (model pulled at start)"),
        ),
        out / "service.yaml": _dump(service(name, deploy), f"{name} inside the cluster, port 80"),
        out / "hpa.yaml": _dump(autoscaler(name, deploy), "More replicas when CPU use is high"),
    }
    return write_files(files, "Kubernetes manifests")
