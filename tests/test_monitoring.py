"""Drift detection: the statistics against Evidently's own, summaries, profiles, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import shipml
from shipml.errors import DataError
from shipml.monitoring.drift import DriftSettings, detect_drift
from shipml.monitoring.profile import Profile, infer_kinds, profile_table
from shipml.monitoring.summary import EXACT_DISTINCT, NumericSummary
from shipml.serving.predlog import recent_predictions
from tests.conftest import run_cli


def _table(n: int, shift: float, seed: int) -> pd.DataFrame:
    """Mixed columns; ``shift`` moves a (numeric), c (categorical) and e (skewed numeric)."""
    rng = np.random.default_rng(seed)
    weights = [0.4, 0.3, 0.2, 0.1] if not shift else [0.25, 0.25, 0.25, 0.25]
    df = pd.DataFrame(
        {
            "a": rng.normal(shift, 1, n),
            "b": rng.integers(0, 4, n).astype(float),  # few values: tested as categories
            "c": rng.choice(list("xyzw"), n, p=weights),
            "d": rng.choice(["yes", "no"], n),
            "e": np.round(rng.exponential(2 + 3 * shift, n), 1),
            "f": rng.integers(0, 2, n).astype(float),
        }
    )
    df.loc[::7, "a"] = np.nan
    df.loc[::11, "c"] = None
    return df


@pytest.fixture(scope="module")
def evidently_tests() -> dict[str, object]:
    from evidently.legacy.calculations.stattests import psi_stat_test
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    return {"get": get_stattest, "psi": psi_stat_test, "types": ColumnType}


@pytest.mark.parametrize("rows", [300, 1000, 1001, 20_000])
@pytest.mark.parametrize("shift", [0.0, 0.3])
def test_every_score_equals_evidentlys_own_test(
    rows: int, shift: float, evidently_tests: dict
) -> None:
    """Method choice, score, verdict and PSI are Evidently's (same function, same data), for
    small references (KS, chi-squared, z) and large ones (Wasserstein, Jensen–Shannon)."""
    reference, current = _table(rows, 0.0, 1), _table(int(rows * 1.3), shift, 2)
    result = detect_drift(reference, current)
    column_type = evidently_tests["types"]
    for name in reference.columns:
        numeric = reference[name].dtype.kind == "f"
        kind = column_type.Numerical if numeric else column_type.Categorical
        ref, cur = reference[name].dropna(), current[name].dropna()
        test = evidently_tests["get"](ref, cur, kind, None)
        score, drift = test.func(ref, cur, kind, test.default_threshold)
        psi, _ = evidently_tests["psi"].func(ref, cur, kind, 0.1)
        ours = result.columns[name]
        # Exact summaries give Evidently's numbers; 'a' has 26,000 distinct values at 20,000
        # rows, past EXACT_DISTINCT, and is sketched (see the sketch test for its accuracy).
        rel = 1e-9 if len(cur.unique()) <= EXACT_DISTINCT else 2e-3
        assert ours.method == test.name, name
        assert ours.score == pytest.approx(score, rel=rel, abs=1e-12), name
        assert ours.drift == drift, name
        assert ours.psi == pytest.approx(psi, rel=1e-9 if rel < 1e-3 else 0.5, abs=1e-12), name
    if shift:
        assert {"a", "c", "e"} <= set(result.drifted_columns)
        assert result.dataset_drift
    else:  # a p-value test may flag one column in twenty by chance; never the dataset
        assert len(result.drifted_columns) <= 1 and not result.dataset_drift


def test_both_engines_flag_the_same_columns() -> None:
    """Evidently's DataDriftPreset (its Report, run end to end) and shipml agree column by
    column: same method, same verdict, same score."""
    from shipml.monitoring.evidently_engine import evidently_drift

    for rows in (600, 5000):
        reference, current = _table(rows, 0.0, 3), _table(rows, 0.3, 4)
        ours = detect_drift(reference, current)
        theirs = evidently_drift(reference, current, infer_kinds(reference))
        assert set(theirs) == set(ours.columns)
        assert sorted(c for c, r in theirs.items() if r.drift) == sorted(ours.drifted_columns)
        for name, r in theirs.items():
            assert ours.columns[name].method == r.method, name
            assert ours.columns[name].score == pytest.approx(r.score, rel=1e-6, abs=1e-12)


def test_chunks_give_the_same_profile_as_the_whole_table() -> None:
    df = _table(5000, 0.2, 5)
    kinds = infer_kinds(df)
    whole = profile_table(df, kinds)
    chunked = profile_table((df.iloc[i : i + 333] for i in range(0, len(df), 333)), kinds)
    assert whole.to_dict()["columns"].keys() == chunked.to_dict()["columns"].keys()
    for name in kinds:
        a, b = whole.columns[name], chunked.columns[name]
        assert a.missing == b.missing and a.n == b.n
        if isinstance(a, NumericSummary):
            assert isinstance(b, NumericSummary)
            np.testing.assert_array_equal(a.values, b.values)
            np.testing.assert_array_equal(a.counts, b.counts)
            assert a.std == pytest.approx(np.nanstd(df[name]), rel=1e-12)
            assert b.std == pytest.approx(np.nanstd(df[name]), rel=1e-12)
        else:
            assert a.to_dict() == b.to_dict()


def test_many_distinct_values_are_sketched_within_a_tenth_of_a_percent() -> None:
    """A continuous column of 200,000 rows keeps about 10,000 centroids, yet its Wasserstein
    distance stays within 0.1% of scipy's exact one, drifted or not."""
    rng = np.random.default_rng(6)
    reference = pd.DataFrame({"x": rng.lognormal(0, 1, 200_000)})
    for shift in (1.0, 1.05):
        current = pd.DataFrame({"x": rng.lognormal(0, 1, 150_000) * shift})
        result = detect_drift(reference, current)
        profile = profile_table(reference, {"x": "numeric"})
        assert not profile.columns["x"].exact
        assert len(profile.columns["x"].values) <= EXACT_DISTINCT
        exact = stats.wasserstein_distance(reference["x"], current["x"]) / reference["x"].std(
            ddof=0
        )
        assert result.columns["x"].score == pytest.approx(exact, rel=1e-3)


def test_profile_survives_json_and_gives_the_same_result() -> None:
    reference, current = _table(3000, 0.0, 7), _table(2000, 0.3, 8)
    profile = profile_table(reference, infer_kinds(reference))
    again = Profile.from_dict(json.loads(profile.to_json()))
    a, b = detect_drift(profile, current), detect_drift(again, current)
    assert a.to_dict() == b.to_dict()


def test_config_overrides_method_threshold_and_share() -> None:
    reference, current = _table(3000, 0.0, 9), _table(3000, 0.3, 10)
    settings = DriftSettings(
        drift_share=0.9,
        columns={"a": {"method": "psi", "threshold": 5.0}, "d": {"method": "chisquare"}},
    )
    result = detect_drift(reference, current, settings)
    assert result.columns["a"].method == "psi" and not result.columns["a"].drift
    assert result.columns["a"].threshold == 5.0
    assert result.columns["d"].method == "chisquare"
    assert result.columns["d"].threshold == 0.05
    assert result.drifted_columns and not result.dataset_drift  # 2 of 6 < 90%


def test_schema_differences_are_findings_not_crashes() -> None:
    reference = _table(2000, 0.0, 11)
    current = _table(500, 0.0, 12).drop(columns=["b"])
    current["a"] = current["a"].astype(object)
    current.loc[3, "a"] = "n/a?"
    current["f"] = np.nan
    current["new"] = 1
    result = detect_drift(reference, current)
    kinds = {f.column: f.kind for f in result.findings}
    assert kinds == {
        "b": "missing_column",
        "a": "changed_type",
        "f": "all_missing",
        "new": "new_column",
    }
    assert "'n/a?'" in next(f.message for f in result.findings if f.column == "a")
    assert set(result.columns) == {"c", "d", "e"}


def test_the_public_api_is_importable_from_the_package() -> None:
    reference, current = _table(1500, 0.0, 13), _table(1500, 0.3, 14)
    drift = shipml.detect_drift(reference, current)
    assert isinstance(drift, shipml.DriftResult)
    column = drift.columns["a"]
    assert (column.method, column.threshold, column.drift) == ("wasserstein", 0.1, True)
    assert column.score > 0.1


def _write_log(folder: Path, name: str, records: list[dict], cut_last: bool = False) -> Path:
    day = folder / "2026-11-26"
    day.mkdir(parents=True, exist_ok=True)
    path = day / name
    text = "".join(json.dumps(r) + "\n" for r in records)
    if cut_last:
        text += '{"request_id": "half'
    path.write_text(text)
    return path


def test_recent_predictions_reads_the_latest_rows_of_every_file(tmp_path: Path) -> None:
    folder = tmp_path / "predictions"
    one = [{"request_id": f"a{i}", "time": 100.0 + 2 * i, "inputs": {"x": i}} for i in range(50)]
    batch = {
        "request_id": "b",
        "rows": 3,
        "time": 197.0,
        "inputs": {"x": [7, 8, 9]},
        "prediction": [0, 1, 0],
        "model_version": "1",
        "latency_ms": 1.0,
    }
    two = [{"request_id": f"c{i}", "time": 101.0 + 2 * i, "inputs": {"x": -i}} for i in range(20)]
    _write_log(folder, "1-a.jsonl", one, cut_last=True)
    _write_log(folder, "2-b.jsonl", [*two, batch])
    (folder / "feedback" / "2026-11-26").mkdir(parents=True)
    latest = recent_predictions(folder, 5)
    assert [r["request_id"] for r in latest] == ["a48", "b-0", "b-1", "b-2", "a49"]
    since = recent_predictions(folder, since=190.0)
    assert [r["request_id"] for r in since] == [
        "a45",
        "a46",
        "a47",
        "a48",
        "b-0",
        "b-1",
        "b-2",
        "a49",
    ]
    assert len(recent_predictions(folder, 10_000)) == 50 + 20 + 3


def test_monitor_compares_two_files_without_a_project(tmp_path: Path) -> None:
    reference, current = tmp_path / "ref.parquet", tmp_path / "cur.csv"
    _table(3000, 0.0, 15).to_parquet(reference)
    _table(3000, 0.3, 16).to_csv(current, index=False)
    os.chdir(tmp_path)  # no shipml.yaml here
    out = tmp_path / "drift.json"
    report = tmp_path / "drift.html"
    args = ["monitor", "--reference", reference, "--current", current, "--json", out]
    result = run_cli(*args, "--report", report)
    assert result.exit_code == 0, result.all
    assert "Dataset drift: yes (3 of 6 columns drifted" in result.output
    saved = json.loads(out.read_text())
    assert saved["dataset_drift"] is True
    assert sorted(saved["drifted_columns"]) == ["a", "c", "e"]
    html = report.read_text()
    assert html.count("data:image/png;base64,") == 6 and "<script" not in html
    failed = run_cli(*args, "--fail-on-drift")
    assert failed.exit_code == 1, failed.all
    same = run_cli("monitor", "--reference", reference, "--current", reference, "--fail-on-drift")
    assert same.exit_code == 0, same.all
    assert "Dataset drift: no (0 of 6" in same.output


def test_monitor_bad_input_is_a_clear_user_error(tmp_path: Path) -> None:
    reference = tmp_path / "ref.csv"
    _table(100, 0.0, 17).to_csv(reference, index=False)
    empty = tmp_path / "empty.csv"
    empty.write_text("a,b,c\n")
    os.chdir(tmp_path)
    cases = {
        ("--current", empty): "has a header but no rows",
        ("--current", tmp_path / "nope.csv"): "data file not found",
    }
    for (flag, path), message in cases.items():
        result = run_cli("monitor", "--reference", reference, flag, path)
        assert result.exit_code == 2, result.all
        assert message in result.stderr and "Traceback" not in result.all
    both = run_cli("monitor", "--reference", reference)
    assert both.exit_code == 2 and "--current FILE or --from-log" in both.all
    no_project = run_cli("monitor", "--from-log")
    assert no_project.exit_code == 2 and "shipml.yaml" in no_project.stderr


def test_reading_chunks_keeps_memory_bounded(tmp_path: Path) -> None:
    """A file is read in chunks: profiling never holds more than one chunk of rows."""
    from shipml.data import sources

    path = tmp_path / "big.csv"
    _table(25_000, 0.0, 18).to_csv(path, index=False)
    sizes = [len(c) for c in sources.iter_table_file(path, chunk_rows=10_000)]
    assert sizes == [10_000, 10_000, 5_000]
    with pytest.raises(DataError, match="no rows"):
        empty = tmp_path / "e.parquet"
        _table(10, 0.0, 1).iloc[:0].to_parquet(empty)
        list(sources.iter_table_file(empty))


def test_monitoring_config_becomes_drift_settings_and_bad_keys_are_named(tmp_path: Path) -> None:
    from shipml.config import MonitoringConfig
    from shipml.errors import ConfigError

    settings = DriftSettings.from_config(
        MonitoringConfig(
            drift_threshold=0.2,
            p_value=0.01,
            drift_share=0.3,
            columns={"age": {"method": "psi", "threshold": 0.25}, "plan": {"threshold": 0.3}},
        )
    )
    assert (settings.distance_threshold, settings.p_value, settings.drift_share) == (0.2, 0.01, 0.3)
    assert settings.columns == {
        "age": {"method": "psi", "threshold": 0.25},
        "plan": {"threshold": 0.3},
    }
    from shipml.config import load_config

    config = tmp_path / "shipml.yaml"
    config.write_text(
        "name: x\ndata: {path: d.csv}\ntarget: y\n"
        "monitoring: {columns: {age: {method: kolmogorov}}}\n"
    )
    with pytest.raises(ConfigError, match=r"monitoring\.columns\.age\.method"):
        load_config(config)


def test_window_and_since_are_for_the_log_and_exclusive(tmp_path: Path) -> None:
    os.chdir(tmp_path)
    both = run_cli("monitor", "--from-log", "--window", "5", "--since", "2026-01-01")
    assert both.exit_code == 2 and "not both" in both.all
    stray = run_cli("monitor", "--current", "x.csv", "--window", "5")
    assert stray.exit_code == 2 and "add --from-log" in stray.all
    bad_time = run_cli("monitor", "--from-log", "--since", "yesterday")
    assert bad_time.exit_code == 2 and "not an ISO date" in bad_time.all


def test_a_current_file_sharing_no_column_is_not_called_drift_free(tmp_path: Path) -> None:
    reference, current = tmp_path / "ref.csv", tmp_path / "cur.csv"
    _table(100, 0.0, 19).to_csv(reference, index=False)
    pd.DataFrame({"other": [1, 2, 3]}).to_csv(current, index=False)
    os.chdir(tmp_path)
    result = run_cli("monitor", "--reference", reference, "--current", current)
    assert result.exit_code == 0, result.all
    assert "Dataset drift: not tested" in result.output
    assert "column 'a' is missing" in " ".join(result.output.split())
    missing = run_cli("monitor", "--reference", reference, "--current", tmp_path / "no.csv")
    assert missing.exit_code == 2 and "check the file name" in missing.stderr
