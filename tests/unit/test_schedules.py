"""Per-pipeline schedules over the fakes: validation at load, inputs held on every ingest path, one firing per
due schedule (once after a miss, once under concurrent ticks), bulk submission by 100."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from shared import ids
from shared.bulk_ingest import ingest_delivery, parse_delivery
from shared.errors import ConfigError
from shared.models import InputState, ScheduleRecord
from shared.pipelines import load_pipelines
from shared.schedules import FIRING_STALE, fire_due
from shared.status import status
from shared.submit import submit_blob, sweep
from tests.unit.fakes import PIPELINE, World, make_world
from tests.unit.test_bulk_ingest import event

NIGHTLY = "0 0 2 * * *"  # 02:00:00 every day


def scheduled(schedule: str = NIGHTLY, name: str = "nightly", prefix: str = "") -> dict[str, Any]:
    return {**PIPELINE, "name": name, "match": {"prefix": prefix, "glob": "*"}, "submit": {"schedule": schedule}}


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path, [scheduled()])


def write(tmp_path: Path, pipelines: list[dict[str, Any]]) -> Path:
    path = tmp_path / "pipelines.json"
    path.write_text(json.dumps({"pipelines": pipelines}))
    return path


# validation at load


@pytest.mark.parametrize(
    ("schedule", "complaint"),
    [
        ("0 0 2 * *  * *", "expected 6 fields"),
        ("0 0 25 * * *", "hour field: 25 is outside 0-23"),
        ("0 0 0 30 2 *", "never occurs"),
        ("every night", "expected 6 fields"),
    ],
)
def test_a_bad_ncrontab_is_refused_naming_the_pipeline_and_the_field(
    tmp_path: Path, schedule: str, complaint: str
) -> None:
    path = write(tmp_path, [PIPELINE, scheduled(schedule, prefix="nightly/")])
    with pytest.raises(ConfigError) as error:
        load_pipelines(path, schedules_timer="0 * * * * *")
    assert f"pipelines['nightly'].submit: Value error, schedule {schedule!r}" in str(error.value)
    assert complaint in str(error.value)


def test_a_schedule_firing_more_often_than_the_timer_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, [scheduled("*/30 * * * * *")])
    with pytest.raises(ConfigError) as error:
        load_pipelines(path, schedules_timer="0 * * * * *")
    message = str(error.value)
    assert "pipelines['nightly'].submit.schedule" in message and "BATCHDROP_SCHEDULES_SCHEDULE" in message
    assert "30 s apart" in message and "60 s apart" in message
    # the same schedule under a timer every 10 seconds is fine
    assert load_pipelines(path, schedules_timer="*/10 * * * * *").pipelines[0].schedule is not None


def test_a_schedule_checks_its_shortest_gap_not_its_usual_one(tmp_path: Path) -> None:
    # Hourly except that 00:00 and 00:01 are a minute apart: a 5-minute timer would merge them.
    path = write(tmp_path, [scheduled("0 0,1 0 * * *")])
    with pytest.raises(ConfigError, match="60 s apart"):
        load_pipelines(path, schedules_timer="0 */5 * * * *")


def test_five_fields_mean_second_zero_and_on_upload_is_the_default(tmp_path: Path) -> None:
    path = write(tmp_path, [PIPELINE, scheduled("30 2 * * MON-FRI", prefix="nightly/")])
    loaded = load_pipelines(path, schedules_timer="0 * * * * *")
    on_upload, nightly = loaded.pipelines
    assert on_upload.submit == "on_upload" and on_upload.schedule is None
    assert nightly.schedule is not None and nightly.schedule.seconds == frozenset({0})
    assert nightly.schedule.minutes == frozenset({30}) and nightly.schedule.hours == frozenset({2})


def test_submit_takes_only_on_upload_or_a_schedule(tmp_path: Path) -> None:
    path = write(tmp_path, [{**PIPELINE, "submit": "nightly"}])
    with pytest.raises(ConfigError, match=r"pipelines\['report'\]\.submit: .*must be \"on_upload\" or"):
        load_pipelines(path)


# holding


def test_every_ingest_path_holds_a_scheduled_input_without_a_batch_request(world: World) -> None:
    for name in ("event.txt", "bulk.txt", "swept.txt"):
        world.blobs.put("input", name)
    assert submit_blob(world.gw, "input", "event.txt").action == "waiting"
    report = ingest_delivery(world.gw, parse_delivery(json.dumps([event("bulk.txt")]).encode()))
    assert report.waiting == 1 and report.submitted == 0
    sweep(world.gw)  # finds swept.txt new, and the other two already recorded
    assert submit_blob(world.gw, "input", "event.txt").action == "waiting"  # a redelivery is still held

    assert world.batch.task_requests() == 0 and world.batch.jobs == {}
    rows = world.ledger.inputs()
    assert sorted(row.name for row in rows) == ["bulk.txt", "event.txt", "swept.txt"]
    assert {row.state for row in rows} == {InputState.WAITING}
    # the job id is derived as for any input: the event and sweep paths agree on it
    assert {row.job_id for row in rows} == {ids.job_id("nightly", world.clock(), world.gw.settings.job_window_minutes)}


def test_status_shows_the_waiting_inputs_and_the_next_run(world: World) -> None:
    fire_due(world.gw)  # the first tick records the schedule
    for name in ("a.txt", "b.txt"):
        world.blobs.put("input", name)
        submit_blob(world.gw, "input", name)
    waiting = status(world.gw)["waiting"]
    assert waiting == [
        {
            "pipeline": "nightly", "state": "waiting for schedule", "inputs": 2, "schedule": NIGHTLY,
            "next_run": "2026-11-25T02:00:00+00:00", "last_fired": "2026-11-24T10:00:00+00:00",
        }
    ]  # fmt: skip


def test_on_upload_pipelines_are_untouched(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    world.blobs.put("input", "a.txt")
    assert submit_blob(world.gw, "input", "a.txt").action == "created"
    assert fire_due(world.gw) == [] and world.ledger.schedule_rows == {}
    assert status(world.gw)["waiting"] == []


# firing


def hold(world: World, count: int) -> list[str]:
    names = [f"in{index:04}.txt" for index in range(count)]
    for name in names:
        world.blobs.put("input", name)
        submit_blob(world.gw, "input", name)
    return names


def test_the_schedule_fires_once_and_submits_every_held_input_in_one_request(world: World) -> None:
    assert fire_due(world.gw) == []  # first tick: the schedule counts from now (10:00), nothing fires
    hold(world, 3)
    world.clock.advance(hours=15, minutes=59)  # 01:59 next day: not yet
    assert fire_due(world.gw) == [] and world.batch.task_requests() == 0

    world.clock.advance(minutes=1)  # 02:00
    fired = fire_due(world.gw)

    assert [(firing.pipeline, firing.submitted) for firing in fired] == [("nightly", 3)]
    assert world.batch.requests["Task_AddCollection"] == 1 and world.batch.requests["Task_Add"] == 0
    assert len(world.batch.all_tasks()) == 3
    assert {row.state for row in world.ledger.inputs()} == {InputState.SUBMITTED}
    assert status(world.gw)["waiting"][0]["inputs"] == 0  # the waiting counters went with the rows
    world.clock.advance(minutes=1)
    assert fire_due(world.gw) == []  # fired for today


def test_a_schedule_missed_while_the_app_was_down_fires_once(world: World) -> None:
    hold(world, 2)
    world.ledger.schedule_rows["nightly"] = ScheduleRecord("nightly", world.clock() - timedelta(days=30), None, "v0")

    fired = fire_due(world.gw)

    assert len(fired) == 1 and fired[0].submitted == 2
    assert fired[0].due_at == world.clock().replace(hour=2) - timedelta(days=29)  # the first occurrence missed
    assert world.batch.requests["Task_AddCollection"] == 1
    world.blobs.put("input", "late.txt")  # arrives after the firing: waits for tomorrow
    submit_blob(world.gw, "input", "late.txt")
    for _ in range(3):
        world.clock.advance(minutes=1)
        assert fire_due(world.gw) == []
    assert {row.name: row.state for row in world.ledger.inputs(state=InputState.WAITING)} == {
        "late.txt": InputState.WAITING
    }
    assert world.batch.requests["Task_AddCollection"] == 1


def test_concurrent_ticks_fire_once(world: World) -> None:
    hold(world, 3)
    world.ledger.schedule_rows["nightly"] = ScheduleRecord("nightly", world.clock() - timedelta(days=1), None, "v0")
    others: list[int] = []
    # Another instance's tick runs whole between this tick's read of the schedule rows and its claim of the firing.
    world.ledger.interleave["save_schedule"] = lambda: others.append(len(fire_due(world.gw)))

    mine = fire_due(world.gw)

    assert others == [1] and mine == []
    assert world.batch.requests["Task_AddCollection"] == 1 and len(world.batch.all_tasks()) == 3


def test_a_firing_whose_tick_died_is_taken_over_once_stale(world: World) -> None:
    hold(world, 2)
    row = ScheduleRecord("nightly", world.clock(), firing_since=world.clock(), version="v0")
    world.ledger.schedule_rows["nightly"] = row  # claimed by a tick that died before submitting anything
    world.clock.advance(seconds=FIRING_STALE.total_seconds() - 1)
    assert fire_due(world.gw) == [] and world.batch.task_requests() == 0  # it may still be running

    world.clock.advance(seconds=1)
    fired = fire_due(world.gw)

    assert [(firing.submitted, firing.took_over) for firing in fired] == [(2, True)]
    assert world.ledger.schedule_rows["nightly"].firing_since is None
    assert fire_due(world.gw) == []


def test_many_held_inputs_go_to_batch_100_per_request(world: World) -> None:
    hold(world, 250)
    world.ledger.schedule_rows["nightly"] = ScheduleRecord("nightly", world.clock() - timedelta(days=1), None, "v0")

    assert fire_due(world.gw)[0].submitted == 250

    assert world.batch.requests["Task_AddCollection"] == 3 and world.batch.requests["Task_Add"] == 0
    assert len(world.batch.all_tasks()) == 250


def test_only_the_due_pipeline_fires(tmp_path: Path) -> None:
    world = make_world(tmp_path, [scheduled(), scheduled("0 0 3 * * *", name="later", prefix="later/")])
    world.blobs.put("input", "a.txt")
    world.blobs.put("input", "later/b.txt")
    submit_blob(world.gw, "input", "a.txt")
    submit_blob(world.gw, "input", "later/b.txt")
    for name in ("nightly", "later"):
        world.ledger.schedule_rows[name] = ScheduleRecord(name, world.clock(), None, "v0")  # fired at 10:00
    world.clock.advance(hours=16, minutes=30)  # 02:30 the next day: 02:00 has passed, 03:00 has not

    assert [firing.pipeline for firing in fire_due(world.gw)] == ["nightly"]
    assert {row.name: row.state for row in world.ledger.inputs()} == {
        "a.txt": InputState.SUBMITTED, "later/b.txt": InputState.WAITING,
    }  # fmt: skip


def test_inputs_held_by_a_schedule_that_was_removed_are_submitted_on_the_next_tick(tmp_path: Path) -> None:
    before = make_world(tmp_path, [scheduled()])
    hold(before, 2)
    fire_due(before.gw)  # the schedule's row
    # The same deployment after the pipelines file drops the schedule: same storage, the pipeline on upload now.
    after = make_world(tmp_path, [{**scheduled(), "submit": "on_upload"}])
    after.gw.ledger, after.gw.blobs = before.ledger, before.blobs
    after.gw.batch = before.batch

    fired = fire_due(after.gw)

    assert [(firing.pipeline, firing.submitted) for firing in fired] == [("nightly", 2)]
    assert before.batch.requests["Task_AddCollection"] == 1
    assert {row.state for row in before.ledger.inputs()} == {InputState.SUBMITTED}
    assert before.ledger.schedule_rows == {}
    assert fire_due(after.gw) == []
