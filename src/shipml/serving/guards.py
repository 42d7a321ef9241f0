"""Who may call a route and how often: bearer tokens, and rate limits per client address.

Rate limits are a token bucket per client address, written here rather than taken from a
library: pyrate-limiter (the well-kept one at hand) keeps a log of every request's time per
bucket and needs a bucket factory plus a leak thread for a bucket per key; ``limits`` is not a
dependency and its in-memory storage runs an expiry timer thread. A token bucket is two numbers
per address and a few arithmetic operations per request (cheap enough for /predict). Each
server process keeps its own buckets: with N workers a client may get up to N times the rate.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass

from shipml.config import RateLimitConfig

MAX_CLIENTS = 10_000  # addresses kept; full buckets are forgotten first


def bearer_token(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (the scheme in any case, as
    RFC 7235 has it), or None."""
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def token_matches(authorization: str, expected: str) -> bool:
    given = bearer_token(authorization)
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


@dataclass
class RateLimiter:
    """``per_second`` requests a second per client address, with bursts of up to ``burst``."""

    per_second: float
    burst: int

    def __post_init__(self) -> None:
        self._buckets: dict[str, list[float]] = {}  # address -> [tokens, when]

    @classmethod
    def of(cls, config: RateLimitConfig | None) -> RateLimiter | None:
        return None if config is None else cls(config.per_second, config.bucket)

    def wait(self, client: str, now: float | None = None) -> float:
        """0 when ``client`` may go on (a token is taken), else the seconds until it may."""
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) >= MAX_CLIENTS:
                self._forget(now)
            bucket = self._buckets[client] = [float(self.burst), now]
        tokens = min(float(self.burst), bucket[0] + (now - bucket[1]) * self.per_second)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / self.per_second

    def _forget(self, now: float) -> None:
        """Drop the buckets that are full again (as good as new); if none is, the oldest."""
        refill = self.burst / self.per_second
        full = [c for c, (_, when) in self._buckets.items() if now - when >= refill]
        for client in full or list(self._buckets)[: MAX_CLIENTS // 10]:
            del self._buckets[client]
