"""A real `shipml serve` on 127.0.0.1, started as users start it, for the serving tests."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import requests

SHIPML = str(Path(sys.executable).with_name("shipml"))


# Ports for the servers the tests start come from below Linux's ephemeral range (32768-60999),
# where the kernel picks the local ports of outgoing connections: a port found free there could
# be taken by some client's connection before the server (seconds later) binds it. Each
# pytest-xdist worker draws from its own slice, so two workers never pick the same port.
PORTS = range(20000, 32000)
_handed_out: set[int] = set()  # not yet bound, perhaps: never hand a port out twice


def free_port() -> int:
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    size = len(PORTS) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    start = PORTS.start + worker * size
    for port in random.sample(range(start, start + size), 200):
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise AssertionError(f"no free port in {start}-{start + size - 1}")


class Server:
    """`shipml serve -c CONFIG` in its own process group; stopped (or killed) on exit."""

    def __init__(
        self, config: Path, workers: int = 1, env: dict[str, str] | None = None, wait: bool = True
    ) -> None:
        self.config = config
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.env = {**os.environ, **(env or {})}
        self.wait = wait
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = config.parent / f"serve-{self.port}.log"

    def __enter__(self) -> Server:
        cmd = [SHIPML, "serve", "-c", str(self.config), "--port", str(self.port)]
        cmd += ["--workers", str(self.workers)]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        if self.wait:
            try:
                self.wait_ready()
            except BaseException:  # __exit__ is not called when __enter__ fails: stop it here
                self.__exit__(None, None, None)
                raise
        return self

    def wait_ready(self, timeout: float = 90.0) -> dict[str, Any]:
        """Until /ready answers 200 on fresh connections several times in a row: with several
        workers, each process loads the model on its own."""
        deadline = time.monotonic() + timeout
        streak = 0
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                r = requests.get(self.url + "/ready", timeout=2)
                streak = streak + 1 if r.status_code == 200 else 0
                if streak >= 1 + 10 * (self.workers - 1):
                    return dict(r.json())
            except requests.ConnectionError:
                streak = 0
            time.sleep(0.2 if streak == 0 else 0.02)
        raise AssertionError(f"server not ready in {timeout} s: {self.log.read_text()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def post(self, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
        return requests.post(self.url + path, json=body, timeout=30, **kwargs)

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path, timeout=30)


class Prometheus:
    """Debian's prometheus server on 127.0.0.1, scraping one target every second."""

    def __init__(self, folder: Path, target: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = folder / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: shipml\n"
            f"    static_configs: [{{targets: ['{target}']}}]\n"
        )
        binary = shutil.which("prometheus")
        if binary is None:
            raise AssertionError(
                "the prometheus server is not installed: `apt-get install -y prometheus` "
                "(`make test` does it as root)"
            )
        self.log = (folder / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/-/ready", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise AssertionError("prometheus did not become ready")

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = requests.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        r.raise_for_status()
        return list(r.json()["data"]["result"])

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


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
