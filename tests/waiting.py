"""The suite's one way to wait for something: poll a check until it holds, or fail saying what was last seen."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

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
