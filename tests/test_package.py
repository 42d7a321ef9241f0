"""Importing shipml: process-wide settings it makes, and what it leaves to the user."""

from __future__ import annotations

import os
import subprocess
import sys

CODE = "import os, shipml; print(os.environ['OMP_WAIT_POLICY'])"


def _run(env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True)
    return done.stdout.strip()


def test_importing_shipml_sets_a_passive_openmp_wait_policy() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert _run(env) == "PASSIVE"


def test_the_users_own_wait_policy_wins() -> None:
    assert _run({**os.environ, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"
