"""`shipml serve`: uvicorn with the app factory, one or several worker processes."""

from __future__ import annotations

import os
import shutil
import socket

from shipml import registry
from shipml.errors import ConfigError
from shipml.project import Project
from shipml.serving.app import CONFIG_ENV

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


def prepare(project: Project, workers: int) -> str | None:
    """Environment for the workers; returns a warning to show, if any."""
    os.environ[CONFIG_ENV] = str(project.path)
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
