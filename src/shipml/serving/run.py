"""`shipml serve`: uvicorn with the app factory, one or several worker processes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from shipml import registry
from shipml.errors import ConfigError
from shipml.project import Project
from shipml.registry_reach import wait_for_registry
from shipml.serving.app import CONFIG_ENV, WORKERS_ENV

FACTORY = "shipml.serving.app:app_from_env"


def check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise ConfigError(
                f"cannot listen on {host}:{port}: {err.strerror or err}",
                "pick another --port, or stop what is using this one",
            ) from None


def _say(line: str) -> None:
    # Before uvicorn configures logging: straight to stderr, where a container's log is read.
    print(line, file=sys.stderr, flush=True)


def prepare(project: Project, workers: int) -> str | None:
    """Environment for the workers; returns a warning to show, if any. With a registry server
    as tracking_uri, first waits for it to answer (saying where and why), within the budget
    of serving.registry_*: RegistryError when it does not."""
    wait_for_registry(project.config.tracking_uri, project.config.serving, _say, project.path.name)
    os.environ[CONFIG_ENV] = str(project.path)
    os.environ[WORKERS_ENV] = str(workers)
    if workers > 1:
        # prometheus_client's multiprocess mode: every worker writes its samples here.
        folder = project.root / ".shipml" / "serving" / "metrics"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    else:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if registry.champion_version(project.store) is None:
        return (
            "the registry has no champion yet: /ready answers 503 until `shipml train` "
            "registers one (the server picks it up by itself)"
        )
    return None


def serve(project: Project, host: str, port: int, workers: int, access_log: bool) -> None:
    import uvicorn

    uvicorn.run(
        FACTORY,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=access_log,
        log_level="info",
        timeout_graceful_shutdown=10,
    )


@contextmanager
def background_server(project: Project, timeout: float = 60.0) -> Iterator[str]:
    """`shipml serve` in a thread of this process on a free 127.0.0.1 port, until the block
    ends; yields its base URL once /ready answers 200 (for the quickstart)."""
    import uvicorn

    from shipml.serving.app import create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    config = uvicorn.Config(
        create_app(project), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="shipml-serve", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(url + "/ready", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError(f"the server on {url} did not become ready")
            time.sleep(0.1)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def post_json(url: str, body: Any) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return dict(json.loads(answer.read()))
