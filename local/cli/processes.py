"""Who a recorded pid is now: `down` signals a process only if it is still the one `up` started.

A pid is reused once its process has exited (on macOS within minutes), so a pid alone proves nothing.
`up` records each process's create time and command line (psutil reads both on Linux and macOS);
a live pid whose create time or command line differs is another program, and one that cannot be
inspected is not signalled either.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import psutil

# psutil derives the create time from the boot time, which the kernel reports to the second.
CREATE_TIME_TOLERANCE_SECONDS = 1.0


@dataclass(frozen=True)
class Identity:
    """What tells one process apart from a later one with the same pid."""

    create_time: float
    cmdline: list[str]

    @classmethod
    def from_json(cls, raw: Any) -> Identity | None:
        if raw is None:
            return None
        return cls(create_time=float(raw["create_time"]), cmdline=[str(part) for part in raw["cmdline"]])


class Verdict(StrEnum):
    RUNNING = "running"  # the process we started, alive
    GONE = "gone"  # exited (a zombie counts as exited)
    REPLACED = "replaced"  # the pid now belongs to another process
    UNIDENTIFIED = "unidentified"  # alive, but we cannot tell whose it is


@dataclass(frozen=True)
class Finding:
    verdict: Verdict
    why: str = ""


def identify(pid: int) -> Identity | None:
    """The identity of a process this one started; None if it has exited already (nothing to stop later)."""
    try:
        process = psutil.Process(pid)
        return Identity(create_time=process.create_time(), cmdline=process.cmdline())
    except psutil.Error:
        return None


def check(pid: int, recorded: Identity | None) -> Finding:
    """Whether `pid` is still the process recorded as `recorded`."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return Finding(Verdict.GONE)
        current = Identity(create_time=process.create_time(), cmdline=process.cmdline())
    except psutil.NoSuchProcess:  # ZombieProcess included
        return Finding(Verdict.GONE)
    except psutil.AccessDenied:
        return Finding(Verdict.UNIDENTIFIED, "it cannot be inspected (access denied), so it may not be ours")
    if recorded is None:
        return Finding(Verdict.UNIDENTIFIED, "the stack file records no create time or command line for it")
    if abs(current.create_time - recorded.create_time) > CREATE_TIME_TOLERANCE_SECONDS:
        return Finding(Verdict.REPLACED, f"the pid now belongs to another process ({_shortened(current.cmdline)})")
    if current.cmdline != recorded.cmdline:
        return Finding(Verdict.REPLACED, f"it now runs another command ({_shortened(current.cmdline)})")
    return Finding(Verdict.RUNNING)


def _shortened(cmdline: list[str], limit: int = 80) -> str:
    text = " ".join(cmdline) or "no command line"
    return text if len(text) <= limit else text[: limit - 3] + "..."
