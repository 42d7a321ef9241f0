"""shipml: from a table of data to a tracked, registered, evaluated model.

import shipml
project = shipml.Project.load("shipml.yaml")
result = project.train(time_budget=60)
model = project.load_model("champion")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Project", "ShipmlError", "__version__"]

if TYPE_CHECKING:
    from shipml.errors import ShipmlError
    from shipml.project import Project


def __getattr__(name: str) -> Any:
    # Lazy, so `shipml --help` does not pay for importing MLflow and scikit-learn.
    if name == "Project":
        from shipml.project import Project

        return Project
    if name == "ShipmlError":
        from shipml.errors import ShipmlError

        return ShipmlError
    raise AttributeError(f"module 'shipml' has no attribute {name!r}")
