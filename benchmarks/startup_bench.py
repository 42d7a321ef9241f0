"""Start-up cost of the read-only commands, before and after reading the registry without MLflow.

Runs `shipml models`, `shipml report` and `shipml predict` (10 rows) as a user would, each in
a fresh interpreter, with the code of a base commit (default 72fd2a0, the last one before the
change; checked out with `git worktree add`) and with this checkout's code, on the same
project and the same virtual environment (PYTHONPATH picks the code), alternating the two so
that a load that comes and goes on the machine falls on both. Prints the median wall and CPU
seconds (user + system, of the command's process and its children) side by side and writes the
table to benchmarks/STARTUP_RESULTS.md.

    python benchmarks/startup_bench.py                 # trains a small project first
    python benchmarks/startup_bench.py --project DIR   # a project with a trained champion
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml
from sklearn.datasets import load_breast_cancer

from shipml.registry_read import LocalRegistry

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "STARTUP_RESULTS.md"


def base_checkout(commit: str, where: Path) -> Path:
    """The ``src`` folder of ``commit`` (a git worktree, made once)."""
    if not (where / "src" / "shipml").is_dir():
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(where), commit],
            check=True,
            capture_output=True,
        )
    return where / "src"


def shipml(src: Path, project: Path, *args: str) -> tuple[float, float]:
    """Wall and CPU seconds of one `shipml ARGS` with the code in ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src), "MLFLOW_DISABLE_TELEMETRY": "true"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "shipml.cli", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"shipml {' '.join(args)} failed with {src}:\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def which_shipml(src: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(src)}
    code = "import shipml; print(shipml.__file__)"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


def make_project(folder: Path, src: Path) -> Path:
    """A breast-cancer project with two versions of trees, trained with the code in ``src``
    (the base commit's: both sides read what it writes; a model written by newer code may
    carry fields older code does not know)."""
    folder.mkdir(parents=True, exist_ok=True)
    frame = load_breast_cancer(as_frame=True).frame
    frame["diagnosis"] = frame.pop("target").map({0: "malignant", 1: "benign"})
    frame.iloc[:-40].to_csv(folder / "train.csv", index=False)
    frame.iloc[-40:].drop(columns="diagnosis").to_csv(folder / "new.csv", index=False)
    env = {**os.environ, "PYTHONPATH": str(src), "MLFLOW_DISABLE_TELEMETRY": "true"}
    run = [sys.executable, "-m", "shipml.cli"]
    subprocess.run(
        [*run, "init", "train.csv", "--target", "diagnosis"], cwd=folder, env=env, check=True
    )
    raw = yaml.safe_load((folder / "shipml.yaml").read_text())
    # Trees, so that predict runs the fast copy's ONNX graph (onnxruntime's import included).
    raw["training"].update(models=["lightgbm", "random_forest"], baselines=False, trials=2, cv=3)
    (folder / "shipml.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    for _ in range(2):
        subprocess.run([*run, "train", "--time-budget", "30"], cwd=folder, env=env, check=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="72fd2a0", help="commit to compare with")
    parser.add_argument("--base-dir", type=Path, default=Path("/tmp/startup-base"))
    parser.add_argument("--project", type=Path, help="a trained project (default: train one)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS.name}")
    args = parser.parse_args()

    before_src = base_checkout(args.base, args.base_dir)
    after_src = REPO / "src"
    for src in (before_src, after_src):  # PYTHONPATH must win over the installed shipml
        assert which_shipml(src).startswith(str(src)), which_shipml(src)
    project = args.project or make_project(Path(tempfile.mkdtemp(prefix="startup-")), before_src)
    project = project.resolve()
    pd.read_csv(project / "new.csv").head(10).to_csv(project / "ten.csv", index=False)

    commands = {
        "shipml models": ["models"],
        "shipml report": ["report"],
        "shipml predict (10 rows)": ["predict", "ten.csv", "--out", "scored.csv"],
    }
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for name, cmd in commands.items():
        for side in ("before", "after"):  # warm the file cache and the model cache
            shipml(before_src if side == "before" else after_src, project, *cmd)
        for _ in range(args.repeats):
            for side, src in (("before", before_src), ("after", after_src)):
                times.setdefault((name, side), []).append(shipml(src, project, *cmd))

    def med(name: str, side: str, i: int) -> float:
        return statistics.median(t[i] for t in times[(name, side)])

    load = os.getloadavg()[0]
    name = yaml.safe_load((project / "shipml.yaml").read_text())["name"]
    local = LocalRegistry.open(project, name, None)
    champion = next(v for v in local.versions() if "champion" in v.aliases) if local else None
    family = champion.family if champion else "?"
    inference = champion.tags.get("shipml.inference", "native") if champion else "?"
    lines = [
        f"Start-up of the read-only commands: {args.base} (before) against this checkout "
        f"(after), median of {args.repeats} alternating runs each, fresh interpreter per run.",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; load average at the end {load:.2f}. The champion "
        f"predict scores: {family} ({inference} inference).",
        "",
        "| command | wall before (s) | wall after (s) | CPU before (s) | CPU after (s) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in commands:
        lines.append(
            f"| `{name}` | {med(name, 'before', 0):.2f} | {med(name, 'after', 0):.2f} | "
            f"{med(name, 'before', 1):.2f} | {med(name, 'after', 1):.2f} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    if not args.no_write:
        RESULTS.write_text("# Start-up of the read-only commands\n\n" + table, encoding="utf-8")


if __name__ == "__main__":
    main()
