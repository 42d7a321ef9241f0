"""A wide table (few rows, a thousand columns): `shipml train` finishes, and its peak memory stays
within a generous multiple of the data's size (benchmarks/wide_bench.py measures each step)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.serving_helpers import SHIPML

pytestmark = pytest.mark.slow

# The child measures its own child, so the peak is that one `shipml train` alone; its address
# space is capped so that a regression fails here with a MemoryError instead of filling the
# machine (the copies permutation importance once stacked took 23.5 GB at 5,000 columns).
MEASURE = """
import json, resource, subprocess, sys
def cap():
    resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1])))
done = subprocess.run(sys.argv[2:], preexec_fn=cap, capture_output=True, text=True)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"code": done.returncode, "peak": peak, "out": done.stdout[-3000:],
                  "err": done.stderr[-3000:]}))
"""
ADDRESS_SPACE = 4 * 2**30
LIBRARIES = 800 * 2**20  # Python, numpy, scikit-learn, LightGBM, MLflow... before any data
PER_DATA = 100  # bytes of peak memory per byte of the table (float64), past the libraries


def test_train_on_a_wide_table_stays_within_a_multiple_of_the_data(tmp_path: Path) -> None:
    rows, columns = 300, 1000
    rng = np.random.default_rng(0)
    X = rng.normal(size=(rows, columns))
    df = pd.DataFrame(X, columns=[f"x{i:04d}" for i in range(columns)])
    df["label"] = np.where(X[:, :5].sum(axis=1) + rng.normal(size=rows) > 0, "yes", "no")
    df.to_csv(tmp_path / "train.csv", index=False, float_format="%.6g")
    init = subprocess.run(
        [SHIPML, "init", "train.csv", "--target", "label"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert init.returncode == 0, init.stderr
    train = [SHIPML, "train", "--time-budget", "10"]
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(ADDRESS_SPACE), *train],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["code"] == 0, result["out"] + result["err"]
    assert "registered" in result["out"]
    bound = LIBRARIES + PER_DATA * X.nbytes
    assert result["peak"] < bound, (
        f"peak {result['peak'] / 2**20:.0f} MB, bound {bound / 2**20:.0f}"
    )
    assert list((tmp_path / ".shipml" / "reports").glob("*-v1.html"))
