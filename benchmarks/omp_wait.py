"""OpenMP's wait policy and LightGBM on a shared 2-core machine: why shipml sets
OMP_WAIT_POLICY=PASSIVE.

Trains the same LightGBM model (breast_cancer, 300 rounds, n_jobs=2, three fits) in a fresh
process with OMP_WAIT_POLICY unset (OpenMP's default) or PASSIVE, on an idle machine and with one
or two cores kept busy by other processes. A fit that takes longer than --timeout seconds is shown
as "> timeout". Prints the side-by-side table.

    .venv/bin/python benchmarks/omp_wait.py [--repeats 3] [--timeout 120]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys

FIT = """
import time, lightgbm as lgb
from sklearn.datasets import load_breast_cancer
X, y = load_breast_cancer(return_X_y=True)
t = time.perf_counter()
for _ in range(3):
    lgb.LGBMClassifier(n_estimators=300, n_jobs=2, verbose=-1).fit(X, y)
print(time.perf_counter() - t)
"""


def fit_seconds(policy: str | None, timeout: float) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    try:
        done = subprocess.run(
            [sys.executable, "-c", FIT],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return math.inf
    return float(done.stdout.strip())


def _cell(seconds: float, timeout: float) -> str:
    return f"> {timeout:g}" if math.isinf(seconds) else f"{seconds:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    rows = []
    for busy in (0, 1, 2):
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
        try:
            for policy in (None, "PASSIVE"):
                times = [fit_seconds(policy, args.timeout) for _ in range(args.repeats)]
                rows.append((busy, policy or "(unset)", statistics.median(times), max(times)))
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
    print(f"{'other load':<16}{'OMP_WAIT_POLICY':<18}{'median s':>10}{'worst s':>10}")
    for busy, policy, median, worst in rows:
        load = f"{busy} core(s) busy" if busy else "idle"
        median_s, worst_s = _cell(median, args.timeout), _cell(worst, args.timeout)
        print(f"{load:<16}{policy:<18}{median_s:>10}{worst_s:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
