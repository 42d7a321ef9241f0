"""Tampering with what the registry holds, as anyone who can write to the store could: a crafted
model file registered with its own checksum, a checksum tag deleted, a model file, fast copy or
manifest changed after registration. Real commands refuse each in one line (exit 2), and a real
`shipml serve` never serves any of them: it answers 503 until a model it can verify is the
champion, and keeps serving the verified one when the champion moves to one it cannot verify."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from shipml import Project, registry
from tests.chaos.figures import record
from tests.conftest import run_cli
from tests.serving_helpers import Server
from tests.test_model_security import CRAFTED, crafted_file, untouched, victim_files
from tests.test_store_safety import model_file, register_file, registered_project

pytestmark = [pytest.mark.chaos]

ROW = {"usage": 0.3, "tenure": -1.0}


def _until(check: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.2)


def _flip_last_byte(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))


@pytest.mark.timeout(600)
def test_commands_refuse_every_changed_or_unverifiable_artifact(tmp_path: Path) -> None:
    config = registered_project(tmp_path / "project")
    store = Project.load(config).store
    good = model_file(store, 1).read_bytes()
    refused: dict[str, tuple[list[str], str]] = {}

    def predict(version: int) -> list[str]:
        out = tmp_path / "out.csv"
        return [
            "predict",
            str(config.parent / "new.csv"),
            "--out",
            str(out),
            "--version",
            str(version),
        ]

    changed = register_file(config, good)
    source = Path(store.client.get_model_version(store.model_name, str(changed)).source)
    _flip_last_byte(source / registry._model_file(source))
    refused["model file changed"] = (predict(changed), "checksum does not match")

    untagged = register_file(config, good)
    store.client.delete_model_version_tag(store.model_name, str(untagged), "shipml.model_sha256")
    refused["model checksum deleted"] = (predict(untagged), "no recorded model checksum")

    manifest = next(Path(store.shipml_dir, "artifacts").rglob("manifest.json"))
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "seeds": {"training": 7}}))
    refused["manifest changed"] = (["models", "--version", "1", "--manifest"], "was changed")

    no_manifest = register_file(config, good)
    args = ["models", "--version", str(no_manifest), "--manifest"]
    refused["manifest checksum missing"] = (args, "has no manifest")

    failures = []
    for what, (args, expected) in refused.items():
        result = run_cli(*args, "-c", config)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        if result.exit_code != 2 or len(errors) != 1 or expected not in errors[0]:
            failures.append(f"{what}: exit {result.exit_code}: {result.all.strip()[-400:]}")
        elif "Traceback" in result.all:
            failures.append(f"{what}: a traceback")
    record("tampering with registered artifacts", "changes refused", len(refused), not failures)
    assert not failures, "\n".join(failures)
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.timeout(600)
def test_a_server_never_serves_a_crafted_or_unverifiable_model(tmp_path: Path) -> None:
    config = registered_project(tmp_path / "project")
    store = Project.load(config).store
    good = model_file(store, 1).read_bytes()
    victim = victim_files(tmp_path / "victim")
    _, make, type_name = CRAFTED[0]
    crafted = register_file(config, crafted_file(make, victim))
    untagged = register_file(config, good)
    store.client.delete_model_version_tag(store.model_name, str(untagged), "shipml.model_sha256")
    fast_untagged = register_file(config, good, {"shipml.inference": "fast"})
    registry.promote(store, crafted)

    with Server(config, wait=False) as server:

        def refused_crafted() -> bool:
            try:
                answer = server.get("/ready")
            except OSError:
                return False
            return answer.status_code == 503 and type_name in answer.json().get("detail", "")

        _until(refused_crafted, f"/ready names the untrusted type {type_name}")
        assert server.post("/predict", {"features": ROW}).status_code == 503

        registry.promote(store, 1)  # a verified champion: served
        server.wait_ready()
        answer = server.post("/predict", {"features": ROW})
        assert answer.status_code == 200 and answer.json()["model_version"] == "1"

        registry.promote(store, untagged)  # unverifiable: the verified one keeps serving
        _until(
            lambda: f"version {untagged} could not be loaded" in server.log.read_text(),
            "the server logs that the unverifiable champion was refused",
        )
        assert "no recorded model checksum" in server.log.read_text()
        assert server.post("/predict", {"features": ROW}).json()["model_version"] == "1"

        registry.promote(store, fast_untagged)  # its fast copy cannot be verified: native
        _until(
            lambda: server.get("/model").json().get("model_version") == str(fast_untagged),
            f"version {fast_untagged} is served",
        )
        model = server.get("/model").json()
        assert model["inference"] == "native"
        assert "no recorded checksum" in model["inference_note"]
    log = server.log.read_text()
    held = untouched(victim) and "Traceback" not in log
    record("tampering with registered artifacts", "versions a server refused", 2, held)
    assert held, log[-3000:]
