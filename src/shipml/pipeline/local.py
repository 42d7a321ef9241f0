"""Runners of the retraining pipeline on this machine: once (`shipml retrain`) and on a cron
schedule (`shipml schedule`, a long-running process). Both call the step functions in order
and nothing else."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shipml.errors import ConfigError, ShipmlError
from shipml.pipeline import steps
from shipml.project import Project

EventHandler = Callable[..., None]
SCHEDULE_LOG = "schedule.jsonl"  # under .shipml/pipeline/


def run_pipeline(
    config: str | os.PathLike[str],
    data: str | os.PathLike[str] | None = None,
    time_budget: float | None = None,
    trials: int | None = None,
    allow_schema_change: bool | None = None,
    on_event: EventHandler | None = None,
) -> steps.Promotion:
    """extract → validate → train → evaluate → gate → promote, once. ``on_event("step",
    name=..., result=...)`` follows each step; training's own events pass through."""
    emit = on_event or (lambda *a, **k: None)
    emit("step_start", name="extract")
    extracted = steps.extract(config, data)
    emit("step", name="extract", result=extracted)
    emit("step_start", name="validate")
    validated = steps.validate(extracted, allow_schema_change)
    emit("step", name="validate", result=validated)
    emit("step_start", name="train")
    trained = steps.train(validated, time_budget, trials, on_event=on_event)
    emit("step", name="train", result=trained)
    emit("step_start", name="evaluate")
    evaluated = steps.evaluate(trained)
    emit("step", name="evaluate", result=evaluated)
    emit("step_start", name="gate")
    decision = steps.gate(evaluated)
    emit("step", name="gate", result=decision)
    emit("step_start", name="promote")
    promotion = steps.promote(decision)
    emit("step", name="promote", result=promotion)
    return promotion


def next_run(cron: str, after: datetime) -> datetime:
    """The first time ``cron`` fires after ``after`` (UTC). Five fields, or six with seconds
    last."""
    from croniter import croniter

    if not croniter.is_valid(cron):
        raise ConfigError(
            f"'{cron}' is not a cron schedule",
            "use five fields: minute hour day-of-month month day-of-week, e.g. '0 3 * * *'",
        )
    fire: datetime = croniter(cron, after).get_next(datetime)
    return fire


def _log(project: Project, record: dict[str, Any]) -> None:
    folder = project.root / ".shipml" / steps.PIPELINE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / SCHEDULE_LOG).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def run_schedule(
    config: str | os.PathLike[str],
    cron: str | None = None,
    max_runs: int | None = None,
    on_event: EventHandler | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Run the pipeline every time ``cron`` (default: retrain.schedule) fires, until stopped
    (Ctrl-C, SIGTERM) or after ``max_runs``. A failing run is logged (one JSON line per run
    in .shipml/pipeline/schedule.jsonl) and the schedule goes on. Returns the runs made."""
    emit = on_event or (lambda *a, **k: None)
    project = Project.load(Path(config))
    cron = cron or project.config.retrain.schedule
    if not cron:
        raise ConfigError(
            "no schedule: retrain.schedule is not set",
            "set retrain.schedule in shipml.yaml (e.g. '0 3 * * *') or pass --cron",
        )
    runs = 0
    while max_runs is None or runs < max_runs:
        now = datetime.now(UTC)
        fire = next_run(cron, now)
        emit("waiting", until=fire)
        sleep(max((fire - datetime.now(UTC)).total_seconds(), 0.0))
        started = datetime.now(UTC)
        record: dict[str, Any] = {"started": started.isoformat(), "cron": cron}
        try:
            result = run_pipeline(config, on_event=on_event)
            record.update(
                status="promoted" if result.promoted else "gate failed",
                version=result.version,
                champion=result.champion_after,
                reasons=result.reasons,
            )
        except ShipmlError as err:
            record.update(status="error", error=err.message, hint=err.hint)
        record["seconds"] = round((datetime.now(UTC) - started).total_seconds(), 2)
        _log(project, record)
        emit("run_done", record=record)
        runs += 1
    return runs


def schedule_log(project: Project) -> list[dict[str, Any]]:
    path = project.root / ".shipml" / steps.PIPELINE_DIR / SCHEDULE_LOG
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


__all__ = ["next_run", "run_pipeline", "run_schedule", "schedule_log"]
