"""A real `shipml serve` on 127.0.0.1, started as users start it, for the serving tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

SHIPML = str(Path(sys.executable).with_name("shipml"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
            self.wait_ready()
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
