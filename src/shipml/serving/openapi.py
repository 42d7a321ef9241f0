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
    "401": "The route's bearer token is missing or wrong (serving.predict_token / "
    "serving.feedback_token)",
    "413": "The body is over serving.max_body_bytes",
    "415": "The body is not sent as 'Content-Type: application/json'",
    "422": "A field is missing, unknown, of the wrong type, too long or out of range (named in "
    "detail)",
    "429": "Too many requests from this client address (serving.rate_limits); see Retry-After",
    "503": "No model is loaded yet, or the prediction log cannot be written (nothing was "
    "answered); see Retry-After",
}


def document(
    app: FastAPI,
    bodies: dict[str, type[BaseModel]],
    answers: dict[str, tuple[str, ...]],
    metrics_type: str,
) -> dict[str, Any]:
    """The document: ``bodies`` the request body of each POST path, ``answers`` the error
    statuses each may give, ``metrics_type`` the content type of /metrics."""
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
        responses = operation.setdefault("responses", {})
        for status in answers.get(path, ()):
            responses[status] = {"description": ANSWERS[status], "content": error}
    metrics = built["paths"].get("/metrics", {}).get("get")
    if metrics is not None:
        metrics["responses"]["200"] = {
            "description": "The Prometheus text format",
            "content": {metrics_type: {"schema": {"type": "string"}}},
        }
    return built
