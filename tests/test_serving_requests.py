"""The request bodies of /predict and /predict/batch: the fast decoder (msgspec) reads a body
exactly as the pydantic models do, or hands it to them; the confidence histogram's bulk
observe counts as one observe per value."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from pydantic import ValidationError

from shipml.config import FeaturesConfig
from shipml.data.infer import infer_schema
from shipml.demo import generate_customers
from shipml.serving.metrics import CONFIDENCE_BUCKETS, observe_many
from shipml.serving.requests import RequestModels, feedback_model

MAX_ROWS = 5


@pytest.fixture(scope="module")
def models() -> RequestModels:
    frame = generate_customers(300, 3).drop(columns=["customer_id", "signup_date"])
    schema = infer_schema(frame, "churned", features=FeaturesConfig())
    roles = {c: schema.columns[c].role for c in schema.input_columns}
    assert {"numeric", "categorical", "boolean"} <= set(roles.values()), roles
    return RequestModels(schema, MAX_ROWS)


def _row(models: RequestModels, **changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for name in models.columns:
        role = models.schema.columns[name].role
        row[name] = {"numeric": 1.5, "boolean": True}.get(role, "basic")
    row.update(changes)
    return row


def _pydantic_values(models: RequestModels, body: bytes, batch: bool) -> Any:
    """The values the pydantic models give, or 'refused'."""
    try:
        if batch:
            return models.values(models.batch.model_validate_json(body).instances)
        return [[v] for v in models.row(models.predict.model_validate_json(body).features)]
    except ValidationError:
        return "refused"


def _bodies(models: RequestModels) -> list[tuple[str, Any]]:
    numeric = next(c for c in models.columns if models.schema.columns[c].role == "numeric")
    flag = next(c for c in models.columns if models.schema.columns[c].role == "boolean")
    category = next(c for c in models.columns if models.schema.columns[c].role == "categorical")
    ok = _row(models)
    return [
        ("plain", [ok, _row(models, **{numeric: 7})]),
        ("nulls", [_row(models, **{numeric: None, flag: None, category: None})]),
        ("an int category", [_row(models, **{category: 3}), _row(models, **{category: 2.5})]),
        ("unicode", [_row(models, **{category: "sœur 🙂"})]),
        ("number as text", [_row(models, **{numeric: "1.5"})]),
        ("bool as number", [_row(models, **{numeric: True})]),
        ("yes as bool", [_row(models, **{flag: "yes"})]),
        ("1 as bool", [_row(models, **{flag: 1})]),
        ("missing field", [{k: v for k, v in ok.items() if k != numeric}]),
        ("extra field", [{**ok, "surprise": 1}]),
        ("row as list", [[ok[c] for c in models.columns]]),
        ("empty", []),
        ("too many", [ok] * (MAX_ROWS + 1)),
        ("huge number", "RAW:" + json.dumps([ok]).replace("1.5", "1e999", 1)),
        ("NaN token", "RAW:" + json.dumps([ok]).replace("1.5", "NaN", 1)),
        ("list in a category", [_row(models, **{category: ["a"]})]),
    ]


def _encode(rows: Any, key: str, batch: bool) -> bytes:
    if isinstance(rows, str):  # raw JSON text of the rows
        text = rows.removeprefix("RAW:")
        return f'{{"{key}": {text if batch else text[1:-1]}}}'.encode()
    return json.dumps({key: rows if batch else rows[0]}).encode()


def test_a_batch_reads_the_same_either_way_or_goes_to_pydantic(models: RequestModels) -> None:
    fast_read = set()
    for name, rows in _bodies(models):
        body = _encode(rows, "instances", batch=True)
        fast = models.fast_values(body)
        expected = _pydantic_values(models, body, batch=True)
        if fast is None:
            continue
        fast_read.add(name)
        assert expected != "refused", f"{name}: the fast decoder took a body pydantic refuses"
        assert fast == expected, name
        for got, want in zip(fast, expected, strict=True):
            assert [type(v) for v in got] == [type(v) for v in want] or all(
                isinstance(v, float | int | type(None)) for v in got + want
            ), name
    # The strict forms go the fast way; lenient and wrong ones to pydantic.
    assert fast_read == {"plain", "nulls", "an int category", "unicode"}


def test_one_row_reads_the_same_either_way_or_goes_to_pydantic(models: RequestModels) -> None:
    fast_read = set()
    for name, rows in _bodies(models):
        if name in ("empty", "too many"):
            continue
        body = _encode(rows, "features", batch=False)
        fast = models.fast_row(body)
        if fast is None:
            continue
        fast_read.add(name)
        expected = _pydantic_values(models, body, batch=False)
        assert expected != "refused", f"{name}: the fast decoder took a body pydantic refuses"
        assert fast == expected, name
    assert fast_read == {"plain", "nulls", "an int category", "unicode"}
    assert models.fast_row(b'{"features": {}, "image": "x"}') is None


def test_a_datetime_column_leaves_every_body_to_pydantic() -> None:
    frame = generate_customers(200, 3).drop(columns=["customer_id"])
    schema = infer_schema(frame, "churned", features=FeaturesConfig())
    assert any(schema.columns[c].role == "datetime" for c in schema.input_columns)
    models = RequestModels(schema, MAX_ROWS)
    row = {c: None for c in models.columns}
    assert models.fast_values(json.dumps({"instances": [row]}).encode()) is None
    assert models.fast_row(json.dumps({"features": row}).encode()) is None


@pytest.mark.parametrize("n", [3, 40, 1000])
def test_bulk_observe_counts_as_one_observe_per_value(n: int) -> None:
    rng = np.random.default_rng(n)
    values = np.concatenate([rng.uniform(0.5, 1.0, n), CONFIDENCE_BUCKETS[:3], [0.2, 1.0]])
    values[1] = np.nan  # left out
    one, bulk = CollectorRegistry(), CollectorRegistry()
    h_one = Histogram("c", "c", ["v"], buckets=CONFIDENCE_BUCKETS, registry=one).labels(v="1")
    h_bulk = Histogram("c", "c", ["v"], buckets=CONFIDENCE_BUCKETS, registry=bulk).labels(v="1")
    for value in values[~np.isnan(values)].tolist():
        h_one.observe(value)
    observe_many(h_bulk, values)

    def samples(registry: CollectorRegistry) -> dict[str, float]:
        out: dict[str, float] = {}
        for line in generate_latest(registry).decode().splitlines():
            if line.startswith("c_") and "created" not in line:
                key, value = line.rsplit(" ", 1)
                out[key] = float(value)
        return out

    expected = samples(one)
    assert expected['c_count{v="1"}'] == len(values) - 1
    got = samples(bulk)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12), key


def test_an_answer_frame_is_not_needed(models: RequestModels) -> None:
    # (pandas is not on the fast path: the decoded values are plain Python)
    body = json.dumps({"instances": [_row(models)] * 3}).encode()
    values = models.fast_values(body)
    assert values is not None
    assert not any(isinstance(v, pd.Series | np.ndarray) for column in values for v in column)


@pytest.mark.parametrize("n", [1, 3, 10_001])  # kept per size up to 10,000 rows, built above
def test_batch_request_ids_come_from_the_template_in_row_order(n: int) -> None:
    from shipml.serving.app import _ID_HOLE, _batch_ids

    batch_id = "0123456789abcdef0123456789abcdef"
    ids = json.loads(_batch_ids(n).replace(_ID_HOLE, batch_id.encode()))
    assert ids == [f"{batch_id}-{i}" for i in range(n)]


@pytest.mark.parametrize(
    ("classes", "sent", "taken"),
    [
        (["no", "yes"], "yes", "yes"),
        ([0, 1], 1, 1),
        ([0, 1], "1", 1),
        ([1, 2], 2, 2),
        ([1, 2], "2", 2),
        (list(range(10)), 9, 9),
        ([False, True], True, True),  # the schema's own enum value
        ([False, True], False, False),
        ([False, True], "True", True),
        ([0.0, 1.0], 1.0, 1.0),
    ],
)
def test_feedback_takes_each_kind_of_label_as_the_schema_lists_it(
    classes: list, sent: object, taken: object
) -> None:
    model = feedback_model(classes)
    label = model.model_validate({"request_id": "a", "label": sent}).label
    assert label == taken and type(label) is type(taken)
    assert model.model_json_schema()["properties"]["label"]["enum"] == classes


@pytest.mark.parametrize(("classes", "sent"), [([0, 1], True), ([1, 2], 3), (["no", "yes"], 1)])
def test_feedback_refuses_a_label_that_is_not_a_class(classes: list, sent: object) -> None:
    with pytest.raises(ValidationError, match="not a class of the model"):
        feedback_model(classes).model_validate({"request_id": "a", "label": sent})
