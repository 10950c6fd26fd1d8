"""The schedules timer and the ingest triggers with a scheduled pipeline, through their real bindings."""

from datetime import timedelta
from pathlib import Path

import pytest
from azure.functions.timer import TimerRequest
from azure.storage.blob import BlobClient

from shared.models import InputState
from shared.triggers import boundary, ingest, timers
from tests.functions.test_blueprints import blob_created, user_function
from tests.unit.fakes import World, make_world
from tests.unit.test_schedules import scheduled


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    world = make_world(tmp_path, [scheduled()])
    monkeypatch.setattr(boundary, "gateways", lambda: world.gw)
    return world


def test_both_ingest_triggers_hold_and_the_schedules_timer_submits(world: World) -> None:
    world.blobs.put("input", "a.txt")
    world.blobs.put("input", "b.txt")
    user_function(ingest.bp, "ingest")(BlobClient.from_blob_url("https://acct.blob.core.windows.net/input/a.txt"))
    user_function(ingest.bp, "ingest_event")(blob_created("b.txt"))
    assert {row.state for row in world.ledger.inputs()} == {InputState.WAITING}
    assert world.batch.task_requests() == 0

    tick = user_function(timers.bp, "schedules")
    tick(TimerRequest(past_due=False))  # the first tick records the schedule, from now
    assert world.batch.task_requests() == 0
    world.ledger.schedule_rows["nightly"].last_fired -= timedelta(days=1)
    tick(TimerRequest(past_due=True))

    assert world.batch.requests["Task_AddCollection"] == 1 and len(world.batch.all_tasks()) == 2
    assert {row.state for row in world.ledger.inputs()} == {InputState.SUBMITTED}
