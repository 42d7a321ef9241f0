"""Checkpoints and `shipml train --resume`: a network fit killed mid-way goes on from its last
checkpoint and ends with the same weights as a fit never interrupted; a finished fit loads
instead of training; a whole `shipml train` interrupted with Ctrl-C resumes to the same model
as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_digits, make_classification

from shipml import Project
from shipml.models.checkpoints import checkpointing
from shipml.models.torch_cnn import TorchCNNClassifier
from shipml.models.torch_mlp import TorchMLPClassifier
from tests.conftest import make_project, run_cli

SHIPML = str(Path(sys.executable).parent / "shipml")

# Fits long enough to be killed part-way; no early stop, so they run every epoch.
MLP = (
    "TorchMLPClassifier(hidden_layer_sizes=(128, 128), max_epochs=40, patience=100, random_state=3)"
)
CNN = (
    "TorchCNNClassifier(conv_channels=(8, 16), dense_units=32, max_epochs=12, patience=100, "
    "random_state=5)"
)

FIT_SCRIPT = """
import sys
import numpy as np
from sklearn.datasets import load_digits, make_classification
from shipml.models.checkpoints import checkpointing
from shipml.models.torch_cnn import TorchCNNClassifier
from shipml.models.torch_mlp import TorchMLPClassifier

X, y = {data}
with checkpointing(sys.argv[1], every_s=0):
    {estimator}.fit(X, y)
"""


def _data(kind: str) -> tuple[np.ndarray, np.ndarray]:
    if kind == "mlp":
        return make_classification(3000, 20, n_informative=8, random_state=0)
    X, y = load_digits(return_X_y=True)
    return X[:600], y[:600]


DATA = {
    "mlp": "make_classification(3000, 20, n_informative=8, random_state=0)",
    "cnn": "(lambda X, y: (X[:600], y[:600]))(*load_digits(return_X_y=True))",
}
ESTIMATORS = {"mlp": MLP, "cnn": CNN}


def _build(kind: str) -> TorchMLPClassifier | TorchCNNClassifier:
    names = {"TorchMLPClassifier": TorchMLPClassifier, "TorchCNNClassifier": TorchCNNClassifier}
    return eval(ESTIMATORS[kind], names)  # the constants above


def _epoch_of(store: Path) -> int:
    files = list(store.glob("*.pt"))
    if not files:
        return 0
    try:
        return int(torch.load(files[0], weights_only=True)["epoch"])
    except Exception:  # replaced while being read: try again
        return 0


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_a_fit_killed_mid_way_resumes_to_the_same_weights(tmp_path: Path, kind: str) -> None:
    script = tmp_path / "fit.py"
    script.write_text(
        textwrap.dedent(FIT_SCRIPT).format(data=DATA[kind], estimator=ESTIMATORS[kind])
    )
    store = tmp_path / "checkpoints"
    proc = subprocess.Popen([sys.executable, str(script), str(store)])
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and _epoch_of(store) < 3:
            time.sleep(0.02)
        assert proc.poll() is None, "the fit finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = _epoch_of(store)
    X, y = _data(kind)
    max_epochs = 40 if kind == "mlp" else 12
    assert 3 <= killed_at < max_epochs

    uninterrupted = _build(kind).fit(X, y)
    resumed = _build(kind)
    with checkpointing(store, every_s=0, resume=True) as checkpoint:
        resumed.fit(X, y)
    assert checkpoint is not None
    assert checkpoint.continued and checkpoint.continued[0] >= killed_at
    assert resumed.resumed_from_epoch_ == checkpoint.continued[0]
    assert resumed.n_epochs_ == uninterrupted.n_epochs_ == max_epochs
    assert resumed.history_ == uninterrupted.history_
    np.testing.assert_array_equal(resumed.predict_proba(X), uninterrupted.predict_proba(X))


def test_a_finished_fit_loads_instead_of_training(tmp_path: Path) -> None:
    X, y = _data("mlp")
    X, y = X[:800], y[:800]
    with checkpointing(tmp_path, every_s=0) as first:
        a = TorchMLPClassifier(max_epochs=15, random_state=1).fit(X, y)
    assert first is not None and first.saved >= 2 and len(first.files()) == 1
    with checkpointing(tmp_path, every_s=0, resume=True) as again:
        b = TorchMLPClassifier(max_epochs=15, random_state=1).fit(X, y)
    assert again is not None and (again.loaded, again.continued, again.saved) == (1, [], 0)
    assert b.history_ == a.history_ and b.best_epoch_ == a.best_epoch_
    np.testing.assert_array_equal(b.predict_proba(X), a.predict_proba(X))


def test_only_the_same_fit_picks_a_checkpoint_up(tmp_path: Path) -> None:
    X, y = _data("mlp")
    X, y = X[:600], y[:600]
    with checkpointing(tmp_path, every_s=0):
        TorchMLPClassifier(max_epochs=5, random_state=1).fit(X, y)
    others = [
        (TorchMLPClassifier(max_epochs=5, random_state=2), X, y),  # another seed
        (TorchMLPClassifier(max_epochs=5, random_state=1, dropout=0.3), X, y),  # params
        (TorchMLPClassifier(max_epochs=5, random_state=1), X[:-1], y[:-1]),  # data
    ]
    for estimator, X_, y_ in others:
        with checkpointing(tmp_path, every_s=0, resume=True) as store:
            estimator.fit(X_, y_)
        assert store is not None and store.loaded == 0 and not store.continued
    # verbose and thread count do not change the weights: the checkpoint is still theirs
    with checkpointing(tmp_path, every_s=0, resume=True) as store:
        TorchMLPClassifier(max_epochs=5, random_state=1, verbose=0, n_threads=2).fit(X, y)
    assert store is not None and store.loaded == 1


def test_without_resume_and_with_a_damaged_file_the_fit_trains(tmp_path: Path) -> None:
    X, y = _data("mlp")
    X, y = X[:600], y[:600]
    with checkpointing(tmp_path, every_s=0) as store:
        TorchMLPClassifier(max_epochs=5, random_state=1).fit(X, y)
    assert store is not None
    [path] = store.files()
    with checkpointing(tmp_path, every_s=0, resume=False) as fresh:
        TorchMLPClassifier(max_epochs=5, random_state=1).fit(X, y)
    assert fresh is not None and fresh.loaded == 0 and fresh.saved >= 1
    path.write_bytes(path.read_bytes()[:100])  # cut short
    with checkpointing(tmp_path, every_s=0, resume=True) as damaged:
        model = TorchMLPClassifier(max_epochs=5, random_state=1).fit(X, y)
    assert damaged is not None and damaged.loaded == 0 and model.n_epochs_ == 5
    assert torch.load(path, weights_only=True)["finished"]  # rewritten whole


def test_checkpoints_are_throttled_by_every_s(tmp_path: Path) -> None:
    X, y = _data("mlp")
    with checkpointing(tmp_path, every_s=3600) as store:
        TorchMLPClassifier(max_epochs=8, random_state=1).fit(X[:400], y[:400])
    assert store is not None and store.saved == 1  # only the finished state


@pytest.mark.slow
def test_shipml_train_interrupted_then_resumed_gives_the_uninterrupted_model(
    tmp_path: Path,
) -> None:
    X, y = make_classification(1000, 12, n_informative=6, random_state=4)
    df = pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])
    df["label"] = np.where(y == 1, "yes", "no")

    def edit(raw: dict) -> None:
        raw["training"].update(
            models=["mlp"], baselines=False, trials=2, ensemble=False, checkpoint_every_s=0
        )

    fresh = make_project(tmp_path / "fresh", df, "label", edit)
    nothing = run_cli("train", "-c", fresh, "--resume")  # nothing to resume: a normal run
    assert nothing.exit_code == 0, nothing.all
    said = " ".join(nothing.output.split())
    assert "--resume: no checkpoints in" in said and "training from the start" in said
    assert "resumed from checkpoints" not in said
    config = make_project(tmp_path / "cut", df, "label", edit)

    store = config.parent / ".shipml" / "checkpoints"
    proc = subprocess.Popen(
        [SHIPML, "train", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        # Ctrl-C reaches it even when this suite runs in the background, where the shell
        # starts everything with SIGINT ignored (and Python then keeps it ignored).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list(store.glob("*.pt"))) >= 3:  # two fits done, a third under way
                break
            time.sleep(0.02)
        assert proc.poll() is None, "train finished before it could be interrupted"
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out + err
    assert "shipml train --resume" in err and "Traceback" not in err
    assert Project.load(config).models() == []
    left = len(list(store.glob("*.pt")))
    assert left >= 3

    resumed = run_cli("train", "-c", config, "--resume")
    assert resumed.exit_code == 0, resumed.all
    said = " ".join(resumed.output.split())
    assert f"resuming: {left} checkpointed network fit(s)" in said
    assert "resumed from checkpoints: " in said and "continued from epoch" in said
    assert not store.exists()  # registered: nothing left to resume

    # Both projects in one process: each loads its own model (MLflow's URIs are process-wide).
    a, b = Project.load(fresh), Project.load(config)
    [va], [vb] = a.models(), b.models()
    run = b.store.client.get_run(vb.run_id)
    assert int(run.data.params["resumed_fits_loaded"]) >= 2
    assert va.test_metrics == vb.test_metrics
    new = pd.read_csv(config.parent / "new.csv")
    pd.testing.assert_frame_equal(a.predict(new), b.predict(new))


KERAS_SCRIPT = """
import sys
from sklearn.datasets import make_classification
from shipml.models.checkpoints import checkpointing
from shipml.models.keras_model import KerasClassifier

X, y = make_classification(3000, 20, n_informative=8, random_state=0)
with checkpointing(sys.argv[1], every_s=0):
    KerasClassifier(
        hidden_layer_sizes=(256, 256), max_epochs=25, patience=100, random_state=3
    ).fit(X, y)
"""


def test_a_keras_fit_killed_mid_way_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    from shipml.models.keras_model import KerasClassifier

    script = tmp_path / "fit.py"
    script.write_text(KERAS_SCRIPT)
    store = tmp_path / "checkpoints"
    proc = subprocess.Popen([sys.executable, str(script), str(store)])
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None and _epoch_of(store) < 3:
            time.sleep(0.05)
        assert proc.poll() is None, "the fit finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    [path] = list(store.glob("*.pt"))
    saved = torch.load(path, weights_only=True)
    assert not saved["finished"] and 3 <= saved["epoch"] < 25
    assert saved["early_stopping"]["best_weights"]  # the best epoch's weights travel too

    X, y = _data("mlp")

    def model() -> KerasClassifier:
        return KerasClassifier(
            hidden_layer_sizes=(256, 256), max_epochs=25, patience=100, random_state=3
        )

    with checkpointing(store, every_s=0, resume=True) as checkpoint:
        resumed = model().fit(X, y)
    assert checkpoint is not None and checkpoint.continued == [saved["epoch"]]
    assert resumed.resumed_from_epoch_ == saved["epoch"] and resumed.n_epochs_ == 25
    assert resumed.history_[: saved["epoch"]] == saved["history"]  # the epochs before the cut
    assert [row["epoch"] for row in resumed.history_] == list(range(1, 26))
    assert (resumed.predict(X) == y).mean() > 0.9
    # finished now: the next resume loads it, predictions unchanged
    with checkpointing(store, every_s=0, resume=True) as again:
        loaded = model().fit(X, y)
    assert again is not None and again.loaded == 1 and again.saved == 0
    np.testing.assert_allclose(loaded.predict_proba(X), resumed.predict_proba(X), rtol=1e-6)
