"""The prediction log's filesystem fails under a real `shipml serve`: a full disk (a 1 MB
tmpfs mounted on .shipml/predictions) and a read-only log folder (a read-only bind mount).
Nothing answered may be missing from the log, nothing may be a 500, /ready must say why and
recover when the filesystem does. Needs root to mount; skipped with the reason otherwise."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from shipml.serving.predlog import read_predictions
from tests.chaos.figures import record
from tests.serving_helpers import Load, Server
from tests.test_serving import _customers, _rows, _trained_forest

pytestmark = [pytest.mark.chaos, pytest.mark.integration]


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount ({' '.join(args)}): {done.stderr.strip() or done.returncode}")


@contextlib.contextmanager
def _mounted(target: Path, *args: str) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small or read-only filesystem needs root")
    target.mkdir(parents=True, exist_ok=True)
    _mount(*args, str(target))
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("chaos-log")
    no_dates = _customers().drop(columns=["signup_date"])
    return _trained_forest(folder, no_dates, 20, {"fsync_interval_s": 0.2})


def _metric(server: Server, line_start: str) -> float:
    for line in server.get("/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.split()[-1])
    return 0.0


def _whole_lines(folder: Path) -> int:
    """Every line of every log file parses and ends in a newline; returns the lines."""
    lines = 0
    for path in folder.rglob("*.jsonl"):
        data = path.read_bytes()
        assert not data or data.endswith(b"\n"), f"torn last line in {path.name}"
        for line in data.splitlines():
            json.loads(line)
            lines += 1
    return lines


def _wait_ready(server: Server, status: int, saying: str = "", timeout: float = 60.0) -> dict:
    """Until /ready answers ``status`` with ``saying`` in its detail."""
    deadline = time.monotonic() + timeout
    seen = "no answer"
    while time.monotonic() < deadline:
        try:
            r = server.get("/ready")
        except requests.ConnectionError:
            time.sleep(0.2)
            continue
        seen = f"{r.status_code} {r.text}"
        if r.status_code == status and saying in str(r.json().get("detail", "")):
            return dict(r.json())
        time.sleep(0.2)
    raise AssertionError(f"/ready did not answer {status} ({saying!r}) in {timeout} s: {seen}")


def test_a_full_disk_answers_503_loses_no_answered_prediction_and_recovers(
    project: Path,
) -> None:
    folder = project.parent / ".shipml" / "predictions"
    rows = _rows(project, 20)
    with _mounted(folder, "-t", "tmpfs", "-o", "size=1m", "tmpfs"):
        filler = folder / "filler"
        filler.write_bytes(b"\0" * (1024 * 1024 - 160 * 1024))  # leaves room for a few hundred
        with Server(project) as server:
            with Load(server, rows, threads=4, max_seconds=90) as load:
                deadline = time.monotonic() + 90
                while sum(n for k, n in load.failures.items() if k.startswith("503")) < 50:
                    assert time.monotonic() < deadline, f"no full disk: {load.failures}"
                    time.sleep(0.05)
            answered = {request_id for request_id, _ in load.answered}
            refused = sum(n for k, n in load.failures.items() if k.startswith("503"))
            assert set(load.failures) == {k for k in load.failures if k.startswith("503")}
            assert all("cannot be written" in k for k in load.failures), load.failures
            _wait_ready(server, 503, "cannot be written (No space left on device)")
            logged = {r["request_id"] for r in read_predictions(folder)}
            assert answered <= logged, f"{len(answered - logged)} answered but not in the log"
            assert len(answered) >= 100
            # Only what was answered is counted as a prediction; the refusals as errors.
            assert _metric(server, "shipml_predictions_total{") == len(answered)
            errors = _metric(server, 'shipml_prediction_errors_total{kind="log_unavailable",')
            assert errors == refused
            assert _metric(server, 'shipml_prediction_errors_total{kind="internal",') == 0
            lines = _whole_lines(folder)
            filler.unlink()  # space returns
            assert _wait_ready(server, 200)["ready"] is True
            after = [server.post("/predict", {"features": row}) for row in rows[:5]]
            assert [r.status_code for r in after] == [200] * 5
            logged = {r["request_id"] for r in read_predictions(folder)}
            assert {r.json()["request_id"] for r in after} <= logged
            assert _whole_lines(folder) == lines + 5
    record("prediction log on a full 1 MB disk", "answered, all logged", len(answered))
    record("prediction log on a full 1 MB disk", "refused with 503", refused)


def test_a_read_only_log_folder_is_not_ready_and_refuses_with_a_reason(
    project: Path, tmp_path: Path
) -> None:
    folder = project.parent / ".shipml" / "predictions"
    source = tmp_path / "log"
    source.mkdir()
    row = _rows(project, 1)[0]
    with _mounted(folder, "--bind", str(source)):
        _mount("-o", "remount,bind,ro", str(folder))
        with pytest.raises(OSError):
            (folder / "probe").write_text("x")  # root, and still refused
        with Server(project, wait=False) as server:
            _wait_ready(server, 503, "cannot be written (Read-only file system)")
            for path, body in (
                ("/predict", {"features": row}),
                ("/predict/batch", {"instances": [row]}),
            ):
                r = server.post(path, body)
                assert r.status_code == 503, r.text
                assert "cannot be written" in r.json()["detail"]
                assert "retry" in r.json()["detail"] and r.headers["retry-after"] == "1"
            _mount("-o", "remount,bind,rw", str(folder))
            assert _wait_ready(server, 200)["ready"] is True
            r = server.post("/predict", {"features": row})
            assert r.status_code == 200, r.text
            assert r.json()["request_id"] in {x["request_id"] for x in read_predictions(folder)}
    assert "Traceback" not in server.log.read_text()
    record("prediction log on a read-only folder", "refused with 503, then recovered", 1)
