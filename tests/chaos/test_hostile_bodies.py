"""Hostile requests against a real `shipml serve`: oversized, deeply nested, compressed,
malformed, mistyped and slow. Each is answered 4xx (never 5xx, never a dropped server), and the
server answers a normal request as before afterwards."""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from shipml.serving.predlog import read_predictions
from tests.chaos.figures import record
from tests.conftest import make_project, run_cli
from tests.serving_helpers import Server
from tests.test_serving import _customers, _rows

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

SLOW_CONNECTIONS = 300


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, Any]]]:
    def edit(raw: dict) -> None:
        raw["features"]["exclude"] = ["customer_id"]
        raw["training"].update(models=["random_forest"], baselines=False, trials=0)
        raw["training"]["params"] = {"random_forest": {"n_estimators": 10}}
        raw["training"]["ensemble"] = False
        raw["serving"] = {"max_batch_rows": 100, "max_body_bytes": 1_000_000}

    config = make_project(tmp_path_factory.mktemp("chaos-bodies"), _customers(), "churned", edit)
    assert run_cli("train", "-c", config).exit_code == 0
    row = _rows(config, 1)[0]
    with Server(config, env={"SHIPML_ADMIN_TOKEN": "s3cret-token"}) as server:
        yield server, row


def _nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


def _objects(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def _text_column(row: dict[str, Any]) -> str:
    return next(k for k, v in row.items() if isinstance(v, str))


def _bodies(row: dict[str, Any]) -> dict[str, tuple[str, bytes, dict[str, str]]]:
    """name -> (path, raw body, extra headers)."""
    good = json.dumps({"features": row})
    numeric = next(k for k, v in row.items() if isinstance(v, int | float))
    text = _text_column(row)
    as_json = {"Content-Type": "application/json"}

    def features(**changes: Any) -> bytes:
        return json.dumps({"features": {**row, **changes}}).encode()

    def with_value(literal: str, key: str = numeric) -> bytes:
        return good.replace(json.dumps(key) + ": " + json.dumps(row[key]), f'"{key}": {literal}', 1)

    gz_bomb = gzip.compress(b'{"features": {"a": "' + b"0" * 20_000_000 + b'"}}')
    cases: dict[str, tuple[str, bytes, dict[str, str]]] = {
        "50 MB body": ("/predict", b'{"features": {"x": "' + b"a" * 50_000_000 + b'"}}', as_json),
        "10,000-deep arrays": ("/predict", _nested(10_000).encode(), as_json),
        "10,000-deep objects in a field": (
            "/predict",
            good.replace(json.dumps(row[numeric]), _objects(10_000), 1).encode(),
            as_json,
        ),
        "gzip bomb": ("/predict", gz_bomb, {**as_json, "Content-Encoding": "gzip"}),
        "NaN": ("/predict", with_value("NaN"), as_json),
        "Infinity": ("/predict", with_value("Infinity"), as_json),
        "-Infinity": ("/predict", with_value("-Infinity"), as_json),
        "1e999": ("/predict", with_value("1e999"), as_json),
        "a 400-digit integer": ("/predict", with_value("9" * 400), as_json),
        "1.7e308 (out of the training range)": ("/predict", with_value("1.7e308"), as_json),
        "-1.7e308": ("/predict", with_value("-1.7e308"), as_json),
        "invalid UTF-8 in a string": (
            "/predict",
            good.replace(json.dumps(row[text]), '"\xff\xfe"', 1).encode("latin-1"),
            as_json,
        ),
        "UTF-16 body": ("/predict", good.encode("utf-16"), as_json),
        "a lone surrogate escape": ("/predict", with_value('"\\ud800"', text), as_json),
        "empty body": ("/predict", b"", as_json),
        "null": ("/predict", b"null", as_json),
        "a list at the top": ("/predict", b"[1, 2, 3]", as_json),
        "a string at the top": ("/predict", b'"features"', as_json),
        "a number at the top": ("/predict", b"42", as_json),
        "features null": ("/predict", b'{"features": null}', as_json),
        "features a string": ("/predict", b'{"features": "abc"}', as_json),
        "features an empty list": ("/predict", b'{"features": []}', as_json),
        "features a list too long": (
            "/predict",
            json.dumps({"features": [1] * 10_000}).encode(),
            as_json,
        ),
        "100,000 unknown keys": (
            "/predict",
            json.dumps({"features": {**row, **{f"k{i}": i for i in range(100_000)}}}).encode(),
            as_json,
        ),
        "a 1 MB key": ("/predict", features(**{"k" * 1_000_000: 1}), as_json),
        "a 900 KB string value": ("/predict", features(**{text: "x" * 900_000}), as_json),
        "a number as an object": ("/predict", features(**{numeric: {"$gt": 1}}), as_json),
        "a number as a list": ("/predict", features(**{numeric: [1] * 1000}), as_json),
        "a number as a boolean": ("/predict", features(**{numeric: True}), as_json),
        "a category as an object": ("/predict", features(**{text: {"a": 1}}), as_json),
        "a missing column": (
            "/predict",
            json.dumps({"features": {k: v for k, v in row.items() if k != numeric}}).encode(),
            as_json,
        ),
        "truncated JSON": ("/predict", good[: len(good) // 2].encode(), as_json),
        "trailing garbage": ("/predict", good.encode() + b"}}garbage", as_json),
        "a JSON comment": ("/predict", b"/* hi */" + good.encode(), as_json),
        "single quotes": ("/predict", good.replace('"', "'").encode(), as_json),
        "text/plain": ("/predict", good.encode(), {"Content-Type": "text/plain"}),
        "form-encoded": (
            "/predict",
            b"features=1",
            {"Content-Type": "application/x-www-form-urlencoded"},
        ),
        "multipart": (
            "/predict",
            b'--b\r\nContent-Disposition: form-data; name="f"\r\n\r\n1\r\n--b--\r\n',
            {"Content-Type": "multipart/form-data; boundary=b"},
        ),
        "batch: no instances": ("/predict/batch", b'{"instances": []}', as_json),
        "batch: instances null": ("/predict/batch", b'{"instances": null}', as_json),
        "batch: 100,000 rows": (
            "/predict/batch",
            json.dumps({"instances": [row] * 100_000}).encode(),
            as_json,
        ),
        "batch: rows of mixed kinds": (
            "/predict/batch",
            json.dumps({"instances": [row, [1, 2], "x", None, 5]}).encode(),
            as_json,
        ),
        "feedback: an id never answered": (
            "/feedback",
            b'{"request_id": "never-answered", "label": "yes"}',
            as_json,
        ),
        "feedback: a label of the wrong kind": (
            "/feedback",
            b'{"request_id": "x", "label": {"a": [1, 2]}}',
            as_json,
        ),
        "feedback: a 1 MB label": (
            "/feedback",
            json.dumps({"request_id": "x", "label": "y" * 1_000_000}).encode(),
            as_json,
        ),
        "admin reload without a token": ("/admin/reload", b"", as_json),
        "admin reload with a wrong token": (
            "/admin/reload",
            b"",
            {**as_json, "Authorization": "Bearer wrong"},
        ),
    }
    return cases


def test_hostile_bodies_are_4xx_and_the_server_stays_up(
    served: tuple[Server, dict[str, Any]],
) -> None:
    server, row = served
    answers = {}
    for name, (path, body, headers) in _bodies(row).items():
        r = requests.post(server.url + path, data=body, headers=headers, timeout=60)
        answers[name] = (r.status_code, r.text[:160])
        assert server.proc is not None and server.proc.poll() is None, f"server died on {name}"
    bad = {name: a for name, a in answers.items() if not 400 <= a[0] < 500}
    record("hostile request bodies", "bodies", len(answers), held=not bad)
    assert not bad, f"not answered 4xx: {bad}"
    assert "Traceback" not in server.log.read_text(errors="replace")
    assert server.post("/predict", {"features": row}).status_code == 200

    # Strange but valid: control characters in a category are an unseen category, answered and
    # logged as sent.
    value = "a\x00\x01\x1b[2J\u2028"
    odd = server.post("/predict", {"features": {**row, _text_column(row): value}})
    assert odd.status_code == 200, odd.text
    log_dir = server.config.parent / ".shipml" / "predictions"
    logged = {r["request_id"]: r for r in read_predictions(log_dir)}
    assert logged[odd.json()["request_id"]]["inputs"][_text_column(row)] == value


def _raw(server: Server, request: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
    return b"".join(chunks)


def _status(response: bytes) -> int:
    line = response.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) > 1 and line[1].isdigit() else 0


def test_malformed_http_is_refused(served: tuple[Server, dict[str, Any]]) -> None:
    server, row = served
    body = json.dumps({"features": row}).encode()
    host = f"Host: 127.0.0.1:{server.port}\r\n".encode()
    requests_ = {
        "negative Content-Length": b"POST /predict HTTP/1.1\r\n"
        + host
        + b"Content-Type: application/json\r\nContent-Length: -5\r\nConnection: close\r\n\r\n",
        "two Content-Lengths": b"POST /predict HTTP/1.1\r\n"
        + host
        + b"Content-Length: 3\r\nContent-Length: 5\r\nConnection: close\r\n\r\n{}",
        "a 2^63 chunk": b"POST /predict HTTP/1.1\r\n"
        + host
        + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n8000000000000000\r\nab",
        "a 100 KB header": b"POST /predict HTTP/1.1\r\n"
        + host
        + b"X-Big: "
        + b"a" * 100_000
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\nConnection: close\r\n\r\n"
        + body,
        "a 100 KB path": b"GET /"
        + b"a" * 100_000
        + b" HTTP/1.1\r\n"
        + host
        + b"Connection: close\r\n\r\n",
        "a path out of the root": b"GET /../../etc/passwd HTTP/1.1\r\n"
        + host
        + b"Connection: close\r\n\r\n",
        "PUT on /predict": b"PUT /predict HTTP/1.1\r\n"
        + host
        + b"Content-Length: 2\r\nConnection: close\r\n\r\n{}",
        "not HTTP at all": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,
    }
    statuses = {name: _status(_raw(server, raw)) for name, raw in requests_.items()}
    # A connection the server closes without an answer (0) is a refusal too; a 5xx is not.
    bad = {name: s for name, s in statuses.items() if s >= 500}
    record("malformed HTTP", "requests", len(statuses), held=not bad)
    assert not bad, statuses
    assert server.get("/ready").status_code == 200


@pytest.mark.timeout(120)
def test_slow_connections_do_not_starve_the_others(served: tuple[Server, dict[str, Any]]) -> None:
    server, row = served
    slow: list[socket.socket] = []
    try:
        for _ in range(SLOW_CONNECTIONS):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{")
            slow.append(sock)
        answered = 0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for sock in slow[::30]:  # a trickle, as a slowloris client sends
                with contextlib.suppress(OSError):
                    sock.sendall(b" ")
            r = requests.post(server.url + "/predict", json={"features": row}, timeout=10)
            assert r.status_code == 200, r.text
            answered += 1
    finally:
        for sock in slow:
            sock.close()
    record("slow connections held open", "connections", SLOW_CONNECTIONS, held=answered > 0)
    assert answered > 0
    assert server.get("/ready").status_code == 200
