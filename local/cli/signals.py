"""Ctrl-C and SIGTERM while servers start and run: they must never leave a server behind."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType
from typing import NoReturn

from local.cli.errors import Interrupted


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[list[str]]:
    """Record Ctrl-C and SIGTERM instead of raising; the caller raises once it is safe."""
    received: list[str] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        received.append(signal.Signals(signum).name)

    previous_int = signal.signal(signal.SIGINT, hold)
    previous_term = signal.signal(signal.SIGTERM, hold)
    try:
        yield received
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)


def _raise_interrupted(signum: int, frame: FrameType | None) -> NoReturn:
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Ctrl-C and SIGTERM both raise Interrupted, so `finally` blocks stop the servers."""
    previous_int = signal.signal(signal.SIGINT, _raise_interrupted)
    previous_term = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)


@contextlib.contextmanager
def ignored_interrupts() -> Iterator[None]:
    """Deaf to a second Ctrl-C while stopping, so the stop finishes."""
    previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    previous_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)
