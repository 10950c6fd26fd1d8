"""The suite's one way to wait for something: poll a check until it holds, or fail saying what was last seen."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from typing import Protocol, TypeVar

T = TypeVar("T")
# The last value goes into the failure message; a whole listing would bury the message itself.
_SHOWN_CHARACTERS = 600


class NotYet:
    """A check's "no" that carries what it saw, for the failure message (a plain falsy value says little)."""

    def __init__(self, seen: object) -> None:
        self.seen = seen

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return repr(self.seen)


def wait_until(
    check: Callable[[], T | NotYet | None],
    timeout: float = 30.0,
    *,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Call `check` until it returns something truthy and return that; fail with the last value after `timeout` s.

    `check` runs once more after the deadline has passed, so a condition that came true while the machine
    was too busy to poll still counts.
    """
    deadline = time.monotonic() + timeout
    while True:
        expired = time.monotonic() >= deadline
        value = check()
        if value and not isinstance(value, NotYet):
            return value
        if expired:
            shown = repr(value)
            if len(shown) > _SHOWN_CHARACTERS:
                shown = shown[:_SHOWN_CHARACTERS] + "…"
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last value {shown}")
        time.sleep(interval)


# ---------------------------------------------------------------------- "nothing happened" needs a pass
# A test that asserts something did NOT happen cannot wait for it; a sleep of fixed length passes wrongly on a
# machine too slow to have acted in that time. Instead it waits for the server's own progress counters (they
# only grow) to show that a whole pass of the part that would have acted began after the test's last action.
# Two passes, not one: the pass running when the counter is read may have started before that action.
PASSES = 2


def wait_for_rise(
    read: Callable[[], int],
    by: int = PASSES,
    *,
    since: int | None = None,
    timeout: float = 30.0,
    what: str = "a counter",
) -> int:
    """Wait until `read()` is at least `by` above `since` (by default its value now); return what it read."""
    target = (read() if since is None else since) + by

    def risen() -> int | NotYet:
        now = read()
        return now if now >= target else NotYet(now)

    return wait_until(risen, timeout, what=f"{what} to reach {target}")


class Progressing(Protocol):
    """What says how far the Batch emulator's dispatcher has got: `local.stack.Emulator` (over HTTP,
    `/_emulator/stats`) or an in-process `local.batch.service.BatchService`."""

    def progress(self) -> dict[str, int]: ...


def wait_for_dispatch_passes(emulator: Progressing, passes: int = PASSES, *, timeout: float = 30.0) -> int:
    """Wait until the emulator's dispatcher has made `passes` more passes (each a tick and a dispatch over every
    active task) than when called: whatever the test did before the call has then been considered."""
    return wait_for_rise(
        lambda: emulator.progress()["dispatch_passes"], passes, timeout=timeout, what="the emulator's dispatch passes"
    )


HostProgress = dict[str, dict[str, int]]


def host_progress(url: str) -> HostProgress:
    """The dev host's `GET /admin/host/progress`: blob scans, queue polls, queue messages in flight, timer ticks."""
    with urllib.request.urlopen(f"{url}/admin/host/progress", timeout=10) as response:
        document: HostProgress = json.load(response)
        return document


def host_count(url: str, kind: str, name: str) -> int:
    """One of the dev host's counters: `kind` is blob_scans, queue_polls or timer_ticks; `name` a function's
    full name (blob scans), a listener's label (`queue:<function>`, `blobtrigger[<connection>]`) or a timer."""
    counters = host_progress(url)[kind]
    assert name in counters, f"the dev host counts no {kind} named {name!r}; it has {sorted(counters)}"
    return counters[name]


def wait_for_host_passes(
    url: str, kind: str, name: str, passes: int = PASSES, *, since: int | None = None, timeout: float = 30.0
) -> HostProgress:
    """Wait until the dev host's counter `kind`/`name` is `passes` above `since` (by default its value now).

    For queue polls, also until that listener has no message in flight: a poll counts once it has handed its
    messages to their invocations, not once they have finished."""
    start = host_count(url, kind, name) if since is None else since

    def passed() -> HostProgress | NotYet:
        progress = host_progress(url)
        done = progress[kind][name] >= start + passes
        if kind == "queue_polls":
            done = done and progress["queue_in_flight"][name] == 0
        if done:
            return progress
        seen = {kind: progress[kind][name]}
        if kind == "queue_polls":
            seen["queue_in_flight"] = progress["queue_in_flight"][name]
        return NotYet(seen)

    return wait_until(passed, timeout, what=f"the dev host's {kind}[{name}] to reach {start + passes}")
