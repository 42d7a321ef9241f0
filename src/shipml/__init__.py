"""shipml: from a table of data to a tracked, registered, evaluated model.

import shipml
project = shipml.Project.load("shipml.yaml")
result = project.train(time_budget=60)
model = project.load_model("champion")
drift = shipml.detect_drift(reference_df, current_df)   # drift.columns["age"].score, .drift
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

# LightGBM and scikit-learn's tree code use OpenMP (GNU libgomp). Its default spin-wait (300,000
# turns) makes two-thread training several times slower as soon as another process shares the
# cores; no spin at all (OMP_WAIT_POLICY=PASSIVE) makes it up to nine times slower on an idle
# machine, where a sleeping thread wakes slowly. A short spin is fast on both (see
# benchmarks/omp_wait.py). Set before any of them is imported; a user's own setting wins.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")

__version__ = "0.1.0"
__all__ = ["DriftResult", "Project", "ShipmlError", "__version__", "detect_drift"]

if TYPE_CHECKING:
    from shipml.errors import ShipmlError
    from shipml.monitoring.drift import DriftResult, detect_drift
    from shipml.project import Project


def __getattr__(name: str) -> Any:
    # Lazy, so `shipml --help` does not pay for importing MLflow and scikit-learn.
    if name == "Project":
        from shipml.project import Project

        return Project
    if name == "ShipmlError":
        from shipml.errors import ShipmlError

        return ShipmlError
    if name in ("detect_drift", "DriftResult"):
        from shipml.monitoring import drift

        return getattr(drift, name)
    raise AttributeError(f"module 'shipml' has no attribute {name!r}")
