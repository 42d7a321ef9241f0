"""`shipml serve` under operations: several workers scraped by a real Prometheus server,
feedback across server processes, and the batch answer's fields against the single answer's
(the schemathesis run is in tests/chaos)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests
from fastapi.testclient import TestClient

from shipml.serving.app import create_app
from shipml.serving.openapi import BATCH_ANSWER, PREDICT_ANSWER
from tests.conftest import make_project, run_cli
from tests.serving_helpers import Prometheus, Server
from tests.test_serving import _customers, _rows

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("serve-ops")

    def edit(raw: dict) -> None:
        raw["features"]["exclude"] = ["customer_id"]
        raw["training"].update(models=["random_forest"], baselines=False, trials=0)
        raw["training"]["params"] = {"random_forest": {"n_estimators": 30}}
        raw["training"]["ensemble"] = False
        raw["serving"] = {"max_batch_rows": 100}
        raw["monitoring"] = {"window": 50, "interval_s": 0.5}

    config = make_project(folder, _customers(), "churned", edit)
    assert run_cli("train", "-c", config).exit_code == 0
    return config


def test_prometheus_scrapes_the_counts_of_two_workers(tmp_path: Path, project: Path) -> None:
    rows = _rows(project, 10)
    with Server(project, workers=2) as server:
        prometheus = Prometheus(tmp_path, f"127.0.0.1:{server.port}")
        try:
            prometheus.wait_ready()
            session = requests.Session()
            pids = set()
            for i in range(40):
                r = session.post(server.url + "/predict", json={"features": rows[i % 10]})
                assert r.status_code == 200, r.text
                # Separate connections spread over the workers; the sum must not care.
                session.close()
            for _ in range(3):
                r = requests.post(server.url + "/predict/batch", json={"instances": rows})
                assert r.status_code == 200
            bad = requests.post(server.url + "/predict", json={"features": {"age": "x"}})
            assert bad.status_code == 422
            expected = 40 + 3 * 10
            deadline = time.monotonic() + 45
            seen: float = -1
            while time.monotonic() < deadline:
                result = prometheus.query('sum(shipml_predictions_total{model_version="1"})')
                seen = float(result[0]["value"][1]) if result else -1
                if seen == expected:
                    break
                time.sleep(0.5)
            assert seen == expected, f"prometheus saw {seen} predictions, expected {expected}"
            latency = prometheus.query(
                'sum(shipml_prediction_latency_seconds_count{model_version="1"})'
            )
            assert float(latency[0]["value"][1]) == 43  # one observation per request
            errors = prometheus.query('sum(shipml_prediction_errors_total{kind="bad_request"})')
            assert float(errors[0]["value"][1]) == 1
            info = prometheus.query("max(shipml_model_info)")
            assert float(info[0]["value"][1]) == 1
            # Both workers answered some of the requests (their pids are in the multiprocess
            # files), so the total above really is a sum over processes.
            folder = project.parent / ".shipml" / "serving" / "metrics"
            pids = {p.stem.split("_")[-1] for p in folder.glob("counter_*.db")}
            assert len(pids) == 2, sorted(pids)
            # The drift gauges: one worker computes them (the other finds the lock taken), so
            # Prometheus sees one value per series, over the latest 50 logged rows.
            deadline = time.monotonic() + 30
            window: list = []
            while time.monotonic() < deadline and not window:
                window = prometheus.query('shipml_drift_window_rows{model_version="1"}')
                time.sleep(0.5)
            assert [float(w["value"][1]) for w in window] == [50.0], window
            scores = prometheus.query('shipml_drift_score{model_version="1"}')
            assert {s["metric"]["column"] for s in scores} >= {"age", "plan", "income"}
            assert len(scores) == len({s["metric"]["column"] for s in scores})
            drift_writers = {p.stem for p in folder.glob("gauge_livemostrecent_*.db")}
            assert len(drift_writers) == 1, drift_writers
        finally:
            prometheus.close()


def test_feedback_is_taken_for_ids_another_server_process_answered(project: Path) -> None:
    """Two server processes on one project (as two workers, or a server restarted): a
    prediction answered by one takes its label at the other, since the ids are looked up in
    the log files, not in one process's memory; an id never answered does not."""
    rows = _rows(project, 10)
    with Server(project) as one, Server(project) as other:
        for answering, taking in ((one, other), (other, one)):
            single = answering.post("/predict", {"features": rows[0]}).json()["request_id"]
            batch = answering.post("/predict/batch", {"instances": rows[:3]}).json()
            for request_id in (single, batch["request_id"][2]):
                r = taking.post("/feedback", {"request_id": request_id, "label": "yes"})
                assert r.status_code == 200, r.text
            never = f"{single[:20]}{'f' * 12}"
            r = taking.post("/feedback", {"request_id": never, "label": "yes"})
            assert r.status_code == 422 and "request_id" in r.text, r.text


def test_the_batch_answer_names_its_fields_as_the_single_answer_does(project: Path) -> None:
    """/predict/batch answers the fields of /predict, each a list of one per row under the same
    name (prediction, probability, probabilities, request_id); "predictions" and "request_ids",
    the names of 0.1.0, repeat them for one release, marked deprecated in the OpenAPI."""
    rows = _rows(project, 4)
    with TestClient(create_app(project)) as client:
        batch = client.post("/predict/batch", json={"instances": rows})
        assert batch.status_code == 200, batch.text
        answer = batch.json()
        singles = [client.post("/predict", json={"features": row}).json() for row in rows]
        document = client.get("/openapi.json").json()
    per_row = set(singles[0]) - {"model_version"}
    assert per_row == {"prediction", "probability", "probabilities", "request_id"}
    for key in per_row:
        assert isinstance(answer[key], list) and len(answer[key]) == len(rows), key
    for i, single in enumerate(singles):
        assert answer["prediction"][i] == single["prediction"]
        assert answer["probability"][i] == pytest.approx(single["probability"], abs=1e-9)
        assert answer["probabilities"][i] == pytest.approx(single["probabilities"], abs=1e-9)
        assert answer["request_id"][i] != single["request_id"]  # each answer has its own ids
    assert answer["model_version"] == singles[0]["model_version"]
    assert answer["predictions"] == answer["prediction"]  # the old names, for one release
    assert answer["request_ids"] == answer["request_id"]
    # No key of the batch answer is singular for one field and plural for another: every
    # current key is a key of the single answer, or the batch's own `unreadable`.
    current = {k for k in answer if not BATCH_ANSWER["properties"][k].get("deprecated")}
    assert current == set(singles[0]) | {"unreadable"}
    schema = document["paths"]["/predict/batch"]["post"]["responses"]["200"]
    properties = schema["content"]["application/json"]["schema"]["properties"]
    assert set(properties) == set(answer)
    assert set(PREDICT_ANSWER["properties"]) <= set(properties)  # type: ignore[arg-type]
    assert {k for k, v in properties.items() if v.get("deprecated")} == {
        "predictions",
        "request_ids",
    }
    link = schema["links"]["FeedbackForThisPrediction"]["requestBody"]["request_id"]
    assert link == "$response.body#/request_id/0"
