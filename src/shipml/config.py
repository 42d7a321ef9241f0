"""The shipml.yaml config: pydantic models, loading, and errors that name the key path."""

from __future__ import annotations

import codecs
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shipml.errors import ConfigError

Task = Literal["classification", "regression"]

CLASSIFICATION_METRICS = (
    "roc_auc",
    "accuracy",
    "balanced_accuracy",
    "f1_macro",
    "f1_weighted",
    "precision_macro",
    "recall_macro",
    "log_loss",
)
REGRESSION_METRICS = ("rmse", "mae", "r2", "mape")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ImagesConfig(_Strict):
    """How an image folder becomes rows: every image at ``size`` (height, width) with
    ``channels`` (1 or 3); images of another size are resized, or refused (on_mismatch: error)."""

    size: tuple[int, int] | None = None  # default: the most common size in the folder
    channels: Literal[1, 3] | None = None  # default: 1 when every image is grayscale, else 3
    on_mismatch: Literal["resize", "error"] = "resize"


class DataConfig(_Strict):
    """Where the training table comes from: a file (CSV/Parquet), an image folder (one
    sub-folder per class) or an .npz of images, or a SQL query."""

    path: str | None = None
    url: str | None = None
    query: str | None = None
    images: ImagesConfig = Field(default_factory=ImagesConfig)
    # SQL: a column that grows with new rows (a timestamp, an id). `shipml retrain` extracts
    # only the rows past the highest value of the last promoted retrain.
    watermark_column: str | None = None
    # Text encoding of CSV files: "auto" reads UTF-8 (with or without a byte-order mark) and
    # otherwise detects it (Windows-1252/Latin-1 for Western text); or a codec name ("cp1252").
    encoding: str = "auto"
    # How text dates are read: one strftime format for every date column ("%d/%m/%Y"), or one
    # per column ({order_date: "%d/%m/%Y"}); columns not named get one format inferred.
    date_format: str | dict[str, str] | None = None

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        if value != "auto":
            try:
                codecs.lookup(value)
            except LookupError:
                raise ValueError(
                    f"unknown encoding '{value}': use auto, or a codec name such as utf-8, "
                    "cp1252 or latin-1"
                ) from None
        return value

    @field_validator("date_format")
    @classmethod
    def _strftime_format(cls, value: str | dict[str, str] | None) -> Any:
        for fmt in [value] if isinstance(value, str) else (value or {}).values():
            if fmt != "ISO8601" and "%" not in fmt:
                raise ValueError(
                    f"'{fmt}' is not a date format: give a strftime format such as %d/%m/%Y "
                    "(or ISO8601)"
                )
        return value

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if self.path and (self.url or self.query):
            raise ValueError("give either 'path' or 'url' + 'query', not both")
        if not self.path and not self.url:
            raise ValueError("give 'path' (CSV or Parquet file) or 'url' + 'query' (SQL)")
        if self.url and not self.query:
            raise ValueError("a SQL source needs 'query' as well as 'url'")
        if self.watermark_column and not self.url:
            raise ValueError("watermark_column works with a SQL source ('url' + 'query')")
        return self


class FeaturesConfig(_Strict):
    """Column roles. Columns not listed anywhere are inferred from the data."""

    exclude: list[str] = Field(default_factory=list)
    numeric: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)
    boolean: list[str] = Field(default_factory=list)
    datetime: list[str] = Field(default_factory=list)
    text: list[str] = Field(default_factory=list)
    derived: dict[str, str] = Field(default_factory=dict)
    max_categories: int = Field(default=30, ge=2)
    min_category_frequency: int = Field(default=5, ge=1)


class SplitConfig(_Strict):
    test_size: float = Field(default=0.2, gt=0.0, lt=1.0)
    seed: int = 42
    time_column: str | None = None


class TrainingConfig(_Strict):
    models: Literal["auto"] | list[str] = "auto"
    # false: the baselines are not trained, so the model is of a family in `models` (they still
    # run when named there).
    baselines: bool = True
    cv: int = Field(default=5, ge=2, le=20)
    metric: str | None = None
    time_budget_s: float = Field(default=120.0, gt=0)
    seed: int = 42
    # optuna: TPE search per family after the defaults; grid: every param_grid combination;
    # none: the defaults only.
    search: Literal["optuna", "grid", "none"] = "optuna"
    # A fixed number of search trials (beyond the defaults): the clock no longer stops the
    # search, so a fixed seed reproduces the result.
    trials: int | None = Field(default=None, ge=0, le=100_000)
    # For search: grid. Either {family: {param: [values]}} or, cheat-sheet style, {param: [values]}
    # for every family that takes all those parameters.
    param_grid: dict[str, Any] = Field(default_factory=dict)
    # Fixed hyperparameters per family, {random_forest: {n_estimators: 100}}: they replace the
    # family's defaults and hold in every search trial.
    params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    ensemble: bool = True
    # A second layer (LightGBM on the columns plus the best families' out-of-fold predictions),
    # cross-validated like any candidate; it needs ensemble: true and one pass of k folds. Off
    # by default: cross-fitted, its score is honest, but at a 60 s budget it bought nothing
    # measurable on the benchmark tables (see the README).
    stack: bool = False
    class_weight: Literal["auto", "balanced", "none"] = "auto"
    # Regression: auto cross-validates a non-negative, right-skewed target both ways (as is and
    # log1p) on the first strong family and keeps the log only where it scores better; log
    # always learns log1p (the target must be >= 0); none never does.
    target_transform: Literal["auto", "log", "none"] = "auto"
    # Binary problems: auto picks the decision threshold on out-of-fold predictions; none keeps
    # 0.5; a number fixes it.
    threshold: Literal["auto", "none"] | float = "auto"
    # Network fits (mlp, cnn, keras) save their training state to .shipml/checkpoints/ at most this
    # often, in seconds (0: every epoch; null: never), for `shipml train --resume`.
    checkpoint_every_s: float | None = Field(default=5.0, ge=0)

    @field_validator("threshold")
    @classmethod
    def _threshold_in_range(cls, value: str | float) -> str | float:
        if isinstance(value, float) and not 0.0 < value < 1.0:
            raise ValueError("a fixed threshold must be between 0 and 1")
        return value

    @model_validator(mode="after")
    def _grid_needs_search_grid(self) -> TrainingConfig:
        if self.search == "grid" and not self.param_grid:
            raise ValueError("search: grid needs a param_grid, e.g. {n_estimators: [100, 300]}")
        if self.param_grid and self.search != "grid":
            raise ValueError("param_grid is only used with search: grid; set search: grid")
        return self

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str | None) -> str | None:
        if value is not None and value not in CLASSIFICATION_METRICS + REGRESSION_METRICS:
            known = ", ".join(CLASSIFICATION_METRICS + REGRESSION_METRICS)
            raise ValueError(f"unknown metric '{value}'; use one of: {known}")
        return value


class ValidationConfig(_Strict):
    max_missing_share: float = Field(default=0.5, ge=0.0, le=1.0)
    leakage_threshold: float = Field(default=0.98, gt=0.5, le=1.0)
    imbalance_ratio: float = Field(default=0.1, gt=0.0, lt=1.0)
    min_rows: int = Field(default=20, ge=2)


class GateConfig(_Strict):
    """When a retrained version may replace the champion (`shipml retrain`), judged on the
    new data's test split: ``min`` an absolute floor (a ceiling for error metrics such as
    rmse); ``must_beat_champion`` a paired bootstrap of challenger minus champion on the same
    rows, passed when the lower end of its ``confidence`` interval is no worse than
    ``tolerance`` (a share of the champion's value)."""

    metric: str | None = None  # default: the training metric
    min: float | None = None
    must_beat_champion: bool = True
    tolerance: float = Field(default=0.01, ge=0.0, le=1.0)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    bootstrap: int = Field(default=1000, ge=100, le=100_000)

    @field_validator("metric")
    @classmethod
    def _known_gate_metric(cls, value: str | None) -> str | None:
        if value is not None and value not in CLASSIFICATION_METRICS + REGRESSION_METRICS:
            known = ", ".join(CLASSIFICATION_METRICS + REGRESSION_METRICS)
            raise ValueError(f"unknown metric '{value}'; use one of: {known}")
        return value


class ReproduceConfig(_Strict):
    """`shipml reproduce`: how close a rebuild must come (test metrics, probabilities; for
    regression predictions, relative to max(1, |value|))."""

    tolerance: float = Field(default=1e-6, ge=0.0, le=1.0)


class RetrainConfig(_Strict):
    """`shipml retrain` and `shipml schedule`: the pipeline extract → validate → train →
    evaluate → gate → promote."""

    schedule: str | None = None  # cron, e.g. "0 3 * * *" (03:00 every day), in UTC
    time_budget_s: float | None = Field(default=None, gt=0)  # default: training.time_budget_s
    # A new batch whose columns or types differ from the champion's stops the pipeline unless
    # this is true (the change is intended).
    allow_schema_change: bool = False
    keep_runs: int = Field(default=20, ge=1, le=10_000)  # pipeline run folders kept

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            from croniter import croniter

            if not croniter.is_valid(value):
                raise ValueError(
                    f"'{value}' is not a cron schedule; use five fields: minute hour "
                    "day-of-month month day-of-week, e.g. '0 3 * * *'"
                )
        return value


class RateLimitConfig(_Strict):
    """Requests a second per client address; each server process counts its own, so with N
    workers a client may get up to N times the rate."""

    per_second: float = Field(gt=0.0, le=1_000_000.0, description="requests a second, sustained")
    burst: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="requests taken at once before the rate applies; default: per_second, "
        "at least 1",
    )

    @property
    def bucket(self) -> int:
        return self.burst if self.burst is not None else max(1, int(self.per_second))


class RateLimitsConfig(_Strict):
    """Rate limits per client address (a 429 answer with Retry-After past them); null: none."""

    predict: RateLimitConfig | None = Field(
        default=None, description="/predict and /predict/batch together; default: no limit"
    )
    feedback: RateLimitConfig | None = Field(
        default_factory=lambda: RateLimitConfig(per_second=50.0, burst=200),
        description="/feedback; default: 50 a second, bursts of 200",
    )


class ColumnBounds(_Strict):
    """The values a numeric input column accepts; a missing end is unbounded."""

    min: float | None = Field(default=None, allow_inf_nan=False)
    max: float | None = Field(default=None, allow_inf_nan=False)

    @model_validator(mode="after")
    def _ordered(self) -> ColumnBounds:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self


class InputBoundsConfig(_Strict):
    """The numbers /predict and /predict/batch accept per numeric column: the training range
    (from the served version's reference profile) widened by ``margin`` on each side, or the
    bounds given per column. A number outside is a 422 naming the column and the range."""

    enabled: bool = Field(default=True, description="false: any finite number is accepted")
    margin: float = Field(
        default=10.0,
        ge=0.0,
        le=1e6,
        description="how far past the training range a number may be, in training ranges "
        "(max - min; for a constant column, its magnitude or 1): 10 accepts "
        "[min - 10 * range, max + 10 * range], wide enough for drift to reach monitoring, "
        "narrow enough to keep absurd numbers out",
    )
    columns: dict[str, ColumnBounds] = Field(
        default_factory=dict,
        description="per-column bounds that replace the training range's, e.g. "
        "{amount: {min: 0, max: 100000}}",
    )


class ServingConfig(_Strict):
    log_predictions: bool = True
    # Requests: a body over max_body_bytes is 413; a batch over max_batch_rows is 422.
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    max_batch_rows: int = Field(default=10_000, ge=1, le=1_000_000)
    # How often each server process checks whether the champion alias moved.
    reload_interval_s: float = Field(default=2.0, gt=0.0, le=3600.0)
    # A server whose tracking_uri is a registry server checks it answers before it starts:
    # each try waits registry_timeout_s, then registry_retry_wait_s before the next, for
    # 1 + registry_retries tries; `shipml export k8s` gives the startup probe that long too.
    registry_timeout_s: float = Field(default=5.0, gt=0.0, le=300.0)
    registry_retries: int = Field(default=5, ge=0, le=100)
    registry_retry_wait_s: float = Field(default=5.0, ge=0.0, le=600.0)
    # The prediction log reaches the OS before each answer; fsync to disk runs this often.
    fsync_interval_s: float = Field(default=1.0, gt=0.0, le=3600.0)
    # Bearer token for /admin endpoints ($SHIPML_ADMIN_TOKEN wins); unset: they are off.
    admin_token: str | None = Field(default=None, min_length=8)
    predict_token: str | None = Field(
        default=None,
        min_length=8,
        description="bearer token /predict and /predict/batch require ($SHIPML_PREDICT_TOKEN "
        "wins); unset: open",
    )
    feedback_token: str | None = Field(
        default=None,
        min_length=8,
        description="bearer token /feedback requires ($SHIPML_FEEDBACK_TOKEN wins); unset: open",
    )
    rate_limits: RateLimitsConfig = Field(
        default_factory=RateLimitsConfig,
        description="requests a second per client address, per route: {predict: {per_second, "
        "burst}, feedback: ...}; null: no limit",
    )
    max_string_length: int = Field(
        default=1000,
        ge=1,
        le=10_000_000,
        description="the longest text a field of a request may hold (a category, a date, a "
        "label), in characters; longer is a 422 naming the field",
    )
    input_bounds: InputBoundsConfig = Field(
        default_factory=InputBoundsConfig,
        description="the numbers accepted per numeric column: the training range widened by "
        "margin, or per-column bounds; enabled: false accepts any finite number",
    )
    log_rotate_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=4096,
        description="a server process starts a new prediction log file past this size",
    )
    log_retention_days: int | None = Field(
        default=30,
        ge=1,
        le=100_000,
        description="prediction log files (and feedback) of older days (UTC) are removed; "
        "null: kept",
    )
    log_max_bytes: int | None = Field(
        default=1024 * 1024 * 1024,
        ge=4096,
        description="the prediction log (and feedback) is kept under this size, oldest files "
        "removed first (files being written are kept: each process may add up to "
        "log_rotate_bytes); null: no bound",
    )


DriftMethod = Literal["ks", "chisquare", "z", "wasserstein", "jensenshannon", "psi"]


class DriftRule(_Strict):
    """A column's own drift test: ``method`` and/or ``threshold`` (p-value or distance)."""

    method: DriftMethod | None = None
    threshold: float | None = Field(default=None, gt=0.0)


class MonitoringConfig(_Strict):
    # Distance methods (wasserstein, jensenshannon, psi) flag drift at a score >= drift_threshold;
    # statistical tests (ks, chisquare, z) at a p-value below p_value.
    drift_threshold: float = Field(default=0.1, gt=0.0)
    p_value: float = Field(default=0.05, gt=0.0, lt=1.0)
    # The dataset drifts when at least this share of the tested columns drift, or when any of the
    # model's `important_columns` most important columns (permutation importance at training)
    # drifts; 0 leaves importance out of the rule.
    drift_share: float = Field(default=0.5, gt=0.0, le=1.0)
    important_columns: int = Field(default=3, ge=0, le=10_000)
    columns: dict[str, DriftRule] = Field(default_factory=dict)
    # `shipml monitor --from-log` and the server's drift gauges look at the latest `window` rows.
    window: int = Field(default=1000, ge=10, le=10_000_000)
    # How often a running server recomputes its drift gauges (in the background).
    interval_s: float = Field(default=60.0, gt=0.0, le=86_400.0)
    # Live metric worse than the test-time metric by more than this share: degradation.
    performance_tolerance: float = Field(default=0.05, ge=0.0, le=1.0)
    # `shipml monitor` (and `shipml schedule`'s checks) run `shipml retrain` when the dataset
    # drifts.
    retrain_on_drift: bool = False


_IMAGE = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]+)?/)?"  # registry host[:port]/
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
_CPU = re.compile(r"^(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)m?$")
_MEMORY = re.compile(r"^(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[KMGTPE]i|[kMGTPE])?$")
_UNITS = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
_UNITS |= {"Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50}
_UNITS |= {"Ei": 2.0**60}


def quantity(text: str) -> float:
    """A Kubernetes resource quantity as a number: '500m' is 0.5 (CPUs), '1Gi' is 2**30."""
    for unit in sorted(_UNITS, key=len, reverse=True):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * _UNITS[unit]
    return float(text)


class DeployConfig(_Strict):
    """`shipml export docker` and `shipml export k8s`: the image, the server in it, and how
    Kubernetes runs and scales it. Resources are Kubernetes quantities ('500m', '1Gi')."""

    image: str | None = None  # default: <name>:v<champion version>
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)  # per container; scale with replicas
    replicas: int = Field(default=2, ge=1, le=1000)
    min_replicas: int | None = Field(default=None, ge=1, le=1000)  # default: replicas
    max_replicas: int = Field(default=10, ge=1, le=1000)
    target_cpu_percent: int = Field(default=70, ge=1, le=100)  # the autoscaler's CPU target
    cpu: str = "500m"  # requested; the autoscaler's percentages are of this
    memory: str = "1Gi"  # requested
    cpu_limit: str = "2"
    memory_limit: str | None = None  # default: memory (a pod is not killed for using its request)
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"

    @field_validator("image")
    @classmethod
    def _image_reference(cls, value: str | None) -> str | None:
        if value is not None and not _IMAGE.match(value):
            raise ValueError(
                "not a container image reference such as registry.example.com/churn:v3 "
                "(lower-case repository, optional :tag)"
            )
        return value

    @field_validator("cpu", "cpu_limit")
    @classmethod
    def _cpu_quantity(cls, value: str) -> str:
        if not _CPU.match(value) or quantity(value) <= 0:
            raise ValueError("a CPU amount is cores ('1', '0.5') or millicores ('500m')")
        return value

    @field_validator("memory", "memory_limit")
    @classmethod
    def _memory_quantity(cls, value: str | None) -> str | None:
        if value is not None and (not _MEMORY.match(value) or quantity(value) <= 0):
            raise ValueError("a memory amount is bytes with a unit, such as '512Mi' or '2Gi'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DeployConfig:
        low, high = self.min_replicas, self.max_replicas
        if low is not None and low > high:
            raise ValueError(f"min_replicas ({low}) is above max_replicas ({high})")
        if self.replicas > high:
            raise ValueError(f"replicas ({self.replicas}) is above max_replicas ({high})")
        if low is not None and self.replicas < low:
            raise ValueError(f"replicas ({self.replicas}) is below min_replicas ({low})")
        if quantity(self.cpu) > quantity(self.cpu_limit):
            raise ValueError(f"cpu ({self.cpu}) is above cpu_limit ({self.cpu_limit})")
        if self.memory_limit and quantity(self.memory) > quantity(self.memory_limit):
            raise ValueError(f"memory ({self.memory}) is above memory_limit ({self.memory_limit})")
        return self


_RAY_ADDRESS = re.compile(r"^(?:auto|(?:ray://)?[A-Za-z0-9_.-]+:[0-9]{1,5})$")


class ComputeConfig(_Strict):
    """Where the search runs: on this machine (local), or as tasks on a Ray cluster (ray),
    where the candidates' cross-validation folds and several search trials run side by side."""

    engine: Literal["local", "ray"] = "local"
    # ray://head:10001 (Ray Client, from outside the cluster), head:6379 (from a cluster node),
    # auto (the cluster this node belongs to); null: $RAY_ADDRESS, else a Ray started here.
    address: str | None = None
    num_cpus: int | None = Field(default=None, ge=1, le=100_000)  # the Ray started here
    # Search trials in flight at once; default: the cluster's CPUs / the number of folds. Set it
    # for results that do not depend on the cluster's size (see the README).
    parallel_trials: int | None = Field(default=None, ge=1, le=10_000)

    @field_validator("address")
    @classmethod
    def _ray_address(cls, value: str | None) -> str | None:
        if value is not None and not _RAY_ADDRESS.match(value):
            raise ValueError(
                "a Ray address is ray://HOST:PORT (Ray Client, port 10001 by default), "
                "HOST:PORT (the head's GCS, on a cluster node) or auto"
            )
        return value

    @model_validator(mode="after")
    def _ray_settings_need_ray(self) -> ComputeConfig:
        given = [k for k in ("address", "num_cpus", "parallel_trials") if getattr(self, k)]
        if self.engine == "local" and given:
            raise ValueError(f"{given[0]} is a setting of the Ray engine; add engine: ray")
        if self.address and self.num_cpus:
            raise ValueError(
                "num_cpus sizes the Ray started on this machine (address: null); a cluster's "
                "size is set where it is started (ray start --num-cpus N)"
            )
        return self


class ProjectConfig(_Strict):
    """The whole of shipml.yaml."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    data: DataConfig
    target: str
    task: Task | None = None
    tracking_uri: str | None = None
    # Where runs keep their artifacts (models, reports): a folder (relative to this file) or
    # an object store (s3://bucket/path). Needed by a team whose tracking_uri is a database
    # server; default: .shipml/artifacts beside this file (a tracking server decides itself).
    artifact_location: str | None = None
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    reproduce: ReproduceConfig = Field(default_factory=ReproduceConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)

    @model_validator(mode="after")
    def _metric_fits_task(self) -> ProjectConfig:
        metric = self.training.metric
        if metric and self.task:
            allowed = (
                CLASSIFICATION_METRICS if self.task == "classification" else REGRESSION_METRICS
            )
            if metric not in allowed:
                raise ValueError(
                    f"training.metric '{metric}' does not fit task '{self.task}'; "
                    f"use one of: {', '.join(allowed)}"
                )
        gate_metric = self.gate.metric
        if gate_metric and self.task:
            allowed = (
                CLASSIFICATION_METRICS if self.task == "classification" else REGRESSION_METRICS
            )
            if gate_metric not in allowed:
                raise ValueError(
                    f"gate.metric '{gate_metric}' does not fit task '{self.task}'; "
                    f"use one of: {', '.join(allowed)}"
                )
        return self


def _format_error(path: Path, err: ValidationError) -> ConfigError:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    kind = first["type"]
    if kind == "extra_forbidden":
        message = f"{path}: unknown key '{loc}'"
        hint = "remove it or check its spelling; `shipml init --help` shows the config reference"
    elif kind == "missing":
        message = f"{path}: required key '{loc}' is missing"
        hint = f"add '{loc}' to {path.name}"
    else:
        got = first.get("input")
        shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
        msg = first["msg"].removeprefix("Value error, ")
        message = f"{path}: {loc}: {msg}{shown}"
        hint = f"fix '{loc}' in {path.name}"
    more = len(err.errors()) - 1
    if more:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    return ConfigError(message, hint)


def parse_config(raw: Any, path: Path) -> ProjectConfig:
    """Validate an already-parsed YAML document; errors name the file and key path."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: expected a mapping of keys (name, data, target, ...)",
            "see `shipml init` for a starting config",
        )
    try:
        return ProjectConfig.model_validate(raw)
    except ValidationError as err:
        raise _format_error(path, err) from None


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int, first: int) -> None:
        super().__init__(key)
        self.key, self.line, self.first = key, line, first


class _Loader(yaml.SafeLoader):
    """yaml.safe_load's loader, refusing a key given twice in one mapping (PyYAML keeps the
    last silently). Keys brought in by a merge (<<) may still be overridden, as YAML says."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in first:
                    raise _DuplicateKey(key, line, first[key])
            except TypeError:  # an unhashable key: the constructor names it
                continue
            first[key] = line
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path) -> ProjectConfig:
    """Read and validate shipml.yaml."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"config file not found: {path}",
            "run `shipml init DATA --target COLUMN` to create one, or pass -c PATH",
        )
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # a SafeLoader
    except _DuplicateKey as err:
        raise ConfigError(
            f"{path}: key '{err.key}' is given twice: at line {err.first} and line {err.line}",
            f"keep one of them in {path.name}",
        ) from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}", "fix the YAML syntax") from None
    return parse_config(raw, path)
