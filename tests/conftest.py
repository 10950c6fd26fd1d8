"""The suite's shared servers: one Azurite and one Batch emulator, on 127.0.0.1, each started when a test first
asks for it and stopped by pid at the end of the session.

Tests that need a server of their own (fault injection, restarts, storage stopped under them) start it
themselves with `local.stack` and stop it by pid.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from local.stack import Azurite, Emulator, start_azurite, start_emulator


class SharedServers:
    """Starts each server on first use only, so a run that needs no emulator starts none."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._azurite: Azurite | None = None
        self._emulator: Emulator | None = None

    def azurite(self) -> Azurite:
        if self._azurite is None:
            # In memory: Azurite re-serialises its whole on-disk database every few seconds, which slows
            # every request once the suite has stored thousands of entries; no test restarts this one.
            self._azurite = start_azurite(self.workdir, in_memory=True)
        return self._azurite

    def emulator(self) -> Emulator:
        if self._emulator is None:
            self._emulator = start_emulator(self.workdir)
        return self._emulator

    @property
    def emulator_state_dir(self) -> Path:
        return self.workdir / "batch"  # where start_emulator keeps its state

    def stop(self) -> None:
        # The emulator first, by SIGTERM: it ends its tasks' process trees, and its nodes' keep-alive
        # connections to Azurite close with it.
        if self._emulator is not None:
            self._emulator.stop()
        if self._azurite is not None:
            # SIGKILL: its data is thrown away, and Azurite takes seconds to close gracefully.
            self._azurite.kill()


@pytest.fixture(scope="session")
def shared_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedServers]:
    servers = SharedServers(tmp_path_factory.mktemp("stack"))
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture(scope="session")
def azurite(shared_servers: SharedServers) -> Azurite:
    return shared_servers.azurite()


@pytest.fixture(scope="session")
def emulator(shared_servers: SharedServers) -> Emulator:
    return shared_servers.emulator()


@pytest.fixture
def namespace() -> str:
    """A short unique suffix so each test gets its own containers, queues and tables."""
    return uuid.uuid4().hex[:8]
