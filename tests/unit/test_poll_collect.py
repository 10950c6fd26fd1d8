import json
from pathlib import Path

import pytest

from shared import ids
from shared.collect import collect
from shared.errors import RejectedInput, TransientError
from shared.messages import decode_completion
from shared.models import CompletionEvent, InputState, JobState
from shared.poll import poll
from shared.status import status
from shared.submit import SubmitOutcome, submit
from tests.unit.fakes import World, make_world


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


def run_task(world: World, outcome: SubmitOutcome, exit_code: int = 0, stderr: bytes = b"") -> None:
    """What a node does: write outputs and logs into the task's staging prefix, then complete."""
    staging = ids.staging_container("staging", outcome.task_id)
    if exit_code == 0:
        world.blobs.put(staging, "out/report.json", b'{"bytes": 1}')
        world.blobs.put(staging, "out/sub/preview.txt", b"x")
    world.blobs.put(staging, "logs/stdout.txt", b"hello")
    world.blobs.put(staging, "logs/stderr.txt", stderr)
    world.batch.finish(outcome.job_id, outcome.task_id, exit_code)


def test_poll_emits_one_event_per_completion_even_across_overlapping_polls(world: World) -> None:
    outcomes = [submit(world.gw, world.blobs.put("input", f"{i}.txt")) for i in range(3)]
    run_task(world, outcomes[0])
    poll(world.gw)
    world.clock.advance(seconds=5)
    run_task(world, outcomes[1])
    poll(world.gw)
    poll(world.gw)
    assert sorted(e.task_id for e in world.queue.drain()) == sorted(o.task_id for o in outcomes[:2])


def test_poll_requests_do_not_grow_with_collected_tasks(world: World) -> None:
    outcomes = [submit(world.gw, world.blobs.put("input", f"{i}.txt")) for i in range(50)]
    for outcome in outcomes:
        run_task(world, outcome)
    poll(world.gw)
    for event in world.queue.drain():
        collect(world.gw, event)
    world.clock.advance(minutes=5)
    before = sum(world.batch.requests.values())
    report = poll(world.gw)
    assert report.events == 0
    assert sum(world.batch.requests.values()) - before == 1  # one filtered list for the one active job


def test_collect_publishes_outputs_logs_and_manifest_last(world: World) -> None:
    outcome = submit(world.gw, world.blobs.put("input", "dir/a b.txt"))
    run_task(world, outcome)
    poll(world.gw)
    result = collect(world.gw, world.queue.drain()[0])
    assert result.action == "published"
    manifest = json.loads(world.blobs.text("results", "dir/a b.txt/_manifest.json"))
    assert manifest["status"] == "succeeded"
    assert manifest["exit_code"] == 0
    assert manifest["outputs"] == ["dir/a b.txt/report.json", "dir/a b.txt/sub/preview.txt"]
    assert manifest["stdout"] == "dir/a b.txt/_logs/stdout.txt"
    for key in ("input", "input_etag", "pipeline", "job_id", "task_id", "failure", "started_at", "retries"):
        assert key in manifest
    assert world.blobs.text("results", "dir/a b.txt/report.json") == '{"bytes": 1}'
    names = list(world.blobs.containers["results"])
    assert names[-1] == "dir/a b.txt/_manifest.json"  # written after every output


def test_repeated_completion_event_publishes_nothing_twice(world: World) -> None:
    outcome = submit(world.gw, world.blobs.put("input", "a.txt"))
    run_task(world, outcome)
    event = CompletionEvent(outcome.job_id, outcome.task_id)
    collect(world.gw, event)
    copies, manifest = world.blobs.copies, world.blobs.containers["results"]["a.txt/_manifest.json"]
    again = collect(world.gw, event)
    assert again.action == "already-published"
    assert world.blobs.copies == copies
    assert world.blobs.containers["results"]["a.txt/_manifest.json"] == manifest


def test_crash_after_manifest_before_ledger_is_not_republished(world: World) -> None:
    outcome = submit(world.gw, world.blobs.put("input", "a.txt"))
    run_task(world, outcome)
    event = CompletionEvent(outcome.job_id, outcome.task_id)
    collect(world.gw, event)
    world.ledger.input_rows[outcome.task_id].state = InputState.SUBMITTED  # the ledger write was lost
    written = world.blobs.containers["results"]["a.txt/_manifest.json"]
    assert collect(world.gw, event).action == "already-published"
    # The repeat may copy the same staging bytes again before its create-only manifest write finds this task's
    # manifest; what a consumer reads stays as published.
    assert world.blobs.containers["results"]["a.txt/_manifest.json"] == written
    assert world.blobs.text("results", "a.txt/report.json") == '{"bytes": 1}'
    assert world.ledger.input_rows[outcome.task_id].state is InputState.COLLECTED


def test_failed_task_gets_failed_manifest_with_exit_code_and_stderr_tail(world: World) -> None:
    outcome = submit(world.gw, world.blobs.put("input", "bad.txt"))
    run_task(world, outcome, exit_code=3, stderr=b"line\n" * 2000 + b"boom: cannot parse bad.txt\n")
    collect(world.gw, CompletionEvent(outcome.job_id, outcome.task_id))
    manifest = json.loads(world.blobs.text("results", "bad.txt/_manifest.json"))
    assert manifest["status"] == "failed"
    assert manifest["exit_code"] == 3
    assert manifest["failure"]["code"] == "FailureExitCode"
    assert manifest["stderr"] == "bad.txt/_logs/stderr.txt"
    assert manifest["stderr_tail"].endswith("boom: cannot parse bad.txt\n")
    assert len(manifest["stderr_tail"]) <= 4096


def test_unknown_or_unfinished_tasks(world: World) -> None:
    with pytest.raises(RejectedInput, match="unknown task"):
        collect(world.gw, CompletionEvent("job", "nope"))
    outcome = submit(world.gw, world.blobs.put("input", "a.txt"))
    with pytest.raises(TransientError, match="not completed"):
        collect(world.gw, CompletionEvent(outcome.job_id, outcome.task_id))
    with pytest.raises(RejectedInput, match="names job"):
        collect(world.gw, CompletionEvent("other-job", outcome.task_id))


@pytest.mark.parametrize(
    ("body", "reason"),
    [("not json", "not JSON"), ("[1]", "JSON object"), ('{"job_id": 1, "task_id": "t"}', "string fields")],
)
def test_bad_messages_are_rejected_with_the_reason(body: str, reason: str) -> None:
    with pytest.raises(RejectedInput, match=reason):
        decode_completion(body)


def test_job_ends_after_window_closes_and_everything_is_collected(world: World) -> None:
    outcome = submit(world.gw, world.blobs.put("input", "a.txt"))
    world.clock.advance(hours=2)
    assert poll(world.gw).terminated == []  # window closed but the task has not run
    run_task(world, outcome)
    poll(world.gw)
    assert poll(world.gw).terminated == []  # completed but not yet collected
    for event in world.queue.drain():
        collect(world.gw, event)
    staging = ids.staging_container("staging", outcome.task_id)
    assert staging in world.blobs.containers  # collect leaves staging to the job's end
    report = poll(world.gw)
    assert report.terminated == [outcome.job_id]
    assert report.staging_deleted == 1 and staging not in world.blobs.containers
    assert world.batch.jobs[outcome.job_id].state == "completed"
    world.clock.advance(hours=25)
    assert poll(world.gw).deleted == [outcome.job_id]
    assert outcome.job_id not in world.batch.jobs
    assert world.ledger.job_rows[outcome.job_id].state is JobState.DELETED


def collected(world: World, names: str) -> list[SubmitOutcome]:
    """One input per letter of `names`, submitted, run, polled and collected."""
    outcomes = [submit(world.gw, world.blobs.put("input", f"{name}.txt")) for name in names]
    for outcome in outcomes:
        run_task(world, outcome)
    poll(world.gw)
    for event in world.queue.drain():
        collect(world.gw, event)
    return outcomes


def test_a_terminated_jobs_staging_is_cleared_a_bounded_number_per_poll(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shared.poll.STAGING_DELETES_PER_POLL", 2)
    outcomes = collected(world, "abcde")
    staging = {ids.staging_container("staging", outcome.task_id) for outcome in outcomes}
    world.clock.advance(hours=2)

    cleared = [poll(world.gw).staging_deleted for _ in range(4)]

    assert cleared == [2, 2, 1, 0]
    assert not staging & set(world.blobs.containers)
    (job_id,) = {outcome.job_id for outcome in outcomes}
    assert world.ledger.job_rows[job_id].staging_cleared
    assert all(world.blobs.text("results", f"{name}.txt/_manifest.json") for name in "abcde")


def test_a_job_is_not_deleted_before_its_staging_is_cleared(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shared.poll.STAGING_DELETES_PER_POLL", 1)
    outcomes = collected(world, "abc")
    world.clock.advance(hours=2)
    assert poll(world.gw).terminated == [outcomes[0].job_id]  # and one of its three staging containers cleared
    world.clock.advance(hours=25)
    assert poll(world.gw).deleted == []  # retention is over, but a staging container is still left
    assert poll(world.gw).deleted == [outcomes[0].job_id]  # the last one cleared, then the job deleted


def test_status_counts_by_job(world: World) -> None:
    done = submit(world.gw, world.blobs.put("input", "a.txt"))
    submit(world.gw, world.blobs.put("input", "b.txt"))
    submit(world.gw, world.blobs.put("input", "bad."))
    run_task(world, done)
    poll(world.gw)
    collect(world.gw, world.queue.drain()[0])
    document = status(world.gw)
    assert document["totals"] == {
        "queued": 1, "running": 0, "succeeded": 1, "failed": 0, "collected": 1, "rejected": 1, "skipped": 0,
    }  # fmt: skip
    jobs = document["jobs"]
    assert isinstance(jobs, list) and jobs[0]["counts"]["collected"] == 1
    assert document["rejected"][0]["input"] == "input/bad."  # type: ignore[index]


def test_collect_from_a_polled_event_makes_no_batch_request(world: World) -> None:
    from shared.messages import encode_completion

    outcome = submit(world.gw, world.blobs.put("input", "a.txt"))
    run_task(world, outcome, exit_code=2)
    poll(world.gw)
    (event,) = world.queue.drain()
    wire = decode_completion(encode_completion(event))  # what the queue carries
    before = sum(world.batch.requests.values())
    collect(world.gw, wire)
    assert sum(world.batch.requests.values()) == before
    manifest = json.loads(world.blobs.text("results", "a.txt/_manifest.json"))
    assert manifest["exit_code"] == 2 and manifest["status"] == "failed"


def test_malformed_task_field_is_rejected() -> None:
    with pytest.raises(RejectedInput, match="field task is malformed"):
        decode_completion('{"job_id": "j", "task_id": "t", "task": {"exit_code": 1}}')


def test_status_counts_per_pipeline(world: World) -> None:
    done = submit(world.gw, world.blobs.put("input", "a.txt"))
    run_task(world, done, exit_code=1)
    poll(world.gw)
    collect(world.gw, world.queue.drain()[0])
    (pipeline,) = status(world.gw)["pipelines"]  # type: ignore[misc]
    assert pipeline["name"] == "report"
    assert pipeline["counts"]["failed"] == 1 and pipeline["counts"]["collected"] == 1


def test_a_declared_output_the_task_did_not_write_fails_the_manifest(tmp_path: Path) -> None:
    from tests.unit.fakes import PIPELINE

    world = make_world(tmp_path, [{**PIPELINE, "outputs": ["report.json", "summary.txt", "extra/**/*"]}])
    outcome = submit(world.gw, world.blobs.put("input", "a.txt"))
    run_task(world, outcome)  # writes report.json and sub/preview.txt, exits 0
    collect(world.gw, CompletionEvent(outcome.job_id, outcome.task_id))
    manifest = json.loads(world.blobs.text("results", "a.txt/_manifest.json"))
    assert manifest["status"] == "failed" and manifest["exit_code"] == 0
    assert manifest["failure"]["code"] == "MissingOutput"
    assert "out/summary.txt" in manifest["failure"]["message"]
    assert "report.json" not in manifest["failure"]["message"]


def test_a_deleted_job_leaves_status_jobs_and_its_counts_stay_in_the_totals(world: World) -> None:
    outcomes = collected(world, "ab")
    world.clock.advance(hours=2)
    poll(world.gw)  # terminates the job and clears its staging
    world.clock.advance(hours=25)
    assert poll(world.gw).deleted == [outcomes[0].job_id]

    document = status(world.gw)

    assert document["jobs"] == []
    assert document["deleted_jobs"] == {
        "count": 1,
        "counts": {"queued": 0, "running": 0, "succeeded": 2, "failed": 0, "collected": 2, "rejected": 0,
                   "skipped": 0},
    }  # fmt: skip
    assert document["totals"]["collected"] == 2 and document["totals"]["succeeded"] == 2  # type: ignore[index]
    assert poll(world.gw).jobs == 0 and world.ledger.jobs(active_only=False) == []
