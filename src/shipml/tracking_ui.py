"""`shipml ui`: where the MLflow UI shows a project, and the UI server's process group.

The UI opens on the project's experiment, its runs view filtered to the training runs (a
training logs one child run per candidate, which would push earlier trainings behind "Load
more"), rather than on MLflow's landing page. The URLs follow the routes of the UI of the
pinned MLflow (``#/experiments/<id>/runs``, ``#/models/<name>``, and ``searchFilter`` with
MLflow's search syntax); tests/test_ui.py checks them against a real server.

`mlflow server` starts a dozen worker processes. They run in a process group (a session) of
their own, and stopping `shipml ui` (Ctrl-C, SIGTERM) stops the whole group: SIGTERM, then
SIGKILL for what is left after a grace period.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from urllib.parse import quote

# Training runs only: the children (candidates) carry their parent's id.
PARENT_RUNS_FILTER = "tags.mlflow.parentRunId IS NULL"


@dataclass
class TrackingUi:
    """Where the UI of a project's store is, and the command that serves it (None when the
    store is a tracking server, which serves its own)."""

    base_url: str
    experiment_id: str
    model_name: str
    command: list[str] | None
    environment: dict[str, str] = field(default_factory=dict)  # the command's, beside ours

    @property
    def runs_url(self) -> str:
        return runs_url(self.base_url, self.experiment_id)

    @property
    def models_url(self) -> str:
        return models_url(self.base_url, self.model_name)


def runs_url(base_url: str, experiment_id: str) -> str:
    """The experiment's runs view, training runs only."""
    query = quote(PARENT_RUNS_FILTER, safe="")
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?searchFilter={query}"


def models_url(base_url: str, model_name: str) -> str:
    """The registry page of a model: its versions and aliases."""
    return f"{base_url.rstrip('/')}/#/models/{quote(model_name, safe='')}"


def browse_host(host: str) -> str:
    """The host to browse a server listening on ``host`` at."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signum)


def serve_until_stopped(
    command: list[str], environment: dict[str, str] | None = None, grace_s: float = 10.0
) -> int:
    """Run ``command`` (with ``environment`` added to this process's) in a new session until
    it exits, or until this process gets SIGTERM or SIGINT: then the whole session is stopped
    (see ``stop_group``) and 0 is returned."""
    env = {**os.environ, **(environment or {})}
    proc = subprocess.Popen(command, start_new_session=True, env=env)
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return proc.wait()
    except (_Stop, KeyboardInterrupt):
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop_group(proc, grace_s)


def stop_group(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM to the process group led by ``proc``, SIGKILL to what is left of it after
    ``grace_s``; returns once no process of the group is left (or after a further deadline)."""
    group = proc.pid
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader; its workers are reaped by whoever adopts them
            if not _group_alive(group):
                return
            time.sleep(0.1)
    proc.poll()


def group_members(group: int) -> list[int]:
    """The live processes of a process group (zombies, which hold nothing, left out)."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: whether any process of the group is left at all
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [group]
    members = []
    for stat in proc.glob("[0-9]*/stat"):
        try:  # pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses
            state, _, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
        if int(pgrp) == group and state != "Z":
            members.append(int(stat.parent.name))
    return members


def _group_alive(group: int) -> bool:
    return bool(group_members(group))
