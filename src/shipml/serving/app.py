"""The prediction service: a FastAPI app built by a factory from a project's shipml.yaml.

Routes (contract: ARCHITECTURE.md, REST): POST /predict, POST /predict/batch, POST /feedback,
GET /health, GET /ready, GET /model, GET /metrics, POST /admin/reload (token).

- The champion loads in the background at startup: /ready answers 503 until it is in.
- Zero-downtime swap: a watcher polls the registry's champion alias; when it moves, the new
  version loads beside the old one and replaces it in one reference assignment. A request takes
  the model once, at its start, so it finishes on the model it started with, and every answer
  names the version that made it.
- Bodies are parsed straight from bytes by the current model's pydantic models (pydantic-core's
  JSON parser), so the schema follows the model across swaps and the OpenAPI document at /docs is
  rebuilt from it. Bad input is a 4xx naming the field; never a 500.
- Every answered prediction is appended whole to the prediction log before the answer goes
  out; where the log cannot take it, the answer is a 503 and /ready says why until it can.
- Guards (serving.*): bearer tokens for /predict and /feedback, rate limits per client address,
  text length and numeric ranges per field; /feedback takes labels for answered ids only.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import itertools
import logging
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from shipml import registry
from shipml.data.coerce import category_str
from shipml.data.schema import Schema
from shipml.errors import ShipmlError
from shipml.models.fastpath import FastPredictor, value_columns
from shipml.monitoring.service import load_profile
from shipml.monitoring.summary import NumericSummary
from shipml.project import Project
from shipml.serving.answered import AnsweredIds
from shipml.serving.docs import add_docs
from shipml.serving.guards import RateLimiter, token_matches
from shipml.serving.logkeeping import Retention
from shipml.serving.metrics import ServingMetrics, observe_many
from shipml.serving.openapi import document as openapi_document
from shipml.serving.predlog import LogUnavailable, PredictionLog, RequestIds
from shipml.serving.requests import (
    Bounds,
    FeedbackRequest,
    RequestLimits,
    RequestModels,
    bounds_message,
    frame_from_columns,
    input_bounds,
)

log = logging.getLogger("shipml.serving")

CONFIG_ENV = "SHIPML_CONFIG"
ADMIN_TOKEN_ENV = "SHIPML_ADMIN_TOKEN"
PREDICT_TOKEN_ENV = "SHIPML_PREDICT_TOKEN"
FEEDBACK_TOKEN_ENV = "SHIPML_FEEDBACK_TOKEN"
WORKERS_ENV = "SHIPML_SERVE_WORKERS"  # set by shipml serve: how many processes share the cores
FIRST_LOAD_WAIT_S = 300.0  # a worker starts serving after its first load, or this long
THREADED_ROWS = 128  # from this many rows a batch's trees are scored on batch_threads() threads


def batch_threads() -> int:
    """Threads one worker scores a large batch on: its share of the cores it may run on."""
    try:
        workers = max(1, int(os.environ.get(WORKERS_ENV, "1")))
    except ValueError:
        workers = 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // workers)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _probability_row(keys: list[str]) -> Any:
    """A struct type made from one probability per class that msgspec encodes as the object
    ``{class: probability}`` (for a batch's rows: faster to build and to encode than dicts)."""
    fields = [f"p{i}" for i in range(len(keys))]
    return msgspec.defstruct(
        "Probabilities",
        [(name, float) for name in fields],
        rename=dict(zip(fields, keys, strict=True)),
        gc=False,
    )


def _single_threaded(estimator: Any) -> None:
    """One request is one row or one batch: thread pools cost more than they save here, and
    each worker process is one core's worth of serving."""
    params = estimator.get_params() if hasattr(estimator, "get_params") else {}
    for key in ("n_jobs", "regressor__n_jobs"):
        if key in params:
            estimator.set_params(**{key: 1})


LANE_PATHS = frozenset({"/predict", "/predict/batch"})


class ServingAPI(FastAPI):
    """FastAPI, with POST /predict and /predict/batch answered by ``lane`` directly (the same
    handlers as the documented routes, minus the framework's per-request machinery)."""

    lane: Callable[[Any, Any, Any], Awaitable[None]] | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (
            self.lane is not None
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] in LANE_PATHS
        ):
            await self.lane(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


@dataclass
class ServedModel:
    """One loaded version with everything a request needs."""

    version: int
    schema: Schema
    pipeline: Any
    metadata: dict[str, Any]
    requests: RequestModels
    columns: list[str]
    classes: list[Any] | None
    class_keys: list[str]
    threshold: float | None
    family: str
    inference: str = "native"
    inference_note: str = ""
    fast: Any = None
    loaded_at: float = field(default_factory=time.time)
    probability_row: Any = None  # classification: struct encoded as {class: probability}

    @classmethod
    def load(
        cls,
        store: registry.Store,
        ref: str | int,
        max_batch_rows: int,
        limits: Callable[[int, Schema], RequestLimits] | None = None,
    ) -> ServedModel:
        """Version ``ref``; ``limits`` gives what its requests' fields may hold."""
        version = registry.resolve(store, ref)
        fast, inference, note = None, "native", "no fast copy was registered"
        try:
            blob = registry.load_fast(store, version)
            if blob is not None:
                fast = FastPredictor.from_bytes(blob)
                inference, note = "fast", "ONNX trees and numpy preprocessing, verified at training"
        except Exception as err:  # the native model always works: serve it and say why
            note = f"fast copy not used: {err}"
            log.warning("version %s: %s", version, note)
        # With a fast copy the native model is verified but not loaded: nothing would use it.
        loaded = registry.load(store, version, native=fast is None)
        pipeline = loaded.pipeline
        for _, _, estimator in getattr(pipeline, "parts", []):
            _single_threaded(estimator)
        if fast is None:
            classes_ = getattr(pipeline, "classes_", None)
            threshold = getattr(pipeline, "threshold", None)
        else:
            classes_, threshold = fast.classes, fast.threshold
        classes = None if classes_ is None else [_plain(c) for c in classes_]
        class_keys = [category_str(c) for c in classes] if classes else []
        schema = loaded.schema
        return cls(
            version=loaded.version,
            schema=schema,
            pipeline=pipeline,
            metadata=loaded.metadata,
            requests=RequestModels(
                schema,
                max_batch_rows,
                classes,
                None if limits is None else limits(loaded.version, schema),
            ),
            columns=list(schema.input_columns),
            classes=classes,
            class_keys=class_keys,
            threshold=threshold,
            family=str(loaded.metadata.get("family", "")),
            inference=inference,
            inference_note=note,
            fast=fast,
            probability_row=_probability_row(class_keys) if class_keys else None,
        )

    def outputs(self, values: list[list[Any]]) -> np.ndarray:
        """Probabilities (classification) or predictions for rows given one list per column."""
        if self.fast is not None and len(values[0]) == 1:
            row = {c: v[0] for c, v in zip(self.columns, values, strict=True)}
            one = self.fast.outputs_one(row)
            if one is not None:
                return np.asarray(one)
        columns = value_columns(dict(zip(self.columns, values, strict=True)), self.schema)
        if self.fast is not None:
            return np.asarray(self.fast.outputs(columns))
        frame = frame_from_columns(columns, self.columns)
        method = "predict_proba" if self.classes is not None else "predict"
        return np.asarray(getattr(self.pipeline, method)(frame), dtype=float)

    async def outputs_of_batch(
        self, values: list[list[Any]], strict: bool, pool: Executor | None, threads: int
    ) -> np.ndarray:
        """``outputs`` of a batch. ``strict``: the values are as the strict request decoder
        gives them, and go into the matrices without arrays in between
        (``FastPredictor.matrices_of_lists``). From ``THREADED_ROWS`` rows the trees are scored
        on ``threads`` threads of ``pool``, one slice of the rows each: onnxruntime runs them
        beside the event loop, which meanwhile reads and answers other requests (one session on
        one thread per call: no thread of it waits for another)."""
        n = len(values[0])
        fast = self.fast
        if fast is None:
            return self.outputs(values)
        named = dict(zip(self.columns, values, strict=True))
        matrices = fast.matrices_of_lists(named, n) if strict else None
        if matrices is None:
            matrices = fast.matrices(value_columns(named, self.schema), n)
        inputs = fast.tree_inputs(matrices)
        if inputs is None:
            return np.asarray(fast.combine(matrices, None, n))
        if pool is None or threads < 2 or n < THREADED_ROWS:
            return np.asarray(fast.combine(matrices, fast.tree_outputs(inputs), n))
        loop = asyncio.get_running_loop()
        cuts = [n * i // threads for i in range(threads + 1)]
        slices = await asyncio.gather(
            *(
                loop.run_in_executor(pool, fast.tree_outputs, inputs, start, stop)
                for start, stop in itertools.pairwise(cuts)
            )
        )
        scores = [np.concatenate(parts) for parts in zip(*slices, strict=True)]
        return np.asarray(fast.combine(matrices, scores, n))

    def answers(self, outputs: np.ndarray) -> tuple[list[Any], np.ndarray | None]:
        """(predictions, confidence per row or None): the label rule of
        shipml.models.bagged.labels_for, with the index of the chosen class kept."""
        if self.classes is None:
            return outputs.tolist(), None
        if self.threshold is not None and len(self.classes) == 2:
            picked = (outputs[:, 1] >= self.threshold).astype(np.intp)
        else:
            picked = outputs.argmax(axis=1)
        classes = self.classes
        confidence = outputs[np.arange(len(outputs)), picked]
        return [classes[i] for i in picked.tolist()], confidence

    def describe(self) -> dict[str, Any]:
        return {
            "model_version": str(self.version),
            "family": self.family,
            "task": self.schema.task,
            "target": self.schema.target,
            "classes": self.classes,
            "threshold": self.threshold,
            "metric": self.metadata.get("metric"),
            "test_metrics": self.metadata.get("test_metrics", {}),
            "inference": self.inference,
            "inference_note": self.inference_note,
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.loaded_at)),
            "input_schema": [
                {
                    "name": name,
                    "role": self.schema.columns[name].role,
                    "dtype": self.schema.columns[name].dtype,
                    "categories": self.schema.columns[name].categories,
                }
                for name in self.columns
            ],
        }


class ModelSlot:
    """The model being served, replaced atomically by the watcher thread."""

    def __init__(
        self,
        store: registry.Store,
        max_batch_rows: int,
        poll_interval: float,
        on_swap: Callable[[ServedModel | None, ServedModel], None],
        limits: Callable[[int, Schema], RequestLimits] | None = None,
    ) -> None:
        self.store = store
        self.limits = limits
        self.max_batch_rows = max_batch_rows
        self.poll_interval = poll_interval
        self.on_swap = on_swap
        self.current: ServedModel | None = None
        self.status = "loading the champion"
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self.first_look = threading.Event()  # set once the first load attempt is over

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="shipml-model-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def reload_now(self) -> None:
        self._wake.set()

    def _store_changed(self) -> bool:
        """Whether the registry may have changed since the last look. For the default SQLite
        store, its file's modification time says so without a query (a query holds the GIL
        for milliseconds: enough to show in the latency tail under load)."""
        path = self.store.sqlite_path
        if path is None or self.current is None:
            return True
        try:
            wal = path.with_name(path.name + "-wal")  # in case the store runs in WAL mode
            stamp = (path.stat().st_mtime_ns, wal.stat().st_mtime_ns if wal.exists() else 0)
        except OSError:
            return True
        changed = stamp != self._stamp
        self._stamp = stamp
        return changed

    def check(self, force: bool = False) -> bool:
        """Load the champion if it is not the version being served; True when swapped."""
        with self._lock:
            if not force and not self._store_changed():
                return False
            try:
                wanted = registry.champion_version(self.store)
            except Exception as err:  # the store may be briefly locked by a training
                self.status = f"cannot read the registry: {err}"
                return False
            if wanted is None:
                self.status = "the registry has no champion yet: run `shipml train`"
                return False
            current = self.current
            if current is not None and current.version == wanted:
                return False
            try:
                new = ServedModel.load(self.store, wanted, self.max_batch_rows, self.limits)
            except ShipmlError as err:
                self.status = f"version {wanted} could not be loaded: {err}"
                log.error("%s", self.status)
                return False
            self.current = new  # the swap: one reference assignment
            self.status = "ready"
            self.on_swap(current, new)
            # Everything loaded so far lives as long as the server: keep it out of the garbage
            # collector's full passes, which would otherwise pause requests for milliseconds.
            gc.collect()
            gc.freeze()
            return True

    def _watch(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            try:
                swapped = self.check()
            finally:
                self.first_look.set()
            if self.current is None and not swapped:
                wait = min(backoff, self.poll_interval)
                backoff = min(backoff * 2, self.poll_interval)
            else:
                wait = self.poll_interval
            self._wake.wait(wait)
            self._wake.clear()


_ENCODE = msgspec.json.Encoder().encode
_ID_HOLE = b"#" * 32  # where a batch's id goes in ``_batch_ids`` (new_id gives 32 characters)


def _batch_ids(n: int) -> bytes:
    """The JSON list of a batch's request ids, '<batch id>-<row>', with ``_ID_HOLE`` for the
    batch id (one ``bytes.replace`` per answer instead of n formatted strings). Kept for a few
    sizes up to 10,000 rows (about 40 bytes a row)."""
    return _ids_template(n) if n <= 10_000 else _ids_template.__wrapped__(n)


@functools.lru_cache(maxsize=8)
def _ids_template(n: int) -> bytes:
    return _ENCODE([f"{_ID_HOLE.decode()}-{i}" for i in range(n)])


def _json_answer(answer: dict[str, Any]) -> Response:
    """A prediction's JSON, encoded by msgspec (what JSONResponse writes, several times
    faster for a batch's thousands of numbers)."""
    return Response(_ENCODE(answer), media_type="application/json")


def _error(
    status: int,
    kind: str,
    detail: Any,
    metrics: ServingMetrics,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    metrics.error(kind)
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


_OUT_OF_RANGE = ("greater_than_equal", "less_than_equal")


def _validation_detail(
    err: ValidationError, columns: list[str], bounds: Mapping[str, Bounds] | None = None
) -> list[dict[str, Any]]:
    out = []
    for item in err.errors(include_url=False, include_context=False, include_input=False):
        loc = [
            columns[int(part[1:])]
            if isinstance(part, str) and part[:1] == "c" and part[1:].isdigit()
            else part
            for part in item["loc"]
        ]
        msg = item["msg"]
        if item["type"] in _OUT_OF_RANGE and bounds:
            named = next((bounds[p] for p in loc if isinstance(p, str) and p in bounds), None)
            if named is not None:
                msg = bounds_message(named)
        elif item["type"] == "string_too_long" or ("at most" in msg and "characters" in msg):
            msg += " (serving.max_string_length)"
        out.append({"loc": ["body", *loc], "msg": msg, "type": item["type"]})
    return out


def _secret(env: str, configured: str | None) -> str | None:
    return os.environ.get(env) or configured or None


def _training_ranges(project: Project, version: int) -> dict[str, tuple[float, float]]:
    """Each numeric column's (min, max) in training, from the version's reference profile
    (fetched once into .shipml/profiles/); none for a version trained without one."""
    try:
        profile = load_profile(project, version)[1]
    except Exception as err:  # the model serves all the same (per-column bounds still hold)
        log.warning("version %s: numbers are not bounded by the training range: %s", version, err)
        return {}
    ranges = {}
    for name, summary in profile.columns.items():
        if isinstance(summary, NumericSummary) and summary.n and len(summary.values):
            ranges[name] = (float(summary.values[0]), float(summary.values[-1]))
    return ranges


def create_app(project: Project | str | Path | None = None) -> FastAPI:
    """The app for a project (a Project, a path to shipml.yaml, or $SHIPML_CONFIG)."""
    if not isinstance(project, Project):
        project = Project.load(project or os.environ.get(CONFIG_ENV) or "shipml.yaml")
    config = project.config
    serving = config.serving
    metrics = ServingMetrics(config.name)
    ids = RequestIds()
    log_folder = project.root / ".shipml" / "predictions"
    predlog = (
        PredictionLog(
            log_folder,
            serving.fsync_interval_s,
            rotate_bytes=serving.log_rotate_bytes,
            retention=Retention(serving.log_retention_days, serving.log_max_bytes),
            ids=ids,
        )
        if serving.log_predictions
        else None
    )
    answered = AnsweredIds(log_folder)
    bounds_config = serving.input_bounds

    def limits(version: int, schema: Schema) -> RequestLimits:
        numeric = schema.columns_with("numeric")
        wanted = bounds_config.enabled and numeric
        ranges = _training_ranges(project, version) if wanted else {}
        return RequestLimits(
            serving.max_string_length, input_bounds(ranges, numeric, bounds_config)
        )

    def on_swap(old: ServedModel | None, new: ServedModel) -> None:
        if old is not None:
            metrics.retired(str(old.version), old.family, old.inference)
            log.info("swapped model version %s for %s", old.version, new.version)
        metrics.served(str(new.version), new.family, new.inference)
        app.openapi_schema = None  # the input schema may have changed

    slot = ModelSlot(
        project.store, serving.max_batch_rows, serving.reload_interval_s, on_swap, limits
    )

    drift_watch = None
    if predlog is not None:
        from shipml.serving.drift_watch import DriftWatch

        drift_watch = DriftWatch(
            project, metrics, lambda: None if slot.current is None else slot.current.version
        )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        slot.start()
        # Take no connection before the champion is loaded (or found missing): with several
        # workers, one still loading would otherwise answer 503 beside ready ones.
        await asyncio.to_thread(slot.first_look.wait, FIRST_LOAD_WAIT_S)
        if drift_watch is not None:
            drift_watch.start()
        yield
        if drift_watch is not None:
            drift_watch.stop()
        slot.stop()
        if pool is not None:
            pool.shutdown(wait=True)
        if predlog is not None:
            predlog.close()

    app = ServingAPI(
        title=f"shipml: {config.name}",
        description=(
            f"Predictions from the champion of the shipml project '{config.name}'. The request "
            "schema below is the served model's input schema."
        ),
        version="1",
        lifespan=lifespan,
        docs_url=None,  # served by add_docs, from local assets
        redoc_url=None,
    )
    add_docs(app)
    app.state.slot = slot
    app.state.metrics = metrics
    app.state.drift_watch = drift_watch
    token = _secret(ADMIN_TOKEN_ENV, serving.admin_token)
    predict_token = _secret(PREDICT_TOKEN_ENV, serving.predict_token)
    feedback_token = _secret(FEEDBACK_TOKEN_ENV, serving.feedback_token)
    predict_rate = RateLimiter.of(serving.rate_limits.predict)
    feedback_rate = RateLimiter.of(serving.rate_limits.feedback)
    max_body = serving.max_body_bytes
    threads = batch_threads()
    pool = ThreadPoolExecutor(threads, "shipml-score") if threads > 1 else None

    async def read_json(request: Request) -> bytes | JSONResponse:
        return await body_of(
            request.headers.get("content-type", ""),
            request.headers.get("content-length"),
            request.stream(),
        )

    async def body_of(
        kind: str, declared: str | None, chunks: AsyncIterator[bytes]
    ) -> bytes | JSONResponse:
        if kind.split(";")[0].strip().lower() != "application/json":
            return _error(
                415,
                "unsupported_media_type",
                f"send the body as JSON with 'Content-Type: application/json' (got "
                f"'{kind or 'none'}')",
                metrics,
            )
        if declared is not None and declared.isdigit() and int(declared) > max_body:
            return _too_large()
        body = bytearray()
        async for chunk in chunks:
            body += chunk
            if len(body) > max_body:
                return _too_large()
        return bytes(body)

    def _too_large() -> JSONResponse:
        return _error(
            413,
            "body_too_large",
            f"the body is over {max_body} bytes (serving.max_body_bytes); send smaller batches",
            metrics,
        )

    def parse(model_cls: type[BaseModel], body: bytes, served: ServedModel) -> Any:
        try:
            return model_cls.model_validate_json(body)
        except ValidationError as err:
            detail = _validation_detail(err, served.columns, served.requests.limits.bounds)
            return _error(422, "bad_request", detail, metrics)
        except UnicodeDecodeError as err:  # (pydantic names bad UTF-8 itself: in case not)
            detail = [{"loc": ["body"], "msg": f"not UTF-8: {err.reason}", "type": "json_invalid"}]
            return _error(422, "bad_request", detail, metrics)

    def guard(
        authorization: str | None, client: str, expected: str | None, rate: RateLimiter | None
    ) -> JSONResponse | None:
        """A 401 without the route's token, a 429 past the client's rate; None: go on."""
        if expected is not None and not token_matches(authorization or "", expected):
            return _error(
                401,
                "unauthorized",
                "missing or wrong token: send 'Authorization: Bearer <token>'",
                metrics,
                {"WWW-Authenticate": "Bearer"},
            )
        if rate is not None:
            wait = rate.wait(client)
            if wait > 0:
                return _error(
                    429,
                    "rate_limited",
                    f"too many requests from {client}: at most {rate.per_second:g} a second "
                    f"(bursts of {rate.burst}; serving.rate_limits); retry in {wait:.2f} s",
                    metrics,
                    {"Retry-After": str(max(1, math.ceil(wait)))},
                )
        return None

    def log_failed(err: LogUnavailable) -> JSONResponse:
        return _error(
            503,
            "log_unavailable",
            f"{err.reason}: the prediction was not answered; retry later",
            metrics,
            {"Retry-After": "1"},
        )

    def not_ready() -> JSONResponse:
        return _error(503, "not_ready", f"no model loaded yet: {slot.status}", metrics)

    def log_one(
        served: ServedModel,
        request_id: str,
        values: list[list[Any]],
        prediction: Any,
        confidence: np.ndarray | None,
        outputs: np.ndarray,
        latency: float,
    ) -> None:
        if predlog is None:
            return
        predlog.prediction(
            {
                "request_id": request_id,
                "inputs": {c: v[0] for c, v in zip(served.columns, values, strict=True)},
                "prediction": prediction,
                "confidence": None if confidence is None else float(confidence[0]),
                "probabilities": None
                if confidence is None
                else dict(zip(served.class_keys, outputs[0].tolist(), strict=True)),
                "time": time.time(),
                "model_version": served.version,
                "latency_ms": round(latency * 1e3, 3),
            }
        )

    def log_batch(
        served: ServedModel,
        request_id: str,
        inputs: dict[str, list[Any]] | msgspec.Raw,
        predictions: list[Any],
        confidence: msgspec.Raw | None,
        probabilities: msgspec.Raw | None,
        latency: float,
    ) -> None:
        """One record per batch (the reader gives one record per row, with request ids
        '<batch id>-<row>'). ``inputs``: the values per column, or the request body itself
        where it was in the strict form (every row an object of the model's columns, already
        checked: written as it came, not encoded again); ``confidence`` and ``probabilities``
        (one object per row): the answer's JSON."""
        if predlog is None:
            return
        # (the id, then the rows, first: AnsweredIds reads them from the line's start)
        record: dict[str, Any] = {"request_id": request_id, "rows": len(predictions)}
        if isinstance(inputs, msgspec.Raw):
            record["request"] = inputs
        else:
            record["inputs"] = inputs
        record["prediction"] = predictions
        record["confidence"] = confidence
        record["probability_rows"] = probabilities
        record.update(
            time=time.time(), model_version=served.version, latency_ms=round(latency * 1e3, 3)
        )
        predlog.prediction(record)

    async def score(
        served: ServedModel, values: list[list[Any]], batch: bool, strict: bool
    ) -> np.ndarray | JSONResponse:
        try:
            if batch:
                return await served.outputs_of_batch(values, strict, pool, threads)
            return served.outputs(values)
        except ShipmlError as err:  # a value the schema let through but coercion refuses
            detail = [{"loc": ["body"], "msg": err.message, "type": "value_error"}]
            return _error(422, "bad_request", detail, metrics)
        except Exception:
            log.exception("version %s failed to score a request", served.version)
            return _error(500, "internal", "the model failed on this input", metrics)

    def observe(served: ServedModel, n: int, latency: float, confidence: Any) -> None:
        """Count an answered prediction (once its record is in the log)."""
        predictions, latencies, confidences = metrics.children(str(served.version))
        predictions.inc(n)
        latencies.observe(latency)
        if confidence is not None:
            observe_many(confidences, confidence)

    # (the model, the values per column, its outputs, the body where msgspec read it)
    Scored = tuple[ServedModel, list[list[Any]], np.ndarray, bytes | None]
    new_id = ids.new

    async def scored(body_or_error: Any, batch: bool) -> Scored | Response:
        """The request's rows scored by the model current when it arrived, or the error."""
        served = slot.current
        if served is None:
            body_or_error.close()  # the body reader was never started
            return not_ready()
        body = await body_or_error
        if isinstance(body, Response):
            return body
        requests = served.requests
        fast = requests.fast_values(body) if batch else requests.fast_row(body)
        strict = fast is not None
        if fast is not None:
            values = fast
        else:
            parsed = parse(requests.batch if batch else requests.predict, body, served)
            if isinstance(parsed, Response):
                return parsed
            if batch:
                values = requests.values(parsed.instances)
            else:
                values = [[v] for v in requests.row(parsed.features)]
        outputs = await score(served, values, batch, strict)
        if isinstance(outputs, Response):
            return outputs
        return served, values, outputs, body if strict else None

    async def answer_one(started: float, body: Any) -> Response:
        result = await scored(body, batch=False)
        if isinstance(result, Response):
            return result
        served, values, outputs, _ = result
        predictions, confidence = served.answers(outputs)
        request_id = new_id()
        answer: dict[str, Any] = {"prediction": predictions[0]}
        if confidence is not None:
            answer["probability"] = float(confidence[0])
            answer["probabilities"] = dict(zip(served.class_keys, outputs[0].tolist(), strict=True))
        answer["model_version"] = str(served.version)
        answer["request_id"] = request_id
        latency = time.perf_counter() - started
        try:
            log_one(served, request_id, values, predictions[0], confidence, outputs, latency)
        except LogUnavailable as err:
            return log_failed(err)
        observe(served, 1, latency, confidence)
        return _json_answer(answer)

    async def answer_batch(started: float, body: Any) -> Response:
        result = await scored(body, batch=True)
        if isinstance(result, Response):
            return result
        served, values, outputs, strict_body = result
        predictions, confidence = served.answers(outputs)
        batch_id = new_id()
        n = len(predictions)
        # Encoded once for the answer and the log; the parts of a 1,000-row answer built the
        # fastest way msgspec offers (structs, not dicts; the ids from a template).
        # The single answer's fields, each a list in the order of the instances (the columns
        # `shipml predict` writes); "predictions" and "request_ids", the names of earlier
        # releases, repeat them until the next release (BATCH_ANSWER marks them deprecated).
        confidence_json = probabilities_json = None
        predictions_json = msgspec.Raw(_ENCODE(predictions))
        answer: dict[str, Any] = {"prediction": predictions_json}
        if confidence is not None:
            confidence_json = msgspec.Raw(_ENCODE(confidence.tolist()))
            rows = map(served.probability_row, *outputs.T.tolist())
            probabilities_json = msgspec.Raw(_ENCODE(list(rows)))
            answer["probability"] = confidence_json
            answer["probabilities"] = probabilities_json
        answer["model_version"] = str(served.version)
        ids_json = msgspec.Raw(_batch_ids(n).replace(_ID_HOLE, batch_id.encode()))
        answer["request_id"] = ids_json
        answer["predictions"] = predictions_json
        answer["request_ids"] = ids_json
        # values per column that could not be read, scored as missing (requests.ColumnValues)
        answer["unreadable"] = getattr(values, "unreadable", None) or {}
        latency = time.perf_counter() - started
        inputs: dict[str, list[Any]] | msgspec.Raw
        if strict_body is None:
            inputs = dict(zip(served.columns, values, strict=True))
        elif b"\n" in strict_body or b"\r" in strict_body:
            # A JSON line: newlines between a body's tokens become spaces (JSON strings hold
            # none unescaped).
            inputs = msgspec.Raw(strict_body.replace(b"\n", b" ").replace(b"\r", b" "))
        else:
            inputs = msgspec.Raw(strict_body)
        try:
            log_batch(
                served, batch_id, inputs, predictions, confidence_json, probabilities_json, latency
            )
        except LogUnavailable as err:
            return log_failed(err)
        observe(served, n, latency, confidence)
        return _json_answer(answer)

    # The routes FastAPI documents and serves; shipml serve's hot path reaches the same two
    # functions through the lane below, without FastAPI's request and dependency handling.
    guarded = predict_token is not None or predict_rate is not None

    def client_of(scope: Any) -> str:
        client = scope.get("client")
        return str(client[0]) if client else "unknown"

    def predict_refusal(request: Request) -> Response | None:
        if not guarded:
            return None
        authorization = request.headers.get("authorization")
        return guard(authorization, client_of(request.scope), predict_token, predict_rate)

    @app.post("/predict", tags=["predict"], summary="Predict one row")
    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        refused = predict_refusal(request)
        if refused is not None:
            return refused
        return await answer_one(started, read_json(request))

    @app.post("/predict/batch", tags=["predict"], summary="Predict many rows")
    async def predict_batch(request: Request) -> Response:
        started = time.perf_counter()
        refused = predict_refusal(request)
        if refused is not None:
            return refused
        return await answer_batch(started, read_json(request))

    async def lane(scope: Any, receive: Any, send: Any) -> None:
        started = time.perf_counter()
        headers = dict(scope["headers"])
        if guarded:
            authorization = headers.get(b"authorization")
            refused = guard(
                None if authorization is None else authorization.decode("latin-1"),
                client_of(scope),
                predict_token,
                predict_rate,
            )
            if refused is not None:
                await refused(scope, receive, send)
                return
        declared = headers.get(b"content-length")

        async def chunks() -> AsyncIterator[bytes]:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return
                yield message.get("body", b"")
                if not message.get("more_body", False):
                    return

        body = body_of(
            headers.get(b"content-type", b"").decode("latin-1"),
            None if declared is None else declared.decode("latin-1"),
            chunks(),
        )
        answer = answer_batch if scope["path"] == "/predict/batch" else answer_one
        response = await answer(started, body)
        await response(scope, receive, send)

    app.lane = lane

    @app.post("/feedback", tags=["monitor"], summary="Attach the true label to a prediction")
    async def feedback(request: Request) -> Response:
        refused = guard(
            request.headers.get("authorization"),
            client_of(request.scope),
            feedback_token,
            feedback_rate,
        )
        if refused is not None:
            return refused
        served = slot.current
        body = await read_json(request)
        if isinstance(body, Response):
            return body
        model_cls = FeedbackRequest if served is None else served.requests.feedback
        try:
            parsed = model_cls.model_validate_json(body)
        except ValidationError as err:
            return _error(422, "bad_request", _validation_detail(err, []), metrics)
        label: Any = parsed.label
        if predlog is None:
            return JSONResponse({"request_id": parsed.request_id, "recorded": False})
        if not await asyncio.to_thread(answered.__contains__, parsed.request_id):
            detail = [
                {
                    "loc": ["body", "request_id"],
                    "msg": "no prediction answered by this server has this request_id",
                    "type": "value_error",
                }
            ]
            return _error(422, "bad_request", detail, metrics)
        try:
            predlog.feedback({"request_id": parsed.request_id, "label": label, "time": time.time()})
        except LogUnavailable as err:
            return _error(503, "log_unavailable", err.reason, metrics, {"Retry-After": "1"})
        return JSONResponse({"request_id": parsed.request_id, "recorded": True})

    @app.get("/health", tags=["service"], summary="Liveness: the process answers")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/ready",
        tags=["service"],
        summary="Readiness: 200 once a model is loaded and the prediction log can be written",
    )
    async def ready() -> Response:
        served = slot.current
        if served is None:
            return JSONResponse({"ready": False, "detail": slot.status}, status_code=503)
        failure = None if predlog is None else predlog.health()
        if failure is not None:
            return JSONResponse(
                {"ready": False, "detail": failure, "model_version": str(served.version)},
                status_code=503,
            )
        return JSONResponse({"ready": True, "model_version": str(served.version)})

    @app.get("/model", tags=["service"], summary="The served model and its input schema")
    async def model_info() -> Response:
        served = slot.current
        if served is None:
            return not_ready()
        return JSONResponse(served.describe())

    @app.get("/metrics", tags=["service"], summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.post("/admin/reload", tags=["admin"], summary="Load the champion now (token)")
    async def reload(request: Request) -> Response:
        if token is None:
            return JSONResponse(
                {
                    "detail": f"admin endpoints are off: set {ADMIN_TOKEN_ENV} or "
                    "serving.admin_token"
                },
                status_code=403,
            )
        if not token_matches(request.headers.get("authorization", ""), token):
            return JSONResponse(
                {"detail": "missing or wrong token: send 'Authorization: Bearer <token>'"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        swapped = slot.check(force=True)
        served = slot.current
        return JSONResponse(
            {
                "swapped": swapped,
                "model_version": None if served is None else str(served.version),
                "status": slot.status,
            }
        )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        served = slot.current
        bodies: dict[str, type[BaseModel]] = {"/feedback": FeedbackRequest}
        if served is not None:
            bodies["/predict"] = served.requests.predict
            bodies["/predict/batch"] = served.requests.batch
            bodies["/feedback"] = served.requests.feedback

        def answers(token: str | None, rate: RateLimiter | None) -> tuple[str, ...]:
            shown = ("401",) * (token is not None) + ("413", "415", "422")
            return shown + ("429",) * (rate is not None) + ("503",)

        predict_answers = answers(predict_token, predict_rate)
        app.openapi_schema = openapi_document(
            app,
            bodies,
            {
                "/predict": predict_answers,
                "/predict/batch": predict_answers,
                "/feedback": answers(feedback_token, feedback_rate),
                "/admin/reload": ("401", "403"),
                "/ready": ("503",),
                "/model": ("503",),
            },
            metrics.content_type,
        )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def app_from_env() -> FastAPI:
    """The uvicorn factory `shipml serve` names: the project from $SHIPML_CONFIG."""
    return create_app(None)
