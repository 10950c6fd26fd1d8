"""Session-wide servers for the integration tests: started here on 127.0.0.1, stopped by pid."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from local.stack import Azurite, Emulator, start_azurite, start_emulator


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def azurite(stack_dir: Path) -> Iterator[Azurite]:
    service = start_azurite(stack_dir)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def emulator(stack_dir: Path) -> Iterator[Emulator]:
    service = start_emulator(stack_dir)
    yield service
    service.stop()


@pytest.fixture
def namespace() -> str:
    """A short unique suffix so each test gets its own containers, queues and tables."""
    return uuid.uuid4().hex[:8]
