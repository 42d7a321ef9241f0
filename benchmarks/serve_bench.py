"""Serving benchmark: `shipml serve` against the usual ways to put the same model behind HTTP.

One trained pipeline (shipml's one-hot preprocessing + a 100-tree random forest on the demo churn
table, mixed numeric/categorical columns) is served, one worker each, by

- (a) shipml: `shipml serve -c shipml.yaml --workers 1` (the registered champion);
- (b) cheat: the cheat-sheet FastAPI app (benchmarks/anchors/serve/cheat_app.py: joblib.load,
  predict + predict_proba per request on a one-row DataFrame) under uvicorn, project venv;
- (c) mlflow: `mlflow models serve --env-manager local --workers 1`, project venv;
- (d) bentoml: BentoML 1.4 with adaptive batching (anchors/serve/bento_service.py), .bench/bentoml;
- (e) mlserver: Seldon MLServer 1.7's sklearn runtime, parallel_workers 1, .bench/mlserver;

and driven by `wrk` with single-row JSON bodies at 1 and 16 connections and with 1,000-row
batches (4 connections). Per contender: startup time (process start until its ready endpoint
answers 200), RSS of the server's process tree, and per load the successful requests/s (rows/s
for batches), p50/p99 latency and errors (non-2xx responses and socket errors).

The model is trained once by shipml (`shipml init`, then training.models: [random_forest],
search: none, ensemble: false, cv: 3, threshold: none) and (a) serves that registered version.
(b)-(e) serve one scikit-learn Pipeline made of the same fitted preprocessor and forest
(n_jobs=1), dumped with joblib. Every contender gets the same rows in its own natural request
format, and must answer one single-row request and one batch exactly as the pipeline does before
it is timed: a wrong answer is an error, not a result.

    .venv/bin/python benchmarks/serve_bench.py [--duration 10] [--contenders shipml,cheat,...]
        [--reuse-model] [--out benchmarks/results/SERVE_RESULTS.md]

BentoML and MLServer need their venvs and every run needs wrk: benchmarks/anchors/serve/setup.sh
builds them. Work files (the data, the shipml project, the dumped pipeline, request bodies and
server logs) go to .bench/serve/.
"""

from __future__ import annotations

import os

# Before shipml (and so MLflow) is imported: no telemetry from a benchmark run.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "1"

import argparse
import atexit
import contextlib
import copy
import json
import math
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parents[1]
ANCHORS = ROOT / "benchmarks" / "anchors" / "serve"
PROJECT_BIN = ROOT / ".venv" / "bin"
BENCH = ROOT / ".bench"
DEFAULT_WORK = BENCH / "serve"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "SERVE_RESULTS.md"
HOST = "127.0.0.1"

TREES = 100
TRAIN_ROWS, TRAIN_SEED = 3000, 7  # shipml.demo's training table
REQUEST_SEED = 9  # the rows sent to the servers come from another draw of the same process
EXCLUDE = ["customer_id", "signup_date"]
MODEL_NAME = "churn"  # MLServer's model name

# Targets for (a), one worker each.
TARGET_VS_CHEAT = 30.0
TARGET_VS_BEST_ANCHOR = 4.0
TARGET_P99_MS = 20.0
TARGET_BATCH_ROWS_S = 100_000.0

PROBA_TOLERANCE = 1e-9


# --------------------------------------------------------------------------------------------
# The model and the request rows


@dataclass
class Prepared:
    work: Path
    config: Path  # the shipml project's shipml.yaml
    pipeline: Path  # the joblib file (b)-(e) serve
    columns: Path  # {column: "float" | "str"}
    mlflow_model: Path
    classes: list[Any]
    single: list[dict[str, Any]]  # one row, coerced: what the pipeline is fit on
    batch: list[dict[str, Any]]  # --batch-rows rows, coerced
    single_typed: list[dict[str, Any]]  # the same rows in shipml's JSON types (booleans true/false)
    batch_typed: list[dict[str, Any]]
    expected_single: tuple[list[Any], list[list[float]]]
    expected_batch: tuple[list[Any], list[list[float]]]
    info: dict[str, Any]


def _log(message: str) -> None:
    print(f"[serve_bench] {message}", file=sys.stderr, flush=True)


def _json_value(value: Any) -> Any:
    """A cell as JSON: NaN -> null, numpy scalars -> Python."""
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _records(frame: Any) -> list[dict[str, Any]]:
    return [{str(k): _json_value(v) for k, v in row.items()} for row in frame.to_dict("records")]


def _write_config(work: Path) -> tuple[Path, dict[str, Any]]:
    """`shipml init` on the demo table, then the benchmark's training settings."""
    import yaml

    from shipml.config import parse_config
    from shipml.demo import generate_customers

    generate_customers(TRAIN_ROWS, TRAIN_SEED).to_csv(work / "data.csv", index=False)
    subprocess.run(
        [str(PROJECT_BIN / "shipml"), "init", "data.csv", "--target", "churned"],
        cwd=work,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    path = work / "shipml.yaml"
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    features = config.setdefault("features", {})
    for role in ("numeric", "categorical", "boolean", "datetime", "text"):
        if isinstance(features.get(role), list):
            features[role] = [c for c in features[role] if c not in EXCLUDE]
    features["exclude"] = list(EXCLUDE)
    config.setdefault("training", {}).update(
        {
            "models": ["random_forest"],
            "search": "none",
            "ensemble": False,
            "cv": 3,
            "time_budget_s": 120,
            # one decision rule for everyone: the label is the most probable class, as the
            # plain scikit-learn pipeline predicts it
            "threshold": "none",
        }
    )
    # Only the forest competes (no baselines), with the 100 trees.
    config["training"]["baselines"] = False
    config["training"]["params"] = {"random_forest": {"n_estimators": TREES}}
    parse_config(config, path)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path, {"trees_from": "training.params", "baselines": "training.baselines: false"}


def _train(config_path: Path, notes: dict[str, Any]) -> None:
    """Project.train(), which is what `shipml train` runs."""
    from shipml import Project

    started = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = Project.load(config_path).train()
    notes["train_s"] = round(time.monotonic() - started, 1)
    notes["version"] = result.version
    notes["metric"] = result.metric
    notes["test_metrics"] = {k: round(v, 4) for k, v in result.test_metrics.items()}
    notes["inference"] = f"{result.inference}: {result.inference_note}"


def _anchor_pipeline(ensemble: Any, schema: Any) -> tuple[Any, dict[str, Any]]:
    """One scikit-learn Pipeline of the champion's single forest and its preprocessor."""
    from sklearn.pipeline import Pipeline

    from shipml.models.bagged import BaggedEnsemble

    if not isinstance(ensemble, BaggedEnsemble):
        raise RuntimeError(f"the champion is a {type(ensemble).__name__}, not a BaggedEnsemble")
    if len(ensemble.parts) != 1:
        raise RuntimeError(f"the champion has {len(ensemble.parts)} parts, not one forest")
    name, index, estimator = ensemble.parts[0]
    if name != "random_forest":
        raise RuntimeError(f"the champion is {name}, not random_forest")
    preprocessor = ensemble.preprocessors[index]
    # shipml's preprocessor is Pipeline([derive, columns]); with no derived features the first
    # step is the identity, and the rest is plain scikit-learn, which the anchor venvs can load
    # without shipml installed.
    if schema.derived or "columns" not in getattr(preprocessor, "named_steps", {}):
        raise RuntimeError("expected shipml's preprocessor with no derived features")
    forest = copy.deepcopy(estimator)
    forest.n_jobs = 1
    pipeline = Pipeline([("pre", preprocessor.named_steps["columns"]), ("model", forest)])
    info = {
        "family": name,
        "trees": int(getattr(forest, "n_estimators", 0)),
        "estimator": type(forest).__name__,
        "classes": [_json_value(c) for c in ensemble.classes_],
    }
    return pipeline, info


def _expected(pipeline: Any, frame: Any) -> tuple[list[Any], list[list[float]]]:
    labels = [_json_value(v) for v in pipeline.predict(frame)]
    return labels, pipeline.predict_proba(frame).tolist()


def prepare(work: Path, batch_rows: int, reuse: bool) -> Prepared:
    """Train (or reuse) the model, build the anchors' pipeline and the request rows."""
    import joblib
    import numpy as np
    import pandas as pd

    from shipml import Project
    from shipml.data.coerce import coerce_frame
    from shipml.demo import generate_customers

    model_dir = work / "model"
    info_file = model_dir / "info.json"
    if not (reuse and info_file.exists()):
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        model_dir.mkdir()
        _log("training the model with shipml ...")
        config_path, notes = _write_config(work)
        _train(config_path, notes)
        info_file.write_text(json.dumps(notes, indent=2), encoding="utf-8")
    notes = json.loads(info_file.read_text(encoding="utf-8"))
    config_path = work / "shipml.yaml"

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Project.load(config_path).load_model("champion")
    pipeline, info = _anchor_pipeline(model.pipeline, model.schema)
    info.update(notes)
    info["shipml_version"] = model.version

    # The request rows. The anchors get them coerced as shipml coerces them (booleans 1.0/0.0,
    # numbers as floats), the input types the preprocessor was fit on; shipml's request schema
    # takes booleans as JSON true/false. Rows with a missing *categorical* value are left out:
    # JSON null becomes None, which the fitted imputers do not take for NaN, and (c) (MLflow's
    # sklearn flavour) has no place for a fix. Missing numbers stay in the batch.
    raw = generate_customers(max(4 * batch_rows, 1000), REQUEST_SEED)
    frame = coerce_frame(raw, model.schema)
    typed = frame.astype(object)
    for column in model.schema.columns_with("boolean"):
        typed[column] = frame[column].map(lambda v: None if pd.isna(v) else bool(v))
    categorical = [c for c in frame.columns if frame[c].dtype == object]
    batch_index = frame.index[frame[categorical].notna().all(axis=1)][:batch_rows]
    if len(batch_index) < batch_rows:
        raise RuntimeError(f"only {len(batch_index)} usable request rows")
    single_index = frame.index[frame.notna().all(axis=1)][:1]
    batch_frame = frame.loc[batch_index].reset_index(drop=True)
    single_frame = frame.loc[single_index].reset_index(drop=True)

    # The anchors' pipeline must be the champion: same probabilities on every request row.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = pipeline.predict_proba(batch_frame)
        theirs = model.pipeline.predict_proba(batch_frame)
    if not np.allclose(ours, theirs, rtol=0, atol=PROBA_TOLERANCE):
        raise RuntimeError("the anchor pipeline does not reproduce the champion's probabilities")
    if list(pipeline.predict(batch_frame)) != list(model.pipeline.predict(batch_frame)):
        raise RuntimeError("the anchor pipeline does not reproduce the champion's labels")

    joblib_path = model_dir / "pipeline.joblib"
    columns_path = model_dir / "columns.json"
    mlflow_path = model_dir / "mlflow_model"
    joblib.dump(pipeline, joblib_path)
    columns = {
        c: "float" if pd.api.types.is_float_dtype(frame[c].dtype) else "str" for c in frame.columns
    }
    columns_path.write_text(json.dumps(columns, indent=2), encoding="utf-8")
    if mlflow_path.exists():
        shutil.rmtree(mlflow_path)
    _save_mlflow_model(pipeline, single_frame, mlflow_path)

    return Prepared(
        work=work,
        config=config_path,
        pipeline=joblib_path,
        columns=columns_path,
        mlflow_model=mlflow_path,
        classes=info["classes"],
        single=_records(single_frame),
        batch=_records(batch_frame),
        single_typed=_records(typed.loc[single_index]),
        batch_typed=_records(typed.loc[batch_index]),
        expected_single=_expected(pipeline, single_frame),
        expected_batch=_expected(pipeline, batch_frame),
        info=info,
    )


def ort_yardstick(prepared: Prepared, seconds: float = 3.0) -> float | None:
    """Rows/s of onnxruntime alone on this machine, now: the champion's trees (its registered
    fast copy) scoring the batch's rows in one session on every core, with nothing else
    (no HTTP, no JSON, no Python between calls). The issue measured about 155,000 rows/s on its
    machine; this figure says how fast this run's machine was, so runs can be compared."""
    import onnxruntime as ort

    from shipml import Project, registry
    from shipml.models.fastpath import FastPredictor, record_columns

    project = Project.load(prepared.config)
    store = project.store
    blob = registry.load_fast(store, registry.resolve(store, "champion"))
    if blob is None:
        return None
    fast = FastPredictor.from_bytes(blob)
    schema = project.load_model("champion").schema
    n = len(prepared.batch_typed)
    inputs = fast.tree_inputs(fast.matrices(record_columns(prepared.batch_typed, schema), n))
    if inputs is None or fast.onnx_model is None:
        return None
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    options.log_severity_level = 3
    session = ort.InferenceSession(fast.onnx_model, options, providers=["CPUExecutionProvider"])
    for _ in range(3):
        session.run(None, inputs)
    runs, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        session.run(None, inputs)
        runs += 1
    return runs * n / elapsed


def _save_mlflow_model(pipeline: Any, example: Any, path: Path) -> None:
    import logging

    import mlflow.sklearn
    import skops.io
    from mlflow.models import infer_signature

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    # MLflow 3 saves scikit-learn models with skops, which refuses types it has not been told to
    # trust; these are the forest's own (this file is ours).
    trusted = skops.io.get_untrusted_types(data=skops.io.dumps(pipeline))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        signature = infer_signature(example, pipeline.predict(example))
        mlflow.sklearn.save_model(
            pipeline, str(path), signature=signature, skops_trusted_types=trusted
        )


# --------------------------------------------------------------------------------------------
# Request bodies and answers, per contender

Answer = tuple[list[Any], list[list[float]] | None]  # labels, probabilities (or None)


def _v2_request(rows: list[dict[str, Any]], columns: dict[str, str]) -> dict[str, Any]:
    """An Open Inference (V2) request with the pandas codec: one input per column."""
    inputs = []
    for name, kind in columns.items():
        item: dict[str, Any] = {
            "name": name,
            "shape": [len(rows)],
            "data": [row[name] for row in rows],
        }
        if kind == "float":
            item["datatype"] = "FP64"
        else:
            item["datatype"] = "BYTES"
            item["parameters"] = {"content_type": "str"}
        inputs.append(item)
    return {
        "parameters": {"content_type": "pd"},
        "inputs": inputs,
        "outputs": [{"name": "predict"}, {"name": "predict_proba"}],
    }


def _proba_from_mapping(mapping: dict[str, Any], classes: list[Any]) -> list[float]:
    return [float(mapping[str(c)]) for c in classes]


def _parse_shipml(body: Any, n: int, classes: list[Any]) -> Answer:
    """/predict: {"prediction": label, "probabilities": {class: p}, ...}; /predict/batch:
    the same fields, each a list: {"prediction": [label, ...], "probabilities": [{class: p},
    ...], ...}."""
    if not isinstance(body["prediction"], list):
        labels, probas = [body["prediction"]], [body.get("probabilities")]
    else:
        labels = list(body["prediction"])
        probas = body.get("probabilities") or [None] * len(labels)
    if any(p is None for p in probas):
        return labels, None
    return labels, [_proba_from_mapping(p, classes) for p in probas]


def _parse_cheat(body: Any, n: int, classes: list[Any]) -> Answer:
    items = [body] if n == 1 and "prediction" in body else body["predictions"]
    return (
        [item["prediction"] for item in items],
        [_proba_from_mapping(item["probabilities"], classes) for item in items],
    )


def _parse_mlflow(body: Any, n: int, classes: list[Any]) -> Answer:
    return list(body["predictions"]), None


def _parse_bentoml(body: Any, n: int, classes: list[Any]) -> Answer:
    return (
        [row["prediction"] for row in body],
        [[float(row[f"proba_{c}"]) for c in classes] for row in body],
    )


def _parse_mlserver(body: Any, n: int, classes: list[Any]) -> Answer:
    outputs = {o["name"]: o for o in body["outputs"]}
    labels = list(outputs["predict"]["data"])
    flat = [float(p) for p in outputs["predict_proba"]["data"]]
    width = len(classes)
    return labels, [flat[i * width : (i + 1) * width] for i in range(len(flat) // width)]


def _check_answer(answer: Answer, expected: tuple[list[Any], list[list[float]]]) -> str | None:
    """None when the answer is the pipeline's; else what differs."""
    labels, probas = answer
    want_labels, want_probas = expected
    if len(labels) != len(want_labels):
        return f"{len(labels)} answers for {len(want_labels)} rows"
    wrong = [i for i, (a, b) in enumerate(zip(labels, want_labels, strict=True)) if a != b]
    if wrong:
        i = wrong[0]
        return f"{len(wrong)} wrong labels (row {i}: {labels[i]!r}, expected {want_labels[i]!r})"
    if probas is not None:
        for i, (got, want) in enumerate(zip(probas, want_probas, strict=True)):
            if len(got) != len(want) or any(
                abs(a - b) > PROBA_TOLERANCE for a, b in zip(got, want, strict=True)
            ):
                return f"probabilities differ (row {i}: {got}, expected {want})"
    return None


# --------------------------------------------------------------------------------------------
# Servers


@dataclass
class Contender:
    key: str
    label: str
    describe: str
    ready_path: str
    single_path: str
    batch_path: str
    command: Callable[[Prepared, dict[str, int]], list[str]]
    single_body: Callable[[Prepared], Any]
    batch_body: Callable[[Prepared], Any]
    parse: Callable[[Any, int, list[Any]], Answer]
    env: Callable[[Prepared], dict[str, str]] = lambda _: {}
    cwd: Callable[[Prepared], Path] = lambda prepared: prepared.work
    ports: tuple[str, ...] = ("http",)
    setup: Callable[[Prepared, dict[str, int]], None] | None = None
    needs: Path | None = None  # an executable that must exist, else "not installed"
    install_hint: str = ""


def _model_env(prepared: Prepared) -> dict[str, str]:
    return {
        "SERVE_BENCH_MODEL": str(prepared.pipeline),
        "SERVE_BENCH_COLUMNS": str(prepared.columns),
    }


def _columns(prepared: Prepared) -> dict[str, str]:
    return json.loads(prepared.columns.read_text(encoding="utf-8"))


def _mlserver_setup(prepared: Prepared, ports: dict[str, int]) -> None:
    root = prepared.work / "mlserver"
    model_dir = root / MODEL_NAME
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(prepared.pipeline, model_dir / "model.joblib")
    settings = {
        "host": HOST,
        "http_port": ports["http"],
        "grpc_port": ports["grpc"],
        "metrics_port": ports["metrics"],
        "parallel_workers": 1,
        "debug": False,
    }
    (root / "settings.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")
    model_settings = {
        "name": MODEL_NAME,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "v1"},
    }
    (model_dir / "model-settings.json").write_text(
        json.dumps(model_settings, indent=2), encoding="utf-8"
    )


CONTENDERS: dict[str, Contender] = {
    c.key: c
    for c in [
        Contender(
            key="shipml",
            label="(a) shipml",
            describe="`shipml serve --workers 1`: the registered champion",
            ready_path="/ready",
            single_path="/predict",
            batch_path="/predict/batch",
            command=lambda p, ports: [
                str(PROJECT_BIN / "shipml"),
                "serve",
                "-c",
                str(p.config),
                "--host",
                HOST,
                "--port",
                str(ports["http"]),
                "--workers",
                "1",
            ],
            single_body=lambda p: {"features": p.single_typed[0]},
            batch_body=lambda p: {"instances": p.batch_typed},
            parse=_parse_shipml,
        ),
        Contender(
            key="cheat",
            label="(b) cheat",
            describe="cheat-sheet FastAPI app under uvicorn (project venv)",
            ready_path="/health",
            single_path="/predict",
            batch_path="/predict/batch",
            command=lambda p, ports: [
                str(PROJECT_BIN / "python"),
                "-m",
                "uvicorn",
                "cheat_app:app",
                "--app-dir",
                str(ANCHORS),
                "--host",
                HOST,
                "--port",
                str(ports["http"]),
                "--workers",
                "1",
                "--no-access-log",
            ],
            env=_model_env,
            single_body=lambda p: p.single[0],
            batch_body=lambda p: p.batch,
            parse=_parse_cheat,
        ),
        Contender(
            key="mlflow",
            label="(c) mlflow",
            describe="`mlflow models serve --env-manager local --workers 1` (project venv)",
            ready_path="/ping",
            single_path="/invocations",
            batch_path="/invocations",
            command=lambda p, ports: [
                str(PROJECT_BIN / "mlflow"),
                "models",
                "serve",
                "-m",
                str(p.mlflow_model),
                "--env-manager",
                "local",
                "--host",
                HOST,
                "--port",
                str(ports["http"]),
                "--workers",
                "1",
            ],
            single_body=lambda p: {"dataframe_records": p.single},
            batch_body=lambda p: {"dataframe_records": p.batch},
            parse=_parse_mlflow,
        ),
        Contender(
            key="bentoml",
            label="(d) bentoml",
            describe="BentoML 1.4 service, adaptive batching, 1 worker (.bench/bentoml)",
            ready_path="/readyz",
            single_path="/predict",
            batch_path="/predict",
            command=lambda p, ports: [
                str(BENCH / "bentoml" / "bin" / "bentoml"),
                "serve",
                "bento_service:ChurnForest",
                "--working-dir",
                str(ANCHORS),
                "--host",
                HOST,
                "--port",
                str(ports["http"]),
            ],
            env=lambda p: {
                **_model_env(p),
                "BENTOML_HOME": str(p.work / "bentoml_home"),
                "BENTOML_DO_NOT_TRACK": "True",
            },
            single_body=lambda p: {"rows": p.single},
            batch_body=lambda p: {"rows": p.batch},
            parse=_parse_bentoml,
            needs=BENCH / "bentoml" / "bin" / "bentoml",
            install_hint="benchmarks/anchors/serve/setup.sh bentoml",
        ),
        Contender(
            key="mlserver",
            label="(e) mlserver",
            describe="MLServer 1.7 sklearn runtime, parallel_workers 1 (.bench/mlserver)",
            ready_path=f"/v2/models/{MODEL_NAME}/ready",
            single_path=f"/v2/models/{MODEL_NAME}/infer",
            batch_path=f"/v2/models/{MODEL_NAME}/infer",
            command=lambda p, ports: [
                str(BENCH / "mlserver" / "bin" / "mlserver"),
                "start",
                str(p.work / "mlserver"),
            ],
            single_body=lambda p: _v2_request(p.single, _columns(p)),
            batch_body=lambda p: _v2_request(p.batch, _columns(p)),
            parse=_parse_mlserver,
            ports=("http", "grpc", "metrics"),
            setup=_mlserver_setup,
            needs=BENCH / "mlserver" / "bin" / "mlserver",
            install_hint="benchmarks/anchors/serve/setup.sh mlserver",
        ),
    ]
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# Process trees: found through /proc (psutil is not in the project venv), so the RSS of a
# server is that of its whole tree and stopping it stops every process it started.


def _parent_map() -> dict[int, int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        parents[int(entry)] = int(fields[1])
    return parents


def _tree(pid: int) -> list[int]:
    """pid and all its descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for child, parent in _parent_map().items():
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        if os.path.exists(f"/proc/{current}"):
            found.append(current)
        todo.extend(children.get(current, []))
    return found


def _rss_bytes(pids: list[int]) -> int:
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", encoding="utf-8") as f:
                total += int(f.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
    return total


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Server:
    """One contender's server process, in its own process group; stop() ends its whole tree."""

    running: ClassVar[list[Server]] = []

    def __init__(self, contender: Contender, prepared: Prepared, log_dir: Path) -> None:
        self.contender = contender
        self.ports = {name: _free_port() for name in contender.ports}
        if contender.setup is not None:
            contender.setup(prepared, self.ports)
        self.command = contender.command(prepared, self.ports)
        self.log_path = log_dir / f"{contender.key}.log"
        env = {
            **os.environ,
            **contender.env(prepared),
            "PATH": f"{Path(self.command[0]).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("VIRTUAL_ENV", None)
        env.pop("PYTHONPATH", None)
        self.log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            self.command,
            cwd=contender.cwd(prepared),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.known: set[int] = {self.proc.pid}
        Server.running.append(self)

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.ports['http']}"

    def pids(self) -> list[int]:
        found = _tree(self.proc.pid) if self.proc.poll() is None else []
        self.known.update(found)
        return found

    def rss_mib(self) -> float:
        return _rss_bytes(self.pids()) / 2**20

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        kept = [line.strip() for line in text.splitlines() if line.strip()]
        return " | ".join(kept[-lines:])

    def wait_ready(self, timeout: float) -> float:
        """Seconds from the process start until the ready endpoint answers 200."""
        url = self.base + self.contender.ready_path
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"exited with code {self.proc.returncode} before it was ready: "
                    + self.log_tail()
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - self.started
            except (urllib.error.URLError, OSError):
                pass
            self.pids()  # remember the children while they start
            time.sleep(0.05)
        raise RuntimeError(f"not ready after {timeout:.0f} s: {self.log_tail()}")

    def stop(self) -> None:
        if self in Server.running:
            Server.running.remove(self)
        pids = set(self.pids()) | self.known
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)
            for pid in pids:  # children that made their own process group
                if _alive(pid):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, sig)
            deadline = time.monotonic() + (10 if sig == signal.SIGTERM else 5)
            while time.monotonic() < deadline:
                self.proc.poll()
                if not any(_alive(pid) for pid in pids):
                    break
                time.sleep(0.1)
            else:
                continue
            break
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self.log.close()


def _stop_all() -> None:
    for server in list(Server.running):
        try:
            server.stop()
        except Exception:  # stop the others all the same
            traceback.print_exc()


def _on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


# --------------------------------------------------------------------------------------------
# Load


@dataclass
class LoadResult:
    rows: int  # rows per request
    connections: int
    requests: int = 0
    seconds: float = 0.0
    non_2xx: int = 0
    socket_errors: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    error: str | None = None

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors

    @property
    def ok_per_s(self) -> float:
        return (self.requests - self.non_2xx) / self.seconds if self.seconds else 0.0

    @property
    def rows_per_s(self) -> float:
        return self.ok_per_s * self.rows


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(number: str, unit: str) -> float:
    return float(number) * _UNITS_MS[unit]


def parse_wrk(output: str, rows: int, connections: int) -> LoadResult:
    result = LoadResult(rows=rows, connections=connections)
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)", output)
    if total is None:
        result.error = "wrk: " + " ".join(output.split())[-200:]
        return result
    result.requests = int(total.group(1))
    result.seconds = _ms(total.group(2), total.group(3)) / 1e3
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    result.non_2xx = int(non_2xx.group(1)) if non_2xx else 0
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    result.socket_errors = sum(int(g) for g in sockets.groups()) if sockets else 0
    for percent, attr in (("50", "p50_ms"), ("99", "p99_ms")):
        found = re.search(rf"^\s*{percent}(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.M)
        if found:
            setattr(result, attr, _ms(found.group(1), found.group(2)))
    return result


def run_wrk(
    url: str, body: Path, connections: int, duration: float, rows: int, threads: int
) -> LoadResult:
    threads = max(1, min(threads, connections))
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(ANCHORS / "post.lua"),
        url,
    ]
    env = {**os.environ, "SERVE_BENCH_BODY": str(body)}
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=duration + 60, check=False
    )
    result = parse_wrk(done.stdout + done.stderr, rows, connections)
    if done.returncode != 0 and result.error is None:
        result.error = f"wrk exited with {done.returncode}: {done.stderr.strip()[-200:]}"
    return result


class RssSampler(threading.Thread):
    """The largest RSS of the server's tree, sampled while it is under load."""

    def __init__(self, server: Server, every: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.server, self.every = server, every
        self.peak = 0.0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, self.server.rss_mib())
            self._done.wait(self.every)

    def finish(self) -> float:
        self._done.set()
        self.join()
        return self.peak


def _post(url: str, body: bytes, timeout: float = 60) -> Any:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as err:
        detail = err.read().decode("utf-8", errors="replace").strip()
        raise RuntimeError(f"HTTP {err.code} from {url}: {detail[:300]}") from None


# --------------------------------------------------------------------------------------------
# One contender


@dataclass
class Outcome:
    contender: Contender
    startup_s: float | None = None
    rss_idle_mib: float | None = None
    rss_mib: float | None = None  # after the loads
    rss_peak_mib: float | None = None
    loads: dict[str, LoadResult] = field(default_factory=dict)
    error: str | None = None

    @property
    def total_errors(self) -> int:
        return sum(load.errors for load in self.loads.values())


def _load_keys(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """(key, body kind, connections) for every load."""
    keys = [(f"single_c{c}", "single", c) for c in args.connections]
    keys.append((f"batch_c{args.batch_connections}", "batch", args.batch_connections))
    return keys


def run_contender(contender: Contender, prepared: Prepared, args: argparse.Namespace) -> Outcome:
    outcome = Outcome(contender)
    if contender.needs is not None and not contender.needs.exists():
        outcome.error = f"not installed: run {contender.install_hint}"
        return outcome
    bodies = prepared.work / "bodies"
    bodies.mkdir(exist_ok=True)
    files = {
        "single": bodies / f"{contender.key}-single.json",
        "batch": bodies / f"{contender.key}-batch.json",
    }
    files["single"].write_text(json.dumps(contender.single_body(prepared)), encoding="utf-8")
    files["batch"].write_text(json.dumps(contender.batch_body(prepared)), encoding="utf-8")
    paths = {"single": contender.single_path, "batch": contender.batch_path}
    rows = {"single": 1, "batch": len(prepared.batch)}

    log_dir = prepared.work / "logs"
    log_dir.mkdir(exist_ok=True)
    server = Server(contender, prepared, log_dir)
    try:
        outcome.startup_s = server.wait_ready(args.startup_timeout)
        outcome.rss_idle_mib = server.rss_mib()
        # A wrong answer is an error, not a result: check one of each before timing.
        for kind, expected in (
            ("single", prepared.expected_single),
            ("batch", prepared.expected_batch),
        ):
            body = _post(server.base + paths[kind], files[kind].read_bytes())
            try:
                answer = contender.parse(body, rows[kind], prepared.classes)
            except (KeyError, TypeError, ValueError, IndexError) as err:
                shown = json.dumps(body)[:200]
                raise RuntimeError(f"unreadable {kind} answer ({err!r}): {shown}") from None
            problem = _check_answer(answer, expected)
            if problem:
                raise RuntimeError(f"wrong {kind} answer: {problem}")
        if args.warmup > 0:
            run_wrk(server.base + paths["single"], files["single"], 4, args.warmup, 1, args.threads)
        sampler = RssSampler(server)
        sampler.start()
        try:
            for key, kind, connections in _load_keys(args):
                _log(f"{contender.key}: {kind} rows, {connections} connection(s) ...")
                outcome.loads[key] = run_wrk(
                    server.base + paths[kind],
                    files[kind],
                    connections,
                    args.duration,
                    rows[kind],
                    args.threads,
                )
                if server.proc.poll() is not None:
                    raise RuntimeError(
                        f"the server exited with {server.proc.returncode} under load: "
                        + server.log_tail()
                    )
        finally:
            outcome.rss_peak_mib = sampler.finish()
        outcome.rss_mib = server.rss_mib()
    except Exception as err:  # one contender's failure is a table cell
        outcome.error = str(err) or type(err).__name__
    finally:
        server.stop()
    return outcome


# --------------------------------------------------------------------------------------------
# Report


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def _ms_cell(load: LoadResult | None) -> str:
    if load is None or load.error:
        return "–"
    return f"{_fmt(load.p50_ms, 1)} / {_fmt(load.p99_ms, 1)}"


def table_rows(
    outcomes: list[Outcome], args: argparse.Namespace
) -> tuple[list[list[str]], list[str]]:
    """The side-by-side table (a row per measure, a column per contender) and its notes."""
    notes: list[str] = []
    status = []
    for outcome in outcomes:
        if outcome.error:
            notes.append(outcome.error)
            status.append(f"error [{len(notes)}]")
        else:
            status.append("ok")
    rows = [["", *[o.contender.label for o in outcomes]], ["status", *status]]

    def row(name: str, render: Callable[[Outcome], str]) -> None:
        # a contender that never became ready has nothing to show
        cells = ["–" if o.startup_s is None else render(o) for o in outcomes]
        rows.append([name, *cells])

    row("startup (s)", lambda o: _fmt(o.startup_s, 1))
    row("RSS after loads / peak (MiB)", lambda o: f"{_fmt(o.rss_mib)} / {_fmt(o.rss_peak_mib)}")
    for key, kind, connections in _load_keys(args):
        if kind == "single":
            what, unit = f"1 row, {connections} conn", "successful req/s"
        else:
            what, unit = f"{args.batch_rows:,} rows, {connections} conn", "rows/s"

        def rate(o: Outcome, key: str = key, kind: str = kind) -> str:
            load = o.loads.get(key)
            if load is None or load.error:
                return "–" if load is None else "wrk error"
            return _fmt(load.ok_per_s if kind == "single" else load.rows_per_s)

        def latency(o: Outcome, key: str = key) -> str:
            return _ms_cell(o.loads.get(key))

        row(f"{what}: {unit}", rate)
        row(f"{what}: p50 / p99 (ms)", latency)
    row("errors (non-2xx + socket)", lambda o: str(o.total_errors) if o.loads else "–")
    return rows, notes


def plain_table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def command_used() -> str:
    """The command line that ran this benchmark, as someone would type it again."""
    python = sys.executable
    try:
        relative = os.path.relpath(python)
        if not relative.startswith(".."):
            python = relative
    except ValueError:
        pass
    return shlex.join([python, *sys.argv])


def busy_note(load: float) -> list[str]:
    """Markdown lines warning that the machine was busy when the run started (else none)."""
    if load <= 0.5:
        return []
    return [
        f"The machine was not idle (load average {load:.2f} at the start): other "
        "processes shared its cores, so these numbers compare poorly with other runs.",
        "",
    ]


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|---" + "|---:" * (len(rows[0]) - 1) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def targets(outcomes: list[Outcome], args: argparse.Namespace) -> tuple[list[str], str]:
    """One line per target for (a), and the verdict line, computed from the outcomes.

    A target is met or not met on the numbers; when (a) ran but failed (did not start, answered
    wrongly) every target is not met; when (a) or the anchors it is compared with were not run,
    it cannot be judged.
    """
    by_key = {o.contender.key: o for o in outcomes}
    top = max(args.connections)
    single_key = f"single_c{top}"
    batch_key = f"batch_c{args.batch_connections}"

    def load_of(key: str, load_key: str) -> LoadResult | None:
        outcome = by_key.get(key)
        if outcome is None or outcome.error:
            return None
        load = outcome.loads.get(load_key)
        return None if load is None or load.error else load

    def rate(key: str) -> float | None:
        load = load_of(key, single_key)
        return None if load is None else load.ok_per_s

    lines: list[str] = []
    met: list[bool | None] = []

    def add(text: str, ok: bool | None, measured: str) -> None:
        mark = {True: "met", False: "NOT met", None: "cannot judge"}[ok]
        lines.append(f"- {text}: **{mark}** ({measured})")
        met.append(ok)

    names = {
        "cheat": f"(a) ≥ {TARGET_VS_CHEAT:.0f}× (b) in successful req/s at {top} connections",
        "anchors": f"(a) ≥ {TARGET_VS_BEST_ANCHOR:.0f}× the best of (c)–(e) at {top} connections",
        "p99": f"(a) p99 ≤ {TARGET_P99_MS:.0f} ms at {top} connections",
        "errors": "(a) zero errors",
        "batch": f"(a) {args.batch_rows:,}-row batches ≥ {TARGET_BATCH_ROWS_S:,.0f} rows/s",
    }
    ours = by_key.get("shipml")
    if ours is None or ours.error:
        ok, why = (None, "(a) was not run") if ours is None else (False, "(a) failed")
        for text in names.values():
            add(text, ok, why)
    else:
        a = rate("shipml") or 0.0
        b = rate("cheat")
        if b:
            add(names["cheat"], a >= TARGET_VS_CHEAT * b, f"{a:,.0f} vs {b:,.0f}: {a / b:.1f}×")
        else:
            add(names["cheat"], None, "(b) has no result")
        anchors = {k: rate(k) for k in ("mlflow", "bentoml", "mlserver")}
        ran = {k: v for k, v in anchors.items() if v}
        missing = [k for k in anchors if k not in ran]
        if ran:
            best_key = max(ran, key=lambda k: ran[k] or 0.0)
            best = ran[best_key] or 0.0
            ok = a >= TARGET_VS_BEST_ANCHOR * best
            gap = f"; no result from {', '.join(missing)}" if missing else ""
            add(
                names["anchors"],
                None if ok and missing else ok,
                f"{a:,.0f} vs {best_key} {best:,.0f}: {a / best:.1f}×{gap}",
            )
        else:
            add(names["anchors"], None, "no result from (c)–(e)")
        load = load_of("shipml", single_key)
        if load is not None and load.p99_ms is not None:
            add(names["p99"], load.p99_ms <= TARGET_P99_MS, f"{load.p99_ms:,.1f} ms")
        else:
            add(names["p99"], False, "no latency from wrk")
        add(names["errors"], ours.total_errors == 0, f"{ours.total_errors} errors")
        batch = load_of("shipml", batch_key)
        rows_s = batch.rows_per_s if batch is not None else 0.0
        add(names["batch"], rows_s >= TARGET_BATCH_ROWS_S, f"{rows_s:,.0f} rows/s")
    n_met = sum(1 for m in met if m is True)
    n_failed = sum(1 for m in met if m is False)
    n_open = sum(1 for m in met if m is None)
    if n_met == len(met):
        verdict = f"Verdict: all {len(met)} targets met."
    else:
        verdict = f"Verdict: {n_met} of {len(met)} targets met, {n_failed} not met"
        verdict += f", {n_open} cannot be judged." if n_open else "."
    return lines, verdict


def _versions() -> dict[str, str]:
    from importlib import metadata

    found = {}
    for name in ("shipml", "scikit-learn", "mlflow", "fastapi", "uvicorn"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    for venv, names in (("bentoml", ("bentoml",)), ("mlserver", ("mlserver", "uvloop"))):
        python = BENCH / venv / "bin" / "python"
        if not python.exists():
            continue
        code = (
            "import importlib.metadata as m, json; "
            f"print(json.dumps({{n: m.version(n) for n in {list(names)!r}}}))"
        )
        done = subprocess.run(
            [str(python), "-c", code], capture_output=True, text=True, check=False
        )
        if done.returncode == 0:
            found.update(json.loads(done.stdout))
    with contextlib.suppress(OSError, IndexError):
        found["wrk"] = subprocess.run(
            ["wrk", "--version"], capture_output=True, text=True, check=False
        ).stdout.split()[1]
    return found


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = ""
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            kib = int(f.readline().split()[1])
            memory = f", {kib / 2**20:.0f} GiB memory"
    except (OSError, IndexError, ValueError):
        pass
    return (
        f"{os.cpu_count()} CPUs (nproc) {cpu}{memory}; {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}"
    )


def _git() -> str:
    done = subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "unknown"


def write_markdown(
    path: Path,
    outcomes: list[Outcome],
    args: argparse.Namespace,
    prepared: Prepared,
    rows: list[list[str]],
    notes: list[str],
    load: tuple[float, float],
    started: datetime,
) -> None:
    target_lines, verdict = targets(outcomes, args)
    info = prepared.info
    versions = ", ".join(f"{k} {v}" for k, v in _versions().items())
    lines = [
        "# Serving benchmark",
        "",
        f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {_machine()}",
        f"- command: `{command_used()}` (git {_git()})",
        f"- versions: {versions}",
        f"- load average (1 min) before / after: {load[0]:.2f} / {load[1]:.2f}",
        f"- machine speed: onnxruntime alone scores the batch's rows with the champion's trees "
        f"at {' and '.join(_fmt(v) for v in info.get('yardstick', []))} rows/s before and after "
        f"the loads (in-process, every core; the issue's machine: about 155,000)",
        f"- model: shipml version {info.get('shipml_version')} of the demo churn table "
        f"({TRAIN_ROWS:,} rows, seed {TRAIN_SEED}): one-hot + {info.get('trees')}-tree "
        f"{info.get('estimator')}; trees set by {info.get('trees_from')}; baselines "
        f"{info.get('baselines', 'in the search')}",
        f"- loads: wrk, {args.duration:g} s each, {args.threads} thread(s), after a "
        f"{args.warmup:g} s warm-up; single-row bodies at {', '.join(map(str, args.connections))} "
        f"connection(s); {args.batch_rows:,}-row bodies at {args.batch_connections} connections",
        "",
        "Contenders, one worker each:",
        "",
        *[f"- {o.contender.label}: {o.contender.describe}" for o in outcomes],
        "",
        markdown_table(rows),
        "",
    ]
    if notes:
        lines += [*[f"- [{i}] {note}" for i, note in enumerate(notes, 1)], ""]
    lines += busy_note(load[0])
    lines += ["Targets for (a):", "", *target_lines, "", f"**{verdict}**", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")


# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="shipml serve against the cheat-sheet app, MLflow, BentoML and MLServer."
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load (10)")
    parser.add_argument(
        "--contenders",
        default=",".join(CONTENDERS),
        help=f"comma-separated subset of {','.join(CONTENDERS)} (all)",
    )
    parser.add_argument(
        "--connections", default="1,16", help="connections for the single-row loads (1,16)"
    )
    parser.add_argument("--batch-rows", type=int, default=1000, help="rows per batch (1000)")
    parser.add_argument(
        "--batch-connections", type=int, default=4, help="connections for the batch load (4)"
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds (1)")
    parser.add_argument(
        "--startup-timeout", type=float, default=180.0, help="seconds to wait for ready (180)"
    )
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORK, help="(.bench/serve)")
    parser.add_argument(
        "--reuse-model",
        action="store_true",
        help="keep the model trained by an earlier run in --workdir instead of training anew",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown results file")
    args = parser.parse_args(argv)
    args.contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = [c for c in args.contenders if c not in CONTENDERS]
    if unknown:
        parser.error(f"unknown contender(s) {', '.join(unknown)}: use {', '.join(CONTENDERS)}")
    args.connections = [int(c) for c in args.connections.split(",") if c.strip()]
    if not args.connections or min(args.connections) < 1 or args.batch_connections < 1:
        parser.error("connections must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        _log("wrk is missing: benchmarks/anchors/serve/setup.sh wrk (or apt-get install wrk)")
        return 2
    # Ctrl-C, kill or a closed terminal: the servers are stopped on the way out (finally/atexit).
    # SIGINT is set explicitly: a shell starts background jobs with it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    atexit.register(_stop_all)
    started = datetime.now(UTC)
    load_before = os.getloadavg()[0]
    prepared = prepare(args.workdir.resolve(), args.batch_rows, args.reuse_model)
    _log(
        f"model: {prepared.info['trees']}-tree {prepared.info['estimator']} "
        f"(shipml version {prepared.info['shipml_version']})"
    )
    yardstick = [ort_yardstick(prepared)]
    _log(f"onnxruntime alone: {_fmt(yardstick[0])} rows/s")
    outcomes = []
    try:
        for key in args.contenders:
            _log(f"{key}: starting")
            outcome = run_contender(CONTENDERS[key], prepared, args)
            if outcome.error:
                _log(f"{key}: {outcome.error}")
            outcomes.append(outcome)
    finally:
        _stop_all()
    yardstick.append(ort_yardstick(prepared))  # the machine may have changed speed meanwhile
    prepared.info["yardstick"] = yardstick
    _log(f"onnxruntime alone: {_fmt(yardstick[1])} rows/s")
    rows, notes = table_rows(outcomes, args)
    print(plain_table(rows))
    for i, note in enumerate(notes, 1):
        print(f"[{i}] {note}")
    target_lines, verdict = targets(outcomes, args)
    print("\n".join(line.replace("**", "") for line in target_lines))
    print(verdict)
    load = (load_before, os.getloadavg()[0])
    write_markdown(args.out, outcomes, args, prepared, rows, notes, load, started)
    _log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
