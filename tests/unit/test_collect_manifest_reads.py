"""Collect reads the manifest only where it must (issue 16), and publishes each input exactly once all the same.

A first publication writes its manifest create-only without reading it first; a conflict on that write is what
tells a repeat (this task's manifest: published before) from a re-uploaded input (an earlier upload's: replaced).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from shared import ids
from shared.collect import collect
from shared.models import CompletionEvent, InputState
from shared.poll import poll
from shared.rerun import RerunRequest, rerun
from shared.submit import SubmitOutcome, submit
from tests.unit.fakes import World, make_world
from tests.unit.test_collect_reliability import MANIFEST, manifest, run_task

MANIFEST_PATH = "results/" + MANIFEST


class Crash(Exception):
    """The function host died at this point."""


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


def crash_before_the_ledger_write(world: World) -> None:
    def crash() -> None:
        raise Crash

    world.ledger.interleave["save_input"] = crash


def published_logs(caplog: pytest.LogCaptureFixture, name: str) -> int:
    said = [record.getMessage() for record in caplog.records if record.name == "shared.collect"]
    return sum(1 for message in said if message.startswith(f"published {name}:"))


def test_a_first_publication_reads_no_manifest(world: World) -> None:
    outcome = submit(world.gw, world.blobs.put("input", "a.txt"))
    run_task(world, outcome)

    result = collect(world.gw, CompletionEvent(outcome.job_id, outcome.task_id))

    assert result.action == "published" and result.status == "succeeded"
    assert MANIFEST_PATH not in world.blobs.json_reads
    assert manifest(world)["task_id"] == outcome.task_id
    assert world.blobs.text("results", "a.txt/report.json") == '{"v": 1}'


@pytest.mark.parametrize("staging_cleared", [False, True])
def test_a_repeat_after_a_crash_between_manifest_and_ledger_publishes_one_manifest(
    world: World, caplog: pytest.LogCaptureFixture, staging_cleared: bool
) -> None:
    caplog.set_level(logging.INFO, logger="shared.collect")
    outcome = submit(world.gw, world.blobs.put("input", "a.txt"))
    run_task(world, outcome)
    event = CompletionEvent(outcome.job_id, outcome.task_id)
    crash_before_the_ledger_write(world)
    with pytest.raises(Crash):
        collect(world.gw, event)
    assert world.ledger.input_rows[outcome.task_id].state is InputState.SUBMITTED
    written = world.blobs.containers["results"][MANIFEST]
    if staging_cleared:  # the copy sources are gone: the repeat learns from the manifest instead
        world.blobs.delete_container(ids.staging_container("staging", outcome.task_id))

    again = collect(world.gw, event)

    assert again.action == "already-published" and again.status == "succeeded"
    assert world.blobs.containers["results"][MANIFEST] == written  # the same manifest, not written again
    assert [name for name in world.blobs.containers["results"] if name.endswith(ids.MANIFEST_NAME)] == [MANIFEST]
    assert world.blobs.text("results", "a.txt/report.json") == '{"v": 1}'
    row = world.ledger.input_rows[outcome.task_id]
    assert row.state is InputState.COLLECTED and row.outcome == "succeeded"
    assert published_logs(caplog, "a.txt") == 0  # the crashed delivery never got to say it; the repeat did not


def test_a_reuploaded_inputs_new_task_replaces_the_old_manifest_reading_it_once(world: World) -> None:
    first = submit(world.gw, world.blobs.put("input", "a.txt", b"v1"))
    run_task(world, first, b'{"v": 1}')
    collect(world.gw, CompletionEvent(first.job_id, first.task_id))
    second = submit(world.gw, world.blobs.put("input", "a.txt", b"v2"))
    run_task(world, second, b'{"v": 2}')
    world.blobs.json_reads.clear()

    result = collect(world.gw, CompletionEvent(second.job_id, second.task_id))

    assert result.action == "published"
    assert world.blobs.json_reads == [MANIFEST_PATH]  # once: after the create-only write met the old manifest
    published = manifest(world)
    assert published["task_id"] == second.task_id
    assert published["input_etag"] == world.ledger.input_rows[second.task_id].etag
    assert world.blobs.text("results", "a.txt/report.json") == '{"v": 2}'


def test_an_earlier_uploads_task_never_copies_over_a_newer_uploads_published_outputs(world: World) -> None:
    first = submit(world.gw, world.blobs.put("input", "a.txt", b"v1"))
    second = submit(world.gw, world.blobs.put("input", "a.txt", b"v2"))
    run_task(world, first, b'{"v": 1}')
    run_task(world, second, b'{"v": 2}')
    assert collect(world.gw, CompletionEvent(second.job_id, second.task_id)).action == "published"
    copies, written = world.blobs.copies, world.blobs.containers["results"][MANIFEST]

    late = collect(world.gw, CompletionEvent(first.job_id, first.task_id))

    assert late.action == "superseded"
    assert world.blobs.copies == copies  # it learned of the newer upload before copying anything
    assert world.blobs.text("results", "a.txt/report.json") == '{"v": 2}'
    assert world.blobs.containers["results"][MANIFEST] == written


def test_a_stale_repeat_of_an_infrastructure_failure_does_not_rerun_a_published_task(world: World) -> None:
    """The task failed outside its code, ran again, failed by its own exit code and was published; the ledger
    write was lost. A late repeat of the first completion must not run the task again: the new run would rewrite
    the staging outputs and logs that the published manifest names."""
    outcome = submit(world.gw, world.blobs.put("input", "a.txt"))
    world.batch.fail_download(outcome.job_id, outcome.task_id)
    poll(world.gw)
    (stale,) = world.queue.drain()
    assert collect(world.gw, stale).action == "reactivated"
    world.clock.advance(seconds=2)
    staging = ids.staging_container("staging", outcome.task_id)
    world.blobs.put(staging, "logs/stdout.txt", b"run 2")
    world.blobs.put(staging, "logs/stderr.txt", b"boom")
    world.batch.finish(outcome.job_id, outcome.task_id, exit_code=3)
    poll(world.gw)
    (second,) = world.queue.drain()
    crash_before_the_ledger_write(world)
    with pytest.raises(Crash):
        collect(world.gw, second)
    written = world.blobs.containers["results"][MANIFEST]
    reactivations = world.batch.requests["Task_Reactivate"]

    again = collect(world.gw, stale)

    assert again.action == "already-published" and again.status == "failed"
    assert world.batch.requests["Task_Reactivate"] == reactivations
    assert world.batch.jobs[outcome.job_id].tasks[outcome.task_id].state == "completed"
    assert world.blobs.containers["results"][MANIFEST] == written
    assert world.ledger.input_rows[outcome.task_id].state is InputState.COLLECTED


def test_a_repeat_whose_job_is_gone_from_batch_still_finds_its_manifest(world: World) -> None:
    outcome = submit(world.gw, world.blobs.put("input", "a.txt"))
    run_task(world, outcome)
    crash_before_the_ledger_write(world)
    with pytest.raises(Crash):
        collect(world.gw, CompletionEvent(outcome.job_id, outcome.task_id))
    world.batch.jobs.pop(outcome.job_id)

    again = collect(world.gw, CompletionEvent(outcome.job_id, outcome.task_id))  # no task info: Batch is asked

    assert again.action == "already-published" and again.status == "succeeded"
    assert world.ledger.input_rows[outcome.task_id].state is InputState.COLLECTED


def test_a_rerun_reads_the_manifest_it_replaces_before_copying_anything(world: World) -> None:
    outcome = submit(world.gw, world.blobs.put("input", "a.txt"))
    run_task(world, outcome, b'{"v": 1}')
    collect(world.gw, CompletionEvent(outcome.job_id, outcome.task_id))
    [again] = rerun(world.gw, RerunRequest("req-1", names=("a.txt",))).outcomes
    run_task(world, SubmitOutcome(again.name, outcome.action, task_id=again.task_id, job_id=again.job_id), b'{"v": 2}')
    reads_at_first_copy: list[list[str]] = []
    world.blobs.interleave["copy"] = lambda: reads_at_first_copy.append(list(world.blobs.json_reads))
    world.blobs.json_reads.clear()

    assert collect(world.gw, CompletionEvent(again.job_id, again.task_id)).action == "published"

    assert reads_at_first_copy and MANIFEST_PATH in reads_at_first_copy[0]
    kept = world.blobs.read_json("results", "a.txt/_history/1/" + ids.MANIFEST_NAME)
    assert kept is not None and kept["task_id"] == outcome.task_id
    assert world.blobs.text("results", "a.txt/_history/1/report.json") == '{"v": 1}'
    assert manifest(world)["task_id"] == again.task_id and manifest(world)["run"] == 2
    assert world.blobs.text("results", "a.txt/report.json") == '{"v": 2}'


def test_a_repeat_after_a_crash_keeps_its_word_when_the_input_was_replaced_meanwhile(world: World) -> None:
    first = submit(world.gw, world.blobs.put("input", "a.txt", b"v1"))
    run_task(world, first, b'{"v": 1}')
    crash_before_the_ledger_write(world)
    with pytest.raises(Crash):
        collect(world.gw, CompletionEvent(first.job_id, first.task_id))
    second = submit(world.gw, world.blobs.put("input", "a.txt", b"v2"))

    again = collect(world.gw, CompletionEvent(first.job_id, first.task_id))

    # Its manifest is out: the ledger says what it says until the newer upload's task replaces it.
    assert again.action == "already-published" and again.status == "succeeded"
    assert world.ledger.input_rows[first.task_id].outcome == "succeeded"
    run_task(world, second, b'{"v": 2}')
    assert collect(world.gw, CompletionEvent(second.job_id, second.task_id)).action == "published"
    assert manifest(world)["task_id"] == second.task_id
    assert world.blobs.text("results", "a.txt/report.json") == '{"v": 2}'
