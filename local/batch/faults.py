"""Fault injection: a fraction of API requests answered with throttling or server errors, and added latency."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field

from local.batch.errors import BatchApiError


@dataclass
class Faults:
    """Configured at start: a fraction of requests fail with one of `statuses`, every request is delayed."""

    rate: float = 0.0
    statuses: tuple[int, ...] = (429, 500, 503)
    latency_ms: float = 0.0
    # Requests processed, then answered with a fault anyway: a response "lost" on the way back, which
    # Batch warns can happen ("the request may have been partially or fully processed").
    after_rate: float = 0.0
    random: random.Random = field(default_factory=random.Random)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def pick(self, rate: float | None = None) -> int | None:
        rate = self.rate if rate is None else rate
        if rate <= 0 or not self.statuses:
            return None
        with self.lock:
            if self.random.random() >= rate:
                return None
            return self.random.choice(self.statuses)


def fault_error(status: int) -> BatchApiError:
    """The error Batch answers with for an injected status."""
    if status == 429:
        return BatchApiError(
            429,
            "TooManyRequests",
            "The emulator injected a throttling fault (--fault-rate).",
            headers={"Retry-After": "1"},
        )
    if status == 503:
        return BatchApiError(
            503,
            "ServerBusy",
            "The server is currently unable to receive requests. Please retry your request. (injected by --fault-rate)",
            headers={"Retry-After": "1"},
        )
    if status == 500:
        return BatchApiError(
            500,
            "InternalError",
            "The server encountered an internal error. Please retry the request. (injected by --fault-rate)",
        )
    return BatchApiError(status, "InjectedFault", f"The emulator injected HTTP {status} (--fault-rate).")
