"""The `shipml` command line: parses, calls one service, renders with Rich. No logic here."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from shipml import __version__
from shipml.console import console, error
from shipml.errors import ShipmlError, environment_fault

app = typer.Typer(
    name="shipml",
    help=(
        "Turn a table of data into a tracked, registered, evaluated model from one config file.\n\n"
        "Start with `shipml quickstart`, or `shipml init DATA --target COLUMN` then `shipml train`."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    add_completion=False,
)

F = TypeVar("F", bound=Callable[..., Any])

ConfigOpt = Annotated[
    Path, typer.Option("--config", "-c", help="The project's config file.", show_default=True)
]
AliasOpt = Annotated[
    str, typer.Option("--alias", help="Which registered version to use, by alias.")
]
VersionOpt = Annotated[
    int | None,
    typer.Option("--version", help="Use this version number instead of an alias.", min=1),
]


def handle_errors(func: F) -> F:
    """A user mistake, or a fault of the machine (a full disk, a read-only folder), prints one
    red line and a hint and exits 2; never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ShipmlError as err:
            error(err.message, err.hint)
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            error("interrupted")
            raise typer.Exit(130) from None
        except Exception as err:
            config = kwargs.get("config")
            project = Path(config) if config is not None else None
            store = None  # SQLite names no file: its faults are named by the project's store
            if project is not None and project.is_file():
                store = project.resolve().parent / ".shipml"
            fault = environment_fault(err, store=store)
            if fault is None:
                raise
            error(fault.message, fault.hint)
            raise typer.Exit(fault.exit_code) from None

    return wrapper  # type: ignore[return-value]


def _project(config: Path) -> Any:
    from shipml.project import Project

    return Project.load(config)


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"shipml {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Show the version."
        ),
    ] = False,
) -> None:
    """shipml: from a table to a tracked, registered, evaluated model."""


def _date_formats(given: list[str]) -> str | dict[str, str] | None:
    """--date-format values: one FORMAT for every date column, or COLUMN=FORMAT pairs."""
    if not given:
        return None
    if len(given) == 1 and "=" not in given[0]:
        return given[0]
    pairs = [g.partition("=") for g in given]
    bad = [g for g, (_, eq, fmt) in zip(given, pairs, strict=True) if not eq or not fmt]
    if bad:
        raise typer.BadParameter(
            f"{bad[0]!r}: give one format for every date column, or COLUMN=FORMAT for each",
            param_hint="--date-format",
        )
    return {column: fmt for column, _, fmt in pairs}


@app.command()
@handle_errors
def init(
    data: Annotated[
        str, typer.Argument(help="CSV or Parquet file, or a SQLAlchemy URL (with --query).")
    ],
    target: Annotated[str, typer.Option("--target", "-t", help="The column to predict.")],
    task: Annotated[str, typer.Option(help="auto, classification or regression.")] = "auto",
    name: Annotated[
        str | None, typer.Option(help="Model name (default: from the data file).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the config.")] = Path(
        "shipml.yaml"
    ),
    query: Annotated[
        str | None, typer.Option(help="SQL query, when DATA is a database URL.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing config.")] = False,
    date_format: Annotated[
        list[str] | None,
        typer.Option(
            "--date-format",
            help="How text dates are written, where the values cannot tell (04/05/2023): a "
            "strftime format for every date column ('%d/%m/%Y'), or COLUMN=FORMAT, repeated. "
            "Written to data.date_format.",
        ),
    ] = None,
) -> None:
    """Write a commented shipml.yaml inferred from the data: task and column roles.

    Examples: `shipml init data/customers.csv --target churned`,
    `shipml init orders.csv --target late --date-format 'ordered=%d/%m/%Y'`
    """
    from shipml.console import schema_table, validation_table
    from shipml.scaffold import init_project

    if task not in ("auto", "classification", "regression"):
        raise ShipmlError(f"--task must be auto, classification or regression (got {task!r})")
    result = init_project(
        data,
        target,
        None if task == "auto" else task,
        name,
        out,
        query,
        force,
        _date_formats(date_format or []),
    )
    console.print(schema_table(result.schema, f"Columns of {data} ({result.n_rows:,} rows)"))
    findings = validation_table(result.validation)
    if findings is not None:
        console.print(findings)
    console.print(
        f"[bold green]✓[/] wrote {result.path}: task [bold]{result.schema.task}[/], metric "
        f"{result.metric}. Review the column roles, then run `shipml train`."
    )
    if not result.validation.ok:
        console.print(
            "[bold red]![/] the data has fatal problems (above): `shipml train` will refuse it "
            "until they are fixed."
        )


@app.command()
@handle_errors
def train(
    config: ConfigOpt = Path("shipml.yaml"),
    data: Annotated[
        Path | None,
        typer.Option(help="Train on this CSV/Parquet file instead of the config's data."),
    ] = None,
    time_budget: Annotated[
        float | None,
        typer.Option(
            "--time-budget", help="Seconds for the whole run (default: from config).", min=1
        ),
    ] = None,
    trials: Annotated[
        int | None,
        typer.Option(
            help="Run exactly this many search trials, whatever the clock says: with the same "
            "seed, the same model (default: training.trials, else as many as the budget allows).",
            min=0,
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue an interrupted run: network fits that finished are loaded from "
            ".shipml/checkpoints/ and the one cut off goes on from its last epoch. Use the same "
            "config, data and --trials as the interrupted run.",
        ),
    ] = False,
) -> None:
    """Validate the data, cross-validate baselines and stronger models, search their
    hyperparameters with Optuna, ensemble the best, score it on the held-out split, write an
    HTML report, track everything in MLflow and register it.

    The first version becomes the champion; later ones become the challenger.

    Neural-network fits are checkpointed as they train; after an interruption (Ctrl-C, a
    killed process) `shipml train --resume` picks up where the run stopped.

    Examples: `shipml train --time-budget 60`; `shipml train --trials 20 --resume`
    """
    from shipml.console import train_progress, train_summary

    project = _project(config)
    if trials is not None:
        project.config.training.trials = trials
    if project.unshared_artifacts:
        console.print(
            "[yellow]warning:[/] tracking_uri is a database server, but the artifacts (models, "
            f"reports) go to {project.root / '.shipml' / 'artifacts'} on this machine only: set "
            "artifact_location in shipml.yaml (s3://bucket/path, or a shared folder) so other "
            "machines can load them",
            soft_wrap=True,
        )
    try:
        with train_progress() as progress:
            result = project.train(
                time_budget=time_budget, data=data, on_event=progress, resume=resume
            )
    except KeyboardInterrupt:
        error(
            "training interrupted",
            "`shipml train --resume` (same config and --trials) continues from the "
            "checkpoints of its network fits",
        )
        raise typer.Exit(130) from None
    train_summary(result)


@app.command()
@handle_errors
def models(
    config: ConfigOpt = Path("shipml.yaml"),
    version: VersionOpt = None,
    manifest: Annotated[
        bool,
        typer.Option(
            "--manifest",
            help="Print the version's manifest (config, data fingerprint, seeds, code, "
            "packages, search, metrics) as JSON, checked against its registered digest.",
        ),
    ] = False,
) -> None:
    """List the registered versions with their aliases and key metrics; with `--version N
    --manifest`, what version N was built from.

    Examples: `shipml models`; `shipml models --version 3 --manifest > v3.json`
    """
    from shipml.console import versions_table

    project = _project(config)
    if manifest:
        from shipml import registry

        if version is None:
            raise typer.BadParameter("--manifest needs --version N")
        typer.echo(json.dumps(registry.load_manifest(project.store, version), indent=2))
        return
    versions = project.models()
    if not versions:
        console.print(f"No versions of '{project.config.name}' yet: run `shipml train`.")
        return
    console.print(versions_table(project.config.name, versions))


def _ref(alias: str, version: int | None) -> str | int:
    return version if version is not None else alias


def _check_table_out(out: Path) -> None:
    """An --out that `predict` cannot write, refused as the command starts."""
    if not out.name.lower().endswith((".csv", ".parquet", ".pq")):
        raise ShipmlError(f"--out {out}: use a .csv or .parquet file name")
    if not out.parent.exists():
        raise ShipmlError(f"--out {out}: folder {out.parent} does not exist", "create it first")


@app.command()
@handle_errors
def predict(
    input: Annotated[
        Path,
        typer.Argument(
            help="CSV or Parquet file to score; for an image model also an image folder, an "
            "image file or an .npz of X."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .csv or .parquet file.")],
    config: ConfigOpt = Path("shipml.yaml"),
    alias: AliasOpt = "champion",
    version: VersionOpt = None,
    allow_extra: Annotated[
        bool, typer.Option(help="Carry columns the model has never seen through to the output.")
    ] = False,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Refuse the whole input at the first value that cannot be read, instead of "
            "scoring it as missing (listed in OUT.issues.json).",
        ),
    ] = False,
) -> None:
    """Score a file with a registered model: the input columns plus `prediction`, and for
    classification `probability` and one `proba_<class>` column per class.

    A value a column cannot read (text in a numeric column, 3 in a yes/no column) is scored as
    missing, with a warning and a count per column in `OUT.issues.json`; `--strict` refuses.

    Examples: `shipml predict new.csv --out scored.csv`; for an image model,
    `shipml predict photos/ --out scored.csv` (one row per image: `file`, `prediction`, ...).
    """
    _check_table_out(out)  # before seconds of loading
    from shipml.scoring import score_input, write_issues, write_table

    project = _project(config)
    model = project.load_model(_ref(alias, version), fast=True)
    result = score_input(model, input, allow_extra, strict, project.config.data.encoding)
    scored = result.table
    write_table(scored, out)
    issues = write_issues(result, str(input), out)
    counts = (
        scored["prediction"].value_counts().head(5)
        if model.schema.task == "classification"
        else None
    )
    read_as = f" (read as {result.encoding})" if result.encoding else ""
    console.print(
        f"[bold green]✓[/] scored {len(scored):,} rows of {input}{read_as} with version "
        f"{model.version} → {out}"
    )
    for problem in result.unreadable:
        console.print(f"! {problem.message(str(input))}", style="yellow", markup=False)
    if issues is not None:
        console.print(f"  counts per column: {issues} (pass --strict to refuse such input instead)")
    if counts is not None:
        console.print("  predictions: " + ", ".join(f"{k}: {v:,}" for k, v in counts.items()))


@app.command()
@handle_errors
def evaluate(
    data: Annotated[Path, typer.Argument(help="Labelled CSV or Parquet file (with the target).")],
    config: ConfigOpt = Path("shipml.yaml"),
    alias: AliasOpt = "champion",
    version: VersionOpt = None,
) -> None:
    """A registered model's metrics on new labelled data, beside its test metrics at training.

    Example: `shipml evaluate labelled.csv`
    """
    from shipml.console import evaluation_table
    from shipml.data.sources import read_data_file

    project = _project(config)
    result = project.evaluate(
        read_data_file(data, project.config.data), _ref(alias, version), source=str(data)
    )
    console.print(evaluation_table(result, data.name))
    reports = project.root / ".shipml" / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    path = reports / f"evaluation-v{result.version}-{stamp}.json"
    payload = {
        "version": result.version,
        "data": str(data),
        "rows": result.n_rows,
        "metrics": result.metrics,
        "reference": result.reference,
        **result.extras,
    }
    path.write_text(json.dumps(payload, indent=2, default=str))
    console.print(f"  saved {path}")


@app.command()
@handle_errors
def promote(
    version: Annotated[int, typer.Argument(help="The version to make champion.", min=1)],
    config: ConfigOpt = Path("shipml.yaml"),
) -> None:
    """Make a version the champion (the model `predict`, `evaluate` and serving use).

    Example: `shipml promote 2`
    """
    project = _project(config)
    previous = project.promote(version)
    if previous == version:
        console.print(f"version {version} is already the champion: nothing changed.")
        return
    was = f" (was version {previous})" if previous is not None else ""
    console.print(f"[bold green]✓[/] version {version} is now the champion{was}.")


@app.command()
@handle_errors
def rollback(config: ConfigOpt = Path("shipml.yaml")) -> None:
    """Move the champion back to the version that was champion before it.

    Example: `shipml rollback`
    """
    project = _project(config)
    old, new = project.rollback()
    console.print(f"[bold green]✓[/] champion rolled back from version {old} to version {new}.")


@app.command()
@handle_errors
def report(
    config: ConfigOpt = Path("shipml.yaml"),
    alias: AliasOpt = "champion",
    version: VersionOpt = None,
    open_: Annotated[
        bool, typer.Option("--open", help="Also open the report in the default web browser.")
    ] = False,
) -> None:
    """Print the path of a version's HTML training report (one self-contained file: data
    summary, validation findings, leaderboard, test metrics, diagnostic plots, feature
    importance, learning curves and the search history).

    A report that is not in this project's .shipml/reports/ (a version trained on another
    machine against a shared tracking server) is fetched from the version's MLflow run.

    Example: `shipml report --version 2 --open`
    """
    project = _project(config)
    path = project.report(_ref(alias, version))
    print(path)
    if open_:
        import webbrowser

        if not webbrowser.open(path.as_uri()):
            console.print("[yellow]no web browser found: open the file above by hand[/]")


@app.command()
@handle_errors
def ui(
    config: ConfigOpt = Path("shipml.yaml"),
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 5000,
) -> None:
    """Serve the MLflow UI on the project's store (runs, metrics, artifacts, registry) and
    print its address: the project's training runs, and its registered model. With an MLflow
    tracking server as tracking_uri, print the server's own UI instead.

    Ctrl+C or SIGTERM stops the UI server and all its worker processes.

    Example: `shipml ui --port 5000`, then browse the runs address it prints
    """
    from shipml.tracking_ui import serve_until_stopped

    project = _project(config)
    where = project.ui(host, port)
    name = project.config.name
    if where.command is None:
        console.print(f"'{name}' is tracked on the MLflow server {where.base_url}:", markup=False)
    else:
        console.print(f"MLflow UI for '{name}' (Ctrl+C stops it):", markup=False)
    console.print(f"  runs:     {where.runs_url}", markup=False, soft_wrap=True)
    console.print(f"  registry: {where.models_url}", markup=False, soft_wrap=True)
    if where.command is not None:
        raise typer.Exit(serve_until_stopped(where.command, where.environment))


@app.command()
@handle_errors
def serve(
    config: ConfigOpt = Path("shipml.yaml"),
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    workers: Annotated[
        int, typer.Option(help="Worker processes (about one per core).", min=1, max=64)
    ] = 1,
    access_log: Annotated[
        bool, typer.Option("--access-log/--no-access-log", help="Log every request line.")
    ] = False,
) -> None:
    """Serve the champion over HTTP: POST /predict and /predict/batch, GET /ready, /model,
    /metrics (Prometheus), POST /feedback; API docs at /docs.

    The champion loads in the background (/ready is 503 until then). When the champion alias
    moves (`shipml promote`, a new training), running servers load the new version and swap
    it in without failing a request. Every answered prediction is logged under
    .shipml/predictions/.

    Example: `shipml serve --port 8000`, then `curl -X POST localhost:8000/predict
    -H 'Content-Type: application/json' -d '{"features": {...}}'`
    """
    from shipml.serving.run import check_port, prepare
    from shipml.serving.run import serve as run_server

    project = _project(config)
    check_port(host, port)
    warning = prepare(project, workers)
    if warning:
        console.print(f"[yellow]note:[/] {warning}")
    console.print(
        f"Serving '{project.config.name}' on http://{host}:{port} with {workers} worker"
        f"{'s' if workers > 1 else ''} (API docs: /docs; Ctrl+C stops it)"
    )
    run_server(project, host, port, workers, access_log)


def _since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"'{text}' is not an ISO date or time (e.g. 2026-11-26 or 2026-11-26T08:00)",
            param_hint="--since",
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@app.command()
@handle_errors
def monitor(
    current: Annotated[
        Path | None,
        typer.Option("--current", help="CSV or Parquet file of current data (read in chunks)."),
    ] = None,
    from_log: Annotated[
        bool, typer.Option("--from-log", help="Check the latest logged predictions instead.")
    ] = False,
    reference: Annotated[
        Path | None,
        typer.Option(
            "--reference",
            help="Compare with this file instead of the model's reference profile "
            "(no project needed).",
        ),
    ] = None,
    window: Annotated[
        int | None,
        typer.Option(
            "--window",
            help="With --from-log: the latest N rows [default: monitoring.window].",
            min=1,
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="With --from-log: rows logged at or after this ISO time."),
    ] = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Write an HTML report to this file.")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the result as JSON to this file.")
    ] = None,
    fail_on_drift: Annotated[
        bool,
        typer.Option(
            "--fail-on-drift",
            help="Exit 1 when the dataset drifted, by the rule printed (for CI, cron).",
        ),
    ] = False,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="shipml, or evidently: also write Evidently's own report (--report) "
            "[needs `pip install shipml[evidently]`].",
        ),
    ] = "shipml",
    config: ConfigOpt = Path("shipml.yaml"),
    alias: AliasOpt = "champion",
    version: VersionOpt = None,
) -> None:
    """Data drift, prediction drift and live performance of current data against the model's
    training data (its reference profile, stored with every version).

    Per column: Kolmogorov–Smirnov / chi-squared / z-test p-values for references of up to
    1,000 rows, Wasserstein (normed) / Jensen–Shannon distances above that (Evidently's
    defaults), PSI beside them. The dataset drifts when at least `monitoring.drift_share` of
    the columns drift, or any of the model's `monitoring.important_columns` most important
    columns does (permutation importance at training); the output prints the rule. Labels
    in the file (or sent to /feedback) give live metrics against the
    test-time metrics.

    Examples: `shipml monitor --current new.csv --report drift.html`,
    `shipml monitor --from-log --window 5000 --fail-on-drift`,
    `shipml monitor --reference train.csv --current new.csv`
    """
    from shipml.console import monitor_summary
    from shipml.monitoring.service import run_monitor

    if (current is None) == (not from_log):
        raise typer.BadParameter("give exactly one of --current FILE or --from-log")
    if window is not None and since is not None:
        raise typer.BadParameter("give --window N or --since TIME, not both")
    if (window is not None or since is not None) and not from_log:
        raise typer.BadParameter("--window and --since choose rows of the log: add --from-log")
    if engine not in ("shipml", "evidently"):
        raise typer.BadParameter("use shipml or evidently", param_hint="--engine")
    if engine == "evidently" and report is None:
        raise typer.BadParameter("--engine evidently writes a report: give --report FILE.html")
    since_time = _since(since)
    project = None if reference is not None and not config.exists() else _project(config)
    with console.status("Checking drift…") as status:
        result, saved = run_monitor(
            project,
            current=current,
            reference=reference,
            window=window,
            since=since_time,
            ref=_ref(alias, version),
            report=report,
            json_out=json_out,
            engine=engine,
            progress=lambda text: status.update(f"Checking drift: {text}"),
        )
    monitor_summary(result)
    for label, path in saved.items():
        console.print(f"  {label}: {path}")
    if (
        project is not None
        and result.drift.dataset_drift
        and project.config.monitoring.retrain_on_drift
    ):
        console.print(
            "[bold yellow]drift[/]: monitoring.retrain_on_drift is on: running the retraining "
            "pipeline on the configured data"
        )
        _retrain(project.path)
    if fail_on_drift and result.drift.dataset_drift:
        raise typer.Exit(1)


def _retrain(
    config: Path,
    data: Path | None = None,
    time_budget: float | None = None,
    trials: int | None = None,
    allow_schema_change: bool | None = None,
) -> Any:
    from shipml.console import pipeline_progress, pipeline_summary
    from shipml.pipeline.local import run_pipeline

    with pipeline_progress() as progress:
        result = run_pipeline(
            config,
            data=data,
            time_budget=time_budget,
            trials=trials,
            allow_schema_change=allow_schema_change,
            on_event=progress,
        )
    pipeline_summary(result)
    return result


@app.command()
@handle_errors
def retrain(
    config: ConfigOpt = Path("shipml.yaml"),
    data: Annotated[
        Path | None,
        typer.Option(help="The new batch: a CSV/Parquet file instead of the config's data."),
    ] = None,
    time_budget: Annotated[
        float | None,
        typer.Option(
            "--time-budget",
            help="Seconds for training (default: retrain.time_budget_s, else training's).",
            min=1,
        ),
    ] = None,
    trials: Annotated[
        int | None, typer.Option(help="Run exactly this many search trials.", min=0)
    ] = None,
    allow_schema_change: Annotated[
        bool,
        typer.Option(
            "--allow-schema-change",
            help="Accept a batch whose columns or types differ from the champion's.",
        ),
    ] = False,
    fail_on_gate: Annotated[
        bool,
        typer.Option("--fail-on-gate", help="Exit 1 when the challenger fails the gate."),
    ] = False,
) -> None:
    """Run the retraining pipeline once: extract the new batch (for SQL with
    `data.watermark_column`, the rows past the last promoted retrain), validate it (data checks,
    schema against the champion's), train a challenger, evaluate it beside the champion on the
    same holdout and the latest labelled feedback, gate it, and promote it if it passed.

    The gate (`gate:` in shipml.yaml): `min` an absolute floor; `must_beat_champion` a paired
    bootstrap of challenger minus champion whose lower confidence bound must not be worse
    than `tolerance`. The decision and its evidence are recorded in MLflow. A challenger that
    fails stays registered and never becomes champion. Running servers switch to a promoted
    champion on their own; `shipml rollback` undoes a promotion.

    Examples: `shipml retrain`; `shipml retrain --data new_batch.csv --fail-on-gate`
    """
    result = _retrain(config, data, time_budget, trials, True if allow_schema_change else None)
    if fail_on_gate and not result.passed:
        raise typer.Exit(1)


@app.command()
@handle_errors
def schedule(
    config: ConfigOpt = Path("shipml.yaml"),
    cron: Annotated[
        str | None,
        typer.Option(
            help="Cron schedule in UTC (default: retrain.schedule), e.g. '0 3 * * *'; a "
            "sixth field gives seconds."
        ),
    ] = None,
    max_runs: Annotated[
        int | None, typer.Option("--max-runs", help="Stop after this many runs.", min=1)
    ] = None,
) -> None:
    """Run `shipml retrain` on a cron schedule, in the foreground, until stopped (Ctrl-C or
    SIGTERM; run it under systemd, supervisord or `nohup` to keep it going). A failed run is
    logged and the schedule goes on; every run is one JSON line in
    .shipml/pipeline/schedule.jsonl.

    Example: `shipml schedule --cron '0 3 * * *'`
    """
    import signal

    from shipml.pipeline.local import run_schedule

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)

    def on_event(kind: str, **info: Any) -> None:
        if kind == "waiting":
            console.print(f"[dim]next run at {info['until']:%Y-%m-%d %H:%M:%S} UTC[/]")
        elif kind == "run_done":
            record = info["record"]
            console.print(
                f"[bold]{record['started'][:19]}[/] {record['status']}"
                + (f": {record['error']}" if record.get("error") else "")
                + f" ({record['seconds']}s)"
            )
            for reason in record.get("reasons") or []:
                console.print(f"  {reason}")

    try:
        runs = run_schedule(config, cron, max_runs, on_event)
    except KeyboardInterrupt:
        console.print("schedule stopped.")
        return
    console.print(f"[bold green]✓[/] {runs} scheduled run(s) done.")


@app.command()
@handle_errors
def reproduce(
    version: Annotated[int, typer.Argument(help="The registered version to rebuild.", min=1)],
    config: ConfigOpt = Path("shipml.yaml"),
    data: Annotated[
        Path | None,
        typer.Option(help="The table to rebuild from (default: the manifest's source)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Scratch folder for the rebuild (default: a new temporary one)."),
    ] = None,
) -> None:
    """Rebuild a version from its manifest and check the rebuild: same data (refused when its
    fingerprint differs), the recorded seeds and number of trials, in a scratch project with
    its own store (the registry's aliases are never touched); then the rebuilt model's test
    metrics and test-split predictions against the original's.

    Exit 0 when every difference is within `reproduce.tolerance`, 1 otherwise. Packages whose
    versions differ from training are listed as a warning.

    Example: `shipml reproduce 3`
    """
    from shipml.console import reproduction_table, train_progress
    from shipml.reproduce import reproduce as rebuild

    project = _project(config)
    with train_progress() as progress:
        result = rebuild(project, version, data=data, out=out, on_event=progress)
    reproduction_table(result)
    if not result.ok:
        raise typer.Exit(1)


export_app = typer.Typer(
    help="Write files that run the project elsewhere: dashboards, containers, pipelines.",
    no_args_is_help=True,
)
app.add_typer(export_app, name="export")

OutOpt = Annotated[Path, typer.Option("--out", help="Folder to write into (created if missing).")]


@export_app.command("grafana")
@handle_errors
def export_grafana(out: OutOpt, config: ConfigOpt = Path("shipml.yaml")) -> None:
    """A Grafana dashboard of the service's Prometheus metrics (traffic, errors, latency,
    confidence, drift), with provisioning files for Grafana and a Prometheus data source, and
    DIR/prometheus.yml: a Prometheus scrape config for the service.

    Every series carries model="<name>": the dashboard shows one model at a time ($model), so
    one Prometheus may scrape several services. Mount DIR/provisioning at
    /etc/grafana/provisioning and the dashboard JSON at /var/lib/grafana/dashboards; set the
    Prometheus URL in provisioning/datasources and the service's address in prometheus.yml.

    Example: `shipml export grafana --out grafana/`
    """
    from shipml.deploy.grafana import export_grafana as write

    project = _project(config)
    for path in write(out, project.config.name, project.config.deploy.port):
        console.print(f"  wrote {path}")


@export_app.command("lock")
@handle_errors
def export_lock(out: OutOpt) -> None:
    """The Python environment as exact pins (DIR/requirements.lock).

    Every installed distribution as name==version, so a reproduction (or an image) installs
    the versions that trained the model. shipml itself, installed from its source folder, is
    named in a comment; PyTorch's CPU or CUDA builds bring their index (--extra-index-url).

    Reproduce with `pip install -r DIR/requirements.lock` on the same Python minor version.

    Example: `shipml export lock --out deploy/`
    """
    from shipml.deploy.lock import export_lock as write

    console.print(f"  wrote {write(out)}")


@export_app.command("docker")
@handle_errors
def export_docker(out: OutOpt, config: ConfigOpt = Path("shipml.yaml")) -> None:
    """The build context of the champion's serving image.

    A Dockerfile (python slim, a non-root user, HEALTHCHECK on /health, CMD `shipml serve
    --host 0.0.0.0`), .dockerignore, pinned requirements.txt, shipml's wheel, shipml.yaml and
    the champion in a store of its own under DIR/.shipml/, so the image serves without the
    project. When tracking_uri is an MLflow or database server, the model is not copied: the
    server pulls the champion from it at start.

    Example: `shipml export docker --out docker/ && docker build -t churn:v3 docker/`
    """
    from shipml.deploy.docker import export_docker as write

    project = _project(config)
    with console.status("Exporting the champion and building shipml's wheel"):
        result = write(project, out)
    for path in result.files:
        console.print(f"  wrote {path}")
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    model = f"version {result.version} baked in" if result.baked else "pulled from the registry"
    port = project.config.deploy.port
    console.print(f"Model: {model}. Build and run:")
    console.print(f"  docker build -t {result.image} {out}")
    console.print(f"  docker run --rm -p {port}:{port} {result.image}")


@export_app.command("k8s")
@handle_errors
def export_k8s(
    out: OutOpt,
    config: ConfigOpt = Path("shipml.yaml"),
    image: Annotated[
        str | None, typer.Option(help="Image to run (default: deploy.image, else NAME:vN).")
    ] = None,
    replicas: Annotated[int | None, typer.Option(help="Pods to start with.")] = None,
    cpu: Annotated[str | None, typer.Option(help="CPU requested per pod, e.g. 500m.")] = None,
    memory: Annotated[str | None, typer.Option(help="Memory requested per pod, e.g. 1Gi.")] = None,
) -> None:
    """Kubernetes manifests that run the serving image.

    A Deployment (probes on /health and /ready, requests and limits, rolling updates with
    maxUnavailable 0, non-root), a Service, a HorizontalPodAutoscaler on CPU and a ConfigMap
    with shipml.yaml. Values come from the deploy section of shipml.yaml; options override it.

    Example: `shipml export k8s --out k8s/ --image registry.example.com/churn:v3 && kubectl apply
    -f k8s/`
    """
    from shipml.deploy.bundle import loopback_note
    from shipml.deploy.k8s import export_k8s as write
    from shipml.deploy.k8s import with_overrides

    project = _project(config)
    deploy = with_overrides(
        project.config.deploy, image=image, replicas=replicas, cpu=cpu, memory=memory
    )
    for path in write(project, out, deploy):
        console.print(f"  wrote {path}")
    note = loopback_note(project.config.tracking_uri)
    if note:
        console.print(f"[yellow]warning:[/] {note}")
    console.print(f"Apply: kubectl apply -f {out}")


@export_app.command("airflow")
@handle_errors
def export_airflow(out: OutOpt, config: ConfigOpt = Path("shipml.yaml")) -> None:
    """The retraining pipeline as an Airflow 3 DAG (DIR/shipml_NAME_retrain.py).

    Tasks extract >> validate >> train >> evaluate >> gate >> promote call shipml's own step
    functions, the ones `shipml retrain` runs, and hand results on through XCom. A challenger
    that fails the gate fails the run: promote does not run and the champion stays.
    retrain.schedule is the DAG's schedule (UTC); unset, runs start when triggered.

    Put the file in Airflow's dags folder. The workers need shipml installed and the project's
    folder at the same path; the config a run uses is the Airflow Variable shipml_NAME_config
    when set, else $SHIPML_CONFIG, else this config's absolute path.

    Example: `shipml export airflow --out ~/airflow/dags/`
    """
    from shipml.pipeline.airflow import config_variable, dag_id
    from shipml.pipeline.airflow import export_airflow as write

    project = _project(config)
    console.print(f"  wrote {write(project, out)}")
    name = project.config.name
    schedule = project.config.retrain.schedule
    console.print(
        f"DAG {dag_id(name)}: "
        + (f"runs on '{schedule}' (UTC)" if schedule else "no schedule, runs when triggered")
        + f"; config {project.path.resolve()} (Variable {config_variable(name)} overrides it)."
    )
    console.print(f"Try it: airflow dags test {dag_id(name)}")


@export_app.command("kubeflow")
@handle_errors
def export_kubeflow(
    out: OutOpt,
    config: ConfigOpt = Path("shipml.yaml"),
    image: Annotated[
        str | None,
        typer.Option(help="Image every step runs in (default: deploy.image, else NAME:vN)."),
    ] = None,
) -> None:
    """The retraining pipeline for Kubeflow Pipelines (kfp v2): DIR/pipeline.py, its source,
    and DIR/shipml_NAME_retrain.yaml, what kfp's compiler makes of it.

    Six lightweight Python components, extract → validate → train → evaluate → gate →
    promote, each calling shipml's own step function in the serving image (`shipml export
    docker`) and handing its result on as JSON. The gate task fails when the challenger fails
    the gate, so promote does not run. The `config` parameter defaults to this project's
    shipml.yaml: mount the project's folder at that path in every step. Edit pipeline.py and
    run it to recompile. Needs `pip install "shipml[kubeflow]"`.

    Example: `shipml export kubeflow --out kubeflow/`, then upload the YAML in the Kubeflow UI
    """
    from shipml.pipeline.kubeflow import export_kubeflow as write

    project = _project(config)
    written = write(project, out, image)
    for path in written:
        console.print(f"  wrote {path}")
    console.print(
        f"Upload {written[-1].name} in the Kubeflow Pipelines UI; "
        f"edit {written[0].name} and run it to recompile."
    )


@app.command()
@handle_errors
def quickstart(
    dir: Annotated[Path, typer.Option("--dir", help="Folder for the demo project.")] = Path(
        "shipml-quickstart"
    ),
    time_budget: Annotated[
        float, typer.Option("--time-budget", help="Seconds for each training run.", min=5)
    ] = 60.0,
) -> None:
    """Run the whole loop on bundled demo data: init → train → models → predict → evaluate →
    train again → promote → rollback, and print where everything is.

    Example: `shipml quickstart --dir /tmp/demo`
    """
    from shipml.quickstart import run_quickstart

    run_quickstart(dir, time_budget)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
