"""Per-pipeline schedules on Azurite and the Batch emulator: inputs held (no Batch request) until the schedule
fires, then submitted in one add-collection; a schedule missed while the app was down fires once. The schedules
timer's own binding is exercised on the dev host (the last test)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from local.stack import Azurite, Emulator, Service, start_host
from shared.bulk_ingest import ingest_delivery, parse_delivery
from shared.gateways import utc_now
from shared.models import InputState, ScheduleRecord
from shared.schedules import fire_due
from shared.status import status
from shared.submit import submit_blob, sweep
from tests.integration.pipeline_world import PipelineWorld, make_pipeline_world
from tests.integration.test_bulk_ingest import events_for, post, requests_since, task_requests
from tests.waiting import wait_until

pytestmark = pytest.mark.integration
NIGHTLY = "0 0 2 * * *"


def scheduled_world(tmp_path: Path, azurite: Azurite, emulator: Emulator, nodes: int) -> PipelineWorld:
    """One pipeline, `nightly-<ns>`, scheduled at 02:00 UTC, running the echo app on its own pool."""
    namespace = uuid.uuid4().hex[:8]
    pipeline: dict[str, Any] = {
        "name": f"nightly-{namespace}",
        "command": "python3 {app_dir}/echo/app.py {input} {output_dir}",
        "app_files": ["echo/app.py"],
        "pool": {"id": f"nightly-{namespace}", "dedicated_nodes": nodes, "task_slots_per_node": 4},
        "max_retries": 0,
        "max_wall_clock_seconds": 120,
        "submit": {"schedule": NIGHTLY},
    }
    pipelines_file = tmp_path / "scheduled-pipelines.json"  # make_pipeline_world writes its own pipelines.json
    pipelines_file.write_text(json.dumps({"pipelines": [pipeline]}))
    return make_pipeline_world(tmp_path, azurite, emulator, namespace, BATCHDROP_PIPELINES_FILE=str(pipelines_file))


def waiting_rows(world: PipelineWorld) -> list[str]:
    return sorted(record.name for record in world.gw.ledger.inputs(state=InputState.WAITING))


def tick_at(world: PipelineWorld, moment: datetime) -> int:
    """One tick of the schedules timer as if it ran at `moment`; the inputs submitted."""
    world.gw.clock = lambda: moment
    try:
        return sum(firing.submitted for firing in fire_due(world.gw))
    finally:
        world.gw.clock = utc_now


def test_a_scheduled_pipeline_holds_inputs_until_its_schedule_fires_then_submits_them_in_one_request(
    tmp_path: Path, azurite: Azurite, emulator: Emulator
) -> None:
    world = scheduled_world(tmp_path, azurite, emulator, nodes=1)
    before = task_requests(world)
    names = ["event.txt", "bulk.txt", "swept.txt"]
    for name in names:
        world.drop(name, f"data of {name}\n".encode())
    now = utc_now()
    assert tick_at(world, now) == 0  # the first tick records the schedule: it counts from now

    # every ingest path records its input as waiting
    assert submit_blob(world.gw, world.names["input"], "event.txt").action == "waiting"
    assert ingest_delivery(world.gw, parse_delivery(json.dumps(events_for(world, ["bulk.txt"])).encode())).waiting == 1
    sweep(world.gw)
    assert waiting_rows(world) == sorted(names)
    (waiting,) = status(world.gw)["waiting"]  # type: ignore[misc]
    assert waiting["inputs"] == 3 and waiting["state"] == "waiting for schedule"
    next_run = datetime.fromisoformat(waiting["next_run"])
    assert next_run > now and (next_run.hour, next_run.minute, next_run.second) == (2, 0, 0)
    assert tick_at(world, next_run - timedelta(seconds=1)) == 0  # a second before: still held
    assert requests_since(world, before) == {"Task_Add": 0, "Task_AddCollection": 0}

    assert tick_at(world, next_run) == 3

    assert requests_since(world, before) == {"Task_Add": 0, "Task_AddCollection": 1}
    assert waiting_rows(world) == []
    manifests = world.run_until_manifests(names)
    assert {manifest["status"] for manifest in manifests.values()} == {"succeeded"}
    assert tick_at(world, next_run + timedelta(minutes=1)) == 0
    assert requests_since(world, before) == {"Task_Add": 0, "Task_AddCollection": 1}


def test_a_schedule_missed_while_the_app_was_down_fires_once(
    tmp_path: Path, azurite: Azurite, emulator: Emulator
) -> None:
    world = scheduled_world(tmp_path, azurite, emulator, nodes=0)  # tasks only queue: the requests are counted
    pipeline = world.gw.pipelines.pipelines[0].name
    for name in ("a.txt", "b.txt"):
        world.drop(name, b"x")
        submit_blob(world.gw, world.names["input"], name)
    # Last fired 30 days ago: 30 nightly occurrences have passed since.
    assert world.gw.ledger.save_schedule(ScheduleRecord(pipeline, utc_now() - timedelta(days=30))) is not None
    before = task_requests(world)

    fired = fire_due(world.gw)

    assert [(firing.pipeline, firing.submitted) for firing in fired] == [(pipeline, 2)]
    assert requests_since(world, before) == {"Task_Add": 0, "Task_AddCollection": 1}
    for _ in range(3):  # the next ticks find nothing due
        assert fire_due(world.gw) == []
    assert requests_since(world, before) == {"Task_Add": 0, "Task_AddCollection": 1}
    (row,) = world.gw.ledger.schedules()
    assert row.firing_since is None and utc_now() - row.last_fired < timedelta(minutes=5)


@pytest.fixture
def hosted(tmp_path: Path, azurite: Azurite, emulator: Emulator) -> Iterator[tuple[PipelineWorld, Service]]:
    """A scheduled world served by the dev host: the bulk Event Grid endpoint, and the schedules timer every
    second."""
    world = scheduled_world(tmp_path, azurite, emulator, nodes=0)
    settings = world.gw.settings
    env = {
        "BatchdropStorage": azurite.connection_string,
        "AzureWebJobsStorage": azurite.connection_string,
        "BATCHDROP_BATCH_URL": emulator.url,
        "BATCHDROP_BATCH_ACCOUNT_NAME": emulator.account_name,
        "BATCHDROP_BATCH_ACCOUNT_KEY": emulator.account_key,
        "BATCHDROP_PIPELINES_FILE": str(settings.pipelines_file),
        "BATCHDROP_INPUT_CONTAINER": world.names["input"],
        "BATCHDROP_APPS_CONTAINER": world.names["apps"],
        "BATCHDROP_STAGING_PREFIX": world.names["staging"],
        "BATCHDROP_RESULTS_CONTAINER": world.names["results"],
        "BATCHDROP_COMPLETIONS_QUEUE": world.names["queue"],
        "BATCHDROP_LEDGER_TABLE": world.names["table"],
        "BATCHDROP_SWEEP_SCHEDULE": "0 0 0 1 1 *",
        "BATCHDROP_POLL_SCHEDULE": "0 0 0 1 1 *",
        "BATCHDROP_SCHEDULES_SCHEDULE": "*/1 * * * * *",
    }
    service = start_host(tmp_path / "host", "tests.integration.schedules_app:app", env)
    try:
        yield world, service
    finally:
        service.stop()


def test_the_schedules_timer_on_the_dev_host_fires_a_missed_schedule_once(
    hosted: tuple[PipelineWorld, Service],
) -> None:
    world, host = hosted
    ledger = world.gw.ledger
    # the host's timer records the schedule on its first tick
    (row,) = wait_until(lambda: ledger.schedules() or None, 30, what="the schedule row")
    before = task_requests(world)
    names = ["one.txt", "two.txt", "three.txt"]
    for name in names:
        world.drop(name, b"x")
    status_code, report, _ = post(host, events_for(world, names))
    assert status_code == 200 and report["waiting"] == 3
    assert waiting_rows(world) == sorted(names)
    assert requests_since(world, before) == {"Task_Add": 0, "Task_AddCollection": 0}

    # The app "was down" over 02:00: its last firing is a day old. The timer (every second) fires it once.
    while ledger.save_schedule(replace(row, last_fired=row.last_fired - timedelta(days=1))) is None:
        (row,) = ledger.schedules()  # a tick rewrote it meanwhile: read again
    wait_until(lambda: waiting_rows(world) == [], 30, what="the waiting inputs submitted")
    wait_until(lambda: ledger.schedules()[0].firing_since is None, 30, what="the firing cleared")
    assert requests_since(world, before) == {"Task_Add": 0, "Task_AddCollection": 1}
    assert {record.state for record in ledger.inputs()} == {InputState.SUBMITTED}
    assert utc_now() - ledger.schedules()[0].last_fired < timedelta(minutes=5)
