"""Several real `shipml` commands started at once on a new project, whose store the first of them
creates: every one succeeds (or says in one line why not), none prints a traceback, and the store
works afterwards. MLflow creates and migrates the SQLite store's tables on first use without a
lock of its own; two processes doing it at once crash one of them, or leave the migration half
done so that every later command fails."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.chaos.figures import record
from tests.conftest import make_project, run_cli
from tests.serving_helpers import SHIPML
from tests.test_store_safety import (
    SCHEMA,
    small_frame,
)

pytestmark = [pytest.mark.chaos]

ROUNDS = 3
AT_ONCE = 4


def _all_at_once(commands: list[list[str]], folder: Path, timeout: float = 300) -> list[str]:
    """Start every command together; each one's failure (exit code and output), if any."""
    env = {**os.environ, "COLUMNS": "200"}
    procs = [
        subprocess.Popen(
            [SHIPML, *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=folder,
        )
        for command in commands
    ]
    deadline = time.monotonic() + timeout
    failures = []
    for command, proc in zip(commands, procs, strict=True):
        try:
            output, _ = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate(timeout=30)
            failures.append(f"{command}: still running after {timeout} s")
            continue
        if "Traceback" in output or proc.returncode not in (0, 2):
            failures.append(f"{command}: exit {proc.returncode}: {output[-1500:]}")
        elif proc.returncode == 2 and len(output.strip().splitlines()) > 2:
            failures.append(f"{command}: more than an error and its hint: {output[-1500:]}")
    return failures


@pytest.mark.timeout(900)
def test_the_first_commands_of_a_new_project_at_once_leave_a_working_store(
    tmp_path: Path,
) -> None:
    failures = []
    for r in range(ROUNDS):
        folder = tmp_path / f"round-{r}"
        config = make_project(folder, small_frame(), SCHEMA.target)
        assert not (folder / ".shipml").exists()  # the commands below create the store
        failures += _all_at_once([["models", "-c", str(config)]] * AT_ONCE, folder)
        listed = run_cli("models", "-c", config)
        if listed.exit_code != 0:
            failures.append(f"round {r}: the store is broken afterwards: {listed.all[-500:]}")
    held = not failures
    record("first use of a new project", f"rounds of {AT_ONCE} commands at once", ROUNDS, held)
    assert held, "\n".join(failures)
