"""Shared pieces of the chaos suite: a bounded load generator against a real `shipml serve`.

Every attack here runs on 127.0.0.1 only, and every loop and wait has a deadline."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import requests

from tests.serving_helpers import Server


class Load:
    """``threads`` clients posting rows to ``path`` until stopped (or ``max_seconds`` pass),
    keeping every answer's request id and model version, and every failure."""

    def __init__(
        self,
        server: Server,
        rows: list[dict[str, Any]],
        threads: int = 4,
        max_seconds: float = 180.0,
    ) -> None:
        self.server = server
        self.rows = rows
        self.stop = threading.Event()
        self.answered: list[tuple[str, str]] = []  # (request_id, model_version), in order
        self.failures: Counter[str] = Counter()
        self.deadline = time.monotonic() + max_seconds
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, k: int) -> None:
        session = requests.Session()
        i = k
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            row = self.rows[i % len(self.rows)]
            i += 1
            try:
                r = session.post(self.server.url + "/predict", json={"features": row}, timeout=30)
            except requests.RequestException as err:
                with self._lock:
                    self.failures[type(err).__name__] += 1
                continue
            with self._lock:
                if r.status_code == 200:
                    answer = r.json()
                    self.answered.append((answer["request_id"], str(answer["model_version"])))
                else:
                    self.failures[f"{r.status_code} {r.text[:120]}"] += 1

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.answered)

    def wait_for(self, n: int, timeout: float) -> None:
        """Until ``n`` answers in all, or AssertionError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.count < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.count} answers of {n} in {timeout} s: {self.failures}")
            time.sleep(0.05)

    def wait_for_version(self, version: str, streak: int, timeout: float) -> None:
        """Until the last ``streak`` answers all came from ``version`` (each worker swapped)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                last = [v for _, v in self.answered[-streak:]]
            if len(last) == streak and all(v == version for v in last):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"not all answers from version {version} after {timeout} s")
            time.sleep(0.05)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)
