"""Completion events over the fakes: staging container → input, one Batch read, the poll's message, re-checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared import ids
from shared.collect import collect
from shared.errors import RejectedInput
from shared.events import BlobCreated
from shared.finished import FinishedAction, recheck, recheck_delay, task_finished
from shared.messages import decode_check, encode_check
from shared.models import CompletionCheck, InputState
from shared.poll import poll
from shared.submit import SubmitOutcome, submit
from tests.unit.fakes import World, make_world

ACCOUNT = frozenset({"devstoreaccount1"})


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


def stderr_event(staging: str, name: str = "logs/stderr.txt", accounts: frozenset[str] = ACCOUNT) -> BlobCreated:
    return BlobCreated("evt-1", staging, name, accounts)


def submitted(world: World, name: str = "a.txt") -> tuple[SubmitOutcome, str]:
    outcome = submit(world.gw, world.blobs.put("input", name))
    return outcome, ids.staging_container("staging", outcome.task_id)


def run_task(world: World, outcome: SubmitOutcome, staging: str) -> None:
    world.blobs.put(staging, "out/report.json", b"{}")
    world.blobs.put(staging, "logs/stdout.txt", b"hello")
    world.blobs.put(staging, "logs/stderr.txt", b"")
    world.batch.finish(outcome.job_id, outcome.task_id)


def test_submission_records_the_staging_container_of_the_input(world: World) -> None:
    outcome, staging = submitted(world)
    record = world.ledger.input_for_staging(staging)
    assert record is not None and (record.task_id, record.staging) == (outcome.task_id, staging)


def test_a_completion_event_enqueues_the_polls_message_after_one_batch_read(world: World) -> None:
    outcome, staging = submitted(world)
    run_task(world, outcome, staging)
    before = sum(world.batch.requests.values())
    result = task_finished(world.gw, stderr_event(staging))
    assert result.action is FinishedAction.ENQUEUED
    assert sum(world.batch.requests.values()) - before == 1
    [event] = world.queue.drain()
    # The same message the poll builds for this task.
    poll(world.gw)
    [polled] = world.queue.drain()
    assert event == polled
    assert collect(world.gw, event).status == "succeeded"
    assert world.ledger.get_input(outcome.task_id).state is InputState.COLLECTED  # type: ignore[union-attr]


def test_an_event_for_a_collected_input_costs_no_batch_request(world: World) -> None:
    outcome, staging = submitted(world)
    run_task(world, outcome, staging)
    task_finished(world.gw, stderr_event(staging))
    collect(world.gw, world.queue.drain()[0])
    before = sum(world.batch.requests.values())
    for _ in range(3):  # Event Grid delivers at least once
        assert task_finished(world.gw, stderr_event(staging)).action is FinishedAction.ALREADY_FINAL
    assert recheck(world.gw, CompletionCheck(outcome.task_id, staging, 2)).action is FinishedAction.ALREADY_FINAL
    assert sum(world.batch.requests.values()) == before
    assert world.queue.drain() == [] and world.queue.checks == []


def test_a_running_task_is_rechecked_with_backoff_then_left_to_the_poll(tmp_path: Path) -> None:
    world = make_world(
        tmp_path,
        BATCHDROP_COMPLETION_RECHECKS=4,
        BATCHDROP_COMPLETION_RECHECK_SECONDS=3,
        BATCHDROP_COMPLETION_RECHECK_MAX_SECONDS=10,
    )
    outcome, staging = submitted(world)
    world.batch.jobs[outcome.job_id].tasks[outcome.task_id].state = "running"  # uploaded, not yet completed
    result = task_finished(world.gw, stderr_event(staging))
    assert result.action is FinishedAction.RECHECK
    actions = []
    while world.queue.checks:
        check, _ = world.queue.checks[-1]
        actions.append(recheck(world.gw, decode_check(encode_check(check))).action)
        if actions[-1] is not FinishedAction.RECHECK:
            break
    assert [(check.attempt, delay) for check, delay in world.queue.checks] == [(1, 3), (2, 6), (3, 10), (4, 10)]
    assert actions == [FinishedAction.RECHECK] * 3 + [FinishedAction.LEFT_TO_POLL]
    assert world.batch.requests["Task_Get"] == 5  # the event and each of the 4 re-checks: one read each
    assert world.queue.messages == []
    # The poll, still running, collects it once Batch catches up.
    world.batch.finish(outcome.job_id, outcome.task_id)
    poll(world.gw)
    assert [event.task_id for event in world.queue.drain()] == [outcome.task_id]


def test_a_recheck_that_finds_the_task_completed_enqueues_it(world: World) -> None:
    outcome, staging = submitted(world)
    world.batch.jobs[outcome.job_id].tasks[outcome.task_id].state = "running"
    task_finished(world.gw, stderr_event(staging))
    [(check, delay)] = world.queue.checks
    assert (check.attempt, delay) == (1, recheck_delay(world.gw, 1)) and delay > 0
    run_task(world, outcome, staging)
    assert recheck(world.gw, check).action is FinishedAction.ENQUEUED
    assert [event.task_id for event in world.queue.drain()] == [outcome.task_id]


def test_no_rechecks_configured_leaves_the_task_to_the_poll_at_once(tmp_path: Path) -> None:
    world = make_world(tmp_path, BATCHDROP_COMPLETION_RECHECKS=0)
    outcome, staging = submitted(world)
    world.batch.jobs[outcome.job_id].tasks[outcome.task_id].state = "running"
    assert task_finished(world.gw, stderr_event(staging)).action is FinishedAction.LEFT_TO_POLL
    assert world.queue.checks == []


@pytest.mark.parametrize(
    ("container", "name", "accounts", "reason"),
    [
        ("STAGING", "logs/stderr.txt", frozenset({"otheraccount"}), "is in storage account 'otheraccount'"),
        ("STAGING", "logs/stderr.txt", frozenset(), "names a storage account"),
        ("input", "logs/stderr.txt", ACCOUNT, "is not in a staging container"),
        ("results", "a.txt/logs/stderr.txt", ACCOUNT, "is not in a staging container"),
        (ids.staging_container("staging", "never-submitted"), "logs/stderr.txt", ACCOUNT, "no input in the ledger"),
        ("staging-notadigest", "logs/stderr.txt", ACCOUNT, "no input in the ledger"),
    ],
)
def test_foreign_events_are_refused_without_a_batch_request(
    world: World, container: str, name: str, accounts: frozenset[str], reason: str
) -> None:
    _, staging = submitted(world)
    before = sum(world.batch.requests.values())
    with pytest.raises(RejectedInput, match=reason):
        task_finished(world.gw, stderr_event(staging if container == "STAGING" else container, name, accounts))
    assert sum(world.batch.requests.values()) == before
    assert world.queue.messages == [] and world.queue.checks == []


def test_other_blobs_of_a_staging_container_are_ignored(world: World) -> None:
    outcome, staging = submitted(world)
    run_task(world, outcome, staging)
    before = sum(world.batch.requests.values())
    for name in ("logs/stdout.txt", "out/logs/stderr.txt"):
        assert task_finished(world.gw, stderr_event(staging, name)).action is FinishedAction.IGNORED
    assert sum(world.batch.requests.values()) == before and world.queue.messages == []


def test_a_check_for_a_task_the_ledger_does_not_know_is_refused(world: World) -> None:
    outcome, staging = submitted(world)
    with pytest.raises(RejectedInput, match="does not know"):
        recheck(world.gw, CompletionCheck("other-task", staging, 1))
    with pytest.raises(RejectedInput, match="does not know"):
        recheck(world.gw, CompletionCheck(outcome.task_id, "staging-elsewhere", 1))


@pytest.mark.parametrize(
    "body",
    [
        "nope",
        "[]",
        '{"task_id": "t"}',
        '{"task_id": "t", "staging": "s", "attempt": 0}',
        '{"task_id": "t", "staging": "s", "attempt": true}',
    ],
)
def test_malformed_check_messages_are_refused_by_name(body: str) -> None:
    with pytest.raises(RejectedInput, match="completion check message"):
        decode_check(body)
