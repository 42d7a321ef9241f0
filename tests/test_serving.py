"""`shipml serve`: a real uvicorn server on 127.0.0.1 answering for a really trained champion."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests

from shipml import Project
from shipml.demo import generate_customers
from shipml.serving.predlog import read_feedback, read_predictions
from tests.conftest import make_project, run_cli
from tests.serving_helpers import Server

pytestmark = pytest.mark.integration

MAX_BATCH = 250  # above THREADED_ROWS: large batches are scored on several threads


def _customers() -> pd.DataFrame:
    df = generate_customers(500, 11)
    df["signup_date"] = df["signup_date"].astype(str)
    return df


def _trained_forest(folder: Path, df: pd.DataFrame, trees: int, serving: dict) -> Path:
    """A project whose champion is a plain random forest of ``trees`` trees, trained."""

    def edit(raw: dict) -> None:
        raw["features"]["exclude"] = ["customer_id"]
        raw["training"].update(
            models=["random_forest"],
            baselines=False,
            params={"random_forest": {"n_estimators": trees}},
            trials=0,
            ensemble=False,
        )
        raw["serving"] = serving

    config = make_project(folder, df, "churned", edit)
    result = run_cli("train", "-c", config)
    assert result.exit_code == 0, result.all
    return config


@pytest.fixture(scope="module")
def served_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    serving = {"max_batch_rows": MAX_BATCH, "max_body_bytes": 100_000}
    return _trained_forest(tmp_path_factory.mktemp("serve"), _customers(), 50, serving)


@pytest.fixture(scope="module")
def server(served_project: Path) -> Any:
    with Server(served_project) as running:
        yield running


def _rows(config: Path, n: int | None = None) -> list[dict[str, Any]]:
    df = pd.read_csv(config.parent / "new.csv")
    df = df.drop(columns=["customer_id"])
    records = json.loads(df.to_json(orient="records"))
    return records if n is None else records[:n]


def test_ready_health_and_model(server: Server) -> None:
    assert server.get("/health").json() == {"status": "ok"}
    assert server.get("/ready").json() == {"ready": True, "model_version": "1"}
    model = server.get("/model").json()
    assert model["model_version"] == "1" and model["task"] == "classification"
    assert model["classes"] == ["no", "yes"]
    columns = {c["name"]: c for c in model["input_schema"]}
    assert columns["plan"]["role"] == "categorical"
    assert set(columns["plan"]["categories"]) == {"basic", "standard", "premium"}
    assert "customer_id" not in columns and "churned" not in columns


def test_predict_matches_the_registered_model(server: Server, served_project: Path) -> None:
    rows = _rows(served_project, 8)
    expected = Project.load(served_project).predict(pd.DataFrame(rows))
    for row, (_, want) in zip(rows, expected.iterrows(), strict=True):
        r = server.post("/predict", {"features": row})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["prediction"] == want["prediction"]
        assert answer["probability"] == pytest.approx(want["probability"], abs=1e-9)
        assert answer["probabilities"]["yes"] == pytest.approx(want["proba_yes"], abs=1e-9)
        assert sum(answer["probabilities"].values()) == pytest.approx(1.0)
        assert answer["model_version"] == "1" and len(answer["request_id"]) == 32


def test_a_list_in_schema_order_is_the_same_row(server: Server, served_project: Path) -> None:
    row = _rows(served_project, 1)[0]
    order = [c["name"] for c in server.get("/model").json()["input_schema"]]
    named = server.post("/predict", {"features": row}).json()
    listed = server.post("/predict", {"features": [row[c] for c in order]}).json()
    assert listed["probabilities"] == named["probabilities"]
    short = server.post("/predict", {"features": [row[c] for c in order][:-1]})
    assert short.status_code == 422 and f"needs {len(order)} values" in short.text


@pytest.mark.parametrize("n", [30, 200])
def test_batch_matches_the_registered_model(server: Server, served_project: Path, n: int) -> None:
    rows = [dict(r) for r in (_rows(served_project) * 5)[:n]]  # 200: the threaded path
    for i, row in enumerate(rows[40:]):
        row["income"] = None if i % 7 == 0 else (row["income"] or 0) + i
    expected = Project.load(served_project).predict(pd.DataFrame(rows))
    r = server.post("/predict/batch", {"instances": rows})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["predictions"] == expected["prediction"].tolist()
    np.testing.assert_allclose(answer["probability"], expected["probability"], atol=1e-9)
    assert answer["model_version"] == "1" and len(set(answer["request_ids"])) == n


def test_a_large_batch_scored_on_threads_equals_one_pass(served_project: Path) -> None:
    # However many cores this machine has: slices of the rows on a pool of two threads.
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from shipml.serving.app import THREADED_ROWS, ServedModel

    served = ServedModel.load(Project.load(served_project).store, 1, MAX_BATCH)
    rows = (_rows(served_project) * 8)[: THREADED_ROWS + 3]
    values = [[row[c] for row in rows] for c in served.columns]
    whole = served.outputs(values)
    with ThreadPoolExecutor(2) as pool:
        threaded = asyncio.run(served.outputs_of_batch(values, False, pool, 2))
        small = asyncio.run(served.outputs_of_batch([v[:5] for v in values], False, pool, 2))
    assert threaded.shape == whole.shape == (THREADED_ROWS + 3, 2)
    assert np.array_equal(threaded, whole)
    assert np.array_equal(small, whole[:5])


@pytest.fixture(scope="module")
def strict_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model with no date column: batches in the strict form (every row an object of the
    model's columns) are read by msgspec and go into the matrices without arrays in between."""
    folder = tmp_path_factory.mktemp("serve-strict")
    no_dates = _customers().drop(columns=["signup_date"])
    return _trained_forest(folder, no_dates, 30, {"max_batch_rows": MAX_BATCH})


def test_strict_batches_are_scored_answered_and_logged_as_sent(strict_project: Path) -> None:
    rows = [dict(r) for r in (_rows(strict_project) * 6)[:200]]  # 200 rows: the threaded path
    for i, row in enumerate(rows):
        row["has_partner"] = {"yes": True, "no": False}.get(row["has_partner"])  # JSON's kind
        if i % 7 == 0:
            row["income"] = None
        if i % 5 == 0:
            row["age"] = int(row["age"] or 30)  # an integer for a number
        if i % 11 == 0:
            row["plan"] = "platinum" if i % 2 else ""  # unseen category; empty is missing
        if i % 13 == 0:
            row["region"] = None
    expected = Project.load(strict_project).predict(pd.DataFrame(rows))
    log_dir = strict_project.parent / ".shipml" / "predictions"
    with Server(strict_project) as server:
        assert server.get("/model").json()["inference"] == "fast"
        answers = []
        for part in (rows[:30], rows):  # one pass and the threaded path
            # (indented: a JSON line in the log all the same)
            r = requests.post(
                server.url + "/predict/batch",
                data=json.dumps({"instances": part}, indent=1),
                headers={"content-type": "application/json"},
                timeout=30,
            )
            assert r.status_code == 200, r.text
            answers.append(r.json())
        bad = [dict(rows[0], age="old"), *rows[1:3]]  # not the strict form: pydantic names it
        refused = server.post("/predict/batch", {"instances": bad, "strict": True})
        assert refused.status_code == 422
        assert refused.json()["detail"][0]["loc"] == ["body", "instances", 0, "age"]
        lenient = server.post("/predict/batch", {"instances": bad})  # scored, "old" as missing
        assert lenient.status_code == 200 and lenient.json()["unreadable"] == {"age": 1}
    small, large = answers
    assert large["predictions"] == expected["prediction"].tolist()
    np.testing.assert_allclose(large["probability"], expected["probability"], atol=1e-9)
    assert small["probabilities"] == large["probabilities"][:30]
    for probs, label, p in zip(
        large["probabilities"], large["predictions"], large["probability"], strict=True
    ):
        assert set(probs) == {"no", "yes"} and probs[label] == p
        assert probs["no"] + probs["yes"] == pytest.approx(1.0)
    logged = {r["request_id"]: r for r in read_predictions(log_dir)}
    batch_id = large["request_ids"][0].removesuffix("-0")
    records = [json.loads(line) for path in log_dir.glob("*/*.jsonl") for line in path.open()]
    stored = next(r for r in records if r["request_id"] == batch_id)
    assert stored["request"] == {"instances": rows}  # as sent: the strict form
    assert large["request_ids"] == [f"{batch_id}-{i}" for i in range(200)]
    for i, request_id in enumerate(large["request_ids"]):
        record = logged[request_id]
        assert record["inputs"] == rows[i] and record["prediction"] == large["predictions"][i]
        assert record["confidence"] == large["probability"][i]
        assert record["probabilities"] == large["probabilities"][i]


def test_unknown_categories_and_missing_values_still_predict(
    server: Server, served_project: Path
) -> None:
    row = _rows(served_project, 1)[0]
    row.update(plan="platinum", region=None, income=None, signup_date=None)
    r = server.post("/predict", {"features": row})
    assert r.status_code == 200, r.text
    assert r.json()["prediction"] in ("yes", "no")


def _field_error(r: requests.Response, field: str) -> str:
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    named = [d for d in detail if field in [str(p) for p in d["loc"]]]
    assert named, detail
    return str(named[0]["msg"])


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"age": "forty"}, "age", "valid"),
        ({"age": [1]}, "age", "valid"),
        ({"has_partner": {"a": 1}}, "has_partner", "true or false"),
        ({"has_partner": "perhaps"}, "has_partner", "true or false"),
        ({"plan": {"a": 1}}, "plan", "valid"),
        ({"signup_date": "not a date"}, "signup_date", "not a date/time"),
        ({"loyalty_points": 3}, "loyalty_points", "Extra inputs are not permitted"),
    ],
)
def test_bad_fields_are_422_naming_the_field(
    server: Server, served_project: Path, change: dict, field: str, message: str
) -> None:
    row = {**_rows(served_project, 1)[0], **change}
    assert message in _field_error(server.post("/predict", {"features": row}), field)


def test_missing_field_is_422_naming_it(server: Server, served_project: Path) -> None:
    row = _rows(served_project, 1)[0]
    del row["tenure_months"]
    assert "Field required" in _field_error(
        server.post("/predict", {"features": row}), "tenure_months"
    )


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_rejected(server: Server, served_project: Path, literal: str) -> None:
    row = _rows(served_project, 1)[0]
    body = json.dumps({"features": {**row, "age": 0}}).replace('"age": 0', f'"age": {literal}')
    r = requests.post(
        server.url + "/predict", data=body, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422, r.text
    assert "age" in r.text


def test_bad_bodies_are_4xx(server: Server, served_project: Path) -> None:
    row = _rows(served_project, 1)[0]
    empty = server.post("/predict/batch", {"instances": []})
    assert empty.status_code == 422 and "instances" in empty.text
    over = server.post("/predict/batch", {"instances": [row] * (MAX_BATCH + 1)})
    assert over.status_code == 422 and f"at most {MAX_BATCH}" in over.text
    not_json = requests.post(
        server.url + "/predict", data=b"{features: 1", headers={"Content-Type": "application/json"}
    )
    assert not_json.status_code == 422 and "json" in not_json.text.lower()
    text = requests.post(server.url + "/predict", data=json.dumps({"features": row}))
    assert text.status_code == 415 and "application/json" in text.text
    big = server.post("/predict/batch", {"instances": [row] * 40, "pad": "x" * 100_000})
    assert big.status_code == 413 and "max_body_bytes" in big.text
    no_features = server.post("/predict", {"rows": [row]})
    assert no_features.status_code == 422 and "features" in no_features.text
    assert server.get("/ready").status_code == 200  # still serving


def test_openapi_shows_the_models_input_schema(server: Server) -> None:
    document = server.get("/openapi.json").json()
    features = document["components"]["schemas"]["Features"]
    assert {"age", "plan", "signup_date", "has_partner"} <= set(features["properties"])
    assert set(features["required"]) == set(features["properties"])
    assert "premium" in features["properties"]["plan"]["description"]
    assert features["additionalProperties"] is False
    body = document["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["$ref"].endswith("/PredictRequest")
    docs = server.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_every_answer_is_logged_and_feedback_attaches(server: Server, served_project: Path) -> None:
    rows = _rows(served_project, 5)
    ids = [server.post("/predict", {"features": row}).json()["request_id"] for row in rows]
    batch = server.post("/predict/batch", {"instances": rows[:3]}).json()["request_ids"]
    log_dir = served_project.parent / ".shipml" / "predictions"
    logged = {r["request_id"]: r for r in read_predictions(log_dir)}
    for request_id, row in zip(ids, rows, strict=True):
        record = logged[request_id]
        assert record["model_version"] == 1 and record["inputs"]["plan"] == row["plan"]
        assert record["prediction"] in ("yes", "no")
        # The decision threshold may pick a class below 0.5: confidence is that class's share.
        assert record["confidence"] == record["probabilities"][record["prediction"]]
        assert record["latency_ms"] > 0
    assert set(batch) <= set(logged)
    ok = server.post("/feedback", {"request_id": ids[0], "label": "yes"})
    assert ok.status_code == 200 and ok.json() == {"request_id": ids[0], "recorded": True}
    bad = server.post("/feedback", {"request_id": ids[1], "label": "maybe"})
    assert bad.status_code == 422 and "not a class" in bad.text
    assert server.post("/feedback", {"label": "yes"}).status_code == 422
    feedback = list(read_feedback(log_dir))
    assert {"request_id": ids[0], "label": "yes"}.items() <= feedback[-1].items()


def test_metrics_count_predictions_per_version(server: Server, served_project: Path) -> None:
    def count() -> float:
        text = server.get("/metrics").text
        for line in text.splitlines():
            if line.startswith('shipml_predictions_total{model="train",model_version="1"}'):
                return float(line.split()[-1])
        return 0.0

    before = count()
    rows = _rows(served_project, 4)
    for row in rows:
        server.post("/predict", {"features": row})
    server.post("/predict/batch", {"instances": rows})
    assert count() == before + 8
    text = server.get("/metrics").text
    assert 'shipml_prediction_confidence_bucket{le="0.99",model="train",model_version="1"}' in text
    assert "shipml_prediction_latency_seconds_count" in text
    info = 'family="random_forest",inference="fast",model="train",model_version="1"'
    assert f"shipml_model_info{{{info}}} 1.0" in text
    assert 'shipml_prediction_errors_total{kind="bad_request",model="train"}' in text


def test_admin_reload_needs_the_token(served_project: Path) -> None:
    with Server(served_project, env={"SHIPML_ADMIN_TOKEN": "s3cret"}) as running:
        assert running.post("/admin/reload").status_code == 401
        wrong = running.post("/admin/reload", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        right = running.post("/admin/reload", headers={"Authorization": "Bearer s3cret"})
        assert right.status_code == 200 and right.json()["model_version"] == "1"


def test_admin_is_off_without_a_token(server: Server) -> None:
    r = server.post("/admin/reload", headers={"Authorization": "Bearer anything"})
    assert r.status_code == 403 and "SHIPML_ADMIN_TOKEN" in r.text


def test_a_tampered_fast_copy_is_refused_and_the_native_model_serves(
    tmp_path: Path, served_project: Path
) -> None:
    from shipml import registry
    from shipml.errors import RegistryError

    project = Project.load(served_project)
    blob = registry.load_fast(project.store, 1)
    assert blob is not None
    cached = next((served_project.parent / ".shipml" / "cache").glob("*/1-fast/model.fast"))
    cached.write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(RegistryError, match="checksum does not match"):
        registry.load_fast(project.store, 1)
    assert not cached.exists()  # dropped: the next load fetches the registered copy again
    # A server that meets a bad copy serves the verified native model and says why.
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"not the registered copy")
    with Server(served_project) as running:
        model = running.get("/model").json()
        assert model["inference"] == "native" and "checksum" in model["inference_note"]
        row = _rows(served_project, 1)[0]
        assert running.post("/predict", {"features": row}).status_code == 200
    assert registry.load_fast(project.store, 1) == blob  # fetched again from the registry


def test_with_a_fast_copy_the_native_model_is_verified_but_not_loaded(
    served_project: Path,
) -> None:
    import subprocess
    import sys

    from shipml import registry
    from shipml.errors import RegistryError
    from shipml.serving.app import ServedModel

    project = Project.load(served_project)
    served = ServedModel.load(project.store, 1, MAX_BATCH)
    native = registry.load(project.store, 1)
    assert served.inference == "fast" and served.pipeline is None
    assert served.classes == list(native.pipeline.classes_)
    assert served.threshold == native.pipeline.threshold
    # Nor is skops imported (seconds of a server's start).
    code = (
        "import sys; from shipml import Project; from shipml.serving.app import ServedModel; "
        f"p = Project.load({str(served_project)!r}); m = ServedModel.load(p.store, 1, 5); "
        "print(m.inference, 'skops.io' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.stdout.split() == ["fast", "False"], done.stderr[-2000:]
    # The model file is still checked against its registered checksum.
    cache = served_project.parent / ".shipml" / "cache"
    model_file = next(p for p in cache.glob("*/1/*") if p.suffix == ".skops")
    model_file.write_bytes(model_file.read_bytes() + b" ")
    with pytest.raises(RegistryError, match="checksum does not match"):
        ServedModel.load(project.store, 1, MAX_BATCH)
    assert ServedModel.load(project.store, 1, MAX_BATCH).inference == "fast"  # fetched again


def test_ready_is_503_until_a_champion_exists_then_it_is_picked_up(tmp_path: Path) -> None:
    def edit(raw: dict) -> None:
        raw["features"]["exclude"] = ["customer_id"]
        raw["training"].update(models=["random_forest"], baselines=False, trials=0)
        raw["training"]["params"] = {"random_forest": {"n_estimators": 50}}
        raw["serving"] = {"reload_interval_s": 0.5}

    config = make_project(tmp_path, _customers(), "churned", edit)
    row = _rows(config, 1)[0]
    with Server(config, wait=False) as running:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = running.get("/health")
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "the server never started"
                time.sleep(0.2)
        assert health.status_code == 200
        ready = running.get("/ready")
        assert ready.status_code == 503 and "no champion" in ready.json()["detail"]
        early = running.post("/predict", {"features": row})
        assert early.status_code == 503 and "no model loaded yet" in early.text
        assert run_cli("train", "-c", config).exit_code == 0
        assert running.wait_ready(60)["model_version"] == "1"
        assert running.post("/predict", {"features": row}).status_code == 200
    assert "no champion yet" in running.log.read_text()  # `shipml serve` said so at start


def test_a_busy_port_is_a_clear_user_error(served_project: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "-c", served_project, "--port", port)
    assert result.exit_code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.all and "--port" in result.all
    assert "Traceback" not in result.all
    assert run_cli("serve", "-c", served_project, "--workers", "0").exit_code == 2
