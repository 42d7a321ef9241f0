"""A pull-mode image (tracking_uri a registry server) whose registry does not answer: the
image's own CMD, run as a subprocess from an exported folder, says the address at once, says
why it waits on every retry and exits 2 within its retry budget; the exported Kubernetes
startup probe outlasts that budget; a loopback tracking_uri is warned about at export."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from shipml.config import DeployConfig, ServingConfig
from shipml.deploy.bundle import loopback_note
from shipml.deploy.docker import dockerfile, serve_command
from shipml.deploy.k8s import STARTUP_PERIOD_S
from shipml.registry_reach import address, budget_s
from tests.conftest import run_cli
from tests.serving_helpers import free_port

BIN = Path(sys.executable).parent
# Short tries, so a test waits seconds: 3 tries of 1 s, 0.5 s between them (budget 4 s).
FAST = {"registry_timeout_s": 1.0, "registry_retries": 2, "registry_retry_wait_s": 0.5}
FIRST_LINE_S = 30.0  # from exec to the first line: imports on a loaded two-core machine
DEADLINE_S = 90.0  # a start that neither ends nor says anything by then is killed


def _project(folder: Path, tracking_uri: str, serving: dict[str, Any] | None = None) -> Path:
    """The shipml.yaml an exported pull-mode image holds (its tracking_uri a server)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "shipml.yaml"
    doc: dict[str, Any] = {
        "name": "churn",
        "data": {"path": "train.csv"},
        "target": "churned",
        "tracking_uri": tracking_uri,
    }
    if serving is not None:
        doc["serving"] = serving
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    return config


def _start(folder: Path) -> tuple[list[tuple[float, str]], int, float]:
    """The image's CMD (`shipml serve ...` as `shipml export docker` writes it) from ``folder``
    on a free 127.0.0.1 port: its lines with the seconds since start, its exit code, and how
    long it ran."""
    cmd = serve_command(DeployConfig())
    cmd[0] = str(BIN / "shipml")
    cmd[cmd.index("--host") + 1] = "127.0.0.1"
    cmd[cmd.index("--port") + 1] = str(free_port())
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=folder,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "COLUMNS": "400"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    killer = threading.Timer(DEADLINE_S, proc.kill)  # a silent process is stopped all the same
    killer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # ends when the process closes its output, or is killed
            lines.append((time.monotonic() - started, line.rstrip()))
        code = proc.wait(timeout=30)
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert lines, f"no output in {DEADLINE_S} s (exit {code})"
    return lines, code, time.monotonic() - started


def _check_gives_up(folder: Path, uri: str, why: str) -> None:
    lines, code, took = _start(folder)
    text = "\n".join(line for _, line in lines)
    assert code == 2, text
    assert "Traceback" not in text, text
    first_at, first = lines[0]
    # The address comes first, at once, with the budget it will wait.
    assert first.startswith(f"registry: pulling the champion from {uri}"), text
    assert "up to 3 tries of 1 s, giving up after 4 s" in first, text
    assert first_at < FIRST_LINE_S, text
    # One line per failed try but the last, each saying why and how long it waits.
    retries = [line for _, line in lines if "not reachable, try" in line]
    assert len(retries) == 2, text
    for number, line in enumerate(retries, start=1):
        assert f"try {number} of 3: {why}" in line and "waiting 0.5 s" in line, line
    # Then the error, naming the address, and exit 2 within the budget.
    assert f"error: cannot reach the registry at {uri}: {why}" in text, text
    assert "(3 tries over" in text, text
    assert took - first_at < budget_s(ServingConfig(**FAST)) + 5, (took, first_at, text)


def test_a_closed_port_is_named_retried_and_given_up_on_within_the_budget(
    tmp_path: Path,
) -> None:
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = _project(tmp_path / "app", uri, FAST)
    _check_gives_up(config.parent, uri, "connection refused")
    assert "is this machine, and inside a container the container itself" in "\n".join(
        line for _, line in _start(config.parent)[0]
    )


@contextmanager
def _blackhole() -> Iterator[int]:
    """A 127.0.0.1 port where a connection is never taken: a listening socket whose queue is
    full (the kernel drops the SYNs, as a firewall dropping packets does); yields the port."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = int(server.getsockname()[1])
        filler = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            with socket.socket() as probe:  # the queue is full: a connection now hangs
                probe.settimeout(0.5)
                with pytest.raises(TimeoutError):
                    probe.connect(("127.0.0.1", port))
            yield port
        finally:
            filler.close()


def test_an_address_that_never_answers_is_given_up_on_within_the_budget(
    tmp_path: Path,
) -> None:
    with _blackhole() as port:
        uri = f"http://127.0.0.1:{port}"
        config = _project(tmp_path / "app", uri, FAST)
        _check_gives_up(config.parent, uri, "no answer within 1 s")


def test_a_server_that_accepts_but_never_answers_is_given_up_on(tmp_path: Path) -> None:
    """TCP connects (a proxy, a hung server) but no HTTP answer comes: the try still ends."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)  # accepted by the kernel, never read or answered
        uri = f"http://127.0.0.1:{server.getsockname()[1]}"
        config = _project(tmp_path / "app", uri, FAST)
        _check_gives_up(config.parent, uri, "no answer within 1 s")


def test_a_database_tracking_uri_is_tried_the_same_way(tmp_path: Path) -> None:
    uri = f"postgresql://shipml:***@127.0.0.1:{free_port()}/mlflow"
    config = _project(
        tmp_path / "app", uri.replace("***", "secret"), {**FAST, "registry_retries": 0}
    )
    lines, code, _ = _start(config.parent)
    text = "\n".join(line for _, line in lines)
    assert code == 2 and "secret" not in text, text
    assert f"cannot reach the registry at {uri}: connection refused" in text, text


def test_retry_budget_and_addresses() -> None:
    assert budget_s(ServingConfig()) == 6 * 5 + 5 * 5  # the defaults: under a minute
    assert budget_s(ServingConfig(**FAST)) == 4
    assert address("sqlite:///x/mlflow.db") is None and address(None) is None
    assert address("/home/me/mlruns") is None and address("databricks") is None
    found = address("https://u:p@mlflow.example.com/prefix/")
    assert found is not None and (found.host, found.port, found.path) == (
        "mlflow.example.com",
        443,
        "/prefix",
    )
    assert address("postgresql+psycopg2://db:6543/x") is not None
    for uri in (
        "http://127.0.0.1:5000",
        "http://localhost",
        "http://[::1]:5000",
        "http://127.3.0.1",
    ):
        found = address(uri)
        assert found is not None and found.loopback, uri
    found = address("http://mlflow:5000")
    assert found is not None and not found.loopback


# --- what the exports make of it ---------------------------------------------------------------


def _startup_budget(folder: Path) -> int:
    docs = [yaml.safe_load(p.read_text()) for p in folder.glob("*.yaml")]
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    assert probe["periodSeconds"] == STARTUP_PERIOD_S
    return int(probe["periodSeconds"] * probe["failureThreshold"])


@pytest.mark.parametrize(
    "serving",
    [
        None,  # the defaults
        {"registry_timeout_s": 30, "registry_retries": 10, "registry_retry_wait_s": 20},
    ],
)
def test_the_startup_probe_outlasts_the_retry_budget(
    tmp_path: Path, serving: dict[str, Any] | None
) -> None:
    config = _project(tmp_path / "project", "https://mlflow.example.com", serving)
    result = run_cli("export", "k8s", "-c", config, "--out", tmp_path / "k8s")
    assert result.exit_code == 0, result.all
    wait = budget_s(ServingConfig(**(serving or {})))
    # The registry's whole budget, and the two minutes a server had to start before.
    assert _startup_budget(tmp_path / "k8s") >= wait + 120
    text = dockerfile("churn", DeployConfig(), "churn:x", None, None, "https://m", wait)
    assert f"--start-period={60 + int(wait)}s" in text


def test_a_baked_model_keeps_the_startup_probe_of_two_minutes(tmp_path: Path) -> None:
    from shipml.deploy.k8s import deployment

    manifest = deployment("churn", DeployConfig(), "churn:v1", 1, "sha")
    probe = manifest["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] == 120
    assert "--start-period=60s" in dockerfile("churn", DeployConfig(), "churn:v1", 1, None)


@pytest.mark.parametrize("uri", ["http://127.0.0.1:5000", "http://localhost:5000"])
def test_a_loopback_tracking_uri_is_warned_about_at_export(tmp_path: Path, uri: str) -> None:
    config = _project(tmp_path / "project", uri)
    result = run_cli("export", "k8s", "-c", config, "--out", tmp_path / "k8s")
    assert result.exit_code == 0, result.all
    flat = " ".join(result.all.split())
    assert f"warning: tracking_uri {uri} is a loopback address" in flat, result.all
    assert "host.docker.internal" in flat and "Service" in flat
    assert loopback_note("http://mlflow.mlops.svc:5000") is None
    assert loopback_note("sqlite:////tmp/mlflow.db") is None  # baked: no registry at start
    note = loopback_note(uri)
    assert note is not None and "the container itself" in note
