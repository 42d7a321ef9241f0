"""shipml on wide tables: peak memory and time of `shipml train` on generated tables of few rows
and thousands of numeric columns, beside the size of the data itself.

For each shape, two runs in child processes:
- the console script, `shipml train --time-budget B`: wall time and peak RSS of the whole
  command (getrusage of the child);
- the same training through the Python API (`Project.train`), where each stage the train service
  announces ("Cross-validating candidates", "Writing the report", ...) gets its own peak RSS
  (Linux's VmHWM, reset at every stage by writing 5 to /proc/self/clear_refs) and time.

Prints one table per shape.

    .venv/bin/python benchmarks/wide_bench.py [--shape 300x5000 --shape 1000x2000] [--budget 25]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPML = ROOT / ".venv" / "bin" / "shipml"
PYTHON = ROOT / ".venv" / "bin" / "python"
ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}

BY_STAGE = """
import json, sys, time
from pathlib import Path
from shipml import Project

def peak_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")

def reset_peak():
    Path("/proc/self/clear_refs").write_text("5")

stages, current, started = [], "Loading the project", time.perf_counter()

def on_event(kind, **info):
    global current, started
    if kind != "stage":
        return
    now = time.perf_counter()
    stages.append((current, now - started, peak_mb()))
    reset_peak()
    current, started = info["name"], now

project = Project.load(sys.argv[1])
project.train(time_budget=float(sys.argv[2]), on_event=on_event)
stages.append((current, time.perf_counter() - started, peak_mb()))
print(json.dumps(stages))
"""


def generate(rows: int, columns: int, path: Path, seed: int = 0) -> int:
    """A binary target over ``columns`` numeric columns, ten of them informative; returns the
    table's size in memory (bytes, float64)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, columns))
    signal = X[:, :10] @ rng.normal(size=10)
    df = pd.DataFrame(X, columns=[f"x{i:05d}" for i in range(columns)])
    df["label"] = np.where(signal + rng.normal(scale=0.5, size=rows) > 0, "yes", "no")
    df.to_csv(path, index=False, float_format="%.6g")
    return int(X.nbytes)


# A wrapper child runs the command: its RUSAGE_CHILDREN peak is then that command's alone (the
# benchmark's own holds the largest of every child it ever waited for).
MEASURE = """
import json, resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"code": done.returncode, "peak_kb": peak, "err": done.stderr[-2000:]}))
"""


def console_train(folder: Path, budget: float) -> tuple[float, float, int]:
    """(seconds, peak RSS in MB, exit code) of `shipml train` in a child process."""
    started = time.perf_counter()
    done = subprocess.run(
        [str(PYTHON), "-c", MEASURE, str(SHIPML), "train", "--time-budget", f"{budget:g}"],
        cwd=folder,
        env=ENV,
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = time.perf_counter() - started
    result = json.loads(done.stdout)
    if result["code"] != 0:
        print(result["err"], file=sys.stderr)
    return seconds, result["peak_kb"] / 1024, result["code"]


def staged_train(folder: Path, budget: float) -> list[tuple[str, float, float]]:
    done = subprocess.run(
        [str(PYTHON), "-c", BY_STAGE, str(folder / "shipml.yaml"), f"{budget:g}"],
        env=ENV,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        return []
    return [tuple(s) for s in json.loads(done.stdout.strip().splitlines()[-1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", action="append", help="ROWSxCOLUMNS (repeatable)")
    parser.add_argument("--budget", type=float, default=25.0)
    parser.add_argument("--no-stages", action="store_true", help="only the console script")
    args = parser.parse_args()
    shapes = args.shape or ["300x5000", "1000x2000"]
    for shape in shapes:
        rows, columns = (int(v) for v in shape.lower().split("x"))
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            data_bytes = generate(rows, columns, folder / "train.csv")
            csv_mb = (folder / "train.csv").stat().st_size / 2**20
            subprocess.run(
                [str(SHIPML), "init", "train.csv", "--target", "label"],
                cwd=folder,
                env=ENV,
                capture_output=True,
                check=True,
            )
            seconds, peak, code = console_train(folder, args.budget)
            stages = [] if args.no_stages else staged_train(folder, args.budget)
        data_mb = data_bytes / 2**20
        print(f"\n{rows:,} rows x {columns:,} columns, --time-budget {args.budget:g}")
        print(f"data: {data_mb:.1f} MB as float64 ({csv_mb:.1f} MB of CSV)")
        print(f"{'step':<48} {'seconds':>8} {'peak RSS MB':>12} {'x data':>7}")
        print(
            f"{'shipml train (console script, exit ' + str(code) + ')':<48} "
            f"{seconds:>8.1f} {peak:>12.0f} {peak / data_mb:>7.1f}"
        )
        for name, stage_s, stage_mb in stages:
            print(f"  {name[:46]:<46} {stage_s:>8.1f} {stage_mb:>12.0f} {stage_mb / data_mb:>7.1f}")


if __name__ == "__main__":
    main()
