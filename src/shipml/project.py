"""`shipml.Project`: the Python API, and the services the CLI calls."""

from __future__ import annotations

from datetime import datetime
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from shipml import registry_read
from shipml.config import ProjectConfig, load_config
from shipml.data.schema import Schema
from shipml.errors import RegistryError
from shipml.registry_read import LoadedModel, LocalRegistry, VersionInfo
from shipml.tracking_ui import TrackingUi, browse_host


def report_file(root: Path, name: str, version: int) -> Path:
    """Where a version's HTML report lives in the project."""
    return root / ".shipml" / "reports" / f"{name}-v{version}.html"


if TYPE_CHECKING:  # imported where used: `shipml models` need not load scikit-learn's metrics
    import pandas as pd

    from shipml import registry
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
        return _registry().open_store(
            self.root, self.config.name, self.config.tracking_uri, self.config.artifact_location
        )

    @property
    def _local(self) -> LocalRegistry | None:
        """The registry read without MLflow, when the store is the project's SQLite file
        (see shipml.registry_read); None otherwise: then MLflow reads it."""
        return LocalRegistry.open(self.root, self.config.name, self.config.tracking_uri)

    @property
    def unshared_artifacts(self) -> bool:
        """Whether runs are tracked in a database server (a team's) while their artifacts
        stay on this machine's disk, where no other machine can load them."""
        return _registry().unshared_artifacts(
            self.config.tracking_uri, self.config.artifact_location
        )

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

        _ = self.store  # creates the experiment where config.artifact_location says
        text = self.path.read_text(encoding="utf-8")
        result = train(self.config, self.root, text, data, time_budget, on_event, resume=resume)
        self.__dict__.pop("store", None)  # training may have created the store
        return result

    def load_model(self, ref: str | int = "champion", fast: bool = False) -> Model:
        """A registered version by alias ('champion', 'challenger') or number.

        With ``fast``, in a local store, a version with a fast-inference copy is scored by it
        (the copy verified at training: the same labels, probabilities within 1e-5; it and the
        model file checked here against their registered sha256), without importing MLflow,
        skops or scikit-learn: `.pipeline` is then a FastPipeline. Otherwise, or without a
        copy, the native model is loaded through MLflow."""
        from shipml.scoring import Model

        local = self._local if fast else None
        if local is not None:
            version = local.resolve(ref)
            found = local.fast_copy(version)
            if found is not None:
                from shipml.models.fastpipeline import FastPipeline

                blob, meta = found
                schema = Schema.from_dict(meta.pop("schema"))
                return Model(LoadedModel(version, FastPipeline.from_bytes(blob), schema, meta))
            ref = version
        return Model(_registry().load(self.store, ref))

    def resolve(self, ref: str | int = "champion") -> int:
        """The version number an alias ('champion', 'challenger') or a number names."""
        local = self._local
        if local is not None:
            return local.resolve(ref)
        return _registry().resolve(self.store, ref)

    def models(self) -> list[VersionInfo]:
        local = self._local
        if local is not None:
            return local.versions()
        return _registry().list_versions(self.store)

    def champion(self) -> int | None:
        local = self._local
        if local is not None:
            return local.alias_version(registry_read.CHAMPION)
        return _registry().champion_version(self.store)

    def promote(self, version: int) -> int | None:
        """Make ``version`` the champion; returns the version it replaced (``version`` itself
        when it already was the champion: nothing changes)."""
        return _registry().promote(self.store, version)

    def rollback(self) -> tuple[int, int]:
        """Move the champion back to the previous one; returns (from, to). The version moved
        from becomes the challenger again, unless another version is the challenger."""
        return _registry().rollback(self.store)

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
        version = self.resolve(ref)
        path = report_file(self.root, self.config.name, version)
        if path.is_file():
            return path
        if _registry().fetch_artifact(self.store, version, f"report/{path.name}", path.parent):
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

    def ui(self, host: str = "127.0.0.1", port: int = 5000) -> TrackingUi:
        """Where the MLflow UI shows this project: a tracking server's own UI, or the command
        that serves one on the project's store at ``host:port``."""
        reg = _registry()
        store = self.store
        if reg.is_server(store):
            return TrackingUi(store.tracking_uri, store.experiment_id, store.model_name, None)
        base = f"http://{browse_host(host)}:{port}"
        command = reg.ui_command(store, host, port)
        return TrackingUi(base, store.experiment_id, store.model_name, command, reg.UI_ENVIRONMENT)

    def __repr__(self) -> str:
        return f"Project(name={self.config.name!r}, path={str(self.path)!r})"

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.config.name,
            "config": str(self.path),
            "store": self.store.tracking_uri,
        }


def _registry() -> ModuleType:
    """shipml.registry, imported on first use: it imports MLflow, seconds per process, which
    the commands that only read a local registry (models, report, predict) never need."""
    import shipml.registry

    return shipml.registry
