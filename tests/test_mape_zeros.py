"""MAPE where it means something, and only there.

MAPE divides every error by its true value: on a count target with zeros it printed
1,519,342,410,048,620.5 in train, the report, evaluate, monitor and retrain. It is now left out
wherever the true values include zeros or values near zero, and WAPE (the errors summed over
the true values summed) is given on every path instead; a gate on MAPE for such a target is a
config error that leaves the challenger marked, not a gate decided on nonsense.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from shipml import Project
from shipml.evaluation.metrics import mape_defined, regression_metrics
from tests.conftest import make_project, run_cli
from tests.serving_helpers import Server

ROWS = 300
HOLDOUT = 60
FEEDBACK = 30
NO_MAPE = re.compile(r"\bmape\b", re.IGNORECASE)


def counts(n: int, seed: int) -> pd.DataFrame:
    """Claims per policy: a count target with about 30 % zeros, as insurers have it."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(18, 80, n)
    km = rng.gamma(2.0, 8000.0, n)
    region = rng.choice(["north", "south", "city"], n)
    rate = np.exp(0.2 + 0.015 * (age - 40) + km / 40000 + (region == "city") * 0.4)
    claims = rng.poisson(rate)
    claims[rng.random(n) < 0.18] = 0  # policies that never claim
    return pd.DataFrame({"age": age, "km": km, "region": region, "claims": claims})


def test_the_count_table_is_what_the_issue_saw() -> None:
    zeros = float(np.mean(counts(ROWS, 0)["claims"] == 0))
    assert 0.25 <= zeros <= 0.4
    assert not mape_defined([])


@pytest.mark.parametrize(
    ("y_true", "defined"),
    [
        ([3.0, 1.0, 2.0, 5.0], True),
        ([3.0, 0.0, 2.0, 5.0], False),  # a zero
        ([300.0, 1e-9, 200.0], False),  # near zero beside the others
        ([-2.0, 1.0, 4.0], True),  # signs are fine, zeros are not
        ([0.0, 0.0], False),
    ],
)
def test_mape_is_left_out_where_a_true_value_is_at_or_near_zero(
    y_true: list[float], defined: bool
) -> None:
    y = np.asarray(y_true, dtype=float)
    predicted = y + 0.5
    got = regression_metrics(y, predicted)
    assert mape_defined(y) is defined and ("mape" in got) is defined
    assert set(got) - {"mape"} == {"rmse", "mae", "r2", "wape"}
    total = np.sum(np.abs(y))
    if total:
        assert got["wape"] == pytest.approx(0.5 * len(y) / total)
    else:
        assert math.isnan(got["wape"])
    # A search told to optimize MAPE still gets it (training's own check is its business).
    assert set(regression_metrics(y, predicted, only=("mape", "rmse"))) == {"mape", "rmse"}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A count project trained once: (config, what `shipml train` printed)."""
    folder = tmp_path_factory.mktemp("counts")

    def edit(raw: dict) -> None:
        # Fourteen distinct counts look like classes to `shipml init`; the user says regression.
        raw["task"] = "regression"
        raw["training"].update(metric="rmse", models=["lightgbm"], trials=0, cv=2, ensemble=False)
        raw["gate"] = {"bootstrap": 200, "tolerance": 1.0}

    config = make_project(folder, counts(ROWS, 0), "claims", edit, holdout=HOLDOUT)
    counts(ROWS, 1).to_csv(folder / "batch.csv", index=False)
    trained = run_cli("train", "-c", config, "--time-budget", "5")
    assert trained.exit_code == 0, trained.all
    return config, trained.output


def _no_mape(text: str) -> None:
    assert not NO_MAPE.search(text), text[-3000:]
    assert "wape" in text.lower()


@pytest.mark.slow
def test_train_report_and_evaluate_leave_mape_out(project: tuple[Path, str]) -> None:
    config, trained = project
    _no_mape(trained)
    [version] = Project.load(config).models()
    assert "mape" not in version.test_metrics and "wape" in version.test_metrics
    report = run_cli("report", "-c", config)
    assert report.exit_code == 0, report.all
    html = Path(report.output.strip().replace("\n", "")).read_text()
    _no_mape(html)
    evaluated = run_cli("evaluate", config.parent / "labelled.csv", "-c", config)
    assert evaluated.exit_code == 0, evaluated.all
    _no_mape(evaluated.output)


@pytest.mark.slow
def test_monitor_performance_on_feedback_leaves_mape_out(
    project: tuple[Path, str], tmp_path: Path
) -> None:
    config, _ = project
    rows = counts(FEEDBACK, 2)
    labels = [int(v) for v in rows.pop("claims")]
    assert 0 in labels
    records = json.loads(rows.to_json(orient="records"))
    with Server(config) as server:
        for record, label in zip(records, labels, strict=True):
            answer = server.post("/predict", {"features": record}).json()
            sent = server.post("/feedback", {"request_id": answer["request_id"], "label": label})
            assert sent.status_code == 200, sent.text
    out = tmp_path / "monitor.json"
    monitored = run_cli("monitor", "-c", config, "--from-log", "--json", out)
    assert monitored.exit_code == 0, monitored.all
    assert not NO_MAPE.search(monitored.output), monitored.output
    performance = json.loads(out.read_text())["performance"]
    assert performance["n_labelled"] == FEEDBACK
    assert "mape" not in performance["live_metrics"] and "wape" in performance["live_metrics"]
    assert "mape" not in performance["reference_metrics"]


@pytest.mark.slow
def test_retrain_and_its_gate_leave_mape_out(project: tuple[Path, str]) -> None:
    config, _ = project
    before = max(v.version for v in Project.load(config).models())
    batch = config.parent / "batch.csv"
    result = run_cli("retrain", "-c", config, "--data", batch, "--time-budget", "5")
    assert result.exit_code == 0, result.all
    _no_mape(result.output)
    [new] = [v for v in Project.load(config).models() if v.version > before]
    assert new.tags["shipml.gate"] == "passed" and "mape" not in new.test_metrics

    # Gating on MAPE for this target is refused in one line, and the challenger is marked.
    raw = yaml.safe_load(config.read_text())
    raw["gate"]["metric"] = "mape"
    on_mape = config.with_name("mape.yaml")
    on_mape.write_text(yaml.safe_dump(raw, sort_keys=False))
    refused = run_cli("retrain", "-c", on_mape, "--data", batch, "--time-budget", "5")
    assert refused.exit_code == 2 and "Traceback" not in refused.all, refused.all
    text = " ".join(refused.stderr.split())
    assert "gate.metric 'mape' means nothing on this batch" in text and "mae or rmse" in text
    assert "stays registered, marked shipml.gate=failed (not gated)" in text
    [marked] = [v for v in Project.load(config).models() if v.version > new.version]
    assert marked.tags["shipml.gate"] == "failed" and "champion" not in marked.aliases
    assert "not gated: the evaluate step stopped" in marked.tags["shipml.gate_reasons"]
