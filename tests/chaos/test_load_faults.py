"""Faults under load on a real `shipml serve`: champion swaps with one and two workers, and a
SIGKILL of the whole server with every answered request id looked for in the prediction log."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from shipml.serving.predlog import read_predictions
from tests.chaos.figures import record
from tests.conftest import make_project, run_cli
from tests.serving_helpers import Load, Server
from tests.test_serving import _customers, _rows

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

SWAPS = 10


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A served project with versions 1 (champion) and 2, small forests."""

    def edit(raw: dict) -> None:
        raw["features"]["exclude"] = ["customer_id"]
        raw["training"].update(models=["random_forest"], baselines=False, trials=0)
        raw["training"]["params"] = {"random_forest": {"n_estimators": 20}}
        raw["training"]["ensemble"] = False
        raw["serving"] = {"reload_interval_s": 0.5}

    config = make_project(tmp_path_factory.mktemp("chaos-load"), _customers(), "churned", edit)
    for _ in range(2):
        result = run_cli("train", "-c", config)
        assert result.exit_code == 0, result.all
    return config


@pytest.mark.timeout(300)
@pytest.mark.parametrize("workers", [1, 2])
def test_champion_swaps_under_load_fail_no_request(two_versions: Path, workers: int) -> None:
    rows = _rows(two_versions, 20)
    with Server(two_versions, workers=workers) as server, Load(server, rows) as load:
        load.wait_for(100, timeout=60)
        start = load.count
        for swap in range(SWAPS):
            version = "2" if swap % 2 == 0 else "1"
            result = run_cli("promote", version, "-c", two_versions)
            assert result.exit_code == 0, result.all
            load.wait_for_version(version, streak=20 * workers, timeout=60)
        answered = load.count - start
    attack = f"champion swaps under load, {workers} worker{'s' * (workers > 1)}"
    record(attack, "swaps", SWAPS, held=not load.failures)
    record(attack, "requests", answered + sum(load.failures.values()), held=not load.failures)
    assert not load.failures, f"failed requests during the swaps: {dict(load.failures)}"
    assert {v for _, v in load.answered} == {"1", "2"}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("workers", [1, 2])
def test_sigkill_under_load_loses_no_answered_prediction(
    tmp_path: Path, two_versions: Path, workers: int
) -> None:
    log_dir = two_versions.parent / ".shipml" / "predictions"
    rows = _rows(two_versions, 20)
    server = Server(two_versions, workers=workers)
    with server, Load(server, rows) as load:
        load.wait_for(500, timeout=120)
        server.kill(signal.SIGKILL)  # the whole process group, mid-load
    answered = {request_id for request_id, _ in load.answered}
    logged = {r["request_id"] for r in read_predictions(log_dir)}
    missing = answered - logged
    attack = f"SIGKILL of the server under load, {workers} worker{'s' * (workers > 1)}"
    record(attack, "answered ids checked in the log", len(answered), held=not missing)
    assert not missing, f"{len(missing)} answered predictions are not in the log"

    # The server starts again on the same log (its last line may be cut by the kill) and logs.
    with Server(two_versions, workers=workers) as again:
        answer = again.post("/predict", {"features": rows[0]})
        assert answer.status_code == 200, answer.text
        request_id = answer.json()["request_id"]
    assert request_id in {r["request_id"] for r in read_predictions(log_dir)}
