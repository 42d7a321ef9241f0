"""Anchor (b) of serve_bench.py: the FastAPI app of the usual "deploy your model" cheat sheet.

joblib.load at import, a pydantic model of the request, and per request a one-row DataFrame
scored with predict and predict_proba. Run by serve_bench.py in the project's venv:

    SERVE_BENCH_MODEL=pipeline.joblib SERVE_BENCH_COLUMNS=columns.json \
        uvicorn cheat_app:app --workers 1

columns.json maps each input column to "float" or "str" (the dtypes the pipeline was fit on).
"""

from __future__ import annotations

import json
import os
from typing import Any

import joblib
import numpy as np
import pandas as pd
from fastapi import FastAPI
from pydantic import create_model

model = joblib.load(os.environ["SERVE_BENCH_MODEL"])
with open(os.environ["SERVE_BENCH_COLUMNS"], encoding="utf-8") as f:
    COLUMNS: dict[str, str] = json.load(f)

_TYPES: dict[str, Any] = {"float": float | None, "str": str | None}
Features = create_model(  # type: ignore[call-overload]
    "Features", **{name: (_TYPES[kind], None) for name, kind in COLUMNS.items()}
)
DTYPES = {name: "float64" if kind == "float" else "object" for name, kind in COLUMNS.items()}
CLASSES = [c.item() if isinstance(c, np.generic) else c for c in model.classes_]

app = FastAPI()


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=list(COLUMNS)).astype(DTYPES)
    # a JSON null is None: the pipeline's imputers look for NaN
    return df.where(df.notna(), np.nan)


def _answer(label: Any, proba: np.ndarray) -> dict[str, Any]:
    label = label.item() if isinstance(label, np.generic) else label
    return {"prediction": label, "probabilities": dict(zip(CLASSES, proba.tolist(), strict=True))}


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/predict")
def predict(features: Features) -> dict[str, Any]:  # type: ignore[valid-type]
    df = _frame([features.model_dump()])  # type: ignore[attr-defined]
    return _answer(model.predict(df)[0], model.predict_proba(df)[0])


@app.post("/predict/batch")
def predict_batch(rows: list[Features]) -> dict[str, Any]:  # type: ignore[valid-type]
    df = _frame([r.model_dump() for r in rows])  # type: ignore[attr-defined]
    labels, probas = model.predict(df), model.predict_proba(df)
    return {"predictions": [_answer(lab, p) for lab, p in zip(labels, probas, strict=True)]}
