"""What a serving image holds besides its dependencies: the champion in a store of its own, the
config it is served with, and shipml itself as a wheel.

The project's MLflow store cannot be copied as it is: its artifact locations are absolute paths
on this machine. The bundle is a fresh store instead, holding one registered version (the
champion, under its own version number and with its tags, so its checksums still verify) with
the model, its fast copy and its reference profile already where `shipml serve` looks before it
asks MLflow for them (.shipml/cache/, .shipml/profiles/). Serving from it reads no artifact
store, so it works wherever the folder is copied.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from shipml import __version__, registry, registry_reach
from shipml.deploy.lock import canonical, environment
from shipml.errors import ConfigError, RegistryError
from shipml.models.trusted import trusted_types_for

if TYPE_CHECKING:
    from shipml.project import Project

BUNDLE_FILE = "bundle.json"  # marks a .shipml folder as an export's, safe to replace
# Tracking URIs of a server the container can reach: the image pulls the champion at start.
SERVER_SCHEMES = {"http", "https", "postgresql", "postgres", "mysql", "mssql", "databricks"}
# The model file's (trusted) types that need a distribution beyond shipml's own requirements.
_MODULE_NEEDS = {
    "shipml.models.torch_": ("torch",),
    "shipml.models.keras_": ("keras", "torch"),  # Keras 3 on the torch backend
}
_PLACEHOLDER = {"shipml.placeholder": "true"}


def pulls_from_registry(tracking_uri: str | None) -> bool:
    """Whether a container should pull the champion from the tracking server at start (a server
    URI) rather than have it baked in (the project's own SQLite store, or any local one)."""
    if not tracking_uri:
        return False
    scheme = tracking_uri.split(":", 1)[0].split("+", 1)[0].lower()
    return scheme in SERVER_SCHEMES


def loopback_note(tracking_uri: str | None) -> str | None:
    """A warning when an image would pull its model from a loopback address (127.0.0.1,
    localhost): inside the container that is the container itself, where no registry runs."""
    where = registry_reach.address(tracking_uri)
    if where is None or not where.loopback or not pulls_from_registry(tracking_uri):
        return None
    return (
        f"tracking_uri {registry_reach.without_password(tracking_uri or '')} is a loopback "
        f"address: inside the container {where.host} is the container itself, where no "
        "registry runs, so the server cannot start. Set tracking_uri to an address the "
        "container reaches and export again: Docker, http://host.docker.internal:"
        f"{where.port} with `docker run --add-host=host.docker.internal:host-gateway`; "
        "Kubernetes, the registry's Service (http://mlflow.<namespace>.svc:"
        f"{where.port}); or edit tracking_uri in the exported shipml.yaml / ConfigMap"
    )


def served_config(project: Project) -> str:
    """The shipml.yaml a container runs with: the project's own text, except that a local
    tracking_uri (a path on this machine) is dropped so the bundled store is used."""
    text = project.path.read_text(encoding="utf-8")
    uri = project.config.tracking_uri
    if not uri or pulls_from_registry(uri):
        return text
    raw = yaml.safe_load(text)
    raw.pop("tracking_uri", None)
    return (
        f"# {project.path.name} as exported: tracking_uri {uri} is a path on the machine that\n"
        "# trained the model; the image serves from the store bundled beside this file.\n"
        + yaml.safe_dump(raw, sort_keys=False)
    )


@dataclass
class Champion:
    """The champion as the export needs it: verified local copies of the model, its fast copy
    and its reference profile, the distributions its file needs, what it was trained with."""

    name: str
    version: int
    tags: dict[str, str]
    model_dir: Path
    fast: bytes | None
    profile: str | None
    needs: tuple[str, ...]
    trained_with: dict[str, str]
    python: str | None
    notes: list[str] = field(default_factory=list)


def _cache_dir(shipml_dir: Path, name: str, version: int) -> Path:
    # Where registry.load keeps its verified copy of a version (and looks first).
    return shipml_dir / "cache" / name / str(version)


def _fast_file(shipml_dir: Path, name: str, version: int) -> Path:
    # Where registry.load_fast keeps the verified fast copy (and looks first).
    return shipml_dir / "cache" / name / f"{version}-fast" / "model.fast"


def _profile_file(root: Path, name: str, version: int) -> Path:
    # Where monitoring.service.load_profile keeps a version's reference profile.
    from shipml.monitoring.profile import PROFILE_ARTIFACT

    return root / ".shipml" / "profiles" / f"{name}-v{version}" / Path(PROFILE_ARTIFACT).name


def _needs(model_file: Path) -> tuple[str, ...]:
    """Distributions the model file's types import beyond shipml's requirements (torch for a
    network), read from the skops file without loading it; RegistryError for a type shipml
    does not trust (an image must not be built around a file that cannot be loaded)."""
    sio = registry.serializer()
    needs: list[str] = []
    for type_name in trusted_types_for(sio.get_untrusted_types(file=str(model_file))):
        for prefix, dists in _MODULE_NEEDS.items():
            if type_name.startswith(prefix):
                needs += [d for d in dists if d not in needs]
    return tuple(needs)


def _trained_with(model_dir: Path) -> tuple[dict[str, str], str | None]:
    """Package versions recorded with the model (its requirements.txt) and its Python."""
    versions: dict[str, str] = {}
    requirements = model_dir / "requirements.txt"
    if requirements.is_file():
        for line in requirements.read_text(encoding="utf-8").splitlines():
            name, sep, version = line.strip().partition("==")
            if sep:
                versions[canonical(name)] = version
    python = None
    env_file = model_dir / "python_env.yaml"
    if env_file.is_file():
        python = str((yaml.safe_load(env_file.read_text(encoding="utf-8")) or {}).get("python"))
    return versions, python


def champion(project: Project) -> Champion:
    """The project's champion, fetched and verified as `shipml serve` would; RegistryError
    (naming `shipml train`) when there is none."""
    from shipml.monitoring.service import load_profile

    store = project.store
    version = registry.resolve(store, registry.CHAMPION)
    registry.load(store, version)  # verifies the model file against its registered sha256
    model_dir = _cache_dir(store.shipml_dir, store.model_name, version)
    info = next(v for v in registry.list_versions(store) if v.version == version)
    tags = dict(info.tags)
    notes = []
    try:
        fast = registry.load_fast(store, version)
    except RegistryError as err:
        fast = None
        tags.pop(registry.FAST_SHA_TAG, None)
        notes.append(f"{err.message}: the image serves the native model")
    try:
        profile: str | None = load_profile(project, version)[1].to_json()
    except RegistryError as err:
        profile = None
        notes.append(f"{err.message}: the image's drift gauges stay empty")
    model_file = model_dir / str(
        yaml.safe_load((model_dir / "MLmodel").read_text())["flavors"]["sklearn"]["pickled_model"]
    )
    trained_with, python = _trained_with(model_dir)
    return Champion(
        name=project.config.name,
        version=version,
        tags=tags,
        model_dir=model_dir,
        fast=fast,
        profile=profile,
        needs=_needs(model_file),
        trained_with=trained_with,
        python=python,
        notes=notes,
    )


def version_notes(champ: Champion) -> list[str]:
    """Where this environment (what the image installs) differs from what trained the model."""
    env = environment()
    notes = []
    for key, trained in sorted(champ.trained_with.items()):
        here = env[key].version if key in env else None
        if here != trained:
            notes.append(
                f"version {champ.version} was trained with {key} {trained}; the image gets "
                f"{here or 'none'} (this environment's): retrain here, or export from the "
                "training environment"
            )
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    if champ.python and not (champ.python == minor or champ.python.startswith(f"{minor}.")):
        notes.append(
            f"version {champ.version} was trained on Python {champ.python}; the image runs "
            f"Python {minor} (this interpreter's)"
        )
    return notes


# --- the bundled store ------------------------------------------------------------------------


def _copy_files(champ: Champion, root: Path) -> None:
    """The champion's files where the server looks first: the model, its fast copy and its
    reference profile under root/.shipml/, and bundle.json naming what was exported."""
    shipml_dir = root / ".shipml"
    shutil.copytree(champ.model_dir, _cache_dir(shipml_dir, champ.name, champ.version))
    if champ.fast is not None:
        fast = _fast_file(shipml_dir, champ.name, champ.version)
        fast.parent.mkdir(parents=True)
        fast.write_bytes(champ.fast)
    if champ.profile is not None:
        profile = _profile_file(root, champ.name, champ.version)
        profile.parent.mkdir(parents=True)
        profile.write_text(champ.profile, encoding="utf-8")
    meta = {
        "name": champ.name,
        "version": champ.version,
        "model_sha256": champ.tags.get("shipml.model_sha256", ""),
        "run_id": champ.tags.get("shipml.run_id", ""),
        "shipml": __version__,
    }
    (shipml_dir / BUNDLE_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def register_champion(root: Path, name: str, version: int, tags: dict[str, str]) -> None:
    """Make root/.shipml/mlflow.db a store whose only version is ``version`` of ``name``, the
    champion, with ``tags``; then load it as `shipml serve` will, from the bundle alone.

    Runs in a process of its own (see write_store): MLflow keeps process-wide state (the
    tracking URI, one database engine per URI) that must not leak into the caller's."""
    from shipml.monitoring.service import load_profile
    from shipml.project import Project

    store = registry.open_store(root, name)
    source = _cache_dir(Path(".shipml"), name, version).as_posix()
    # Registry version numbers only grow; versions registered and deleted before the champion
    # give it its own number, so answers, metrics and logs name the version the registry knows.
    for _ in range(version - 1):
        placeholder = registry.register(store, source, "", _PLACEHOLDER)
        store.client.delete_model_version(name, str(placeholder))
    registered = registry.register(store, source, tags.get("shipml.model_sha256", ""), tags)
    if registered != version:
        raise RegistryError(f"the bundled store numbered the champion {registered}, not {version}")
    registry.promote(store, version)
    bundled = Project.load(root / "shipml.yaml")
    loaded = registry.load(bundled.store, registry.CHAMPION)  # checks the model's sha256
    if loaded.version != version:
        raise RegistryError(f"the bundle serves version {loaded.version}, not {version}")
    if registry.FAST_SHA_TAG in tags:
        registry.load_fast(bundled.store, version)  # checks the fast copy's sha256
    if _profile_file(root, name, version).is_file():
        load_profile(bundled, version)


def check_replaceable(store: Path) -> None:
    """ConfigError when ``store`` (an export's .shipml) holds a project's runs and models rather
    than an earlier export's bundle or what a server run left (its cache, its logs)."""
    if (store / BUNDLE_FILE).is_file():
        return
    if (store / "mlflow.db").exists() or (store / "artifacts").exists():
        raise ConfigError(
            f"{store} is a project's store, not an earlier export",
            "choose an empty folder (or one `shipml export docker` wrote) for --out",
        )


def write_store(champ: Champion, out: Path) -> Path:
    """Put ``champ`` in a fresh store at out/.shipml (replacing an earlier export's), checked
    to serve from there, and return the folder. ``out/shipml.yaml`` must be written already."""
    target = out / ".shipml"
    check_replaceable(target)
    old = Path(tempfile.mkdtemp(prefix=".shipml-old-", dir=out)) if target.exists() else None
    if old is not None:
        os.replace(target, old / "store")
    try:
        _copy_files(champ, out)
        job = {"root": str(out), "name": champ.name, "version": champ.version, "tags": champ.tags}
        done = subprocess.run(
            [sys.executable, "-m", "shipml.deploy.bundle"],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            why = done.stderr.strip().splitlines() or ["no output"]
            raise RegistryError(
                f"cannot write the champion's store under {target}: {why[-1]}",
                "check that the folder is writable, then export again",
            )
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        if old is not None:
            os.replace(old / "store", target)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return target


# --- shipml itself ----------------------------------------------------------------------------

_SOURCE_FILES = ("pyproject.toml", "setup.cfg", "setup.py", "MANIFEST.in")


def _copy_source(source: Path, dst: Path) -> None:
    """The files a wheel of shipml is built from: packaging metadata, readme and licence, and
    the folder that holds the package (src/ in shipml's layout), without caches."""
    import shipml

    for path in source.iterdir():
        upper = path.name.upper()
        if path.is_file() and (
            path.name in _SOURCE_FILES or upper.startswith(("README", "LICENSE", "LICENCE"))
        ):
            shutil.copy2(path, dst / path.name)
    package = Path(shipml.__file__).resolve().parent
    top = package.relative_to(source.resolve()).parts[0]
    shutil.copytree(
        source / top,
        dst / top,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
    )


def shipml_wheel(dst: Path) -> Path | None:
    """shipml as a wheel in ``dst``, built from the folder it is installed from (an editable
    install); None when it came from a package index (the image pins its version instead)."""
    dist = environment()["shipml"]
    source = dist.source
    if source is None:
        return None
    dst.mkdir(parents=True, exist_ok=True)
    for stale in dst.glob("shipml-*.whl"):
        stale.unlink()
    if source.is_file() and source.suffix == ".whl":
        return Path(shutil.copy2(source, dst / source.name))
    if not (source / "pyproject.toml").is_file():
        raise ConfigError(
            f"shipml is installed from {source}, which has no pyproject.toml to build it from",
            "install shipml from a wheel or a package index, then export again",
        )
    with tempfile.TemporaryDirectory(prefix="shipml-wheel-") as tmp:
        tree = Path(tmp) / "source"
        tree.mkdir()
        _copy_source(source, tree)
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
        cmd += ["--no-cache-dir", "--quiet", "--wheel-dir", str(dst), str(tree)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    wheels = sorted(dst.glob("shipml-*.whl"))
    if done.returncode != 0 or not wheels:
        why = (done.stderr or done.stdout).strip().splitlines()
        raise ConfigError(
            f"cannot build shipml's wheel from {source}: {why[-1] if why else 'pip failed'}",
            "the build needs pip and setuptools>=77 in this environment (pip install setuptools)",
        )
    return wheels[-1]


if __name__ == "__main__":  # register_champion in a process of its own (write_store)
    from shipml.errors import ShipmlError

    try:
        job = json.loads(sys.stdin.read())
        register_champion(Path(job["root"]), job["name"], int(job["version"]), job["tags"])
    except ShipmlError as err:
        print(err.message, file=sys.stderr)
        sys.exit(2)
