"""Delivering one subscription's events the way Event Grid does ("Event Grid message delivery and retry",
https://learn.microsoft.com/azure/event-grid/delivery-and-retry):

- validation first: a SubscriptionValidationEvent with header `aeg-event-type: SubscriptionValidation`; the
  endpoint must answer 2xx with `{"validationResponse": <code>}`, else the subscription is Failed and delivers
  nothing (on Azure it would not be created). An endpoint that does not answer at all (the dev host still
  starting) is asked again until it does.
- at-least-once: each event is delivered, header `aeg-event-type: Notification`, until a 2xx answer;
- output batching: a delivery carries the events that are ready, up to max_events_per_batch and about
  preferred_batch_size_kb ("optimistic batching": it never waits for a batch to fill); a batch succeeds or
  fails as a whole;
- retries with backoff after a non-2xx answer or a timeout; 400, 401, 403 and 413 are not retried;
- dead-lettering once max_delivery_attempts or the event's time to live is used up.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from .deadletter import dead_lettered
from .events import validation_event
from .journal import Journal, Owed
from .subscriptions import Subscription

logger = logging.getLogger(__name__)

# Azure's schedule ("Event Grid message delivery and retry"): 10 s, 30 s, 1 min, 5 min, 10 min, 30 min, 1 h,
# 3 h, 6 h, then every 12 h. Locally the same shape, compressed to seconds.
AZURE_RETRY_SCHEDULE = (10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 10800.0, 21600.0, 43200.0)
LOCAL_RETRY_SCHEDULE = (0.5, 1.0, 2.0, 5.0, 10.0)
NOT_RETRIED = frozenset({400, 401, 403, 413})  # webhook answers Event Grid dead-letters at once
OUTCOMES = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 408: "TimedOut",
            413: "RequestEntityTooLarge", 503: "Busy"}


class State(StrEnum):
    """A subscription's provisioning state, as Azure names it."""

    CREATING = "Creating"  # validation not answered yet
    SUCCEEDED = "Succeeded"  # validated: events are delivered
    FAILED = "Failed"  # validation failed: not active, delivers nothing


@dataclass(frozen=True)
class Policy:
    retry_schedule: Sequence[float] = LOCAL_RETRY_SCHEDULE
    delivery_timeout: float = 30.0  # Event Grid waits 30 s for an answer
    validation_retry_seconds: float = 0.5
    workers: int = 4  # deliveries in flight per subscription


@dataclass
class Pending:
    owed: Owed
    size: int
    due: float = 0.0  # time.monotonic()
    attempts: int = 0
    last_status: int = 0
    last_outcome: str = ""
    last_attempt: datetime | None = None
    dead_reason: str | None = None  # set once it is to be dead-lettered (retried if storage fails)

    @property
    def event_id(self) -> str:
        return str(self.owed.event["id"])


@dataclass
class Counters:
    deliveries: int = 0  # POSTs with events
    delivered: int = 0  # events acknowledged
    failed_deliveries: int = 0
    dead_lettered: int = 0
    batch_sizes: list[int] = field(default_factory=list)  # of successful deliveries, newest 1,000

    def as_dict(self) -> dict[str, Any]:
        return {"deliveries": self.deliveries, "delivered": self.delivered,
                "failed_deliveries": self.failed_deliveries, "dead_lettered": self.dead_lettered,
                "batch_sizes": list(self.batch_sizes)}


DeadLetterSink = Callable[[str, list[dict[str, Any]]], None]


class Delivery:
    """One subscription's queue and the threads that deliver it."""

    def __init__(self, subscription: Subscription, app_url: str, account: str, journal: Journal,
                 dead_letter: DeadLetterSink, policy: Policy, stopping: threading.Event) -> None:
        self.subscription = subscription
        self.url = subscription.url(app_url)
        self.account = account
        self.journal = journal
        self.dead_letter = dead_letter
        self.policy = policy
        self.stopping = stopping
        self.state = State.CREATING
        self.state_reason = "validation not answered yet"
        self.counters = Counters()
        self._queue: list[Pending] = []
        self._changed = threading.Condition()

    # intake
    def owe(self, entries: Sequence[Owed]) -> None:
        """Queue events (already in the journal)."""
        now = time.monotonic()
        with self._changed:
            for owed in entries:
                self._queue.append(Pending(owed, len(json.dumps(owed.event)), due=now))
            self._changed.notify_all()

    def pending(self) -> int:
        with self._changed:
            return len(self._queue)

    def describe(self) -> dict[str, Any]:
        with self._changed:
            counters = self.counters.as_dict()
        return {"name": self.subscription.name, "endpoint": self.subscription.endpoint,
                "provisioningState": self.state.value, "reason": self.state_reason, "pending": self.pending(),
                **counters}

    # threads
    def start(self) -> None:
        threading.Thread(target=self._run, name=f"eventgrid:{self.subscription.name}", daemon=True).start()

    def _run(self) -> None:
        self._validate()
        if self.state is not State.SUCCEEDED:
            with self._changed:
                dropped = [pending.event_id for pending in self._queue]
                self._queue.clear()
            if dropped:
                self.journal.done(self.subscription.name, dropped)
            return
        for number in range(self.policy.workers):
            threading.Thread(target=self._deliver_forever, name=f"eventgrid:{self.subscription.name}:{number}",
                             daemon=True).start()

    def _validate(self) -> None:
        code = secrets.token_hex(16)
        body = json.dumps([validation_event(self.account, code)]).encode()
        while not self.stopping.is_set():
            try:
                status, answer = _post(self.url, body, self._headers("SubscriptionValidation", 0),
                                       self.policy.delivery_timeout)
            except OSError as error:
                self.state_reason = f"the endpoint does not answer yet ({error}); asking again"
                self.stopping.wait(self.policy.validation_retry_seconds)
                continue
            if 500 <= status < 600:
                self.state_reason = f"the endpoint answered HTTP {status}; asking again"
                self.stopping.wait(self.policy.validation_retry_seconds)
                continue
            returned = _validation_response(answer) if 200 <= status < 300 else None
            if returned == code:
                self.state, self.state_reason = State.SUCCEEDED, "validated"
                logger.info("Subscription %s validated by %s", self.subscription.name, self.url)
            else:
                detail = (f"HTTP {status}" if not 200 <= status < 300
                          else f"validationResponse {returned!r} is not the code sent")
                self.state = State.FAILED
                self.state_reason = f"webhook validation failed: {detail}: {answer[:200].decode(errors='replace')}"
                logger.error("Subscription %s is not active: %s (endpoint %s)", self.subscription.name,
                             self.state_reason, self.url)
            return

    def _take(self) -> list[Pending] | None:
        """The next batch that is due (waiting until one is), or None when stopping."""
        limit_bytes = self.subscription.preferred_batch_size_kb * 1024
        with self._changed:
            while not self.stopping.is_set():
                now = time.monotonic()
                due = [pending for pending in self._queue if pending.due <= now]
                if due:
                    dead = [pending for pending in due if pending.dead_reason is not None]
                    if dead:
                        batch = dead
                    else:
                        batch, size = [], 0
                        for pending in due:
                            if batch and (len(batch) >= self.subscription.max_events_per_batch
                                          or size + pending.size > limit_bytes):
                                break
                            batch.append(pending)
                            size += pending.size
                    for pending in batch:
                        self._queue.remove(pending)
                    return batch
                next_due = min((pending.due for pending in self._queue), default=None)
                self._changed.wait(None if next_due is None else max(next_due - now, 0.005))
            return None

    def _deliver_forever(self) -> None:
        while (batch := self._take()) is not None:
            if batch[0].dead_reason is not None:
                self._dead_letter(batch)
                continue
            expired = [p for p in batch if time.time() - p.owed.published > self.subscription.event_ttl_minutes * 60]
            for pending in expired:
                pending.dead_reason = "TimeToLiveExceeded"
            live = [p for p in batch if p.dead_reason is None]
            if expired:
                self._dead_letter(expired)
            if live:
                self._attempt(live)

    def _attempt(self, batch: list[Pending]) -> None:
        body = json.dumps([pending.owed.event for pending in batch]).encode()
        try:
            headers = self._headers("Notification", max(pending.attempts for pending in batch))
            status, _ = _post(self.url, body, headers, self.policy.delivery_timeout)
            outcome = "Succeeded" if 200 <= status < 300 else OUTCOMES.get(status, "GenericError")
        except TimeoutError:
            status, outcome = 408, "TimedOut"
        except OSError:
            status, outcome = 0, "GenericError"
        now = datetime.now(UTC)
        if outcome == "Succeeded":
            self.journal.done(self.subscription.name, [pending.event_id for pending in batch])
            with self._changed:
                self.counters.deliveries += 1
                self.counters.delivered += len(batch)
                self.counters.batch_sizes = [*self.counters.batch_sizes[-999:], len(batch)]
            return
        with self._changed:
            self.counters.deliveries += 1
            self.counters.failed_deliveries += 1
        logger.warning("Subscription %s: delivery of %d event(s) to %s failed: %s (HTTP %s)",
                       self.subscription.name, len(batch), self.url, outcome, status)
        schedule = self.policy.retry_schedule
        for pending in batch:
            pending.attempts += 1
            pending.last_status, pending.last_outcome, pending.last_attempt = status, outcome, now
            if status in NOT_RETRIED:
                pending.dead_reason = "UndeliverableDueToClientError"
            elif pending.attempts >= self.subscription.max_delivery_attempts:
                pending.dead_reason = "MaxDeliveryAttemptsExceeded"
            pending.due = time.monotonic() + (0.0 if pending.dead_reason else
                                              schedule[min(pending.attempts, len(schedule)) - 1])
        self._requeue(batch)

    def _dead_letter(self, batch: list[Pending]) -> None:
        events = [dead_lettered(pending.owed.event, pending.dead_reason or "", pending.attempts,
                                pending.last_outcome, pending.last_status,
                                datetime.fromtimestamp(pending.owed.published, UTC), pending.last_attempt)
                  for pending in batch]
        try:
            self.dead_letter(self.subscription.name, events)
        except Exception as error:  # storage down: keep them owed and try again (at-least-once)
            logger.warning("Subscription %s: writing %d dead letter(s) failed: %s; trying again",
                           self.subscription.name, len(batch), error)
            for pending in batch:
                pending.due = time.monotonic() + 1.0
            self._requeue(batch)
            return
        self.journal.done(self.subscription.name, [pending.event_id for pending in batch])
        with self._changed:
            self.counters.dead_lettered += len(batch)
        logger.warning("Subscription %s: dead-lettered %d event(s) (%s)", self.subscription.name, len(batch),
                       batch[0].dead_reason)

    def _headers(self, event_type: str, delivery_count: int) -> dict[str, str]:
        return {"Content-Type": "application/json", "aeg-event-type": event_type,
                "aeg-subscription-name": self.subscription.name.upper(), "aeg-delivery-count": str(delivery_count),
                "aeg-data-version": "", "aeg-metadata-version": "1"}

    def _requeue(self, batch: list[Pending]) -> None:
        with self._changed:
            self._queue.extend(batch)
            self._changed.notify_all()


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return int(response.status), response.read(64 * 1024)
    except urllib.error.HTTPError as error:
        return int(error.code), error.read(64 * 1024)


def _validation_response(answer: bytes) -> str | None:
    try:
        document = json.loads(answer)
    except ValueError:
        return None
    code = document.get("validationResponse") if isinstance(document, dict) else None
    return code if isinstance(code, str) else None
