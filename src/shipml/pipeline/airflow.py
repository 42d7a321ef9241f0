"""`shipml export airflow`: the retraining pipeline as an Airflow 3 DAG file.

DIR/shipml_<name>_retrain.py    one DAG, extract >> validate >> train >> evaluate >> gate >>
                                promote, each task calling shipml's own step function
                                (shipml.pipeline.steps) and handing its result on through XCom

The export only writes text (templates/airflow_dag.py.j2): it needs no Airflow here. The DAG
file imports Airflow (``pip install shipml[airflow]`` where it runs) and imports shipml only
inside its tasks, so parsing it stays fast. ``to_xcom`` / ``from_xcom`` are what its tasks
call to hand results on.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from jinja2 import Environment, PackageLoader, StrictUndefined, Template

from shipml.deploy.output import check_out, out_folder, write_files
from shipml.errors import ConfigError, EnvironmentFault, ShipmlError, environment_fault

if TYPE_CHECKING:
    from shipml.pipeline.steps import StepResult
    from shipml.project import Project

T = TypeVar("T", bound="StepResult")

CONFIG_ENV = "SHIPML_CONFIG"  # as `shipml serve` reads it
_FLOAT = "float"  # {"float": "nan"}: a non-finite number in XCom
_LINE_LENGTH = 100  # ruff format's line length in the exported file's lint check


def _slug(name: str) -> str:
    # A '.' or '-' in a project's name would not make an importable module name.
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def dag_id(name: str) -> str:
    """The DAG's id, also its file's name: shipml_<name>_retrain, with what in the project's
    name is not a letter, a digit or '_' as '_'."""
    return f"shipml_{_slug(name)}_retrain"


def config_variable(name: str) -> str:
    """The Airflow Variable that, when set, names the shipml.yaml the DAG runs."""
    return f"shipml_{_slug(name)}_config"


def _literal(value: str) -> str:
    """A Python string literal of ``value``, double-quoted as ruff formats it (JSON's escapes
    are Python's; non-ASCII stays as it is, so no character becomes a surrogate pair)."""
    return json.dumps(value, ensure_ascii=False)


def _config_line(path: str) -> str:
    """``CONFIG = "<path>"`` as ruff formats it: on one line where that fits in 100 columns;
    else the literal in parentheses, on a line of its own, where that fits; else (parentheses
    would not help) on one line again, too long for E501."""
    literal = _literal(path)
    line = f"CONFIG = {literal}"
    if len(line) <= _LINE_LENGTH:
        return line
    noqa = "# noqa: E501, RUF100 - the path is longer than a line"
    if len(literal) + 4 <= _LINE_LENGTH:
        return f"CONFIG = (\n    {literal}  {noqa}\n)"
    return f"{line}  {noqa}"


@lru_cache(maxsize=1)
def _template() -> Template:
    env = Environment(
        loader=PackageLoader("shipml", "templates"),
        autoescape=False,  # Python source, not HTML; values go in through the `py` filter
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["py"] = _literal
    return env.get_template("airflow_dag.py.j2")


def dag_source(project: Project, start: datetime | None = None) -> str:
    """The text of the DAG file for ``project``; its first scheduled run comes after ``start``
    (default: today, UTC)."""
    name = project.config.name
    start = start or datetime.now(UTC)
    source = _template().render(
        name=name,
        dag_id=dag_id(name),
        description=f"Retrain shipml project '{name}' and promote what passes the gate",
        config_line=_config_line(project.path.resolve().as_posix()),
        variable=config_variable(name),
        config_env=CONFIG_ENV,
        schedule=project.config.retrain.schedule,
        start=start,
    )
    try:
        compile(source, f"{dag_id(name)}.py", "exec")
    except SyntaxError as err:  # pragma: no cover - the template makes valid Python
        raise ConfigError(f"the generated DAG is not valid Python: {err}") from None
    return source


def export_airflow(project: Project, out: Path) -> Path:
    """Write the DAG file into ``out``; returns its path."""
    check_out(out, "Airflow DAG")
    source = dag_source(project)
    out_folder(out, "Airflow DAG")
    [path] = write_files({out / f"{dag_id(project.config.name)}.py": source}, "Airflow DAG")
    return path


# ----------------------------------------------------------------- what the DAG's tasks call


def to_xcom(result: StepResult) -> dict[str, Any]:
    """A step's result as XCom can store it: strict JSON, which refuses NaN and infinities (a
    metric can be NaN, e.g. ROC AUC on a holdout of one class), so those travel as
    ``{"float": "nan"}``."""
    return dict(_encode(result.to_dict()))


def from_xcom(cls: type[T], payload: dict[str, Any]) -> T:
    """The step result ``to_xcom`` made, as ``cls``."""
    return cls.from_dict(_decode(payload))


# What a task may retry: faults of the environment, which can pass (a database or tracking
# server that went away, a full disk, a killed connection, a worker short of memory). Anything
# else, an error shipml raises on purpose or an error in shipml or the data, fails the task at
# once: the same step on the same data would fail the same way, only minutes later.
_TRANSIENT_NAMES = frozenset({"OperationalError", "InterfaceError", "DisconnectionError"})


def retryable(err: BaseException) -> bool:
    """Whether ``err`` is a fault of the environment that a retry of the task may get past."""
    if isinstance(err, EnvironmentFault) or environment_fault(err) is not None:
        return True
    if isinstance(err, ShipmlError):
        return False
    link: BaseException | None = err
    seen = 0
    while link is not None and seen < 20:
        if isinstance(link, OSError | MemoryError) or type(link).__name__ in _TRANSIENT_NAMES:
            return True
        link = link.__cause__ or link.__context__
        seen += 1
    return False


def run_step(
    failure: type[Exception], run: Callable[..., StepResult], /, *args: Any, **kwargs: Any
) -> dict[str, Any]:
    """What a DAG task does: ``run(*args, **kwargs)``, its result as XCom stores it. An error
    that a retry cannot fix is raised as ``failure`` (Airflow's AirflowFailException: the task
    fails at once, without its retries) with one line saying what and how to fix it; a fault
    of the environment is raised as it is, for the task's retries."""
    try:
        return to_xcom(run(*args, **kwargs))
    except Exception as err:
        if retryable(err):
            raise
        if isinstance(err, ShipmlError):
            hint = f" ({err.hint})" if err.hint else ""
            raise failure(f"{err.message}{hint}") from err
        notes = "; ".join(getattr(err, "__notes__", []))
        raise failure(
            f"{type(err).__name__}: {err}" + (f" ({notes})" if notes else "") + " - not retried: "
            "an error in shipml or in the data fails the same way again"
        ) from err


def _encode(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return {_FLOAT: repr(value)}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if value.keys() == {_FLOAT}:
            return float(value[_FLOAT])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


__all__ = [
    "CONFIG_ENV",
    "config_variable",
    "dag_id",
    "dag_source",
    "export_airflow",
    "from_xcom",
    "retryable",
    "run_step",
    "to_xcom",
]
