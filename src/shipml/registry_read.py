"""Reads of a project's local registry without importing MLflow (which takes seconds per process).

`shipml models`, `shipml report` and `shipml predict` only read the registry: versions, aliases,
tags, where a run's artifacts are. For the default store (a SQLite file beside shipml.yaml, the
artifacts in a folder beside it) this module reads them with sqlite3, opened read-only.

This is the one place outside registry.py that knows MLflow's storage, and it knows MLflow's
SQLite *schema*: the tables registered_models, model_versions, model_version_tags,
registered_model_aliases and runs, as of the migration ``SCHEMA_REVISION`` (MLflow's alembic
head of the pinned version; tests/test_startup.py checks it is still the head, and that the
answers here equal MLflow's own). A store of any other revision, any other URI (a server, a
database of a team) or with MLflow's workspaces on is read through MLflow (registry.py):
``LocalRegistry.open`` returns None and the caller falls back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

from shipml.data.schema import Schema
from shipml.errors import RegistryError

SCHEMA_REVISION = "dc11669786a5"  # MLflow's alembic head (mlflow 3.17)
_WORKSPACE = "default"  # MLflow's workspace when workspaces are off (its default)
_DELETED = "Deleted_Internal"  # MLflow's stage of a deleted version, kept until cleaned up

CHAMPION = "champion"
CHALLENGER = "challenger"
SHA_TAG = "shipml.model_sha256"
FAST_SHA_TAG = "shipml.fast_sha256"
FAST_ARTIFACT = "fastpath/model.fast"
# Which database servers a tracking_uri may name (MLflow's SQLAlchemy stores).
DATABASE_SCHEMES = ("postgresql", "postgres", "mysql", "mssql", "sqlite")


@dataclass
class VersionInfo:
    """One registered model version, as `shipml models` shows it."""

    version: int
    aliases: list[str]
    created: float
    run_id: str
    tags: dict[str, str]

    @property
    def test_metrics(self) -> dict[str, float]:
        return dict(json.loads(self.tags.get("shipml.test_metrics", "{}")))

    @property
    def family(self) -> str:
        return self.tags.get("shipml.family", "")


@dataclass
class LoadedModel:
    """A registered model version loaded for scoring, with its input schema."""

    version: int
    pipeline: Any
    schema: Schema
    metadata: dict[str, Any]

    @property
    def test_metrics(self) -> dict[str, float]:
        return dict(self.metadata.get("test_metrics", {}))


def default_tracking_uri(root: Path) -> str:
    return f"sqlite:///{(root / '.shipml' / 'mlflow.db').resolve()}"


def uri_scheme(uri: str) -> str:
    """``postgresql`` for ``postgresql+psycopg2://...``; '' for a plain path."""
    return uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""


def is_database_uri(uri: str | None) -> bool:
    """Whether a tracking_uri names a database that MLflow writes itself (not a server)."""
    return bool(uri) and uri_scheme(str(uri)) in DATABASE_SCHEMES


def local_path(uri: str) -> Path | None:
    """The folder or file a ``file://`` URI (or a plain path) names; None for anything else."""
    parts = urlsplit(uri)
    if parts.scheme == "file" and parts.netloc in ("", "localhost"):
        return Path(unquote(parts.path))
    if parts.scheme == "" and uri:
        return Path(uri)
    return None


def no_version_error(model: str, version: int, known: list[int]) -> RegistryError:
    shown = ", ".join(map(str, known)) if known else "none yet"
    return RegistryError(
        f"model '{model}' has no version {version} (versions: {shown})",
        "`shipml models` lists the versions",
    )


def no_alias_error(model: str, alias: str) -> RegistryError:
    if alias == CHAMPION:
        return RegistryError(f"model '{model}' has no champion yet", "run `shipml train` first")
    return RegistryError(
        f"model '{model}' has no version with alias '{alias}'",
        "use champion, challenger or a version number (`shipml models` lists them)",
    )


class LocalRegistry:
    """Read-only view of one model in a local SQLite MLflow store."""

    def __init__(self, database: Path, model_name: str) -> None:
        self.database = database
        self.model_name = model_name

    @classmethod
    def open(cls, root: Path, model_name: str, tracking_uri: str | None) -> LocalRegistry | None:
        """The project's store when it is a SQLite file this module can read; else None."""
        uri = tracking_uri or default_tracking_uri(root)
        if not uri.startswith("sqlite:///") or os.environ.get("MLFLOW_ENABLE_WORKSPACES", "") in (
            "1",
            "true",
            "True",
            "TRUE",
        ):
            return None
        database = Path(uri.removeprefix("sqlite:///"))
        if not database.is_file():
            return None  # MLflow creates it on first use
        reader = cls(database, model_name)
        try:
            with reader._connect() as db:
                row = db.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.Error:
            return None
        return reader if row is not None and row[0] == SCHEMA_REVISION else None

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(f"{self.database.as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            yield db
        finally:
            db.close()

    def _rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with self._connect() as db:
            return db.execute(sql, args).fetchall()

    def versions(self) -> list[VersionInfo]:
        """Every live version of the model, oldest first (as registry.list_versions)."""
        live = self._rows(
            "SELECT version, creation_time, run_id FROM model_versions "
            "WHERE workspace = ? AND name = ? AND (current_stage IS NULL OR current_stage != ?) "
            "ORDER BY version",
            _WORKSPACE,
            self.model_name,
            _DELETED,
        )
        tags: dict[int, dict[str, str]] = {}
        for version, key, value in self._rows(
            "SELECT version, key, value FROM model_version_tags WHERE workspace = ? AND name = ?",
            _WORKSPACE,
            self.model_name,
        ):
            tags.setdefault(int(version), {})[key] = value
        aliases = self._aliases()
        return [
            VersionInfo(
                version=int(version),
                aliases=sorted(a for a, v in aliases.items() if v == int(version)),
                created=(created or 0) / 1000.0,
                run_id=run_id or "",
                tags=tags.get(int(version), {}),
            )
            for version, created, run_id in live
        ]

    def _aliases(self) -> dict[str, int]:
        return {
            alias: int(version)
            for alias, version in self._rows(
                "SELECT alias, version FROM registered_model_aliases "
                "WHERE workspace = ? AND name = ?",
                _WORKSPACE,
                self.model_name,
            )
        }

    def alias_version(self, alias: str) -> int | None:
        return self._aliases().get(alias)

    def version_tags(self, version: int) -> dict[str, str] | None:
        """The tags of a live version; None when there is no such version."""
        found = self._rows(
            "SELECT 1 FROM model_versions WHERE workspace = ? AND name = ? AND version = ? "
            "AND (current_stage IS NULL OR current_stage != ?)",
            _WORKSPACE,
            self.model_name,
            version,
            _DELETED,
        )
        if not found:
            return None
        return dict(
            self._rows(
                "SELECT key, value FROM model_version_tags "
                "WHERE workspace = ? AND name = ? AND version = ?",
                _WORKSPACE,
                self.model_name,
                version,
            )
        )

    def resolve(self, ref: str | int) -> int:
        """A version number from 'champion', 'challenger' or a number (as registry.resolve)."""
        if isinstance(ref, int) or str(ref).isdigit():
            version = int(ref)
            if self.version_tags(version) is None:
                known = [v.version for v in self.versions()]
                raise no_version_error(self.model_name, version, known)
            return version
        found = self.alias_version(str(ref))
        if found is None:
            raise no_alias_error(self.model_name, str(ref))
        return found

    def fast_copy(self, version: int) -> tuple[bytes, dict[str, Any]] | None:
        """Version ``version``'s fast-inference copy and the ``shipml`` metadata of its MLmodel
        file, read from the local artifact folders, when the copy and the model file both
        match the sha256 registered with them (as a server checks both before it serves the
        copy); None when there is no copy, a file is not where a local store keeps it, or a
        checksum differs (the caller then loads through MLflow, which says what is wrong)."""
        tags = self.version_tags(version) or {}
        expected = tags.get(FAST_SHA_TAG)
        if not expected or not tags.get(SHA_TAG):
            return None
        rows = self._rows(
            "SELECT r.artifact_uri, v.storage_location FROM model_versions v "
            "JOIN runs r ON r.run_uuid = v.run_id "
            "WHERE v.workspace = ? AND v.name = ? AND v.version = ?",
            _WORKSPACE,
            self.model_name,
            version,
        )
        if not rows or not rows[0][0] or not rows[0][1]:
            return None
        run_folder, model_folder = local_path(rows[0][0]), local_path(rows[0][1])
        if run_folder is None or model_folder is None:
            return None
        try:
            data = (run_folder / FAST_ARTIFACT).read_bytes()
            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            mlmodel = yaml.load((model_folder / "MLmodel").read_bytes(), Loader=loader)
            flavor = mlmodel["flavors"]["sklearn"]
            if flavor.get("serialization_format") != "skops":
                return None
            model_sha = file_sha256(model_folder / str(flavor["pickled_model"]))
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            return None
        if hashlib.sha256(data).hexdigest() != expected or model_sha != tags[SHA_TAG]:
            return None
        return data, dict((mlmodel.get("metadata") or {}).get("shipml", {}))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
