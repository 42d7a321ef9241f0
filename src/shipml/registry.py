"""The project's MLflow store: runs, the model registry, aliases, and safe model loading.

This is the only module that imports mlflow. Models are saved with skops and loaded here with
shipml's own list of trusted types (never the list written inside the model, never pickle), after
checking the file's sha256 against the one recorded at registration.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from shipml.data.schema import Schema
from shipml.data.sources import resolve_sql_url
from shipml.errors import RegistryError, ShipmlError, environment_fault
from shipml.models.keras_backend import user_code_only_under
from shipml.models.trusted import trusted_types_for
from shipml.registry_read import (
    CHALLENGER,
    CHAMPION,
    FAST_ARTIFACT,
    FAST_SHA_TAG,
    LoadedModel,
    VersionInfo,
    default_tracking_uri,
    is_database_uri,
    local_path,
    no_alias_error,
    no_version_error,
    uri_scheme,
)
from shipml.registry_read import SHA_TAG as _SHA_TAG
from shipml.registry_read import file_sha256 as _sha256

for _name in ("mlflow", "alembic", "alembic.runtime.migration"):
    logging.getLogger(_name).setLevel(logging.ERROR)
# MLflow logs every database error with its traceback before raising it again as an
# MlflowException (a locked or read-only SQLite store among them): shipml reports it in one line.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)

_HISTORY_TAG = "shipml.champion_history"
MODEL_REQUIREMENTS = (
    "scikit-learn",
    "skops",
    "lightgbm",
    "catboost",
    "pandas",
    "numpy",
    "scipy",
)


@dataclass
class Store:
    """Where a project's runs and registered models live."""

    root: Path
    tracking_uri: str
    experiment_id: str
    model_name: str
    client: MlflowClient = field(repr=False)

    @property
    def shipml_dir(self) -> Path:
        return self.root / ".shipml"

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file of the tracking store, when it is one."""
        prefix = "sqlite:///"
        if not self.tracking_uri.startswith(prefix):
            return None
        return Path(self.tracking_uri[len(prefix) :])


def tracking_store_uri(uri: str, root: Path) -> str:
    """The URI MLflow is given for a tracking_uri: a PostgreSQL URL (``postgresql://`` or
    ``postgres://``) gets the driver shipml installs, as data sources do (SQLAlchemy 2.1 maps
    a bare ``postgresql://`` to psycopg 3, which shipml does not install)."""
    if uri_scheme(uri) == "postgres":
        uri = "postgresql" + uri[len("postgres") :]
    if uri_scheme(uri) == "postgresql":
        return resolve_sql_url(uri, root)
    return uri


def artifact_root(
    root: Path, tracking_uri: str | None, artifact_location: str | None
) -> str | None:
    """Where the experiment's artifacts go when shipml creates it: ``artifact_location`` (a
    relative path from the project's folder); with a database as store (SQLite by default),
    the project's .shipml/artifacts (MLflow would use ./mlruns of whatever folder a command
    runs in); None for a tracking server, which decides."""
    if artifact_location:
        path = local_path(artifact_location)
        if path is None:
            return artifact_location  # s3://, gs://, wasbs://, ...
        return (path if path.is_absolute() else root / path).resolve().as_uri()
    if tracking_uri is None or is_database_uri(tracking_uri):
        return (root / ".shipml" / "artifacts").as_uri()
    return None


def unshared_artifacts(tracking_uri: str | None, artifact_location: str | None) -> bool:
    """A database server shared by a team as store, the artifacts on this machine's disk."""
    return (
        artifact_location is None
        and is_database_uri(tracking_uri)
        and uri_scheme(str(tracking_uri)) != "sqlite"
    )


def open_store(
    root: Path, name: str, tracking_uri: str | None = None, artifact_location: str | None = None
) -> Store:
    """Open (creating on first use) the project's tracking store and experiment."""
    root = root.resolve()
    (root / ".shipml").mkdir(parents=True, exist_ok=True)
    uri = tracking_store_uri(tracking_uri, root) if tracking_uri else default_tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    location = artifact_root(root, tracking_uri, artifact_location)
    try:
        with _creation_lock(uri):
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            experiment_id = _experiment_id(client, name, location)
    except Exception as err:  # MLflow's, SQLAlchemy's or the database driver's
        fault = environment_fault(err, store=root / ".shipml" if tracking_uri is None else None)
        if fault is not None:  # a read-only or full disk: the config is not to blame
            raise fault from None
        detail = err.message if isinstance(err, MlflowException) else str(err)
        hint = "check tracking_uri in shipml.yaml"
        if "_alembic_tmp_" in detail:
            hint = (
                "a process killed while it created the store left it half-migrated: move "
                f"{uri.removeprefix('sqlite:///')} aside and run the command again"
            )
        raise RegistryError(
            f"cannot open the MLflow store at {uri}: {detail.splitlines()[0]}", hint
        ) from None
    return Store(root, uri, experiment_id, name, client)


@contextlib.contextmanager
def _creation_lock(uri: str) -> Iterator[None]:
    """Held while a process opens a local SQLite store. MLflow creates and migrates its tables
    on first use without a lock of its own: two processes doing it at once leave a store whose
    migration is half done (every later command fails), or crash one of them."""
    if not uri.startswith("sqlite:///"):
        yield  # a server or a database of its own creates its tables once, under its own locks
        return
    database = Path(uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    try:  # read-only is enough to lock, and works where an image's store is read-only
        fd = os.open(database.with_name(database.name + ".lock"), os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError:
        if not database.is_file():
            raise
        yield  # a store in a read-only folder: no process can create or migrate it
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        yield
    finally:
        os.close(fd)


def _experiment_id(client: MlflowClient, name: str, location: str | None) -> str:
    """The id of experiment ``name``, created on first use. Another process (of another machine,
    on a tracking server) may create it between the look-up and the creation: then it is read."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    try:
        return str(client.create_experiment(name, artifact_location=location))
    except MlflowException:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return str(experiment.experiment_id)


def all_package_versions() -> dict[str, str]:
    """Every installed distribution: {name: version}, sorted by name."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and name not in found:  # the first on sys.path is the one imported
            found[name] = dist.version
    return dict(sorted(found.items(), key=lambda item: item[0].lower()))


def package_versions(names: tuple[str, ...] = MODEL_REQUIREMENTS) -> dict[str, str]:
    out = {}
    for n in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[n] = metadata.version(n)
    return out


# ---------------------------------------------------------------- runs


class RunRecorder:
    """Records one `shipml train`: a parent run, a child run per candidate, the model."""

    def __init__(self, store: Store, run_name: str, tags: dict[str, str]) -> None:
        self.store = store
        run = store.client.create_run(
            store.experiment_id, run_name=run_name, tags={**tags, "shipml.pid": str(os.getpid())}
        )
        self.run_id: str = run.info.run_id

    def log_params(self, params: dict[str, Any], run_id: str | None = None) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.store.client.log_batch(run_id or self.run_id, params=items[i : i + 100])

    def log_metrics(
        self, metrics: dict[str, float], run_id: str | None = None, step: int = 0
    ) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), 500):
            self.store.client.log_batch(run_id or self.run_id, metrics=items[i : i + 500])

    def log_series(self, series: dict[str, list[tuple[int, float]]]) -> None:
        """Step metrics (key -> [(step, value), ...]), e.g. a network's loss per epoch, in as
        few batches as MLflow allows."""
        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, step) for k, points in series.items() for step, v in points
        ]
        for i in range(0, len(items), 1000):
            self.store.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def set_tags(self, tags: dict[str, str], run_id: str | None = None) -> None:
        self.store.client.log_batch(
            run_id or self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]
        )

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self.store.client.log_dict(self.run_id, data, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.store.client.log_text(self.run_id, text, artifact_file)

    def log_file(self, path: Path, artifact_path: str | None = None) -> None:
        self.store.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.store.client.log_figure(self.run_id, figure, artifact_file)

    def log_child(
        self,
        name: str,
        params: dict[str, Any],
        fold_metrics: dict[str, list[float]],
        summary: dict[str, float],
        status: str,
    ) -> str:
        """One candidate as a child run: its params, per-fold metrics (as steps) and means."""
        client = self.store.client
        run = client.create_run(
            self.store.experiment_id,
            run_name=name,
            tags={"mlflow.parentRunId": self.run_id, "shipml.candidate": name},
        )
        child = run.info.run_id
        self.log_params(params, run_id=child)
        now = int(time.time() * 1000)
        metrics = [
            Metric(f"cv_{metric}", float(v), now, step)
            for metric, values in fold_metrics.items()
            for step, v in enumerate(values)
        ]
        metrics += [Metric(k, float(v), now, 0) for k, v in summary.items()]
        for i in range(0, len(metrics), 500):
            client.log_batch(child, metrics=metrics[i : i + 500])
        client.set_terminated(child, "FINISHED" if status == "ok" else "FAILED")
        return child

    def log_model(
        self, pipeline: Any, schema: Schema, input_example: Any, meta: dict[str, Any]
    ) -> tuple[str, str]:
        """Log the fitted pipeline with skops, signature and input example; (model uri, sha256).
        The run stays RUNNING: it is finished (``finish``) once everything else is written."""
        from mlflow.models import infer_signature

        sio = serializer()
        trusted = trusted_types_for(sio.get_untrusted_types(data=sio.dumps(pipeline)))
        signature = infer_signature(input_example, pipeline.predict(input_example))
        requirements = [f"{n}=={v}" for n, v in package_versions().items()]
        _use_store(self.store)
        # The run is named rather than started (`with mlflow.start_run(...)` ends it on leaving),
        # and the logged model is created in the project's experiment, where an active run would
        # have put it (MLflow's default experiment otherwise).
        logged = self.store.client.create_logged_model(
            self.store.experiment_id, name="model", source_run_id=self.run_id
        )
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            serialization_format="skops",
            skops_trusted_types=trusted,
            signature=signature,
            input_example=input_example,
            pip_requirements=requirements,
            metadata={"shipml": {**meta, "schema": schema.to_dict()}},
            run_id=self.run_id,
            model_id=logged.model_id,
        )
        scratch = tempfile.mkdtemp(prefix="shipml-")
        try:
            local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=scratch))
            sha = _sha256(local / _model_file(local))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return info.model_uri, sha

    def log_bytes(self, data: bytes, artifact_file: str) -> str:
        """Log ``data`` as one artifact file; returns its sha256."""
        scratch = Path(tempfile.mkdtemp(prefix="shipml-"))
        try:
            path = scratch / Path(artifact_file).name
            path.write_bytes(data)
            parent = str(Path(artifact_file).parent)
            self.log_file(path, None if parent == "." else parent)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return hashlib.sha256(data).hexdigest()

    def finish(self, status: str = "FINISHED") -> None:
        self.store.client.set_terminated(self.run_id, status)


# scikit-learn's vendored array-API adapter for torch: importing it imports torch.
_TORCH_ADAPTER = "sklearn.externals.array_api_compat.torch"


def serializer() -> ModuleType:
    """skops.io, the model serializer, imported without importing torch.

    On its first import skops lists scikit-learn's estimators (``all_estimators``), a walk that
    imports every package inside scikit-learn, the vendored array-API adapter for torch among
    them, and with it torch: 1.3 of skops' 1.6 s here, in every process that saves or loads a
    model, for a package no estimator list needs (the walk skips ``externals`` when it looks for
    estimators; it only cannot help entering the package). While skops is imported an empty
    placeholder stands in for that adapter, and it is removed afterwards, so code that needs
    the adapter later (or a network, which needs torch) imports the real one."""
    if "skops.io" in sys.modules:
        return sys.modules["skops.io"]
    placeholder = None
    if "torch" not in sys.modules and _TORCH_ADAPTER not in sys.modules:
        placeholder = ModuleType(_TORCH_ADAPTER)
        placeholder.__path__ = []  # a package with nothing in it: the walk stops here
        sys.modules[_TORCH_ADAPTER] = placeholder
    try:
        import skops.io
    finally:
        if placeholder is not None and sys.modules.get(_TORCH_ADAPTER) is placeholder:
            del sys.modules[_TORCH_ADAPTER]
    return skops.io


def import_serializer() -> None:
    """Import skops.io now (well over a second the first time in a process: see serializer)."""
    serializer()


def close_stale_runs(store: Store) -> int:
    """Mark runs left RUNNING by a killed `shipml train` as KILLED; returns how many."""
    closed = 0
    runs = store.client.search_runs(
        [store.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000
    )
    for run in runs:
        pid = run.data.tags.get("shipml.pid")
        if pid and pid.isdigit() and not _alive(int(pid)):
            store.client.set_terminated(run.info.run_id, "KILLED")
            closed += 1
    return closed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------- registry


def register(store: Store, model_uri: str, sha256: str, tags: dict[str, str]) -> int:
    """Register a logged model as the next version of the project's model."""
    client = store.client
    with contextlib.suppress(MlflowException):
        client.create_registered_model(store.model_name)
    # register_model prints progress lines of its own; shipml reports the outcome itself.
    _use_store(store)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        mv = mlflow.register_model(model_uri, store.model_name, tags={**tags, _SHA_TAG: sha256})
    return int(mv.version)


def assign_new_version_alias(store: Store, version: int, gated: bool = False) -> str:
    """The first version (or any version while there is no champion) becomes champion;
    ``gated`` (a retrain) makes every new version the challenger: its gate decides."""
    if not gated and _alias_version(store, CHAMPION) is None:
        _move_champion(store, version)
        return CHAMPION
    store.client.set_registered_model_alias(store.model_name, CHALLENGER, str(version))
    return CHALLENGER


def _alias_version(store: Store, alias: str) -> int | None:
    try:
        return int(store.client.get_model_version_by_alias(store.model_name, alias).version)
    except MlflowException:
        return None


def _history(store: Store) -> list[int]:
    try:
        model = store.client.get_registered_model(store.model_name)
    except MlflowException:
        return []
    raw = model.tags.get(_HISTORY_TAG, "")
    return [int(v) for v in raw.split(",") if v.strip().isdigit()]


def _move_champion(store: Store, version: int) -> None:
    # The alias moves first (one atomic write); the history tag follows. A crash between the two
    # leaves a history that rollback still reads correctly (see rollback).
    client = store.client
    client.set_registered_model_alias(store.model_name, CHAMPION, str(version))
    if _alias_version(store, CHALLENGER) == version:
        client.delete_registered_model_alias(store.model_name, CHALLENGER)
    history = [*_history(store), version][-50:]
    client.set_registered_model_tag(store.model_name, _HISTORY_TAG, ",".join(map(str, history)))


MANIFEST_ARTIFACT = "manifest/manifest.json"
MANIFEST_SHA_TAG = "shipml.manifest_sha256"


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys): independent of formatting."""
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def log_manifest(store: Store, version: int, manifest: dict[str, Any]) -> None:
    """The version's manifest on its run, its digest on the version: a later change to the
    artifact is detected by ``load_manifest``."""
    run_id = _get_version(store, version).run_id
    store.client.log_dict(run_id, manifest, MANIFEST_ARTIFACT)
    store.client.set_model_version_tag(
        store.model_name, str(version), MANIFEST_SHA_TAG, manifest_digest(manifest)
    )


def load_manifest(store: Store, version: int) -> dict[str, Any]:
    """Version ``version``'s manifest, checked against the digest registered with it."""
    mv = _get_version(store, version)
    expected = (mv.tags or {}).get(MANIFEST_SHA_TAG)
    if not expected or not mv.run_id:
        raise RegistryError(
            f"version {version} has no manifest", "versions trained before manifests have none"
        )
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=mv.run_id,
                artifact_path=MANIFEST_ARTIFACT,
                dst_path=tmp,
                tracking_uri=store.tracking_uri,
            )
            manifest: dict[str, Any] = json.loads(Path(local).read_text(encoding="utf-8"))
        except (MlflowException, OSError, ValueError) as err:
            raise RegistryError(
                f"version {version}: its manifest cannot be read ({str(err).splitlines()[0]})",
                "the run's artifacts were moved or deleted",
            ) from None
    if manifest_digest(manifest) != expected:
        raise RegistryError(
            f"version {version}: its manifest was changed after registration "
            f"(sha256 {manifest_digest(manifest)[:12]} != registered {expected[:12]})",
            "restore the original manifest; a changed manifest cannot be trusted to rebuild it",
        )
    return manifest


GATE_TAG = "shipml.gate"  # on a model version: passed | failed


def record_gate(store: Store, version: int, decision: dict[str, Any]) -> None:
    """The gate's decision and evidence on ``version``: a tag on the version, metrics and
    gate/decision.json on its training run."""
    client = store.client
    run_id = _get_version(store, version).run_id
    if run_id:
        numbers = {
            f"gate_{k}": float(v)
            for k, v in decision.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and v == v
        }
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in sorted(numbers.items())])
        client.log_dict(run_id, decision, "gate/decision.json")
    client.set_model_version_tag(
        store.model_name, str(version), GATE_TAG, "passed" if decision["passed"] else "failed"
    )
    reasons = "; ".join(decision.get("reasons", []))[:5000]
    client.set_model_version_tag(store.model_name, str(version), "shipml.gate_reasons", reasons)


def champion_version(store: Store) -> int | None:
    return _alias_version(store, CHAMPION)


def promote(store: Store, version: int) -> int | None:
    """Make ``version`` the champion; returns the previous champion (``version`` itself when
    it already was: nothing changes)."""
    _get_version(store, version)
    previous = champion_version(store)
    if previous != version:
        _move_champion(store, version)
    return previous


def rollback(store: Store) -> tuple[int, int]:
    """Move the champion back to the one before it; returns (from, to)."""
    current = champion_version(store)
    if current is None:
        raise RegistryError("there is no champion to roll back", "run `shipml train` first")
    history = _history(store)
    if current in history:
        history = history[: len(history) - 1 - history[::-1].index(current)]
    if not history:
        raise RegistryError(
            f"version {current} is the first champion: there is nothing to roll back to",
            "use `shipml promote VERSION` to choose another version",
        )
    target = history[-1]
    client = store.client
    client.set_registered_model_alias(store.model_name, CHAMPION, str(target))
    client.set_registered_model_tag(store.model_name, _HISTORY_TAG, ",".join(map(str, history)))
    # The demoted version stays registered as the challenger (the alias it lost when it was
    # promoted), unless another version is the challenger now; the champion never holds both.
    challenger = _alias_version(store, CHALLENGER)
    if challenger is None or challenger == target:
        client.set_registered_model_alias(store.model_name, CHALLENGER, str(current))
    return current, target


def list_versions(store: Store) -> list[VersionInfo]:
    try:
        versions = store.client.search_model_versions(f"name='{store.model_name}'")
        aliases = store.client.get_registered_model(store.model_name).aliases or {}
    except MlflowException:
        return []
    out = [
        VersionInfo(
            version=int(mv.version),
            aliases=sorted(a for a, v in aliases.items() if int(v) == int(mv.version)),
            created=mv.creation_timestamp / 1000.0,
            run_id=mv.run_id or "",
            tags=dict(mv.tags or {}),
        )
        for mv in versions
    ]
    return sorted(out, key=lambda v: v.version)


def _get_version(store: Store, version: int) -> Any:
    try:
        return store.client.get_model_version(store.model_name, str(version))
    except MlflowException:
        known = [v.version for v in list_versions(store)]
        raise no_version_error(store.model_name, version, known) from None


def fetch_artifact(store: Store, version: int, artifact: str, dst_dir: Path) -> bool:
    """Download one artifact of the run that produced ``version`` into ``dst_dir`` (atomically);
    False when the run has no such artifact."""
    run_id = _get_version(store, version).run_id
    if not run_id:
        return False
    dst_dir.mkdir(parents=True, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=".fetch-", dir=dst_dir)
    try:
        local = Path(
            mlflow.artifacts.download_artifacts(
                run_id=run_id,
                artifact_path=artifact,
                dst_path=scratch,
                tracking_uri=store.tracking_uri,
            )
        )
        os.replace(local, dst_dir / local.name)
        return True
    except (MlflowException, OSError):
        return False
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def resolve(store: Store, ref: str | int) -> int:
    """A version number from 'champion', 'challenger' or a number."""
    if isinstance(ref, int) or str(ref).isdigit():
        version = int(ref)
        _get_version(store, version)
        return version
    version_or_none = _alias_version(store, str(ref))
    if version_or_none is None:
        raise no_alias_error(store.model_name, str(ref))
    return version_or_none


def load_schema(store: Store, ref: str | int = CHAMPION) -> Schema:
    """A version's input schema, read from its MLmodel file alone: no model is unpickled
    (loading one imports skops, which imports half of scikit-learn, seconds per process)."""
    version = resolve(store, ref)
    cache = store.shipml_dir / "cache" / store.model_name / str(version)
    if not (cache / "MLmodel").is_file():
        _fill_cache(store, version, cache)
    mlmodel = yaml.safe_load((cache / "MLmodel").read_text())
    meta = (mlmodel.get("metadata") or {}).get("shipml", {})
    return Schema.from_dict(meta["schema"])


def load(store: Store, ref: str | int = CHAMPION, native: bool = True) -> LoadedModel:
    """Load a registered version from the project's registry, verified and without pickle.
    With ``native=False`` the model file is checked against its checksum but not read: the
    pipeline is None (a server with a fast copy needs only the schema and metadata, and skips
    skops' import, seconds long)."""
    version = resolve(store, ref)
    mv = _get_version(store, version)
    expected_sha = (mv.tags or {}).get(_SHA_TAG)
    if not expected_sha:
        raise RegistryError(
            f"version {version} has no recorded model checksum (tag {_SHA_TAG}): shipml loads "
            "only a model file it can verify",
            "retrain with `shipml train` (it records the checksum), or restore the tag",
        )
    cache = store.shipml_dir / "cache" / store.model_name / str(version)
    if not (cache / "MLmodel").is_file():
        _fill_cache(store, version, cache)
    mlmodel = yaml.safe_load((cache / "MLmodel").read_text())
    flavor = mlmodel.get("flavors", {}).get("sklearn", {})
    if flavor.get("serialization_format") != "skops":
        raise RegistryError(
            f"version {version} is not saved in the skops format; shipml will not unpickle it",
            "retrain it with `shipml train`",
        )
    model_file = cache / flavor["pickled_model"]
    data = model_file.read_bytes() if native else None  # read once: checked, then loaded
    actual_sha = _sha256(model_file) if data is None else hashlib.sha256(data).hexdigest()
    if actual_sha != expected_sha:
        shutil.rmtree(cache, ignore_errors=True)
        raise RegistryError(
            f"version {version}: model file checksum does not match the registry "
            f"({actual_sha[:12]} != {expected_sha[:12]})",
            "the artifact was changed after registration; retrain or restore it",
        )
    pipeline = None if data is None else _unpack(version, data, store.root)
    meta = dict((mlmodel.get("metadata") or {}).get("shipml", {}))
    schema = Schema.from_dict(meta.pop("schema"))
    return LoadedModel(version=version, pipeline=pipeline, schema=schema, metadata=meta)


def _unpack(version: int, data: bytes, root: Path) -> Any:
    """The pipeline in a verified skops file, built only if every type in it is one that
    shipml's model families save (checked before anything in the file is imported or run), and
    importing a network's build_model file only from the project's folder ``root``."""
    sio = serializer()
    try:
        trusted = trusted_types_for(sio.get_untrusted_types(data=data))
        with user_code_only_under(root):
            return sio.loads(data, trusted=trusted)
    except ShipmlError as err:
        raise type(err)(f"version {version}: {err.message}", err.hint) from None
    except Exception as err:  # a file skops cannot read: crafted, or from another skops
        detail = (str(err).splitlines() or [""])[0][:200]
        raise RegistryError(
            f"version {version}: the model file cannot be loaded ({type(err).__name__}: {detail})",
            "retrain with `shipml train` in this environment",
        ) from None


def load_fast(store: Store, version: int) -> bytes | None:
    """The verified fast-inference copy of ``version`` (see shipml.models.fastpath), checked
    against the sha256 recorded at registration; None when the version has none."""
    tags = _get_version(store, version).tags or {}
    expected = tags.get(FAST_SHA_TAG)
    if not expected:
        if tags.get("shipml.inference") == "fast":
            raise RegistryError(
                f"version {version}: its fast-inference copy has no recorded checksum "
                f"(tag {FAST_SHA_TAG})",
                "the native model serves; retrain to make a new copy",
            )
        return None
    folder = store.shipml_dir / "cache" / store.model_name / f"{version}-fast"
    path = folder / Path(FAST_ARTIFACT).name
    if not path.is_file() and not fetch_artifact(store, version, FAST_ARTIFACT, folder):
        raise RegistryError(
            f"version {version}: its fast-inference copy is missing from the artifact store",
            "serve it anyway: the native model is used; retrain to make a new copy",
        )
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        path.unlink(missing_ok=True)
        raise RegistryError(
            f"version {version}: fast-inference copy checksum does not match the registry "
            f"({actual[:12]} != {expected[:12]})",
            "the artifact was changed after registration; the native model serves",
        )
    return data


def _use_store(store: Store) -> None:
    """Point MLflow's process-wide URIs at ``store``: its fluent calls (start_run, models:/
    URIs) read them, and another project opened in the same process may have moved them."""
    mlflow.set_tracking_uri(store.tracking_uri)
    mlflow.set_registry_uri(store.tracking_uri)


def _fill_cache(store: Store, version: int, cache: Path) -> None:
    """Download a version into the cache folder atomically. Several server workers may do this
    at once: the first rename wins and the others use its copy; a folder left half-written by a
    crash is moved aside first (it has no MLmodel)."""
    tmp = Path(tempfile.mkdtemp(dir=store.shipml_dir))
    try:
        _use_store(store)
        mlflow.artifacts.download_artifacts(
            f"models:/{store.model_name}/{version}", dst_path=str(tmp)
        )
        cache.parent.mkdir(parents=True, exist_ok=True)
        if cache.exists() and not (cache / "MLmodel").is_file():
            stale = Path(tempfile.mkdtemp(dir=store.shipml_dir))
            with contextlib.suppress(OSError):
                os.replace(cache, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, cache)
        except OSError:
            if not (cache / "MLmodel").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _model_file(model_dir: Path) -> str:
    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    return str(mlmodel["flavors"]["sklearn"]["pickled_model"])


# A UI for one person: MLflow's job runner (a dozen processes for GenAI evaluation jobs, which
# a shipml project never starts) stays off, and two web workers serve the pages.
UI_ENVIRONMENT = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def ui_command(store: Store, host: str, port: int) -> list[str]:
    """The command line that serves the MLflow UI on the project's store (a database: SQLite
    or a team's server), run with ``UI_ENVIRONMENT``; its artifacts are where the project's
    experiment keeps them."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store.tracking_uri]
    cmd += ["--host", host, "--port", str(port), "--workers", "2"]
    location = store.client.get_experiment(store.experiment_id).artifact_location
    if location:
        cmd += ["--default-artifact-root", location]
    return cmd


def is_server(store: Store) -> bool:
    """Whether the store is an MLflow tracking server (which has a UI of its own)."""
    return uri_scheme(store.tracking_uri) in ("http", "https")
