"""Collect under at-least-once delivery and infrastructure faults: one manifest per input, the newest upload's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared import ids
from shared.collect import MAX_REACTIVATIONS, collect
from shared.models import CompletionEvent, InputState
from shared.poll import poll
from shared.submit import SubmitOutcome, submit
from tests.unit.fakes import World, make_world

MANIFEST = "a.txt/_manifest.json"


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


def run_task(world: World, outcome: SubmitOutcome, report: bytes = b'{"v": 1}') -> None:
    """What a node does: write an output and the logs into the task's staging container, then complete."""
    staging = ids.staging_container("staging", outcome.task_id)
    world.blobs.put(staging, "out/report.json", report)
    world.blobs.put(staging, "logs/stdout.txt", b"ok")
    world.blobs.put(staging, "logs/stderr.txt", b"")
    world.batch.finish(outcome.job_id, outcome.task_id, 0)


def manifest(world: World) -> dict[str, object]:
    document = json.loads(world.blobs.text("results", MANIFEST))
    assert isinstance(document, dict)
    return document


@pytest.mark.parametrize("step", ["copy", "write_json_if"])
def test_a_second_delivery_that_finishes_first_leaves_one_manifest(world: World, step: str) -> None:
    outcome = submit(world.gw, world.blobs.put("input", "a.txt"))
    run_task(world, outcome)
    event = CompletionEvent(outcome.job_id, outcome.task_id)
    other_delivery: list[str] = []

    def the_other_delivery_publishes() -> None:
        world.clock.advance(seconds=1)
        other_delivery.append(collect(world.gw, event).action)

    world.blobs.interleave[step] = the_other_delivery_publishes
    world.clock.advance(seconds=1)
    this_delivery = collect(world.gw, event)

    assert other_delivery == ["published"]
    assert this_delivery.action == "already-published" and this_delivery.status == "succeeded"
    published = manifest(world)
    assert published["task_id"] == outcome.task_id
    assert published["outputs"] == ["a.txt/report.json"]  # not overwritten by an empty listing
    assert world.blobs.text("results", "a.txt/report.json") == '{"v": 1}'
    assert world.ledger.input_rows[outcome.task_id].state is InputState.COLLECTED
    assert world.ledger.rejections() == []


def test_a_replaced_input_replaces_the_earlier_uploads_manifest(world: World) -> None:
    first = submit(world.gw, world.blobs.put("input", "a.txt", b"v1"))
    run_task(world, first, b'{"v": 1}')
    collect(world.gw, CompletionEvent(first.job_id, first.task_id))
    second = submit(world.gw, world.blobs.put("input", "a.txt", b"v2"))
    assert second.task_id != first.task_id
    run_task(world, second, b'{"v": 2}')

    assert collect(world.gw, CompletionEvent(second.job_id, second.task_id)).action == "published"
    assert manifest(world)["task_id"] == second.task_id
    assert world.blobs.text("results", "a.txt/report.json") == '{"v": 2}'


def test_an_earlier_uploads_manifest_written_while_publishing_is_still_replaced(world: World) -> None:
    first = submit(world.gw, world.blobs.put("input", "a.txt", b"v1"))
    run_task(world, first, b'{"v": 1}')
    second = submit(world.gw, world.blobs.put("input", "a.txt", b"v2"))
    run_task(world, second, b'{"v": 2}')
    older = {"input": "a.txt", "task_id": first.task_id, "status": "succeeded"}
    world.blobs.interleave["write_json_if"] = lambda: world.blobs.write_json("results", MANIFEST, older)

    assert collect(world.gw, CompletionEvent(second.job_id, second.task_id)).action == "published"
    assert manifest(world)["task_id"] == second.task_id


@pytest.mark.parametrize("newer_published_first", [True, False])
def test_an_upload_replaced_before_its_collection_is_not_published(world: World, newer_published_first: bool) -> None:
    first = submit(world.gw, world.blobs.put("input", "a.txt", b"v1"))
    second = submit(world.gw, world.blobs.put("input", "a.txt", b"v2"))
    run_task(world, first, b'{"v": 1}')
    run_task(world, second, b'{"v": 2}')
    if newer_published_first:
        collect(world.gw, CompletionEvent(second.job_id, second.task_id))

    late = collect(world.gw, CompletionEvent(first.job_id, first.task_id))
    collect(world.gw, CompletionEvent(second.job_id, second.task_id))

    assert late.action == "superseded"
    assert manifest(world)["task_id"] == second.task_id
    assert world.blobs.text("results", "a.txt/report.json") == '{"v": 2}'
    row = world.ledger.input_rows[first.task_id]
    assert row.state is InputState.COLLECTED and "replaced" in row.reason


def test_a_task_whose_download_failed_runs_again_as_the_same_task(world: World) -> None:
    outcome = submit(world.gw, world.blobs.put("input", "a.txt"))
    world.batch.fail_download(outcome.job_id, outcome.task_id)
    poll(world.gw)
    (event,) = world.queue.drain()

    assert collect(world.gw, event).action == "reactivated"
    assert "results" not in world.blobs.containers  # nothing published for the failed attempt
    assert world.batch.all_tasks() == [(outcome.job_id, outcome.task_id)]
    assert world.batch.jobs[outcome.job_id].tasks[outcome.task_id].state == "active"

    world.clock.advance(seconds=2)
    run_task(world, outcome)
    poll(world.gw)  # the same task id completing again is a new completion
    (again,) = world.queue.drain()
    assert collect(world.gw, again).action == "published"
    published = manifest(world)
    assert published["status"] == "succeeded" and published["reactivations"] == 1
    assert world.batch.all_tasks() == [(outcome.job_id, outcome.task_id)]


def test_an_infrastructure_failure_that_persists_is_published_failed_after_bounded_reruns(world: World) -> None:
    outcome = submit(world.gw, world.blobs.put("input", "a.txt"))
    actions = []
    for _ in range(MAX_REACTIVATIONS + 1):
        world.clock.advance(seconds=2)
        world.batch.fail_download(outcome.job_id, outcome.task_id)
        poll(world.gw)
        actions += [collect(world.gw, event).action for event in world.queue.drain()]

    assert actions == ["reactivated"] * MAX_REACTIVATIONS + ["published"]
    published = manifest(world)
    assert published["status"] == "failed"
    assert published["reactivations"] == MAX_REACTIVATIONS
    failure = published["failure"]
    assert isinstance(failure, dict)
    assert failure["code"] == "BlobDownloadMiscError"
    assert f"ran the task again {MAX_REACTIVATIONS} time(s)" in str(failure["note"])
    assert world.batch.all_tasks() == [(outcome.job_id, outcome.task_id)]


def test_a_stale_repeat_of_the_failed_completion_does_not_rerun_a_running_task(world: World) -> None:
    outcome = submit(world.gw, world.blobs.put("input", "a.txt"))
    world.batch.fail_download(outcome.job_id, outcome.task_id)
    poll(world.gw)
    (event,) = world.queue.drain()
    collect(world.gw, event)
    world.batch.jobs[outcome.job_id].tasks[outcome.task_id].state = "running"

    assert collect(world.gw, event).action == "reactivated"  # Batch: TaskNotCompleted, nothing to do
    assert world.batch.jobs[outcome.job_id].tasks[outcome.task_id].state == "running"
    assert "results" not in world.blobs.containers


def test_a_task_that_failed_by_its_own_exit_code_is_not_run_again(world: World) -> None:
    outcome = submit(world.gw, world.blobs.put("input", "a.txt"))
    world.batch.finish(outcome.job_id, outcome.task_id, exit_code=3)
    assert collect(world.gw, CompletionEvent(outcome.job_id, outcome.task_id)).action == "published"
    published = manifest(world)
    assert published["status"] == "failed" and published["reactivations"] == 0


def test_an_exit_zero_task_whose_outputs_did_not_upload_runs_again(world: World) -> None:
    outcome = submit(world.gw, world.blobs.put("input", "a.txt"))
    world.batch.fail(outcome.job_id, outcome.task_id, 0, "usererror", "FileUploadMiscError")
    assert collect(world.gw, CompletionEvent(outcome.job_id, outcome.task_id)).action == "reactivated"
    world.clock.advance(seconds=2)
    run_task(world, outcome)
    assert collect(world.gw, CompletionEvent(outcome.job_id, outcome.task_id)).action == "published"
    assert manifest(world)["status"] == "succeeded" and manifest(world)["reactivations"] == 1


def test_when_batch_refuses_to_rerun_an_exit_zero_task_its_failure_is_published(world: World) -> None:
    world.batch.refuse_reactivating_exit_zero = True
    outcome = submit(world.gw, world.blobs.put("input", "a.txt"))
    world.batch.fail(outcome.job_id, outcome.task_id, 0, "usererror", "FileUploadMiscError")
    assert collect(world.gw, CompletionEvent(outcome.job_id, outcome.task_id)).action == "published"
    published = manifest(world)
    assert published["status"] == "failed" and published["reactivations"] == 0
    assert published["failure"]["code"] == "FileUploadMiscError"  # type: ignore[index]


@pytest.mark.parametrize(
    ("exit_code", "category", "code", "rerun"),
    [
        (None, "servererror", "BlobDownloadMiscError", True),
        (None, "ServerError", "ResourceDirectoryCreateFailed", True),
        (0, "usererror", "FileUploadMiscError", True),
        (3, "usererror", "FileUploadMiscError", False),  # the task failed by itself as well
        (3, "usererror", "FailureExitCode", False),
        (None, "usererror", "BlobNotFound", False),
        (137, "servererror", "TaskEnded", False),  # the wall clock: another run ends the same way
    ],
)
def test_which_failures_are_run_again(
    world: World, exit_code: int | None, category: str, code: str, rerun: bool
) -> None:
    outcome = submit(world.gw, world.blobs.put("input", "a.txt"))
    world.batch.fail(outcome.job_id, outcome.task_id, exit_code, category, code)
    action = collect(world.gw, CompletionEvent(outcome.job_id, outcome.task_id)).action
    assert action == ("reactivated" if rerun else "published")
