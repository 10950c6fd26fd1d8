"""Completion messages: many completions to a message (the poll's), each collected on its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.collect import CollectAction, collect
from shared.collect_batch import collect_message
from shared.errors import RejectedInput, TransientError
from shared.messages import (
    COMPLETIONS_PER_MESSAGE,
    MESSAGE_BYTES,
    decode_completion,
    decode_completions,
    encode_completion,
    encode_completions,
)
from shared.models import CompletionEvent
from shared.poll import poll
from tests.unit.fakes import World, finished_task, make_world


def test_many_completions_go_32_to_a_message_and_one_alone_keeps_the_single_shape() -> None:
    events = [CompletionEvent("job-1", f"t-{index}") for index in range(COMPLETIONS_PER_MESSAGE * 2 + 1)]
    bodies = encode_completions(events)
    assert [len(decode_completions(body)) for body in bodies] == [COMPLETIONS_PER_MESSAGE, COMPLETIONS_PER_MESSAGE, 1]
    assert bodies[-1] == encode_completion(events[-1])  # what task_finished sends, and older code reads
    assert bodies[0] == json.dumps(
        {"completions": [json.loads(encode_completion(event)) for event in events[:COMPLETIONS_PER_MESSAGE]]}
    )
    assert [event for body in bodies for event in decode_completions(body)] == events
    assert decode_completions(encode_completion(events[0])) == [decode_completion(encode_completion(events[0]))]


def test_a_message_stays_under_the_byte_limit_however_long_its_completions_failures() -> None:
    from shared.models import TaskResult

    failure = {"category": "UserError", "code": "x", "message": "y" * 6000}
    long = [CompletionEvent("job-1", f"t-{index}", TaskResult(f"t-{index}", "completed", 1, "failure", failure,
                                                         None, None, 0))
            for index in range(20)]  # fmt: skip
    bodies = encode_completions(long)
    assert all(len(body) <= MESSAGE_BYTES + 200 for body in bodies) and len(bodies) > 1
    assert [event.task_id for body in bodies for event in decode_completions(body)] == [e.task_id for e in long]


@pytest.mark.parametrize(
    "body",
    ['{"completions": []}', '{"completions": "x"}', "[1, 2]", "not json"],
)
def test_a_malformed_message_is_refused_by_name(body: str) -> None:
    with pytest.raises(RejectedInput):
        decode_completions(body)


def test_a_malformed_completion_does_not_keep_the_rest_of_its_message_from_collection() -> None:
    body = json.dumps({"completions": [{"job_id": "j", "task_id": "t"}, {"job_id": "j"}]})
    good, bad = decode_completions(body)
    assert good == CompletionEvent("j", "t") and isinstance(bad, RejectedInput)


def finished(world: World, name: str) -> CompletionEvent:
    outcome, _ = finished_task(world, name)
    return CompletionEvent(outcome.job_id, outcome.task_id)  # no task info: collect asks Batch


def test_each_completion_of_a_message_is_collected_refused_or_sent_again_alone(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    published, failing = finished(world, "a.txt"), finished(world, "b.txt")
    unknown = CompletionEvent(published.job_id, "no-such-task")
    malformed = RejectedInput("completion message needs string fields job_id and task_id")

    report = collect_message(world.gw, "completions message m-1", [published, malformed, unknown])
    assert [outcome.task_id for outcome in report.collected] == [published.task_id]
    assert len(report.refused) == 2 and report.sent_again == []
    assert len(world.ledger.rejections()) == 2  # recorded where status shows them

    world.batch.fail_next = [TransientError("Batch unreachable")]  # the one Batch request of this message
    report = collect_message(world.gw, "completions message m-2", [failing, published])
    assert report.sent_again == [failing.task_id]  # alone now: its retries and its poison queue are its own
    assert world.queue.sent_separately == [failing]
    assert [outcome.action for outcome in report.collected] == [CollectAction.ALREADY_PUBLISHED]
    [again] = world.queue.drain()
    assert collect(world.gw, again).action is CollectAction.PUBLISHED  # once Batch answers


def test_a_poll_of_many_completions_collects_each_once(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    events = [finished(world, f"{index}.txt") for index in range(5)]
    poll(world.gw)
    polled = world.queue.drain()
    report = collect_message(world.gw, "completions message m-3", polled)
    assert sorted(outcome.task_id for outcome in report.collected) == sorted(event.task_id for event in events)
    assert all(outcome.action is CollectAction.PUBLISHED for outcome in report.collected)
