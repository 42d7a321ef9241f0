"""`shipml.Project`: the Python API, and the services the CLI calls."""

from __future__ import annotations

from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shipml import registry
from shipml.config import ProjectConfig, load_config
from shipml.errors import RegistryError


def report_file(root: Path, name: str, version: int) -> Path:
    """Where a version's HTML report lives in the project."""
    return root / ".shipml" / "reports" / f"{name}-v{version}.html"


if TYPE_CHECKING:  # imported where used: `shipml models` need not load scikit-learn's metrics
    import pandas as pd

    from shipml.monitoring.service import MonitorResult
    from shipml.scoring import EvaluationResult, Model
    from shipml.training.search import EventHandler
    from shipml.training.train import TrainResult


class Project:
    """A shipml project: its config file, its data source, its MLflow store and registry."""

    def __init__(self, config: ProjectConfig, path: Path) -> None:
        self.config = config
        self.path = path.resolve()
        self.root = self.path.parent

    @classmethod
    def load(cls, path: str | Path = "shipml.yaml") -> Project:
        """Load and validate a project's shipml.yaml."""
        path = Path(path)
        return cls(load_config(path), path)

    @cached_property
    def store(self) -> registry.Store:
        return registry.open_store(self.root, self.config.name, self.config.tracking_uri)

    def train(
        self,
        time_budget: float | None = None,
        data: str | Path | None = None,
        on_event: EventHandler | None = None,
        resume: bool = False,
    ) -> TrainResult:
        """Validate, train, evaluate, track and register a new model version.

        With ``resume``, network fits checkpointed by an interrupted run are picked up from
        ``.shipml/checkpoints/`` instead of starting over."""
        from shipml.training.train import train

        text = self.path.read_text(encoding="utf-8")
        result = train(self.config, self.root, text, data, time_budget, on_event, resume=resume)
        self.__dict__.pop("store", None)  # training may have created the store
        return result

    def load_model(self, ref: str | int = "champion") -> Model:
        """A registered version by alias ('champion', 'challenger') or number."""
        from shipml.scoring import Model

        return Model(registry.load(self.store, ref))

    def models(self) -> list[registry.VersionInfo]:
        return registry.list_versions(self.store)

    def champion(self) -> int | None:
        return registry.champion_version(self.store)

    def promote(self, version: int) -> int | None:
        """Make ``version`` the champion; returns the version it replaced."""
        return registry.promote(self.store, version)

    def rollback(self) -> tuple[int, int]:
        """Move the champion back to the previous one; returns (from, to)."""
        return registry.rollback(self.store)

    def predict(
        self, df: pd.DataFrame, ref: str | int = "champion", allow_extra: bool = False
    ) -> pd.DataFrame:
        return self.load_model(ref).score(df, allow_extra=allow_extra)

    def evaluate(
        self, df: pd.DataFrame, ref: str | int = "champion", source: str = "input"
    ) -> EvaluationResult:
        from shipml.scoring import evaluate

        return evaluate(self.load_model(ref), df, source)

    def report(self, ref: str | int = "champion") -> Path:
        """The HTML training report of a registered version (fetched from its MLflow run when
        it is not in this project's .shipml/reports/)."""
        version = registry.resolve(self.store, ref)
        path = report_file(self.root, self.config.name, version)
        if path.is_file():
            return path
        if registry.fetch_artifact(self.store, version, f"report/{path.name}", path.parent):
            return path
        raise RegistryError(
            f"version {version} of '{self.config.name}' has no report",
            "versions trained before shipml wrote reports have none: retrain to get one",
        )

    def monitor(
        self,
        current: str | Path | None = None,
        ref: str | int = "champion",
        window: int | None = None,
        since: datetime | None = None,
    ) -> MonitorResult:
        """Drift and performance of a file (``current``) or, without one, of the latest logged
        predictions, against version ``ref``'s reference profile."""
        from shipml.monitoring.drift import DriftSettings
        from shipml.monitoring.service import monitor_file, monitor_log

        settings = DriftSettings.from_config(self.config.monitoring)
        if current is not None:
            return monitor_file(self, Path(current), ref, settings)
        return monitor_log(self, ref, settings, window, since)

    def __repr__(self) -> str:
        return f"Project(name={self.config.name!r}, path={str(self.path)!r})"

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.config.name,
            "config": str(self.path),
            "store": self.store.tracking_uri,
        }
