"""A finished input stays finished: a stale ledger write racing the one that marked it collected cannot undo it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared import ids
from shared.collect import MAX_REACTIVATIONS, CollectAction, collect
from shared.errors import TransientError
from shared.models import CompletionEvent, InputState, JobState
from shared.poll import poll
from shared.submit import SubmitOutcome, submit, sweep
from tests.unit.fakes import World, make_world


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


def fail_and_poll(world: World, outcome: SubmitOutcome) -> CompletionEvent:
    """The node could not download the input (an infrastructure failure); the poll reports it once."""
    world.clock.advance(seconds=2)
    world.batch.fail_download(outcome.job_id, outcome.task_id)
    poll(world.gw)
    (event,) = world.queue.drain()
    return event


def after_the_window(world: World) -> list[str]:
    """Move past the job's window and grace; the poll terminates every job with nothing left to collect."""
    world.clock.advance(hours=2)
    return poll(world.gw).terminated


def test_a_stale_reactivation_count_does_not_undo_a_publication_that_raced_it(world: World) -> None:
    outcome = submit(world.gw, world.blobs.put("input", "a.txt"))
    for _ in range(MAX_REACTIVATIONS - 1):
        assert collect(world.gw, fail_and_poll(world, outcome)).action == "reactivated"
    failed_again = fail_and_poll(world, outcome)
    other_deliveries: list[str] = []

    def meanwhile() -> None:
        # Between this delivery's read of the row and its write of the next reactivation count, a first
        # delivery of the same completion reactivates the task (the last allowed time), the task fails again,
        # and another collector publishes that failure and marks the row collected.
        other_deliveries.append(collect(world.gw, failed_again).action)
        other_deliveries.append(collect(world.gw, fail_and_poll(world, outcome)).action)

    world.ledger.interleave["save_input"] = meanwhile
    stale = collect(world.gw, failed_again)

    assert other_deliveries == ["reactivated", "published"]
    assert stale.action is CollectAction.ALREADY_PUBLISHED and stale.status == "failed"
    row = world.ledger.input_rows[outcome.task_id]
    assert row.state is InputState.COLLECTED and row.outcome == "failed"
    # The published failure stands: the task was not run again behind the manifest's back.
    assert world.batch.jobs[outcome.job_id].tasks[outcome.task_id].state == "completed"
    manifest = json.loads(world.blobs.text("results", "a.txt/_manifest.json"))
    assert manifest["status"] == "failed" and manifest["reactivations"] == MAX_REACTIVATIONS
    assert after_the_window(world) == [outcome.job_id]
    assert world.ledger.job_rows[outcome.job_id].state is JobState.TERMINATED


def test_a_sweep_saving_submitted_does_not_undo_a_publication_that_raced_it(world: World) -> None:
    blob = world.blobs.put("input", "a.txt")

    def ledger_goes_away() -> None:
        world.ledger.unavailable = True

    # An event's submit created the task, then could not record it: the row stays claimed for the sweep.
    world.ledger.interleave["save_input"] = ledger_goes_away
    with pytest.raises(TransientError):
        submit(world.gw, blob)
    world.ledger.unavailable = False
    task_id = ids.task_id("input", "a.txt", blob.etag)
    job_id = world.ledger.input_rows[task_id].job_id
    assert world.ledger.input_rows[task_id].state is InputState.CLAIMED
    world.blobs.put(ids.staging_container("staging", task_id), "out/report.json", b"{}")
    world.batch.finish(job_id, task_id, 0)
    collected: list[str] = []

    def the_task_is_collected_meanwhile() -> None:
        poll(world.gw)
        collected.extend(collect(world.gw, event).action for event in world.queue.drain())

    world.ledger.interleave["save_inputs"] = the_task_is_collected_meanwhile
    report = sweep(world.gw)

    assert report.submitted == 1 and collected == ["published"]
    assert world.ledger.input_rows[task_id].state is InputState.COLLECTED
    assert after_the_window(world) == [job_id]
