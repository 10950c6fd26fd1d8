"""Chaos scenarios run only under `make chaos` (`pytest -m chaos tests/chaos`), never under `make test`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.harness import SESSION, ChaosStack, table


def pytest_configure(config: pytest.Config) -> None:
    # pyproject.toml declares the marker; this keeps --strict-markers happy if that line ever goes.
    if not any(str(line).startswith("chaos:") for line in config.getini("markers")):
        config.addinivalue_line("markers", "chaos: fault scenarios (make chaos); not part of make test")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Belt and braces beside pyproject's `-m 'not chaos'`: without `-m chaos`, chaos tests are skipped."""
    expression = str(config.getoption("markexpr") or "")
    if "chaos" in expression and "not chaos" not in expression:
        return
    skip = pytest.mark.skip(reason="chaos scenario: run with `make chaos` (pytest -m chaos tests/chaos)")
    for item in items:
        if item.get_closest_marker("chaos") is not None:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SESSION:
        terminalreporter.section("chaos scenarios (copy into docs/reliability.md)")
        terminalreporter.write_line(table(SESSION))
        for tally in SESSION:
            if tally.notes:
                terminalreporter.write_line(f"- {tally.scenario}: {tally.notes}")


@pytest.fixture
def chaos_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def stacks() -> Iterator[list[ChaosStack]]:
    """Stacks a test starts are stopped (by pid) whatever happens to the test."""
    started: list[ChaosStack] = []
    yield started
    for stack in started:
        stack.stop()
