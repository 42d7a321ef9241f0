"""What /predict, /predict/batch and /feedback accept from anyone: text length and numeric
ranges per field, answered ids only for feedback, bearer tokens, rate limits per client, bad
UTF-8 as a 422; and the OpenAPI document saying so. In process (TestClient: the same ASGI app
`shipml serve` runs, its fast lane included) on a really trained champion."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shipml import Project
from shipml.config import ColumnBounds, RateLimitConfig
from shipml.serving.app import ServingAPI, create_app
from shipml.serving.predlog import PredictionLog, latest_labels
from tests.test_serving import _customers, _rows, _trained_forest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model without dates: strict bodies are read by msgspec (the fast decoder)."""
    folder = tmp_path_factory.mktemp("serve-limits")
    return _trained_forest(folder, _customers().drop(columns=["signup_date"]), 20, {})


def _client(config: Path, lane: bool = True, **serving: Any) -> TestClient:
    project = Project.load(config)
    for key, value in serving.items():
        setattr(project.config.serving, key, value)
    app = create_app(project)
    if not lane:  # the documented FastAPI routes instead of the lane in front of them
        assert isinstance(app, ServingAPI)
        app.lane = None
    return TestClient(app)


@pytest.fixture(scope="module")
def client(config: Path) -> Iterator[TestClient]:
    with _client(config) as running:
        yield running


@pytest.fixture(scope="module")
def row(config: Path) -> dict[str, Any]:
    return _rows(config, 1)[0]


def _log_bytes(config: Path) -> int:
    folder = config.parent / ".shipml" / "predictions"
    return sum(p.stat().st_size for p in folder.rglob("*.jsonl"))


@pytest.mark.parametrize("lane", [True, False])
@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
def test_invalid_utf8_in_a_string_is_422(config: Path, row: dict, lane: bool, path: str) -> None:
    rows = {**row, "plan": "PLAN"}
    body = {"features": rows} if path == "/predict" else {"instances": [rows]}
    raw = json.dumps(body).encode().replace(b"PLAN", b"b\xff\xfeasic")
    with _client(config, lane=lane) as running:
        r = running.post(path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body"]


@pytest.mark.parametrize("value", [1.7e308, -1.7e308])
def test_a_number_far_outside_the_training_range_is_422_naming_the_range(
    client: TestClient, row: dict, value: float
) -> None:
    one = client.post("/predict", json={"features": {**row, "income": value}})
    batch = client.post("/predict/batch", json={"instances": [row, {**row, "income": value}]})
    for r, loc in ((one, ["body", "features", "income"]), (batch, ["body", "instances", 1])):
        assert r.status_code == 422, r.text
        detail = r.json()["detail"][0]
        assert detail["loc"][: len(loc)] == loc and "income" in detail["loc"]
        assert "outside the accepted range [" in detail["msg"]
        assert "serving.input_bounds" in detail["msg"]
    # The training range widened by ten training ranges each side (the default margin): a
    # drift of three times the incomes is still scored, for monitoring to see.
    schema = client.get("/openapi.json").json()["components"]["schemas"]["Features"]
    income = schema["properties"]["income"]["anyOf"][0]
    low, high = income["minimum"], income["maximum"]
    incomes = _customers()["income"].dropna()
    assert low < incomes.min() - 5 * (incomes.max() - incomes.min()) < 0 < high
    assert high > incomes.max() + 5 * (incomes.max() - incomes.min()) > 3 * incomes.max()
    for inside in (low, high):
        r = client.post("/predict", json={"features": {**row, "income": inside}})
        assert r.status_code == 200, r.text


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # 1e300, bounds off
def test_bounds_are_configurable_per_column_or_off(config: Path, row: dict) -> None:
    project = Project.load(config)
    bounds = project.config.serving.input_bounds
    bounds.columns = {"income": ColumnBounds(min=0, max=10)}
    with TestClient(create_app(project)) as running:
        r = running.post("/predict", json={"features": {**row, "income": 11}})
        assert r.status_code == 422 and "[0, 10]" in r.json()["detail"][0]["msg"]
        assert running.post("/predict", json={"features": {**row, "income": 10}}).status_code == 200
        schema = running.get("/openapi.json").json()["components"]["schemas"]["Features"]
        income = schema["properties"]["income"]["anyOf"][0]
        assert (income["minimum"], income["maximum"]) == (0.0, 10.0)
    project = Project.load(config)
    project.config.serving.input_bounds.enabled = False
    with TestClient(create_app(project)) as running:
        r = running.post("/predict", json={"features": {**row, "income": 1e300}})
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
def test_a_long_string_field_is_422_and_not_logged(
    client: TestClient, config: Path, row: dict, path: str
) -> None:
    long = {**row, "plan": "x" * 100_000}
    body = {"features": long} if path == "/predict" else {"instances": [row, long]}
    before = _log_bytes(config)
    r = client.post(path, json=body)
    assert r.status_code == 422, r.text
    named = [d for d in r.json()["detail"] if "plan" in d["loc"]]
    assert "at most 1000 characters (serving.max_string_length)" in named[0]["msg"]
    assert _log_bytes(config) == before
    shorter = {**row, "plan": "x" * 1000}  # at the limit: scored as an unseen category
    assert client.post("/predict", json={"features": shorter}).status_code == 200


def test_feedback_only_for_answered_ids_of_any_worker_or_run(
    config: Path, client: TestClient, row: dict
) -> None:
    one = client.post("/predict", json={"features": row}).json()["request_id"]
    batch = client.post("/predict/batch", json={"instances": [row, row]}).json()["request_ids"]
    for request_id in (one, batch[1]):
        r = client.post("/feedback", json={"request_id": request_id, "label": "yes"})
        assert r.status_code == 200 and r.json()["recorded"] is True, r.text
    refused = [
        "0" * 32,  # never answered
        f"{one[:20]}{int(one[20:], 16) + 1000:012x}",  # this process's, not yet given
        batch[0].removesuffix("-0") + "-2",  # past the batch's rows
        one + "-0",  # a single prediction has no rows
        batch[0].removesuffix("-0"),  # a batch's id is not a row's
    ]
    for request_id in refused:
        r = client.post("/feedback", json={"request_id": request_id, "label": "yes"})
        assert r.status_code == 422, (request_id, r.text)
        assert r.json()["detail"][0]["loc"] == ["body", "request_id"]
    # An id another worker (its own process, its own files) answered; and one of an earlier run.
    folder = config.parent / ".shipml" / "predictions"
    other = PredictionLog(folder)
    other_id = other.ids.new()
    other.prediction({"request_id": other_id, "inputs": row, "prediction": "no", "time": 0.0})
    other.close()
    r = client.post("/feedback", json={"request_id": other_id, "label": "no"})
    assert r.status_code == 200, r.text
    with _client(config) as restarted:
        r = restarted.post("/feedback", json={"request_id": one, "label": "no"})
        assert r.status_code == 200, r.text
    labels = latest_labels(folder)
    assert labels[batch[1]] == "yes" and labels[other_id] == "no" and labels[one] == "no"
    assert "0" * 32 not in labels


def test_tokens_guard_predict_and_feedback_case_insensitive_scheme(config: Path, row: dict) -> None:
    tokens = {"predict_token": "p-secret-1", "feedback_token": "f-secret-1"}
    for lane in (True, False):
        with _client(config, lane=lane, **tokens) as running:
            for path, body in (
                ("/predict", {"features": row}),
                ("/predict/batch", {"instances": [row]}),
            ):
                missing = running.post(path, json=body)
                assert missing.status_code == 401, missing.text
                assert "Bearer" in missing.json()["detail"]
                assert missing.headers["www-authenticate"] == "Bearer"
                wrong = running.post(
                    path, json=body, headers={"Authorization": "Bearer f-secret-1"}
                )
                assert wrong.status_code == 401
                right = running.post(
                    path, json=body, headers={"Authorization": "bEARer p-secret-1"}
                )
                assert right.status_code == 200, right.text
            answered = right.json()["request_ids"][0]
            feedback = {"request_id": answered, "label": "yes"}
            assert running.post("/feedback", json=feedback).status_code == 401
            ok = running.post(
                "/feedback", json=feedback, headers={"authorization": "bearer f-secret-1"}
            )
            assert ok.status_code == 200, ok.text
            document = running.get("/openapi.json").json()
            for path in ("/predict", "/predict/batch", "/feedback"):
                operation = document["paths"][path]["post"]
                assert "401" in operation["responses"]
                assert operation["security"] == [{"bearer": []}]
            assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_rate_limits_per_client_answer_429_with_a_reason(config: Path, row: dict) -> None:
    limit = RateLimitConfig(per_second=0.01, burst=3)  # no token comes back during the test
    project = Project.load(config)
    project.config.serving.rate_limits.predict = limit
    project.config.serving.rate_limits.feedback = limit
    with TestClient(create_app(project)) as running:
        codes = [running.post("/predict", json={"features": row}) for _ in range(3)]
        assert [r.status_code for r in codes] == [200, 200, 200]
        over = running.post("/predict/batch", json={"instances": [row]})  # the same bucket
        assert over.status_code == 429
        assert "serving.rate_limits" in over.json()["detail"]
        assert int(over.headers["retry-after"]) >= 1
        answered = codes[0].json()["request_id"]
        feedback = [
            running.post("/feedback", json={"request_id": answered, "label": "no"})
            for _ in range(4)
        ]
        assert [r.status_code for r in feedback] == [200, 200, 200, 429]
        metrics = running.get("/metrics").text
        assert 'shipml_prediction_errors_total{kind="rate_limited",model="train"} 2.0' in metrics
        document = running.get("/openapi.json").json()
        assert "429" in document["paths"]["/feedback"]["post"]["responses"]
        assert "429" in document["paths"]["/predict"]["post"]["responses"]


def test_openapi_documents_every_answer_and_the_labels(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    paths = document["paths"]
    for path in ("/predict", "/predict/batch"):
        responses = paths[path]["post"]["responses"]
        assert {"413", "415", "422", "503"} <= set(responses), responses
        assert "401" not in responses and "429" not in responses  # no token, no limit set
        error = responses["503"]["content"]["application/json"]["schema"]["$ref"]
        assert error == "#/components/schemas/Error"
    feedback = paths["/feedback"]["post"]["responses"]
    assert {"413", "415", "422", "429", "503"} <= set(feedback)  # feedback is limited by default
    metrics = paths["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == [client.get("/metrics").headers["content-type"]]
    assert {"401", "403"} <= set(paths["/admin/reload"]["post"]["responses"])
    assert "503" in paths["/ready"]["get"]["responses"]
    answer = paths["/predict"]["post"]["responses"]["200"]
    assert "request_id" in answer["content"]["application/json"]["schema"]["required"]
    link = answer["links"]["FeedbackForThisPrediction"]
    assert link["operationId"] == paths["/feedback"]["post"]["operationId"]
    assert link["requestBody"] == {"request_id": "$response.body#/request_id"}
    label = document["components"]["schemas"]["FeedbackRequest"]["properties"]["label"]
    assert label["enum"] == ["no", "yes"]
