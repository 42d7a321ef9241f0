"""`shipml export lock`: the Python environment shipml runs in, as exact pins, and the part of
it a serving image needs (shipml's runtime requirements, followed through Requires-Dist).

Versions come from ``importlib.metadata``, so the image and a reproduction install what trained
the model. What no package index can give back (shipml installed from its source folder, any
other local install) is named in a comment instead of a pin.
"""

from __future__ import annotations

import json
import platform
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from shipml.deploy.output import out_folder, write_files

LOCK_FILE = "requirements.lock"
# PyTorch's own index: the only one with its CPU (+cpu) and CUDA (+cu128, ...) builds.
PYTORCH_INDEX = "https://download.pytorch.org/whl/{label}"
_PYTORCH_BUILD = re.compile(r"^(cpu|cu\d+|rocm[\d.]+|xpu)$")
_PYTORCH = {"torch", "torchvision", "torchaudio"}
# GPU libraries that only a CUDA build of torch pulls in; the serving image runs on CPU.
_CUDA_ONLY = re.compile(r"^(nvidia-.+|triton|cuda-.+)$")
_TOOLS = {"pip"}  # the installer itself, as `pip freeze` leaves it out
# Requirement markers are evaluated for the image's platform, whatever machine exports it.
_LINUX = {"sys_platform": "linux", "platform_system": "Linux", "os_name": "posix"}


def canonical(name: str) -> str:
    """A distribution name as package indexes compare them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Distribution:
    """One installed distribution: its name as it spells it, its version, and where it came
    from when that was not a package index (``direct_url.json``)."""

    name: str
    version: str
    requires: tuple[str, ...] = ()
    url: str | None = None
    editable: bool = False
    vcs: str | None = None
    commit: str | None = None

    @property
    def key(self) -> str:
        return canonical(self.name)

    @property
    def local(self) -> bool:
        """Installed from a folder or file on this machine: no index has it."""
        return bool(self.url and self.url.startswith("file:") and not self.vcs)

    @property
    def source(self) -> Path | None:
        """The local folder or file it was installed from, if any."""
        if not self.local or self.url is None:
            return None
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(self.url).path))

    def pin(self) -> str | None:
        """Its line in a requirements file; None when it cannot be pinned (a local install)."""
        if self.local:
            return None
        if self.vcs and self.url:
            return f"{self.name} @ {self.vcs}+{self.url}@{self.commit}"
        if self.url:
            return f"{self.name} @ {self.url}"
        return f"{self.name}=={self.version}"


def _direct_url(dist: metadata.Distribution) -> dict[str, object]:
    try:
        raw = dist.read_text("direct_url.json")
        data = json.loads(raw) if raw else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def environment() -> dict[str, Distribution]:
    """Every installed distribution by canonical name. The first copy on sys.path wins, as it
    does for imports; where it came from may be recorded on another copy (an editable install
    leaves a bare .egg-info in its source folder beside the .dist-info that says so)."""
    found: dict[str, Distribution] = {}
    origin: dict[str, dict[str, object]] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if not name:
            continue
        key = canonical(name)
        direct = _direct_url(dist)
        if direct and key not in origin:
            origin[key] = direct
        if key not in found:
            found[key] = Distribution(name, dist.version, tuple(dist.requires or ()))
    for key, direct in origin.items():
        vcs = direct.get("vcs_info")
        dir_info = direct.get("dir_info")
        found[key] = Distribution(
            found[key].name,
            found[key].version,
            found[key].requires,
            url=str(direct.get("url") or "") or None,
            editable=isinstance(dir_info, dict) and bool(dir_info.get("editable")),
            vcs=str(vcs.get("vcs")) if isinstance(vcs, dict) else None,
            commit=str(vcs.get("commit_id")) if isinstance(vcs, dict) else None,
        )
    return found


def _pytorch_index(version: str) -> str | None:
    """PyTorch's index for a build with a local version label (2.13.0+cpu: whl/cpu)."""
    _, _, label = version.partition("+")
    return PYTORCH_INDEX.format(label=label) if _PYTORCH_BUILD.match(label) else None


def _header(title: str, count: int) -> list[str]:
    impl = platform.python_implementation()
    return [
        f"# {title}",
        f"# Python {platform.python_version()} ({impl}) on {platform.system()} "
        f"{platform.machine()}; {count} distributions.",
    ]


def _unpinned(dists: Iterable[Distribution]) -> list[str]:
    lines = []
    for d in dists:
        how = "editable from" if d.editable else "from"
        lines.append(f"#   {d.name} {d.version}, installed {how} {d.source}")
    if not lines:
        return []
    return [
        "# Not pinned: installed from a local source that no package index has. Install it",
        "# from there (shipml: the wheel `shipml export docker` builds, or `pip install -e DIR`).",
        *lines,
    ]


def lock_text(env: dict[str, Distribution]) -> str:
    """The whole environment as a requirements file of exact pins, sorted by name."""
    dists = sorted((d for d in env.values() if d.key not in _TOOLS), key=lambda d: d.key)
    pinned = [d for d in dists if not d.local]
    indexes = sorted({i for d in pinned if (i := _pytorch_index(d.version))})
    lines = _header("The Python environment shipml ran in, as exact pins.", len(pinned))
    lines.append(
        f"# Reproduce it: python{sys.version_info.major}.{sys.version_info.minor} -m venv .venv"
        f" && .venv/bin/pip install -r {LOCK_FILE}"
    )
    if indexes:
        lines.append("# PyTorch's builds with a +label (2.13.0+cpu) are only on its own index:")
    lines += [f"--extra-index-url {i}" for i in indexes]
    lines += [line for d in pinned if (line := d.pin())]
    lines += _unpinned(d for d in dists if d.local)
    return "\n".join(lines) + "\n"


def export_lock(out: Path) -> Path:
    """Write ``out/requirements.lock``: every installed distribution, pinned exactly."""
    out_folder(out, "lock file")
    [path] = write_files({out / LOCK_FILE: lock_text(environment())}, "lock file")
    return path


# --- the serving image's share of the environment -------------------------------------------


def closure(
    env: dict[str, Distribution], roots: Iterable[str]
) -> tuple[list[Distribution], list[str]]:
    """What the requirements ``roots`` ("shipml", "torch", "mlflow[auth]") need on Linux, by
    following Requires-Dist through the installed distributions: (the installed ones, sorted by
    name; names required but not installed here)."""
    from packaging.requirements import InvalidRequirement, Requirement

    todo: list[tuple[str, str]] = []
    for root in roots:
        req = Requirement(root)
        todo += [(canonical(req.name), e) for e in ("", *sorted(req.extras))]
    seen: set[tuple[str, str]] = set()
    needed: dict[str, Distribution] = {}
    missing: set[str] = set()
    while todo:
        key, extra = todo.pop()
        if (key, extra) in seen:
            continue
        seen.add((key, extra))
        dist = env.get(key)
        if dist is None:
            missing.add(key)
            continue
        needed[key] = dist
        for text in dist.requires:
            try:
                req = Requirement(text)
            except InvalidRequirement:
                continue
            if req.marker is not None and not req.marker.evaluate({**_LINUX, "extra": extra}):
                continue
            todo += [(canonical(req.name), e) for e in ("", *sorted(req.extras))]
    return sorted(needed.values(), key=lambda d: d.key), sorted(missing)


def image_requirements(
    env: dict[str, Distribution], roots: Iterable[str] = ("shipml",), skip: Iterable[str] = ()
) -> str:
    """The requirements file of a CPU serving image: what ``roots`` need, at this environment's
    versions, without ``skip`` (shipml itself, which the image installs from its wheel). torch
    and its kin are pinned to their CPU build from PyTorch's index, whatever build runs here,
    and the CUDA libraries a GPU build pulls in are left out."""
    dists, missing = closure(env, roots)
    left_out = {canonical(s) for s in skip} | _TOOLS
    dists = [d for d in dists if d.key not in left_out]
    cpu = any(d.key in _PYTORCH for d in dists)
    lines = _header(
        "What the serving image installs: shipml's runtime requirements (and the model's), "
        "at the exact versions of the environment that exported it.",
        len(dists),
    )
    if cpu:
        lines += [
            "# The image serves on CPU: torch is pinned to its CPU build, on PyTorch's index.",
            f"--extra-index-url {PYTORCH_INDEX.format(label='cpu')}",
        ]
    for d in dists:
        if cpu and _CUDA_ONLY.match(d.key):
            continue
        if d.key in _PYTORCH:
            lines.append(f"{d.name}=={d.version.partition('+')[0]}+cpu")
        elif (line := d.pin()) is not None:
            lines.append(line)
        else:
            lines.append(f"# {d.name} {d.version} is installed from {d.source}: add it yourself")
    missing = [m for m in missing if not (cpu and _CUDA_ONLY.match(m))]
    if missing:
        lines.append("# Required on Linux but not installed here, so not pinned:")
        lines += missing
    return "\n".join(lines) + "\n"
