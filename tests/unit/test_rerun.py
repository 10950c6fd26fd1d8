"""Re-runs over the fakes: one task per request however often it arrives, history kept, counts right, refusals."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from shared import ids
from shared.collect import CollectAction, collect
from shared.errors import RejectedInput
from shared.models import CompletionEvent, InputState
from shared.poll import poll
from shared.rerun import RerunAction, RerunRequest, parse_request, rerun
from shared.status import status
from shared.submit import submit, sweep
from tests.unit.fakes import PIPELINE, World, make_world

MANIFEST = "_manifest.json"


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


def run_task(world: World, job_id: str, task_id: str, exit_code: int, note: bytes = b"") -> None:
    staging = ids.staging_container("staging", task_id)
    if exit_code == 0:
        world.blobs.put(staging, "out/report.json", b'{"ok": true}' + note)
    world.blobs.put(staging, "logs/stdout.txt", b"out" + note)
    world.blobs.put(staging, "logs/stderr.txt", b"boom" + note if exit_code else b"")
    world.batch.finish(job_id, task_id, exit_code)


def collect_all(world: World) -> list[CollectAction]:
    poll(world.gw)
    return [collect(world.gw, event).action for event in world.queue.drain()]


def manifest(world: World, name: str) -> dict[str, object]:
    document = world.blobs.read_json("results", ids.result_prefix(name) + MANIFEST)
    assert document is not None, f"no manifest for {name}"
    return document


def failed_input(world: World, name: str = "a.txt") -> None:
    outcome = submit(world.gw, world.blobs.put("input", name, b"data"))
    run_task(world, outcome.job_id, outcome.task_id, 3)
    assert collect_all(world) == [CollectAction.PUBLISHED]
    assert manifest(world, name)["status"] == "failed"


def test_a_rerun_publishes_run_2_and_keeps_run_1_under_history(world: World) -> None:
    failed_input(world)
    report = rerun(world.gw, RerunRequest("req-1", names=("a.txt",)))
    [outcome] = report.outcomes
    assert outcome.action is RerunAction.SUBMITTED and outcome.run == 2
    assert outcome.task_id == ids.rerun_task_id("input", "a.txt", world.blobs.get_blob("input", "a.txt").etag, "req-1")
    assert manifest(world, "a.txt")["status"] == "failed"  # replaced only when the re-run is collected
    run_task(world, outcome.job_id, outcome.task_id, 0, b"2")
    assert collect_all(world) == [CollectAction.PUBLISHED]
    current = manifest(world, "a.txt")
    assert (current["status"], current["run"], current["task_id"]) == ("succeeded", 2, outcome.task_id)
    kept = world.blobs.read_json("results", "a.txt/_history/1/" + MANIFEST)
    assert kept is not None and (kept["status"], kept["run"]) == ("failed", 1)
    assert kept["stderr"] == "a.txt/_history/1/_logs/stderr.txt"
    assert world.blobs.text("results", "a.txt/_history/1/_logs/stderr.txt") == "boom"
    assert world.blobs.text("results", "a.txt/_logs/stdout.txt") == "out2"
    totals = status(world.gw)["totals"]
    assert isinstance(totals, dict)
    assert (totals["collected"], totals["succeeded"], totals["failed"]) == (1, 1, 0)


def test_the_same_request_twice_makes_one_task(world: World) -> None:
    failed_input(world)
    first = rerun(world.gw, RerunRequest("req-1", names=("a.txt",)))
    again = rerun(world.gw, RerunRequest("req-1", names=("a.txt",)))
    assert [o.action for o in again.outcomes] == [RerunAction.DUPLICATE]
    assert again.outcomes[0].task_id == first.outcomes[0].task_id
    assert len(world.batch.all_tasks()) == 2  # the upload's task and one re-run


def test_a_request_that_crashed_after_claiming_is_finished_by_its_retry(world: World) -> None:
    failed_input(world)
    world.batch.fail_next.append(RuntimeError("crash before the task was created"))
    with pytest.raises(RuntimeError):
        rerun(world.gw, RerunRequest("req-1", names=("a.txt",)))
    [outcome] = rerun(world.gw, RerunRequest("req-1", names=("a.txt",))).outcomes
    assert outcome.action is RerunAction.SUBMITTED and outcome.run == 2
    assert len(world.batch.all_tasks()) == 2


def test_a_second_request_for_a_queued_rerun_is_refused_unless_forced(world: World) -> None:
    failed_input(world)
    [first] = rerun(world.gw, RerunRequest("req-1", names=("a.txt",))).outcomes
    [refused] = rerun(world.gw, RerunRequest("req-2", names=("a.txt",))).outcomes
    assert refused.action is RerunAction.REFUSED and "already queued or running" in refused.reason
    assert "already queued or running" in world.ledger.rejections()[0]["reason"]
    [forced] = rerun(world.gw, RerunRequest("req-3", names=("a.txt",), force=True)).outcomes
    assert forced.action is RerunAction.SUBMITTED and forced.run == 3
    ended = world.batch.get_task(first.job_id, first.task_id)
    assert ended is not None and ended.completed and (ended.failure or {}).get("code") == "TaskEnded"
    run_task(world, forced.job_id, forced.task_id, 0)
    actions = collect_all(world)
    assert sorted(actions) == sorted([CollectAction.SUPERSEDED, CollectAction.PUBLISHED])
    assert manifest(world, "a.txt")["run"] == 3
    assert world.blobs.read_json("results", "a.txt/_history/1/" + MANIFEST) is not None
    totals = status(world.gw)["totals"]
    assert isinstance(totals, dict) and (totals["collected"], totals["succeeded"]) == (1, 1)


def test_refusals_name_the_reason_and_are_recorded(world: World) -> None:
    failed_input(world)
    world.blobs.put("input", "never-submitted.txt")
    request = RerunRequest("req-1", names=("gone.txt", "never-submitted.txt"))
    outcomes = rerun(world.gw, request).outcomes
    assert [o.reason for o in outcomes] == [
        "the input no longer exists",
        "this version of the input was never submitted: its first run is still to come",
    ]
    reasons = [row["reason"] for row in world.ledger.rejections()]
    assert "re-run refused: the input no longer exists" in reasons


def test_an_input_no_pipeline_takes_is_refused(tmp_path: Path) -> None:
    world = make_world(tmp_path, pipelines=[{**PIPELINE, "match": {"prefix": "in/", "glob": "*"}}])
    world.blobs.put("input", "elsewhere.txt")
    [outcome] = rerun(world.gw, RerunRequest("req-1", names=("elsewhere.txt",))).outcomes
    assert outcome.action is RerunAction.REFUSED and outcome.reason == "no pipeline takes this input"


def test_failed_selects_failures_since_a_time_and_all_reruns_a_pipeline_in_bulk(world: World) -> None:
    for i in range(3):
        failed_input(world, f"f{i}.txt")
    world.clock.advance(minutes=1)
    later = world.clock()
    ok = submit(world.gw, world.blobs.put("input", "ok.txt"))
    run_task(world, ok.job_id, ok.task_id, 0)
    collect_all(world)
    since = rerun(world.gw, RerunRequest("req-s", failed=True, since=later + timedelta(days=1)))
    assert since.outcomes == []
    failed = rerun(world.gw, RerunRequest("req-f", failed=True, pipeline="report"))
    assert sorted(o.name for o in failed.outcomes) == ["f0.txt", "f1.txt", "f2.txt"]
    for i in range(250):
        world.blobs.put("input", f"bulk/{i:03d}.txt")
    sweep(world.gw)
    for job_id, task_id in world.batch.all_tasks():
        if world.batch.jobs[job_id].tasks[task_id].state != "completed":
            run_task(world, job_id, task_id, 0)
    collect_all(world)
    before = world.batch.requests["Task_AddCollection"]
    everything = rerun(world.gw, RerunRequest("req-all", every=True, pipeline="report"))
    assert everything.count(RerunAction.SUBMITTED) == 254  # the 250, ok.txt and the f*.txt re-runs (finished)
    assert world.batch.requests["Task_AddCollection"] - before == 3  # 100 + 100 + 54


def test_parse_request_names_what_is_wrong() -> None:
    with pytest.raises(RejectedInput, match="`id`"):
        parse_request({"names": ["a"]})
    with pytest.raises(RejectedInput, match="exactly one"):
        parse_request({"id": "r1", "names": ["a"], "failed": True})
    with pytest.raises(RejectedInput, match="name it with `pipeline`"):
        parse_request({"id": "r1", "all": True})
    with pytest.raises(RejectedInput, match="time zone"):
        parse_request({"id": "r1", "failed": True, "since": "2026-01-01T00:00:00"})
    request = parse_request({"id": "r1", "failed": True, "since": "2026-01-01T00:00:00Z", "pipeline": "p"})
    assert request.failed and request.pipeline == "p" and request.since is not None


def test_rerun_task_ids_fit_batch_and_differ_by_request() -> None:
    long = "x" * 700 + "/ünïcode name!.txt"
    first, second = (ids.rerun_task_id("input", long, '"0x1"', rid) for rid in ("a" * 64, "b"))
    assert first != second != ids.task_id("input", long, "0x1")
    assert all(len(t) <= 64 and ids.RERUN_ID.match(t) for t in (first, second))


def test_a_stale_completion_of_a_replaced_task_publishes_nothing(world: World) -> None:
    outcome = submit(world.gw, world.blobs.put("input", "a.txt"))
    [forced] = rerun(world.gw, RerunRequest("req-1", names=("a.txt",), force=True)).outcomes
    result = collect(world.gw, CompletionEvent(outcome.job_id, outcome.task_id))
    assert result.action is CollectAction.SUPERSEDED
    assert world.blobs.read_json("results", "a.txt/" + MANIFEST) is None
    row = world.ledger.get_input(outcome.task_id)
    assert row is not None and row.state is InputState.RERUN and row.rerun_by == forced.task_id


def test_a_reruns_completion_event_finds_its_row_and_publishes_it(world: World) -> None:
    from shared.events import BlobCreated
    from shared.finished import FinishedAction, task_finished

    failed_input(world)
    [outcome] = rerun(world.gw, RerunRequest("req-ev", names=("a.txt",))).outcomes
    staging = ids.staging_container("staging", outcome.task_id)
    run_task(world, outcome.job_id, outcome.task_id, 0, b"2")
    event = BlobCreated("evt-1", staging, "logs/stderr.txt", frozenset({"devstoreaccount1"}))
    assert task_finished(world.gw, event).action is FinishedAction.ENQUEUED  # not refused as an unknown container
    assert [collect(world.gw, message).action for message in world.queue.drain()] == [CollectAction.PUBLISHED]
    assert (manifest(world, "a.txt")["status"], manifest(world, "a.txt")["run"]) == ("succeeded", 2)
