"""The poll when completion events are on (BATCHDROP_COMPLETION_EVENTS): the safety net, not a second message."""

from __future__ import annotations

from pathlib import Path

from shared.collect import CollectAction, collect
from shared.events import BlobCreated
from shared.finished import FinishedAction, task_finished
from shared.models import InputState
from shared.poll import poll
from tests.unit.fakes import finished_task, make_world


def test_the_poll_sends_no_second_message_for_a_completion_the_event_had_collected(tmp_path: Path) -> None:
    world = make_world(tmp_path, BATCHDROP_COMPLETION_EVENTS="true")
    delivered, staging = finished_task(world, "a.txt")
    missed, _ = finished_task(world, "b.txt")  # its event was lost: the poll must still find it
    assert task_finished(world.gw, BlobCreated("evt-1", staging, "logs/stderr.txt", frozenset({"devstoreaccount1"}))
                         ).action is FinishedAction.ENQUEUED  # fmt: skip
    [event] = world.queue.drain()
    assert collect(world.gw, event).action is CollectAction.PUBLISHED

    report = poll(world.gw)

    assert [message.task_id for message in world.queue.drain()] == [missed.task_id]
    assert report.events == 1 and delivered.task_id != missed.task_id


def test_without_completion_events_the_poll_sends_every_completion_it_finds(tmp_path: Path) -> None:
    world = make_world(tmp_path)  # the poll is the only source of completion messages: it reads no input row
    first, _ = finished_task(world, "a.txt")
    second, _ = finished_task(world, "b.txt")
    [row] = [record for record in world.ledger.inputs() if record.task_id == first.task_id]
    row.state, row.outcome = InputState.COLLECTED, "succeeded"
    world.ledger.save_input(row)  # even one collected by other means

    report = poll(world.gw)

    assert sorted(message.task_id for message in world.queue.drain()) == sorted([first.task_id, second.task_id])
    assert report.events == 2
