"""`shipml monitor --engine evidently`: Evidently's own drift report, for users who want it.

Evidently needs rows, not summaries. With --reference FILE it reads that file; otherwise the
reference rows are rebuilt from the version's profile: column by column, every value as many
times as it occurred (exact for columns with up to 20,000 distinct values; sketched columns
give their centroids). Row order and which values shared a row do not matter to per-column
drift tests. Evidently is an optional extra (`pip install shipml[evidently]`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from shipml.data.sources import read_table_file
from shipml.errors import ShipmlError
from shipml.monitoring.profile import Profile
from shipml.monitoring.summary import CategoricalSummary, NumericSummary

if TYPE_CHECKING:
    from shipml.monitoring.service import MonitorResult
    from shipml.project import Project

_METHODS = {
    "K-S p_value": "ks",
    "chi-square p_value": "chisquare",
    "Z-test p_value": "z",
    "Wasserstein distance (normed)": "wasserstein",
    "Jensen-Shannon distance": "jensenshannon",
    "PSI": "psi",
}


class MissingExtra(ShipmlError):
    """An optional dependency is not installed."""


@dataclass
class EvidentlyColumn:
    method: str
    score: float
    threshold: float
    drift: bool


def _evidently() -> Any:
    os.environ.setdefault("DO_NOT_TRACK", "1")
    try:
        import evidently
    except ImportError:
        raise MissingExtra(
            "the evidently engine needs Evidently, which is not installed",
            'pip install "shipml[evidently]"',
        ) from None
    return evidently


def frame_from_profile(profile: Profile) -> pd.DataFrame:
    """Reference rows rebuilt from a profile (see the module docstring)."""
    columns: dict[str, Any] = {}
    for name, summary in profile.columns.items():
        if isinstance(summary, NumericSummary):
            columns[name] = summary.sample()
        else:
            assert isinstance(summary, CategoricalSummary)
            keys = list(summary.counts)
            counts = [summary.counts[k] for k in keys]
            values = np.repeat(np.array(keys, dtype=object), counts)
            columns[name] = np.concatenate([values, np.full(summary.missing, None, dtype=object)])
    return pd.DataFrame(columns)


def _run(
    reference: pd.DataFrame, current: pd.DataFrame, kinds: dict[str, str], share: float
) -> Any:
    _evidently()
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    columns = [c for c in kinds if c in reference.columns and c in current.columns]
    numeric = [c for c in columns if kinds[c] == "numeric"]
    categorical = [c for c in columns if kinds[c] != "numeric"]

    def dataset(df: pd.DataFrame) -> Any:
        data = df[columns].copy()
        for c in categorical:  # as strings, the way shipml compares categories
            data[c] = data[c].map(lambda v: v if v is None or v != v else str(v))
        definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
        return Dataset.from_pandas(data, data_definition=definition)

    report = Report([DataDriftPreset(columns=columns, drift_share=share)])
    return report.run(dataset(current), dataset(reference))


def columns_of(snapshot: Any) -> dict[str, EvidentlyColumn]:
    """Per-column method, score, threshold and verdict from an Evidently snapshot."""
    out: dict[str, EvidentlyColumn] = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric.get("config", {})
        if not str(config.get("type", "")).endswith("ValueDrift"):
            continue
        method = _METHODS.get(config["method"], config["method"])
        score, threshold = float(metric["value"]), float(config["threshold"])
        if method == "ks":
            drift = score <= threshold
        elif "p_value" in config["method"]:
            drift = score < threshold
        else:
            drift = score >= threshold
        out[config["column"]] = EvidentlyColumn(method, score, threshold, drift)
    return out


def evidently_drift(
    reference: pd.DataFrame, current: pd.DataFrame, kinds: dict[str, str], share: float = 0.5
) -> dict[str, EvidentlyColumn]:
    """Evidently's DataDriftPreset verdict per column (for comparisons with shipml's)."""
    return columns_of(_run(reference, current, kinds, share))


def write_evidently_report(
    result: MonitorResult,
    path: Path,
    reference: Path | None,
    current: Path | None,
    project: Project | None,
) -> Path:
    """Evidently's HTML report of the same comparison `shipml monitor` just made."""
    profile = result.reference_profile
    assert profile is not None
    ref_df = read_table_file(reference) if reference is not None else frame_from_profile(profile)
    if current is not None:
        cur_df = read_table_file(current)
    elif result.current_frame is not None:
        cur_df = result.current_frame
    else:
        raise ShipmlError("no current rows to give Evidently")
    share = result.drift.drift_share
    snapshot = _run(ref_df, cur_df, profile.kinds, share)
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(path))
    return path
