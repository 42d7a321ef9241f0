"""OpenMP's wait between parallel regions and two-thread training on a 2-core machine: why
shipml sets GOMP_SPINCOUNT=1000.

LightGBM and scikit-learn's HistGradientBoosting run on GNU OpenMP (libgomp). Between parallel
regions its threads spin-wait 300,000 turns by default, then sleep. Three settings, each in a
fresh process: the default spin, no spin (OMP_WAIT_POLICY=PASSIVE) and a short spin
(GOMP_SPINCOUNT=1000, what `import shipml` sets); on an idle machine and with one or two cores
kept busy by other processes. Two fits, both with two threads on 6,400 rows x 30 columns:
LightGBM (300 rounds, 31 leaves) and HistGradientBoosting (100 iterations). A fit slower than
--timeout seconds shows as "> timeout". Prints the side-by-side table.

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
import sys, time
import numpy as np
rng = np.random.default_rng(0)
X = rng.normal(size=(6400, 30))
y = (X[:, 0] + rng.normal(size=6400) > 0).astype(int)
if sys.argv[1] == "lightgbm":
    import lightgbm as lgb
    model = lgb.LGBMClassifier(n_estimators=300, num_leaves=31, n_jobs=2, verbose=-1)
else:
    from sklearn.ensemble import HistGradientBoostingClassifier
    model = HistGradientBoostingClassifier(max_iter=100, early_stopping=False)
t = time.perf_counter()
model.fit(X, y)
print(time.perf_counter() - t)
"""

SETTINGS: tuple[tuple[str, dict[str, str]], ...] = (
    ("default spin (unset)", {}),
    ("OMP_WAIT_POLICY=PASSIVE", {"OMP_WAIT_POLICY": "PASSIVE"}),
    ("GOMP_SPINCOUNT=1000", {"GOMP_SPINCOUNT": "1000"}),
)
MODELS = ("lightgbm", "hist_gradient_boosting")


def fit_seconds(model: str, setting: dict[str, str], timeout: float) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(setting)
    try:
        done = subprocess.run(
            [sys.executable, "-c", FIT, model],
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
            for name, setting in SETTINGS:
                cells = []
                for model in MODELS:
                    times = [fit_seconds(model, setting, args.timeout) for _ in range(args.repeats)]
                    cells += [statistics.median(times), max(times)]
                rows.append((busy, name, cells))
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
    print("| other load | OpenMP wait | LightGBM median s | worst s | HGB median s | worst s |")
    print("|---|---|---|---|---|---|")
    for busy, name, cells in rows:
        load = f"{busy} core{'s' if busy > 1 else ''} busy" if busy else "idle"
        shown = " | ".join(_cell(c, args.timeout) for c in cells)
        print(f"| {load} | {name} | {shown} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
