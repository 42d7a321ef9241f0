"""Drift gauges for a running server: a background thread that, every monitoring.interval_s,
compares the latest monitoring.window logged predictions with the served version's reference
profile and sets the shipml_drift_* gauges. Never on the request path.

With several workers, one process does the work: the first to take an exclusive lock on
``.shipml/predictions/.drift.lock`` keeps it for its life; when it exits the lock frees and
another worker takes over at its next round.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from shipml.monitoring.drift import DriftSettings, compare
from shipml.monitoring.profile import Profile

if TYPE_CHECKING:
    from shipml.project import Project
    from shipml.serving.metrics import ServingMetrics

log = logging.getLogger("shipml.serving")


class DriftWatch:
    """Recomputes the drift gauges in the background for whichever version is served."""

    def __init__(
        self, project: Project, metrics: ServingMetrics, served_version: Callable[[], int | None]
    ) -> None:
        self.project = project
        self.metrics = metrics
        self.served_version = served_version
        self.folder = project.root / ".shipml" / "predictions"
        monitoring = project.config.monitoring
        self.settings = DriftSettings.from_config(monitoring)
        self.window = monitoring.window
        self.interval = monitoring.interval_s
        self._profiles: dict[int, Profile | None] = {}
        self._stop = threading.Event()
        self._lock_fd: int | None = None
        self._thread = threading.Thread(target=self._loop, name="shipml-drift", daemon=True)
        self.rounds = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _holds_lock(self) -> bool:
        if self._lock_fd is not None:
            return True
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.folder / ".drift.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:  # a log folder that cannot be written: /ready says so
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def _profile(self, version: int) -> Profile | None:
        if version not in self._profiles:
            from shipml.errors import ShipmlError
            from shipml.monitoring.service import load_profile

            try:
                self._profiles[version] = load_profile(self.project, version)[1]
            except ShipmlError as err:
                log.warning("no drift gauges for version %s: %s", version, err.message)
                self._profiles[version] = None
        return self._profiles[version]

    def check(self) -> bool:
        """One round: True when the gauges were set."""
        from shipml.monitoring.service import log_profile
        from shipml.serving.predlog import recent_predictions

        version = self.served_version()
        if version is None or not self._holds_lock():
            return False
        profile = self._profile(version)
        if profile is None:
            return False
        rows = recent_predictions(self.folder, self.window)
        if not rows:
            return False
        result = compare(profile, log_profile(rows, profile, {}), self.settings)
        self.metrics.drift(str(version), result, len(rows))
        self.rounds += 1
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # a bad round must not kill the thread; the next one retries
                log.exception("drift gauges: the round failed")
