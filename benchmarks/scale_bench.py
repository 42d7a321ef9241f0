"""shipml on a larger table, end to end through the console script: `shipml train` on the demo
generator's 100,000 rows x 12 columns, then `shipml predict` on 50,000 new rows, each timed
around the whole command (imports, loading and checking the model, writing the output). Beside
`shipml predict`, the same registered model scored by hand in one process, as the cheat sheet
would: read the CSV, call predict and predict_proba on the DataFrame (model loading not timed;
the columns coerced with shipml's own check, as the pipeline expects them).
Prints one table.

    .venv/bin/python benchmarks/scale_bench.py [--rows 100000] [--new-rows 50000] [--budget 90]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPML = ROOT / ".venv" / "bin" / "shipml"
ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}

BY_HAND = """
import sys, time, warnings
warnings.simplefilter("ignore")
import pandas as pd
from shipml import Project
from shipml.data.coerce import check_input
model = Project.load(sys.argv[1]).load_model("champion")
started = time.perf_counter()
df = pd.read_csv(sys.argv[2])
X = check_input(df, model.schema)  # yes/no text to booleans, dates parsed, as shipml reads them
model.pipeline.predict(X)
model.pipeline.predict_proba(X)
print(time.perf_counter() - started)
"""


def _run(args: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--new-rows", type=int, default=50_000)
    parser.add_argument("--budget", type=float, default=90.0)
    args = parser.parse_args()

    from shipml.demo import generate_customers

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        generate_customers(args.rows, seed=7).to_csv(folder / "train.csv", index=False)
        new = generate_customers(args.new_rows, seed=9).drop(columns=["churned"])
        new.to_csv(folder / "new.csv", index=False)
        _run([str(SHIPML), "init", "train.csv", "--target", "churned"], folder)
        train_s = _run([str(SHIPML), "train", "--time-budget", f"{args.budget:g}"], folder)
        predict_s = _run([str(SHIPML), "predict", "new.csv", "--out", "scored.csv"], folder)
        python = str(ROOT / ".venv" / "bin" / "python")
        hand = subprocess.run(
            [python, "-c", BY_HAND, str(folder / "shipml.yaml"), str(folder / "new.csv")],
            env=ENV,
            capture_output=True,
            text=True,
            check=True,
        )
        by_hand_s = float(hand.stdout.strip().splitlines()[-1])
        champion = subprocess.run(
            [str(SHIPML), "models"], cwd=folder, env=ENV, capture_output=True, text=True
        ).stdout

    print(f"{'step':<58} {'seconds':>8}")
    print(
        f"{f'shipml train --time-budget {args.budget:g} ({args.rows:,} rows)':<58} {train_s:8.1f}"
    )
    print(f"{f'shipml predict ({args.new_rows:,} rows, whole command)':<58} {predict_s:8.1f}")
    print(f"{'by hand: read CSV, predict + predict_proba (same model)':<58} {by_hand_s:8.1f}")
    print()
    print(champion)


if __name__ == "__main__":
    main()
