"""What `shipml train` and `shipml retrain` print, as a user sees it in a 120-column terminal:
a progress bar over the time budget whose total stays put, red crosses on what failed, the
ensemble's makeup on one line, and no MLflow "View run" lines with a tracking server."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import breast_cancer_frame
from tests.test_deploy_export import _mlflow_server

pytestmark = pytest.mark.slow
SHIPML = str(Path(sys.executable).parent / "shipml")  # the command a user runs
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")
WIDTH = 120


def env() -> dict[str, str]:
    return {
        **os.environ,
        "COLUMNS": str(WIDTH),
        "LINES": "40",
        "TERM": "xterm-256color",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }


def in_terminal(args: list[str], cwd: Path, timeout: float) -> tuple[int, str]:
    """Run ``shipml ARGS`` on a pseudo-terminal 120 columns wide, as in a user's shell (rich
    draws its live progress bar only there); returns its exit code and everything it wrote."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [SHIPML, *args], cwd=cwd, env=env(), stdin=follower, stdout=follower, stderr=follower
    )
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            assert time.monotonic() < deadline, b"".join(chunks).decode(errors="replace")[-3000:]
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    data = os.read(leader, 65536)
                except OSError:  # the other end closed: the command is done
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=20)
        os.close(leader)
    return code, b"".join(chunks).decode(errors="replace")


def project(folder: Path, edit: dict[str, object] | None = None, rows: int = 500) -> Path:
    folder.mkdir(parents=True)
    df = breast_cancer_frame().sample(rows, random_state=0)
    df.iloc[:-100].to_csv(folder / "train.csv", index=False)
    df.iloc[-100:].to_csv(folder / "new.csv", index=False)
    done = subprocess.run(
        [SHIPML, "init", "train.csv", "--target", "diagnosis"],
        cwd=folder,
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    config = folder / "shipml.yaml"
    raw = yaml.safe_load(config.read_text())
    raw["training"].update(cv=3, models=["logistic_regression"], trials=0)
    for key, value in (edit or {}).items():
        raw[key] = value if not isinstance(value, dict) else {**raw.get(key, {}), **value}
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    return config


def test_train_in_a_120_column_terminal(tmp_path: Path) -> None:
    """The bar's total is the budget from the first frame to the last, trials counted beside
    it; a family whose fits fail gets a red cross; the ensemble's members are summed up on
    one line; the leaderboard's title says what it shows."""
    training = {
        "models": ["logistic_regression", "lightgbm"],
        "trials": 6,
        "ensemble": True,
        # a value LightGBM refuses when fitting: every LightGBM candidate fails
        "params": {"lightgbm": {"num_leaves": 1}},
    }
    config = project(tmp_path / "p", {"training": training})
    code, raw = in_terminal(["train", "--time-budget", "40"], config.parent, 300)
    assert code == 0, raw[-3000:]
    text = ANSI.sub("", raw)

    clocks = re.findall(r"(\d+)s / (\d+)s · (\d+) trials?", text)
    assert clocks, text[-3000:]
    assert {total for _, total, _ in clocks} == {"40"}  # the total never moves
    done = [int(n) for _, _, n in clocks]
    assert done == sorted(done) and done[-1] >= 5  # trials counted beside it
    assert not re.search(r"\b\d+/\?", text)  # no "0/?" counter whose total grows

    lines = [line.rstrip() for line in text.split("\n")]
    # (the live bar's frames and the printed lines share the screen's lines: look for marks)
    marks = re.findall(r"([✓✗–]) (lightgbm\S*)\s+(\w+)", text)
    failed = [(mark, name) for mark, name, word in marks if word == "failed"]
    assert failed and {mark for mark, _ in failed} == {"✗"}, marks
    assert "\x1b[1;31m✗" in raw  # in red

    makeup = [line for line in lines if re.match(r"\s*ensemble of \d+: ", line)]
    assert len(makeup) == 1 and len(makeup[0]) <= WIDTH, makeup
    assert "×" in makeup[0]
    title = next(line for line in lines if line.startswith("Leaderboard"))
    assert "candidates per family" not in text and "each family's best trial" in title
    board = lines[lines.index(title) :]
    ensemble_rows = [line for line in board if "│ ensemble" in line]
    assert len(ensemble_rows) == 1 and "of " in ensemble_rows[0]
    # the row after the ensemble's is another model, not the rest of a member list
    after = board[board.index(ensemble_rows[0]) + 1]
    assert re.match(r"│\s+\d+ │ \w", after) or after.startswith("└"), after
    assert all(len(line) <= WIDTH for line in board[: board.index(after) + 1])


def test_a_failed_gate_is_marked_with_a_red_cross(tmp_path: Path) -> None:
    # a ceiling on log loss no model reaches
    config = project(tmp_path / "p", {"gate": {"metric": "log_loss", "min": 0.0001}})
    first = subprocess.run(
        [SHIPML, "train", "--time-budget", "15"],
        cwd=config.parent,
        env=env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    code, raw = in_terminal(
        ["retrain", "--data", "new.csv", "--time-budget", "15"], config.parent, 300
    )
    text = ANSI.sub("", raw)
    assert code == 0, text[-3000:]
    # (the live bar's frames and the printed lines share the screen's lines: look for marks)
    steps = {
        m.group(2): m.group(1)
        for m in re.finditer(r"([✓✗–]) (extract|validate|train|evaluate|gate|promote) ", text)
    }
    assert steps["gate"] == "✗" and steps["promote"] == "–", text[-3000:]
    assert steps["train"] == steps["evaluate"] == "✓"
    assert re.search(r"\x1b\[1;31m✗\x1b\[0m gate", raw)


def test_no_view_run_lines_with_a_tracking_server(tmp_path: Path) -> None:
    """MLflow 3 prints "View run … at: http://…" and "View experiment at: …" to stdout for
    every run it ends on a server: two lines per trial. shipml switches them off."""
    with _mlflow_server(tmp_path / "mlflow") as tracking:
        training = {"trials": 3}
        config = project(tmp_path / "p", {"tracking_uri": tracking, "training": training}, 300)
        done = subprocess.run(
            [SHIPML, "train", "--time-budget", "30"],
            cwd=config.parent,
            env=env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "registered" in done.stdout
    output = done.stdout + done.stderr
    assert "View run" not in output and "View experiment" not in output, output[-3000:]
