"""Anchor (d) of serve_bench.py: a BentoML 1.4 service with adaptive batching.

One batchable API: requests (one row or many) are merged by BentoML's dispatcher into one list of
rows, scored as one DataFrame with predict and predict_proba, and split back. Run by
serve_bench.py from the .bench/bentoml venv:

    SERVE_BENCH_MODEL=pipeline.joblib SERVE_BENCH_COLUMNS=columns.json \
        bentoml serve bento_service:ChurnForest --host 127.0.0.1 --port 3000

Request body: {"rows": [{column: value, ...}, ...]}; answer: one record per row,
{"prediction": ..., "proba_<class>": ...}.

The API takes a list of records, not a pd.DataFrame: in BentoML 1.4.40 a batchable DataFrame API
never answers (PandasDataFrameContainer.get_batch_size returns the frame's shape, a tuple, and
the dispatcher fails on it; every request ends in a 504 after 60 s).
"""

from __future__ import annotations

import json
import os
from typing import Any

import bentoml
import joblib
import numpy as np
import pandas as pd

MAX_BATCH_SIZE = int(os.environ.get("SERVE_BENCH_MAX_BATCH_SIZE", "1000"))
MAX_LATENCY_MS = int(os.environ.get("SERVE_BENCH_MAX_LATENCY_MS", "10000"))


@bentoml.service(workers=1, traffic={"timeout": 60})
class ChurnForest:
    def __init__(self) -> None:
        self.model = joblib.load(os.environ["SERVE_BENCH_MODEL"])
        with open(os.environ["SERVE_BENCH_COLUMNS"], encoding="utf-8") as f:
            columns: dict[str, str] = json.load(f)
        self.columns = list(columns)
        self.dtypes = {n: "float64" if k == "float" else "object" for n, k in columns.items()}
        self.proba_columns = [f"proba_{c}" for c in self.model.classes_]

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def predict(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        df = pd.DataFrame(rows, columns=self.columns).astype(self.dtypes)
        df = df.where(df.notna(), np.nan)  # JSON null (None) -> NaN, as the imputers expect
        out = pd.DataFrame(self.model.predict_proba(df), columns=self.proba_columns)
        out.insert(0, "prediction", self.model.predict(df))
        return out.to_dict("records")
