"""Rich rendering of shipml's results: tables, progress, errors. No logic beyond layout."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
)
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from shipml.data.schema import Schema
    from shipml.data.validate import ValidationReport
    from shipml.monitoring.service import MonitorResult
    from shipml.registry import VersionInfo
    from shipml.scoring import EvaluationResult
    from shipml.training.search import Leaderboard
    from shipml.training.train import TrainResult

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)
if not console.is_terminal and "COLUMNS" not in os.environ:
    console.width = 120  # piped or captured output: wide enough for the leaderboard

_LEVEL_STYLE = {"fatal": "bold red", "warning": "yellow", "info": "dim"}


def fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def error(message: str, hint: str | None = None) -> None:
    err_console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    if hint:
        err_console.print(f"[dim]hint:[/] {hint}", soft_wrap=True)


def schema_table(schema: Schema, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("column", "role", "dtype", "missing", "distinct", "note"):
        table.add_column(col)
    for c in schema.columns.values():
        style = "dim" if c.role in ("excluded", "identifier", "text") else ""
        table.add_row(
            c.name, c.role, c.dtype, f"{c.missing_share:.1%}", str(c.n_unique), c.note, style=style
        )
    return table


def validation_table(report: ValidationReport) -> Table | None:
    if not report.findings:
        return None
    table = Table(title="Data validation", title_justify="left")
    for col in ("level", "check", "column", "finding"):
        table.add_column(col)
    for f in report.findings:
        style = _LEVEL_STYLE.get(f.level, "")
        table.add_row(f"[{style}]{f.level}[/]", f.check, f.column or "", f.message)
    return table


def leaderboard_table(board: Leaderboard, all_trials: bool = False) -> Table:
    """The leaderboard: each family's best trial (all trials with ``all_trials``), the
    baselines and the ensemble."""
    records = board.to_records()
    trials: dict[str, int] = {}
    for row in records:
        if row["family"] and row["status"] != "skipped":
            trials[row["family"]] = trials.get(row["family"], 0) + 1
    shown: list[dict[str, Any]] = []
    seen: set[str] = set()
    for row in records:
        family = row["family"]
        if all_trials or not family or family not in seen:
            shown.append(row)
            seen.add(family)
    title = f"Leaderboard (cross-validated, ranked by {board.metric})"
    if not all_trials and len(shown) < len(records):
        title += f": each family's best trial, of {sum(trials.values())} trials in all"
    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("model")
    for m in board.metrics:
        table.add_column(m, justify="right")
    table.add_column("time", justify="right")
    table.add_column("note")
    for row in shown:
        cells = []
        for m in board.metrics:  # the spread over folds of the metric that ranks them only:
            mean, std = row[f"{m}_mean"], row[f"{m}_std"]  # five of them wrap every row at 120
            spread = f" ± {fmt(std, 3)}" if m == board.metric else ""
            cells.append("–" if mean is None else f"{fmt(mean)}{spread}")
        name = row["model"] + (" [dim](baseline)[/]" if row["baseline"] else "")
        style = "bold green" if row["rank"] == 1 else ("dim" if row["rank"] is None else "")
        members = f"of {len(row['members'])} models" if row["members"] else ""
        if row.get("stack_inputs"):
            members = f"on the predictions of {len(row['stack_inputs'])} models"
        note = row["reason"] or members or ("" if row["status"] == "ok" else row["status"])
        if not all_trials and trials.get(row["family"], 0) > 1:
            note = (note + "; " if note else "") + f"best of {trials[row['family']]} trials"
        table.add_row(
            str(row["rank"] or ""), name, *cells, f"{row['fit_seconds']:.1f}s", note, style=style
        )
    return table


def ensemble_line(board: Leaderboard, width: int = 120) -> str | None:
    """The best ensemble's (or second layer's) makeup in one line, members counted by family,
    the heaviest first: "ensemble of 7: catboost ×3, lightgbm ×2, …"."""
    best = next((r for r in board.ranked() if r.members or r.stack_inputs), None)
    if best is None:
        return None
    n = len(best.members or best.stack_inputs)
    what = f"{best.name} of {n}" if best.members else f"{best.name} on {n}"
    parts = [f"{family} ×{count}" for family, count in board.makeup(best)]
    line = f"{what}: {parts[0]}"
    for i, part in enumerate(parts[1:], start=2):
        room_for_more = 0 if i == len(parts) else len(", …")
        if len(line) + len(", ") + len(part) + room_for_more > width:
            return line + ", …"
        line += ", " + part
    return line


def metrics_table(title: str, columns: dict[str, dict[str, float]]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    names: list[str] = []
    for values in columns.values():
        names += [k for k in values if k not in names]
    for header in columns:
        table.add_column(header, justify="right")
    for name in names:
        table.add_row(name, *[fmt(values.get(name)) for values in columns.values()])
    return table


def budget_hint(leaderboard: Leaderboard, budget_s: float) -> str | None:
    """A hint when the budget was too short for some stronger families' defaults to be
    cross-validated (the search's own last trial being stopped for time is normal)."""
    short = [
        r.name
        for r in leaderboard.results
        if not r.baseline
        and r.trial == 0
        and r.status in ("skipped", "stopped")
        and r.reason.startswith("time budget")
    ]
    if not short:
        return None
    return (
        f"{', '.join(short)} did not fit in the {budget_s:.0f}s budget (setting up, "
        "registering and the report take several seconds of it): a larger --time-budget "
        "gives them room"
    )


def train_summary(result: TrainResult) -> None:
    console.print(leaderboard_table(result.leaderboard))
    makeup = ensemble_line(result.leaderboard, console.width - 2)
    if makeup:
        console.print(f"  {makeup}", soft_wrap=True)
    console.print(
        metrics_table(f"Test split ({result.n_test:,} rows)", {result.best: result.test_metrics})
    )

    alias_note = (
        "it is the champion"
        if result.alias == "champion"
        else f"it is the challenger; `shipml promote {result.version}` makes it the champion"
    )
    console.print(
        f"[bold green]✓[/] registered [bold]{result.model_name}[/] version "
        f"[bold]{result.version}[/] ({result.best}, test {result.metric} = "
        f"{fmt(result.test_metrics.get(result.metric))}): {alias_note}."
    )
    extras = []
    if result.search_trials:
        extras.append(f"{result.search_trials} search trials")
    if result.threshold is not None:
        extras.append(f"decision threshold {result.threshold:.3g} (chosen on out-of-fold data)")
    if extras:
        console.print("  " + " · ".join(extras))
    if result.resumed is not None:
        r = result.resumed
        epochs = ", ".join(str(e) for e in r["from_epochs"])
        console.print(
            f"  resumed from checkpoints: {r['loaded']} finished network fit(s) loaded, "
            f"{r['continued']} continued" + (f" from epoch {epochs}" if epochs else "")
        )
    console.print(
        f"  took {result.elapsed_s:.1f}s of a {result.budget_s:.0f}s budget · MLflow run "
        f"{result.run_id} · validation report {result.paths['validation_report']}"
    )
    hint = budget_hint(result.leaderboard, result.budget_s)
    if hint:
        console.print(f"  [yellow]{hint}[/]")
    if "report" in result.paths:
        console.print(f"  report: {result.paths['report']}")
    if result.inference == "fast":
        console.print(f"  serving: fast inference path (ONNX), {result.inference_note}")
    else:
        console.print(f"  serving: the native model ({result.inference_note})")


def versions_table(name: str, versions: list[VersionInfo]) -> Table:
    table = Table(title=f"Model '{name}'", title_justify="left")
    for col in ("version", "aliases", "created", "model", "metric", "test", "cv mean"):
        table.add_column(col, justify="right" if col in ("version", "test", "cv mean") else "left")
    for v in versions:
        metric = v.tags.get("shipml.metric", "")
        aliases = ", ".join(v.aliases)
        style = "bold green" if "champion" in v.aliases else ""
        table.add_row(
            str(v.version),
            aliases,
            datetime.fromtimestamp(v.created).strftime("%Y-%m-%d %H:%M"),
            v.family,
            metric,
            fmt(v.test_metrics.get(metric)),
            fmt(float(v.tags["shipml.cv_mean"])) if "shipml.cv_mean" in v.tags else "–",
            style=style,
        )
    return table


def evaluation_table(result: EvaluationResult, source: str) -> Table:
    change = {
        k: v - result.reference[k] for k, v in result.metrics.items() if k in result.reference
    }
    return metrics_table(
        f"Version {result.version} on {source} ({result.n_rows:,} labelled rows)",
        {
            "at training (test split)": result.reference,
            f"on {source}": result.metrics,
            "change": change,
        },
    )


class BudgetBar(ProgressColumn):
    """The share of the time budget spent: the bar fills with the clock toward a total that
    does not move (the number of candidates is not known ahead: the search runs while the
    budget lasts). Without a budget (a pipeline step other than training), it pulses."""

    def __init__(self, width: int = 30) -> None:
        super().__init__()
        self.width = width

    def render(self, task: Task) -> ProgressBar:
        budget = task.fields.get("budget")
        if not budget:
            return ProgressBar(None, pulse=True, width=self.width, animation_time=task.get_time())
        spent = time.monotonic() - task.fields["since"]
        return ProgressBar(budget, min(spent, budget), width=self.width)


class BudgetClock(ProgressColumn):
    """The seconds spent of the budget and the candidates done: 23s / 60s · 14 trials."""

    def render(self, task: Task) -> Text:
        budget = task.fields.get("budget")
        if not budget:
            return Text(f"{time.monotonic() - task.fields['since']:.0f}s", style="dim")
        spent = time.monotonic() - task.fields["since"]
        done = task.fields.get("done", 0)
        return Text(f"{spent:.0f}s / {budget:.0f}s · {done} trial{'s' * (done != 1)}", "dim")


def candidate_line(result: Any, metric: str) -> str:
    """One line for a cross-validated candidate: a green tick with its score, a red cross
    where it failed, a dash where it was pruned, stopped for time or skipped."""
    name = f"{result.name:<24}"
    if result.status == "ok":
        return (
            f"  [green]✓[/] {name} {metric} {fmt(result.mean(metric))} ± "
            f"{fmt(result.std(metric), 3)}  [dim]{result.fit_seconds:.1f}s[/]"
        )
    if result.status == "failed":
        return f"  [bold red]✗[/] {name} [red]failed:[/] {escape(result.reason)}"
    return f"  [yellow]–[/] {name} [dim]{result.status}: {escape(result.reason)}[/]"


class TrainProgress:
    """Turns the train service's events into a progress bar over the time budget and one line
    per candidate."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task = progress.add_task("Starting", total=None, since=time.monotonic(), done=0)
        self.started = time.monotonic()
        self.done = 0  # candidates cross-validated (or cut short) so far

    def __call__(self, kind: str, **info: Any) -> None:
        p = self.progress
        if kind == "stage":
            p.update(self.task, description=info["name"])
        elif kind == "budget":
            self.done = 0
            p.update(self.task, budget=info["seconds"], since=time.monotonic(), done=0)
        elif kind == "note":
            p.console.print(f"  [cyan]i[/] {escape(info['text'])}")
        elif kind == "validation":
            table = validation_table(info["report"])
            if table is not None:
                p.console.print(table)
        elif kind == "candidate_start":
            p.update(self.task, description=f"Cross-validating {info['name']}")
        elif kind == "fold_done":
            p.update(
                self.task,
                description=f"Cross-validating {info['name']} (fold {info['fold']} done)",
            )
        elif kind == "candidate_done":
            r = info["result"]
            if r.status != "skipped":
                self.done += 1
                p.update(self.task, done=self.done)
            p.console.print(candidate_line(r, info["metric"]))


def _progress_columns() -> tuple[ProgressColumn, ...]:
    return (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BudgetBar(),
        BudgetClock(),
    )


@contextmanager
def train_progress() -> Iterator[TrainProgress]:
    with Progress(*_progress_columns(), console=console, transient=True) as progress:
        yield TrainProgress(progress)


class PipelineProgress(TrainProgress):
    """Training's progress bar, plus one line per pipeline step."""

    def __call__(self, kind: str, **info: Any) -> None:
        p = self.progress
        if kind == "step_start":
            p.update(
                self.task,
                description=f"Pipeline: {info['name']}",
                budget=None,
                since=time.monotonic(),
            )
        elif kind == "step":
            mark = step_mark(info["result"])
            p.console.print(f"{mark} {info['name']:<8} {_step_note(info['result'])}")
        else:
            super().__call__(kind, **info)


def step_mark(result: Any) -> str:
    """A red cross for a step whose check failed (the gate), a yellow dash for a step that
    did nothing because of it (no promotion), a green tick otherwise."""
    name = type(result).__name__
    if name == "Decision" and not result.passed:
        return "[bold red]✗[/]"
    if name == "Promotion" and not result.promoted:
        return "[yellow]–[/]"
    return "[bold green]✓[/]"


def _step_note(result: Any) -> str:
    name = type(result).__name__
    if name == "Extracted":
        mark = f", watermark {result.watermark}" if result.watermark is not None else ""
        return f"{result.rows:,} rows from {result.source}{mark}"
    if name == "Validated":
        changes = f"; schema changes allowed: {'; '.join(result.schema_changes)}"
        return "data checks passed" + (changes if result.schema_changes else "")
    if name == "Trained":
        return f"version {result.version} registered as the challenger"
    if name == "Evaluated":
        m = result.gate_metric
        champ = (
            f", champion (v{result.champion}) {fmt(result.champion_metrics.get(m))}"
            if result.champion_metrics is not None
            else ""
        )
        feedback = (
            f"; {result.feedback_rows} labelled feedback rows" if result.feedback_rows else ""
        )
        return (
            f"{m} on {result.holdout_rows} holdout rows: challenger "
            f"{fmt(result.challenger_metrics.get(m))}{champ}{feedback}"
        )
    if name == "Decision":
        return "passed" if result.passed else "[bold red]failed[/]"
    if name == "Promotion":
        if result.promoted:
            return f"version {result.version} is now the champion (was {result.previous})"
        return f"not promoted: version {result.champion_after} stays the champion"
    return ""


@contextmanager
def pipeline_progress() -> Iterator[PipelineProgress]:
    with Progress(*_progress_columns(), console=console, transient=True) as progress:
        yield PipelineProgress(progress)


def pipeline_summary(result: Any) -> None:
    """The gate's evidence, side by side, and its verdict."""
    m = result.gate_metric
    columns: dict[str, dict[str, float]] = {
        f"challenger v{result.version}": result.challenger_metrics
    }
    if result.champion_metrics is not None:
        columns[f"champion v{result.champion}"] = result.champion_metrics
    for role, metrics in result.feedback.items():
        columns[f"{role} on feedback"] = metrics
    console.print(metrics_table(f"Holdout: {result.holdout_rows:,} rows of the new batch", columns))
    for reason in result.reasons:
        style = "red" if reason.startswith("FAILED") else "green"
        console.print(f"  [{style}]{reason}[/]")
    if result.promoted:
        console.print(
            f"[bold green]✓[/] gate passed on {m}: version {result.version} is the champion "
            f"(was {result.previous}); running servers switch to it. `shipml rollback` undoes it."
        )
    else:
        console.print(
            f"[bold yellow]![/] gate failed on {m}: version {result.version} stays registered "
            f"but not champion; version {result.champion_after} keeps serving."
        )


def reproduction_table(result: Any) -> None:
    """The rebuild against the original: metrics, predictions, packages, verdict."""
    table = Table(
        title=f"Version {result.version} rebuilt in {result.scratch}", title_justify="left"
    )
    for col in ("test metric", "recorded", "rebuilt", "difference"):
        table.add_column(col, justify="left" if col == "test metric" else "right")
    for name, was, now, diff in result.metrics:
        bad = diff is None or abs(diff) > result.tolerance
        table.add_row(
            name,
            fmt(was),
            fmt(now),
            "–" if diff is None else f"{diff:+.3g}",
            style="red" if bad else "",
        )
    console.print(table)
    proba = result.max_probability_difference
    console.print(
        f"  test split: {result.rows:,} rows, {result.predictions_differing:,} predictions "
        "differ" + ("" if proba is None else f", largest probability difference {proba:.3g}")
    )
    if result.package_changes:
        console.print(
            f"[yellow]warning:[/] {len(result.package_changes)} package(s) differ from training:"
        )
        for name, was, now in result.package_changes[:20]:
            console.print(f"  {name}: {was or '(absent)'} at training, {now or '(absent)'} now")
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    if result.ok:
        console.print(
            f"[bold green]✓[/] reproduced: every difference is within {result.tolerance:g}."
        )
    else:
        console.print(
            f"[bold red]✗[/] not reproduced within {result.tolerance:g} (reproduce.tolerance)."
        )


def paths_table(rows: dict[str, Path | str]) -> Table:
    table = Table(title="Where things are", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("path")
    for k, v in rows.items():
        table.add_row(k, str(v))
    return table


def drift_table(result: MonitorResult) -> Table:
    """One row per tested column (then predictions and target): test, score, verdict."""
    drift = result.drift
    table = Table(
        title=f"Drift of {result.source} against {result.reference}", title_justify="left"
    )
    for col in ("column", "kind", "test", "score", "threshold", "drift", "PSI", "missing"):
        table.add_column(col, justify="right" if col in ("score", "threshold", "PSI") else "left")
    rows = list(drift.columns.values())
    extra = [c for c in (drift.prediction, drift.target) if c is not None]
    for i, c in enumerate(rows + extra):
        table.add_row(
            c.column if i < len(rows) else f"[italic]{c.column}[/]",
            c.kind,
            c.method_name,
            f"{c.score:.3g}",
            f"{c.threshold:g}",
            "[bold red]DRIFT[/]" if c.drift else "[green]no[/]",
            fmt(c.psi, 3),
            f"{100 * c.missing_reference:.0f}% → {100 * c.missing_current:.0f}%",
            end_section=i == len(rows) - 1 and bool(extra),
        )
    return table


def monitor_summary(result: MonitorResult) -> None:
    console.print(drift_table(result))
    drift = result.drift
    for finding in drift.findings:
        console.print(f"[yellow]schema:[/] {finding.message}")
    if not drift.columns:
        console.print(
            "Dataset drift: [yellow]not tested[/]: no column of the reference could be compared "
            "(see the schema findings above)"
        )
        return
    verdict = "[bold red]yes[/]" if drift.dataset_drift else "[green]no[/]"
    console.print(
        f"Dataset drift: {verdict} ({len(drift.drifted_columns)} of {len(drift.columns)} "
        f"columns drifted)"
    )
    console.print(f"  rule: the dataset drifts when {escape(drift.rule)}")
    for reason in drift.reasons:
        console.print(f"  [bold red]✗[/] {escape(reason)}")
    perf = result.performance
    if perf is not None:
        state = "[bold red]degraded[/]" if perf.degraded else "[green]ok[/]"
        console.print(
            f"Performance: {state}: {perf.metric} {fmt(perf.live)} on {perf.n_labelled} labelled "
            f"rows vs {fmt(perf.reference)} at test time "
            f"(tolerance {100 * perf.tolerance:.0f}%)"
        )
