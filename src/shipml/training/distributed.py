"""The search on a Ray cluster (``compute: {engine: ray}``): the one module that imports ray.

This process (the driver) keeps every decision: the Optuna studies, which family the next trial
goes to, pruning, the time budget, the leaderboard, the MLflow child runs. The cluster does only
the work: each candidate's cross-validation folds run there as tasks, over fold data put in the
object store once. Every family's defaults start at once; then up to ``parallel_trials`` search
trials are asked for ahead and their folds run side by side. Results are read back fold by fold,
and told to the studies, in the order the trials were asked, just as the local search reads them:

- With ``parallel_trials: 1`` the search asks for the same trials and prunes them at the same
  folds as the local engine: a fixed ``training.trials`` and seed give the same leaderboard and
  model as locally.
- With more, TPE samples each trial before the trials in flight ahead of it have scores, so it
  samples other trials than the local search does; the same ``parallel_trials`` and seed still
  give the same result on any cluster (its default, the cluster's CPUs / the folds, does not).
- The folds of a pruned trial that are still queued or running are cancelled. Within a time
  budget, a candidate whose next fold is not back when the budget runs out is stopped.

Ray Tune is not used: its scheduler would make those decisions (which family, when to prune,
when to stop) in its own way, and the two engines would no longer give the same results.

The workers need shipml installed, at the driver's version, with the same model libraries. The
ensemble, the final refit and the report run on this machine.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

import shipml
from shipml.config import ComputeConfig
from shipml.errors import ClusterError, ShipmlError
from shipml.models.catalog import Family, Params
from shipml.training.folds import Fold
from shipml.training.search import FoldOutcome, Search, fit_fold

CONNECT_TIMEOUT_S = 5.0  # a TCP connection to the head; Ray's own waits run to minutes
VERSION_CHECK_S = 60.0  # how long a worker may take to say which shipml it has

_HINT = (
    "start the head with `ray start --head` (Ray Client listens on port 10001), then set "
    "compute.address to ray://HEAD:10001; or leave address out to start Ray on this machine"
)


@dataclass(frozen=True)
class Cluster:
    """The Ray cluster a search runs on."""

    address: str  # where, in words: the address, or "local"
    cpus: int


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ClusterError(
            "compute.engine: ray needs Ray, which is not installed", 'pip install "shipml[ray]"'
        ) from None
    return ray


def _address(compute: ComputeConfig) -> str | None:
    return compute.address or os.environ.get("RAY_ADDRESS") or None


def preflight(compute: ComputeConfig) -> None:
    """Fail now, not after the data is read and the folds are prepared, when Ray is missing or
    the cluster's head cannot be reached."""
    _ray()
    address = _address(compute)
    if address and address != "auto":
        _check_reachable(address, "compute.address" if compute.address else "$RAY_ADDRESS")


def _check_reachable(address: str, named_by: str) -> None:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"{named_by}: {address!r} is not a Ray address", _HINT)
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as err:
        why = err.strerror or str(err) or type(err).__name__
        raise ClusterError(
            f"{named_by}: cannot reach the Ray cluster at {address}: {why}", _HINT
        ) from None


@contextmanager
def connect(compute: ComputeConfig) -> Iterator[Cluster]:
    """Connect to the cluster at ``compute.address`` (else $RAY_ADDRESS, else start Ray on this
    machine) for the length of the block; a Ray this process started or connected to is shut
    down after. A process already connected (its own ``ray.init``) keeps its connection."""
    ray = _ray()
    address = _address(compute)
    preflight(compute)
    owned = not ray.is_initialized()
    if owned:
        _init(ray, address, compute.num_cpus)
    try:
        if address and owned:
            check_workers(ray)
        cpus = int(ray.cluster_resources().get("CPU", 0))
        yield Cluster(address or "local", max(cpus, 1))
    finally:
        if owned:
            ray.shutdown()


def _init(ray: Any, address: str | None, num_cpus: int | None) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if address is None:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **quiet)
        else:
            ray.init(address=address, **quiet)
    except (Exception, SystemExit) as err:  # Ray exits the process when a head never answers
        where = address or "this machine"
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise ClusterError(f"compute: cannot start Ray on {where}: {first}", _HINT) from None


def _worker_version() -> str:
    return shipml.__version__


def check_workers(ray: Any, expected: str = shipml.__version__) -> None:
    """A worker must run the same shipml as the driver: the tasks are shipml's functions. A
    cluster too busy to answer within VERSION_CHECK_S is not held against it."""
    task = ray.remote(num_cpus=0)(_worker_version).remote()
    try:
        found = ray.get(task, timeout=VERSION_CHECK_S)
    except ray.exceptions.GetTimeoutError:
        ray.cancel(task)
        return
    except ray.exceptions.RayError as err:
        raise ClusterError(
            f"the Ray workers cannot run shipml's tasks: {_first_line(err)}",
            f"install shipml=={expected} (and its model libraries) on every node",
        ) from None
    if found != expected:
        raise ClusterError(
            f"the Ray workers have shipml {found}, this machine {expected}",
            f"install shipml=={expected} on every node of the cluster",
        )


def _first_line(err: BaseException) -> str:
    cause = getattr(err, "cause", None) or err
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0][:200] if text else ''}"


def _fit_fold_task(
    estimator: Any,
    fold: Fold,
    task: str,
    classes: np.ndarray | None,
    metrics: tuple[str, ...],
    keep_model: bool,
) -> FoldOutcome:
    """One fold on a worker. The fitted model travels back only when the final model needs
    it (the first pass of a bagged family's folds)."""
    outcome = fit_fold(estimator, fold, task, classes, metrics)
    if not keep_model:
        outcome.model = None
    return outcome


class RaySearch(Search):
    """The search with every candidate's folds run as Ray tasks (see the module docstring)."""

    def __init__(self, cluster: Cluster, *args: Any, parallel: int | None = None) -> None:
        super().__init__(*args)
        self.ray = _ray()
        self.cluster = cluster
        self.parallel = parallel or max(1, cluster.cpus // len(self.folds))
        # The arrays each task needs, in the object store once (no preprocessors: the
        # transformed arrays are all a fit needs).
        self.fold_refs = [self.ray.put(replace(f, preprocessor=None)) for f in self.folds.folds]
        self.fit_remote = self.ray.remote(_fit_fold_task)
        self.emit(
            "note",
            text=f"the search runs on Ray ({cluster.address}, {cluster.cpus} CPUs): "
            f"{len(self.folds)} folds per candidate and {self.parallel} trial(s) at a time",
        )

    def launch(self, family: Family, config: Params) -> list[Any]:
        return self._submit(family.build(self.seed, config), family)

    def _submit(self, estimator: Any, family: Family) -> list[Any]:
        bagged = family.bag and not self.folds.ordered
        return [
            self.fit_remote.remote(
                estimator,
                ref,
                self.task,
                self.folds.classes,
                self.metrics,
                bagged and i < self.folds.per_repeat,
            )
            for i, ref in enumerate(self.fold_refs)
        ]

    def fold_outcomes(
        self, estimator: Any, family: Family, budgeted: bool, launched: Any
    ) -> Generator[FoldOutcome | None, None, None]:
        refs = launched if launched is not None else self._submit(estimator, family)
        read = 0
        try:
            for ref in refs:
                if budgeted:
                    ready, _ = self.ray.wait([ref], timeout=max(self.time_left(), 0.0))
                    if not ready:
                        yield None
                        return
                outcome = self._get(ref)
                read += 1
                yield outcome
        finally:  # pruned, failed or stopped: what is still queued or running is not needed
            for ref in refs[read:]:
                self.ray.cancel(ref)

    def _get(self, ref: Any) -> FoldOutcome:
        exceptions = self.ray.exceptions
        try:
            outcome: FoldOutcome = self.ray.get(ref)
        except exceptions.RayTaskError as err:
            if isinstance(err.cause, ShipmlError):
                raise err.cause from None
            if isinstance(err.cause, ImportError):
                raise ClusterError(
                    f"the Ray workers cannot run shipml's tasks: {_first_line(err)}",
                    f"install shipml=={shipml.__version__} (and its model libraries) on every node",
                ) from None
            return FoldOutcome(error=_first_line(err))
        except exceptions.RayError as err:  # a worker died (out of memory, say): this candidate
            return FoldOutcome(error=_first_line(err))  # fails, the search goes on
        return outcome

    def run_defaults(self) -> None:
        """Every run of the opening starts at once; they are read back in order."""
        plans = []
        for family, trial, config in self.opening():
            config = self._with_transform(family, config)  # decided since the plan was made
            out_of_time = not family.baseline and self.time_left() <= 0
            if trial == 0 and not out_of_time and self.compares(family):
                # The runs after it learn the target the way this decides: it goes first.
                self.compare_transforms(family, config)
                continue
            launched = None if out_of_time else self.launch(family, config)
            plans.append((family, trial, config, launched))
        for family, trial, config, launched in plans:
            if launched is None:
                self.skipped(family, "time budget used up", trial, config)
            else:
                self.evaluate(
                    family, trial, config, budgeted=not family.baseline, launched=launched
                )
        self.settle_transform()

    def cost(self, family: Family, config: Params | None = None) -> float:
        """Wall-clock seconds: a trial's folds run side by side, sharing the cluster's CPUs
        with the other trials in flight."""
        share = max(1 / len(self.folds), self.parallel / self.cluster.cpus)
        return super().cost(family, config) * share
