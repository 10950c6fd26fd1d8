"""task_finished and recheck_task called with real azure.functions binding objects, over the in-memory fakes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import azure.functions as func
import pytest
from azure.functions.queue import QueueMessage

from shared import ids
from shared.messages import encode_check
from shared.models import CompletionCheck
from shared.submit import submit
from shared.triggers import boundary, finished
from tests.functions.test_blueprints import user_function
from tests.unit.fakes import World, make_world


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    world = make_world(tmp_path)
    monkeypatch.setattr(boundary, "gateways", lambda: world.gw)
    return world


def stderr_event(container: str, event_type: str = "Microsoft.Storage.BlobCreated",
                 account: str = "devstoreaccount1") -> func.EventGridEvent:  # fmt: skip
    return func.EventGridEvent(
        id="evt-done",
        data={"url": f"http://127.0.0.1:10000/{account}/{container}/logs/stderr.txt", "api": "PutBlockList"},
        topic=f"/subscriptions/x/resourceGroups/y/providers/Microsoft.Storage/storageAccounts/{account}",
        subject=f"/blobServices/default/containers/{container}/blobs/logs/stderr.txt",
        event_type=event_type,
        event_time=datetime.now(UTC),
        data_version="",
    )


def submitted(world: World) -> tuple[str, str, str]:
    outcome = submit(world.gw, world.blobs.put("input", "a.txt"))
    return outcome.job_id, outcome.task_id, ids.staging_container("staging", outcome.task_id)


def test_a_stderr_event_enqueues_the_tasks_completion(world: World) -> None:
    job_id, task_id, staging = submitted(world)
    world.batch.finish(job_id, task_id)
    user_function(finished.bp, "task_finished")(stderr_event(staging))
    assert [(event.job_id, event.task_id) for event in world.queue.drain()] == [(job_id, task_id)]


def test_other_event_types_are_ignored_and_foreign_events_recorded(world: World) -> None:
    job_id, task_id, staging = submitted(world)
    world.batch.finish(job_id, task_id)
    user_function(finished.bp, "task_finished")(stderr_event(staging, "Microsoft.Storage.BlobDeleted"))
    assert world.ledger.rejections() == [] and world.queue.messages == []
    user_function(finished.bp, "task_finished")(stderr_event(staging, account="elsewhere"))
    [rejection] = world.ledger.rejections()
    assert rejection["input"] == "event evt-done" and "storage account 'elsewhere'" in rejection["reason"]
    assert world.queue.messages == []


def test_a_recheck_message_looks_again_and_a_malformed_one_is_recorded(world: World) -> None:
    job_id, task_id, staging = submitted(world)
    world.batch.finish(job_id, task_id)
    body = encode_check(CompletionCheck(task_id, staging, 2)).encode()
    user_function(finished.bp, "recheck_task")(QueueMessage(id="c1", body=body, dequeue_count=1))
    assert [event.task_id for event in world.queue.drain()] == [task_id]
    user_function(finished.bp, "recheck_task")(QueueMessage(id="c2", body=b"{nope", dequeue_count=1))
    [rejection] = world.ledger.rejections()
    assert rejection["input"] == "completion-checks message c2" and "not JSON" in rejection["reason"]
