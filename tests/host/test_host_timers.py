"""Timers in process: a tick missed while the host was down runs at startup, marked past due."""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path

import pytest

from local.host.bindings import read_functions
from local.host.invocation import Invoker
from local.host.settings import AppSettings
from local.host.storage import StorageAccounts
from local.host.timers import Timers
from tests.host import sample_app
from tests.host.conftest import read_records
from tests.waiting import wait_until


def start_timers(state_dir: Path, schedule: str) -> threading.Event:
    settings = AppSettings(
        {
            "SAMPLE_CONTAINER": "drop",
            "SAMPLE_QUEUE": "work",
            "SAMPLE_SCHEDULE": schedule,
            "SampleStorage": "UseDevelopmentStorage=true",
        }
    )
    timers = [spec for spec in read_functions(sample_app.build_app(), settings) if spec.name == "tick"]
    stopping = threading.Event()
    Timers(timers, Invoker(StorageAccounts(settings), "base64"), state_dir, stopping).start()
    return stopping


def write_status(state_dir: Path, next_occurrence: dt.datetime) -> Path:
    path = state_dir / "timers" / "tick.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"Last": None, "Next": next_occurrence.isoformat()}))
    return path


@pytest.fixture
def record_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SAMPLE_RECORD_DIR", str(tmp_path))
    return tmp_path


def test_missed_occurrence_runs_once_past_due(record_dir: Path, tmp_path: Path) -> None:
    status = write_status(tmp_path, dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
    stopping = start_timers(tmp_path, "0 0 * * * *")
    try:
        assert wait_until(lambda: read_records(record_dir, "tick")) == [{"function": "tick", "past_due": True}]
        wait_until(
            lambda: dt.datetime.fromisoformat(json.loads(status.read_text())["Next"]) > dt.datetime.now(dt.UTC),
            5,
            what="the next occurrence to be saved",
        )
        assert len(read_records(record_dir, "tick")) == 1
    finally:
        stopping.set()


def test_run_on_startup_is_not_past_due(record_dir: Path, tmp_path: Path) -> None:
    write_status(tmp_path, dt.datetime.now(dt.UTC) + dt.timedelta(minutes=30))
    stopping = start_timers(tmp_path, "0 0 * * * *")
    try:
        assert wait_until(lambda: read_records(record_dir, "tick")) == [{"function": "tick", "past_due": False}]
    finally:
        stopping.set()
