"""Whether the registry server a tracking_uri names answers, tried a bounded number of times.

A server that pulls its champion from a registry at start (the exported image, in pull mode)
says where it looks, says why it waits (one line per failed try) and gives up within a budget
known in advance: ``budget_s``, which `shipml export k8s` also gives the startup probe.

Only the standard library: a try is a TCP connection (a database server) or one HTTP request
(an MLflow server: any answer counts, even an error status; MLflow's own calls come after).
"""

from __future__ import annotations

import http.client
import ipaddress
import math
import re
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from shipml.config import ServingConfig
from shipml.errors import RegistryError

# The default port of each scheme a tracking_uri may name a server with.
DEFAULT_PORTS = {
    "http": 80,
    "https": 443,
    "postgresql": 5432,
    "postgres": 5432,
    "mysql": 3306,
    "mssql": 1433,
}
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
TUNING = "serving.registry_timeout_s, serving.registry_retries, serving.registry_retry_wait_s"


@dataclass(frozen=True)
class Address:
    """Where a tracking_uri's server listens."""

    scheme: str
    host: str
    port: int
    path: str  # the URI's path, for an HTTP server behind a prefix

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


def without_password(uri: str) -> str:
    """``uri`` with any password in it shown as ***."""
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", uri)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or a name of this machine's loopback."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def address(tracking_uri: str | None) -> Address | None:
    """The server a tracking_uri names (host and port, the scheme's port when none is given);
    None for a local store (a path, sqlite) or a URI without a host (databricks profiles)."""
    if not tracking_uri:
        return None
    parts = urlsplit(tracking_uri)
    scheme = parts.scheme.split("+", 1)[0].lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:  # a port that is not a number: opening the store says so
        return None
    return Address(scheme, parts.hostname, port, parts.path.rstrip("/"))


def tries(serving: ServingConfig) -> int:
    return serving.registry_retries + 1


def budget_s(serving: ServingConfig) -> float:
    """The longest a server waits for its registry before it gives up: every try at its
    timeout, and the waits between them."""
    return (
        tries(serving) * serving.registry_timeout_s
        + serving.registry_retries * serving.registry_retry_wait_s
    )


def _reason(err: BaseException, where: Address, timeout: float) -> str:
    if isinstance(err, socket.gaierror):
        return f"the name '{where.host}' does not resolve ({err.strerror or err})"
    if isinstance(err, ConnectionRefusedError):
        return f"connection refused: nothing listens on port {where.port} of {where.host}"
    if isinstance(err, TimeoutError | socket.timeout):
        return f"no answer within {timeout:g} s"
    if isinstance(err, http.client.HTTPException):
        return f"not an HTTP answer ({type(err).__name__})"
    if isinstance(err, OSError):
        return err.strerror or str(err) or type(err).__name__
    return str(err) or type(err).__name__


def try_once(where: Address, timeout: float) -> str | None:
    """One try within ``timeout`` seconds (name look-up aside); None when the server answered,
    else why not, in a few words."""
    deadline = time.monotonic() + timeout
    conn: http.client.HTTPConnection | None = None
    try:
        if where.scheme not in ("http", "https"):
            with socket.create_connection((where.host, where.port), timeout=timeout):
                return None
        if where.scheme == "https":
            conn = http.client.HTTPSConnection(where.host, where.port, timeout=timeout)
        else:
            conn = http.client.HTTPConnection(where.host, where.port, timeout=timeout)
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(max(0.05, deadline - time.monotonic()))
        conn.request("GET", f"{where.path}/health", headers={"Connection": "close"})
        conn.getresponse()  # any status: the server is there (MLflow says the rest itself)
        return None
    except ssl.SSLError:
        return None  # something speaks TLS there; MLflow reports a certificate problem itself
    except (OSError, http.client.HTTPException) as err:
        return _reason(err, where, timeout)
    finally:
        if conn is not None:
            conn.close()


def _hint(where: Address, config_name: str) -> str:
    if where.loopback:
        return (
            f"{where.host} is this machine, and inside a container the container itself: set "
            f"tracking_uri in {config_name} to an address the server can reach (Docker: "
            "http://host.docker.internal:PORT with `docker run --add-host=host.docker.internal:"
            "host-gateway`; Kubernetes: the registry's Service name)"
        )
    return (
        f"check tracking_uri in {config_name}, and that the registry is up and reachable from "
        f"here; {TUNING} set how long the server waits"
    )


def wait_for_registry(
    tracking_uri: str | None,
    serving: ServingConfig,
    say: Callable[[str], None],
    config_name: str = "shipml.yaml",
) -> None:
    """Return once the registry at ``tracking_uri`` answers (at once for a local store);
    RegistryError naming the address and why, after ``tries(serving)`` tries and at most
    ``budget_s(serving)`` seconds. ``say`` gets the address first, then one line per failed
    try."""
    where = address(tracking_uri)
    if where is None or tracking_uri is None:
        return
    shown = without_password(tracking_uri)
    timeout = serving.registry_timeout_s
    total = tries(serving)
    say(
        f"registry: pulling the champion from {shown} (tracking_uri); up to {total} "
        f"tr{'y' if total == 1 else 'ies'} of {timeout:g} s, giving up after "
        f"{budget_s(serving):g} s"
    )
    started = time.monotonic()
    reason = ""
    for attempt in range(1, total + 1):
        reason = try_once(where, timeout) or ""
        if not reason:
            if attempt > 1:
                say(f"registry: {shown} answers (try {attempt} of {total})")
            return
        if attempt < total:
            wait = serving.registry_retry_wait_s
            say(
                f"registry: {shown} not reachable, try {attempt} of {total}: {reason}; "
                f"waiting {wait:g} s before the next"
            )
            time.sleep(wait)
    took = math.ceil(time.monotonic() - started)
    raise RegistryError(
        f"cannot reach the registry at {shown}: {reason} ({total} "
        f"tr{'y' if total == 1 else 'ies'} over {took} s)",
        _hint(where, config_name),
    )
