"""The OpenAPI document of the prediction service: FastAPI's, with the request bodies of the
served model (its input schema, its classes) and every answer a route may give."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "detail": {
            "description": "why: a sentence, or for a 422 a list of {loc, msg, type} naming the "
            "field",
            "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}],
        }
    },
    "required": ["detail"],
}
ANSWERS = {
    "401": "The route's bearer token is missing or wrong (serving.predict_token, "
    "serving.feedback_token, serving.admin_token)",
    "403": "Admin routes are off: no admin token is set",
    "413": "The body is over serving.max_body_bytes",
    "415": "The body is not sent as 'Content-Type: application/json'",
    "422": "A field is missing, unknown, of the wrong type, too long or out of range (named in "
    "detail)",
    "429": "Too many requests from this client address (serving.rate_limits); see Retry-After",
    "503": "No model is loaded yet, or the prediction log cannot be written (a prediction is "
    "then not answered)",
}


def document(
    app: FastAPI,
    bodies: dict[str, type[BaseModel]],
    answers: dict[str, tuple[str, ...]],
    metrics_type: str,
) -> dict[str, Any]:
    """The document: ``bodies`` the request body of each POST path, ``answers`` the error
    statuses each path may give, ``metrics_type`` the content type of /metrics."""
    built = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = built.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ERROR_SCHEMA
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, model_cls in bodies.items():
        schema = model_cls.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[model_cls.__name__] = schema
        operation = built["paths"][path]["post"]
        operation["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": f"#/components/schemas/{model_cls.__name__}"}
                }
            },
        }
    for path, statuses in answers.items():
        for operation in built["paths"][path].values():
            responses = operation.setdefault("responses", {})
            for status in statuses:
                responses[status] = {"description": ANSWERS[status], "content": error}
            if "401" in statuses:  # a token guards it: /docs offers to send one
                operation["security"] = [{"bearer": []}]
                built["components"]["securitySchemes"] = {
                    "bearer": {"type": "http", "scheme": "bearer"}
                }
    _answers_and_links(built)
    metrics = built["paths"].get("/metrics", {}).get("get")
    if metrics is not None:
        metrics["responses"]["200"] = {
            "description": "The Prometheus text format",
            "content": {metrics_type: {"schema": {"type": "string"}}},
        }
    return built


_NUMBERS = {"type": "object", "additionalProperties": {"type": "number"}}
PREDICT_ANSWER = {
    "type": "object",
    "properties": {
        "prediction": {"description": "the predicted class or value"},
        "probability": {"type": "number", "description": "of the predicted class"},
        "probabilities": {**_NUMBERS, "description": "class -> probability"},
        "model_version": {"type": "string"},
        "request_id": {"type": "string", "description": "for /feedback"},
    },
    "required": ["prediction", "model_version", "request_id"],
}
_ROWS = "one per instance, in their order"
_OLD = "answered for one release more"
# The single answer's fields, each a list of one per row; "predictions" and "request_ids" are
# the names of earlier releases, answered until the next release.
BATCH_ANSWER = {
    "type": "object",
    "properties": {
        "prediction": {"type": "array", "items": {}, "description": _ROWS},
        "probability": {
            "type": "array",
            "items": {"type": "number"},
            "description": f"of the predicted class, {_ROWS}",
        },
        "probabilities": {
            "type": "array",
            "items": _NUMBERS,
            "description": f"class -> probability, {_ROWS}",
        },
        "model_version": {"type": "string"},
        "request_id": {
            "type": "array",
            "items": {"type": "string"},
            "description": f"for /feedback, {_ROWS}",
        },
        "unreadable": {
            "type": "object",
            "additionalProperties": {"type": "integer"},
            "description": "column -> values that could not be read, scored as missing",
        },
        "predictions": {
            "type": "array",
            "items": {},
            "deprecated": True,
            "description": f"prediction, as 0.1.0 named it; {_OLD}",
        },
        "request_ids": {
            "type": "array",
            "items": {"type": "string"},
            "deprecated": True,
            "description": f"request_id, as 0.1.0 named it; {_OLD}",
        },
    },
    "required": ["prediction", "model_version", "request_id"],
}


def _answers_and_links(built: dict[str, Any]) -> None:
    """The answers of /predict and /predict/batch, each linked to /feedback by its request id
    (an OpenAPI link: the label of an answered prediction goes there)."""
    paths = built["paths"]
    feedback = paths.get("/feedback", {}).get("post", {}).get("operationId")
    for path, schema, expression in (
        ("/predict", PREDICT_ANSWER, "$response.body#/request_id"),
        ("/predict/batch", BATCH_ANSWER, "$response.body#/request_id/0"),
    ):
        operation = paths.get(path, {}).get("post")
        if operation is None:
            continue
        answer = operation.setdefault("responses", {}).setdefault("200", {})
        answer["description"] = "The prediction, with the request id to send its label with"
        answer["content"] = {"application/json": {"schema": schema}}
        if feedback is not None:
            answer["links"] = {
                "FeedbackForThisPrediction": {
                    "operationId": feedback,
                    "requestBody": {"request_id": expression},
                    "description": "The true label of this prediction, later",
                }
            }
