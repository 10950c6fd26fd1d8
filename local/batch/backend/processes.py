"""Which processes are the emulator's own: a recorded pid is only signalled while it is still that process.

A pid recorded before a restart may since have been given to an unrelated program, so a process is
identified by its pid, its create time and its command line, read with psutil (Linux and macOS alike).
"""

from __future__ import annotations

import logging

import psutil

from local.batch import runner
from local.batch.backend.records import ProcessIdentity

logger = logging.getLogger(__name__)

# psutil derives create times from clock ticks (1/100 s on Linux); one process always reads the same
CREATE_TIME_TOLERANCE = 0.01


def identify(pid: int) -> ProcessIdentity | None:
    """The identity of a process the emulator has just started; None if it cannot be read (it already ended)."""
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            return ProcessIdentity(pid, process.create_time(), process.cmdline())
    except psutil.Error:
        return None


def kill_if_ours(identity: ProcessIdentity | None, pid: int, what: str) -> bool:
    """Kill the process group of `pid` if it is still the process `identity` describes; True if signalled.

    Anything that cannot be identified is left alone, with a warning: killing a stranger is worse
    than leaving an orphan of ours running.
    """
    if identity is None or identity.pid != pid:
        logger.warning("not killing pid %d of %s: no identity was recorded for it", pid, what)
        return False
    try:
        process = psutil.Process(pid)
        create_time = process.create_time()
        try:
            cmdline: list[str] | None = process.cmdline()
        except psutil.ZombieProcess:
            cmdline = None  # the group leader has exited; its group (same pgid) may still hold its children
    except psutil.NoSuchProcess:
        return False  # it has ended: nothing to do
    except psutil.Error as problem:
        logger.warning("not killing pid %d of %s: it cannot be identified (%s)", pid, what, problem)
        return False
    if abs(create_time - identity.create_time) > CREATE_TIME_TOLERANCE or (
        cmdline is not None and cmdline != identity.cmdline
    ):
        logger.warning(
            "not killing pid %d of %s: it is another process now (started at %.2f, command %r; recorded %.2f, %r)",
            pid,
            what,
            create_time,
            cmdline,
            identity.create_time,
            identity.cmdline,
        )
        return False
    runner.kill_tree(pid)
    return True
