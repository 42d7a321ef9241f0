"""Deep-learning benchmark: shipml's networks against the cheat-sheet PyTorch training loop.

On a tabular data set and on digits images, each contender trains on the same training rows
and is scored on the same test rows, over a few seeds, one thread each (as shipml trains):

- tabular (the demo customer-churn table of `shipml.demo`: 3,000 training rows from seed 7,
  600 test rows from seed 8; one-hot, scaled and imputed by shipml's own preprocessor, fitted
  on the training rows):
  (a) the cheat-sheet loop: Linear 128 → ReLU → Dropout 0.2 → Linear 64 → ReLU → Linear, Adam
      (lr 1e-3), batch 64, 50 epochs, cross-entropy, no validation split;
  (b) shipml's `mlp` family with its defaults (`TorchMLPClassifier`, 128 → 64 units, dropout
      0.1, AdamW lr 1e-3, batch 128, early stopping on a 10% validation split with the best
      weights restored, ReduceLROnPlateau).
- digits (scikit-learn's bundled 1,797 8×8 images, stratified 80/20 split per seed):
  (a) the cheat-sheet CNN: two conv(3×3)+max-pool blocks (32, 64 channels), fc 128, dropout
      0.5, Adam (lr 1e-3), batch 64, 50 epochs;
  (b) shipml's `TorchCNNClassifier` with its defaults (when it is installed in this tree).

Targets (the issue's): (b) at least (a)'s test accuracy on every data set, in less wall time.

    .venv/bin/python benchmarks/deep_bench.py [--seeds 3] [--out benchmarks/DEEP_RESULTS.md]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from serve_bench import _git, _machine, busy_note, command_used, markdown_table, plain_table
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

EPOCHS = 50
BATCH = 64


@dataclass
class Result:
    data: str
    contender: str
    accuracy: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)

    def cell(self, values: list[float], digits: int) -> str:
        if not values:
            return "–"
        mean = statistics.fmean(values)
        spread = statistics.pstdev(values) if len(values) > 1 else 0.0
        return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def cheat_sheet_loop(
    model: nn.Module, X: np.ndarray, y: np.ndarray, seed: int, epochs: int = EPOCHS
) -> nn.Module:
    """The loop every tutorial shows: Adam, shuffled mini-batches, a fixed number of epochs."""
    torch.manual_seed(seed)
    inputs, targets = torch.from_numpy(X.astype(np.float32)), torch.from_numpy(y)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(inputs))
        for batch in order.split(BATCH):
            optimiser.zero_grad()
            loss = loss_fn(model(inputs[batch]), targets[batch])
            loss.backward()
            optimiser.step()
    model.eval()
    return model


def cheat_sheet_accuracy(model: nn.Module, X: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        predicted = model(torch.from_numpy(X.astype(np.float32))).argmax(dim=1).numpy()
    return float((predicted == y).mean())


def plain_mlp(n_features: int, n_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(n_features, 128),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(128, 64),
        nn.ReLU(),
        nn.Linear(64, n_classes),
    )


def plain_cnn(n_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 2 * 2, 128),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(128, n_classes),
    )


Data = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def tabular_data(seed: int) -> Data:
    """The demo churn table through shipml's preprocessor (fitted on the training rows)."""
    from shipml.config import FeaturesConfig
    from shipml.data.coerce import coerce_frame
    from shipml.data.infer import infer_schema
    from shipml.demo import generate_customers
    from shipml.features import build_preprocessor

    train, test = generate_customers(3000, 7), generate_customers(600, 8)
    features = FeaturesConfig(exclude=["customer_id"])
    schema = infer_schema(train, "churned", "classification", features)
    pre = build_preprocessor(schema, features)
    X_train = np.asarray(pre.fit_transform(coerce_frame(train, schema)), dtype=np.float32)
    X_test = np.asarray(pre.transform(coerce_frame(test, schema)), dtype=np.float32)
    classes = sorted(train["churned"].unique())
    encode = {c: i for i, c in enumerate(classes)}
    y_train = train["churned"].map(encode).to_numpy(np.int64)
    y_test = test["churned"].map(encode).to_numpy(np.int64)
    return X_train, X_test, y_train, y_test


def digits_data(seed: int) -> Data:
    digits = load_digits()
    X = digits.data.astype(np.float32) / 16.0
    parts = train_test_split(
        X, digits.target, test_size=0.2, stratify=digits.target, random_state=seed
    )
    X_train, X_test, y_train, y_test = parts
    return X_train, X_test, y_train.astype(np.int64), y_test.astype(np.int64)


def run(seeds: int) -> list[Result]:
    torch.set_num_threads(1)
    from shipml.models.catalog import CATALOG

    try:
        from shipml.models.torch_cnn import TorchCNNClassifier
    except ImportError:
        TorchCNNClassifier = None

    results: list[Result] = []
    suites: list[tuple[str, Callable[[int], Data], Callable[[int, int], nn.Module], Any]] = [
        ("tabular (demo churn)", tabular_data, lambda d, k: plain_mlp(d, k), None),
        ("digits 8×8", digits_data, lambda d, k: plain_cnn(k), "cnn"),
    ]
    for name, load, plain, kind in suites:
        cheat = Result(name, "(a) cheat-sheet loop, 50 epochs")
        ours = Result(
            name, "(b) shipml " + ("TorchCNNClassifier" if kind else "TorchMLPClassifier")
        )
        for seed in range(seeds):
            X_train, X_test, y_train, y_test = load(seed)
            n_classes = int(max(y_train.max(), y_test.max()) + 1)
            started = time.perf_counter()
            network = cheat_sheet_loop(plain(X_train.shape[1], n_classes), X_train, y_train, seed)
            cheat.seconds.append(time.perf_counter() - started)
            cheat.accuracy.append(cheat_sheet_accuracy(network, X_test, y_test))
            cheat.epochs.append(EPOCHS)
            if kind == "cnn":
                if TorchCNNClassifier is None:
                    continue
                estimator: Any = TorchCNNClassifier(image_shape=(8, 8, 1), random_state=seed)
            else:  # the network shipml trains: the mlp family's defaults
                estimator = CATALOG["classification"]["mlp"].build(seed)
            started = time.perf_counter()
            estimator.fit(X_train, y_train)
            ours.seconds.append(time.perf_counter() - started)
            ours.accuracy.append(float((estimator.predict(X_test) == y_test).mean()))
            ours.epochs.append(int(estimator.n_epochs_))
            print(
                f"[deep_bench] {name} seed {seed}: cheat {cheat.accuracy[-1]:.4f} "
                f"{cheat.seconds[-1]:.1f}s · shipml {ours.accuracy[-1]:.4f} "
                f"{ours.seconds[-1]:.1f}s ({ours.epochs[-1]} epochs)",
                flush=True,
            )
        results += [cheat, ours]
    return results


def verdicts(results: list[Result]) -> list[str]:
    lines = []
    for i in range(0, len(results), 2):
        cheat, ours = results[i], results[i + 1]
        if not ours.accuracy:
            lines.append(f"- {cheat.data}: shipml's network is not built yet: cannot judge")
            continue
        acc_ok = statistics.fmean(ours.accuracy) >= statistics.fmean(cheat.accuracy)
        time_ok = statistics.fmean(ours.seconds) < statistics.fmean(cheat.seconds)
        lines.append(
            f"- {cheat.data}: accuracy {'MET' if acc_ok else 'NOT MET'} "
            f"({statistics.fmean(ours.accuracy):.4f} vs {statistics.fmean(cheat.accuracy):.4f}); "
            f"less wall time {'MET' if time_ok else 'NOT MET'} "
            f"({statistics.fmean(ours.seconds):.1f} s vs {statistics.fmean(cheat.seconds):.1f} s)"
        )
    return lines


def rows(results: list[Result]) -> list[list[str]]:
    return [
        [
            r.data,
            r.contender,
            r.cell(r.accuracy, 4),
            r.cell(r.seconds, 2),
            r.cell([float(e) for e in r.epochs], 0),
        ]
        for r in results
    ]


HEADER = ["data set", "contender", "test accuracy", "wall s (fit)", "epochs"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--seeds", type=int, default=3, help="seeds (splits and inits) per contender"
    )
    parser.add_argument("--out", type=Path, help="also write the tables as Markdown here")
    args = parser.parse_args()
    import os

    load = os.getloadavg()
    results = run(args.seeds)
    table = rows(results)
    print(plain_table([HEADER, *table]))
    lines = verdicts(results)
    print("\n".join(["", "Targets:", *lines]))
    if args.out:
        text = [
            "# Deep-learning benchmark: shipml's networks against the cheat-sheet loop",
            "",
            f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            f"- machine: {_machine()}",
            f"- command: `{command_used()}` (git {_git()})",
            f"- torch {torch.__version__}, one thread per fit; {args.seeds} seeds (mean ± sd)",
            "",
            *busy_note(load[0]),
            markdown_table([HEADER, *table]),
            "",
            "Targets (the issue's): shipml's network at least as accurate as the plain loop, in "
            "less wall time, on every data set.",
            "",
            *lines,
            "",
        ]
        args.out.write_text("\n".join(text), encoding="utf-8")
        print(f"[deep_bench] wrote {args.out}")


if __name__ == "__main__":
    main()
