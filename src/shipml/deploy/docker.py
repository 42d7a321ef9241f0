"""`shipml export docker`: a build context for the serving image of the champion.

DIR/Dockerfile          python:<this Python's minor>-slim, a non-root user, pinned requirements,
                        shipml from its wheel, a HEALTHCHECK on /health, CMD `shipml serve`
DIR/.dockerignore       only what the Dockerfile copies (never a local run's prediction logs)
DIR/requirements.txt    shipml's runtime requirements at this environment's exact versions
DIR/wheels/             shipml itself, built from the folder it is installed from
DIR/shipml.yaml         the project's config
DIR/.shipml/            the champion in a store of its own (see shipml.deploy.bundle); left out
                        when the config's tracking_uri is a server: the image pulls it at start
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from jinja2 import Environment, PackageLoader, StrictUndefined, Template

from shipml import __version__
from shipml.config import DeployConfig
from shipml.deploy.bundle import (
    champion,
    check_replaceable,
    loopback_note,
    pulls_from_registry,
    served_config,
    shipml_wheel,
    version_notes,
    write_store,
)
from shipml.deploy.lock import canonical, environment, image_requirements
from shipml.deploy.output import check_out, out_folder, write_files
from shipml.errors import ConfigError
from shipml.registry_reach import budget_s, without_password

if TYPE_CHECKING:
    from shipml.project import Project

START_PERIOD_S = 60  # the HEALTHCHECK's grace to start, the registry wait aside
USER_ID = 10001  # the image's user; Kubernetes' runAsUser says the same number
APP_DIR = "/app"
_DB_DRIVERS = {  # what SQLAlchemy needs for a tracking server's database, first one installed
    "postgresql": ("psycopg2-binary", "psycopg2", "psycopg"),
    "postgres": ("psycopg2-binary", "psycopg2", "psycopg"),
    "mysql": ("pymysql", "mysqlclient"),
    "mssql": ("pyodbc",),
}
_DOCKERIGNORE = """\
# Written by `shipml export docker`: only what the Dockerfile copies goes to the builder, and
# never what a local run of the server writes (prediction logs, metrics files).
*
!Dockerfile
!requirements.txt
!shipml.yaml
!wheels
{store}**/__pycache__
"""
_STORE_IGNORE = """\
!.shipml
.shipml/predictions
.shipml/serving
.shipml/monitoring
.shipml/reports
"""


def resource_name(name: str) -> str:
    """A project name as a Kubernetes object name and image repository: lower-case letters,
    digits and '-', starting with a letter, at most 63 characters."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not slug or not slug[0].isalpha():
        slug = f"shipml-{slug}".strip("-")
    return slug[:63].rstrip("-")


def default_image(name: str, version: int | None) -> str:
    """The image name when deploy.image is not set: tagged with the baked-in model version, or
    with shipml's version when the image pulls its model from a registry."""
    tag = f"v{version}" if version is not None else f"shipml-{__version__}"
    return f"{resource_name(name)}:{tag}"


def serve_command(deploy: DeployConfig) -> list[str]:
    """The image's CMD: the same `shipml serve` the tests run from the exported folder."""
    return [
        "shipml",
        "serve",
        "--config",
        "shipml.yaml",
        "--host",
        "0.0.0.0",
        "--port",
        str(deploy.port),
        "--workers",
        str(deploy.workers),
    ]


@lru_cache(maxsize=1)
def _template() -> Template:
    env = Environment(
        loader=PackageLoader("shipml", "templates"),
        autoescape=False,  # a Dockerfile, not HTML; values are plain tokens or JSON
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    return env.get_template("Dockerfile.j2")


def dockerfile(
    name: str,
    deploy: DeployConfig,
    image: str,
    version: int | None,
    wheel: str | None,
    registry_uri: str | None = None,
    registry_wait_s: float = 0.0,
) -> str:
    """The Dockerfile's text. ``version`` is the baked-in model's (None: pulled from
    ``registry_uri`` at start, after waiting up to ``registry_wait_s`` for it); ``wheel`` the
    path of shipml's wheel in the build context."""
    probe = f"http://127.0.0.1:{deploy.port}/health"
    healthcheck = [
        "python",
        "-c",
        f"import urllib.request; urllib.request.urlopen({probe!r}, timeout=4)",
    ]
    return _template().render(
        name=name,
        baked=version is not None,
        version=version,
        registry=without_password(registry_uri or ""),
        start_period=START_PERIOD_S + math.ceil(registry_wait_s),
        image=image,
        port=deploy.port,
        python=f"{sys.version_info.major}.{sys.version_info.minor}",
        uid=USER_ID,
        wheel=wheel,
        healthcheck=json.dumps(healthcheck),
        cmd=json.dumps(serve_command(deploy)),
    )


def _db_driver(uri: str | None) -> list[str]:
    scheme = (uri or "").split(":", 1)[0].split("+", 1)[0].lower()
    installed = environment()
    for dist in _DB_DRIVERS.get(scheme, ()):
        if canonical(dist) in installed:
            return [dist]
    return []


@dataclass
class DockerExport:
    """What `shipml export docker` wrote, and what to tell the user."""

    out: Path
    image: str
    version: int
    baked: bool
    files: list[Path]
    notes: list[str] = field(default_factory=list)


def _check_out(project: Project, out: Path) -> None:
    check_out(out, "image's build context")
    resolved = out.resolve()
    if resolved == project.root or project.root / ".shipml" in (resolved, *resolved.parents):
        raise ConfigError(
            f"--out {out} is the project's own folder",
            "export into a folder of its own, e.g. --out docker/",
        )
    check_replaceable(out / ".shipml")


def export_docker(project: Project, out: Path) -> DockerExport:
    """Write the build context of the champion's serving image into ``out``."""
    _check_out(project, out)
    champ = champion(project)
    out_folder(out, "image's build context")
    deploy = project.config.deploy
    uri = project.config.tracking_uri
    baked = not pulls_from_registry(uri)
    wheel = shipml_wheel(out / "wheels")
    wheel_path = wheel.relative_to(out).as_posix() if wheel else None
    roots = ["shipml", *champ.needs, *_db_driver(uri if not baked else None)]
    image = deploy.image or default_image(project.config.name, champ.version if baked else None)
    files = {
        out / "requirements.txt": image_requirements(
            environment(), roots, skip=["shipml"] if wheel else []
        ),
        out / "shipml.yaml": served_config(project),
        out / "Dockerfile": dockerfile(
            project.config.name,
            deploy,
            image,
            champ.version if baked else None,
            wheel_path,
            None if baked else uri,
            0.0 if baked else budget_s(project.config.serving),
        ),
        out / ".dockerignore": _DOCKERIGNORE.format(store=_STORE_IGNORE if baked else ""),
    }
    written = write_files(files, "image files")
    if baked:
        written.append(write_store(champ, out))
    elif (out / ".shipml").exists():  # an earlier export's baked model, a local run's cache
        shutil.rmtree(out / ".shipml")
    if wheel:
        written.append(wheel)
    return DockerExport(
        out=out,
        image=image,
        version=champ.version,
        baked=baked,
        files=written,
        notes=[n for n in (None if baked else loopback_note(uri),) if n]
        + champ.notes
        + version_notes(champ),
    )
