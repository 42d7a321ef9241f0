"""Importing shipml: process-wide settings it makes, and what it leaves to the user."""

from __future__ import annotations

import os
import subprocess
import sys

CODE = (
    "import os, shipml; "
    "print(os.environ.get('GOMP_SPINCOUNT', '-'), os.environ.get('OMP_WAIT_POLICY', '-'))"
)


def _run(**settings: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    done = subprocess.run(
        [sys.executable, "-c", CODE], env={**env, **settings}, capture_output=True, text=True
    )
    return done.stdout.strip()


def test_importing_shipml_sets_a_short_openmp_spin() -> None:
    assert _run() == "1000 -"


def test_the_users_own_openmp_settings_win() -> None:
    assert _run(OMP_WAIT_POLICY="PASSIVE") == "- PASSIVE"
    assert _run(GOMP_SPINCOUNT="5") == "5 -"
