"""The summary step (shared/summary.py) over the fakes: once per job, after the window, with every manifest."""

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared import ids, summary
from shared.collect import collect
from shared.models import JobState, TaskSpec
from shared.pipelines import PipelineSpec
from shared.poll import poll
from shared.status import status
from shared.submit import SubmitOutcome, submit
from tests.unit.fakes import PIPELINE, World, make_world

SUMMARY = {"command": "python3 {app_dir}/sum.py {input} {output_dir}", "app_files": ["sum.py"]}
SUMMARISED = {**PIPELINE, "summary": SUMMARY}


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path, [SUMMARISED])


def run_task(world: World, outcome: SubmitOutcome) -> None:
    staging = ids.staging_container("staging", outcome.task_id)
    world.blobs.put(staging, "out/report.json", b"{}")
    world.blobs.put(staging, "logs/stderr.txt", b"")
    world.batch.finish(outcome.job_id, outcome.task_id)


def collect_all(world: World) -> None:
    poll(world.gw)
    for event in world.queue.drain():
        collect(world.gw, event)


def run_summary(world: World, job_id: str, exit_code: int = 0) -> None:
    """What a node does with the summary task: read its list, write a result and logs, complete."""
    staging = summary.staging_container(world.gw, job_id)
    listed = json.loads(world.blobs.text(staging, summary.MANIFESTS_BLOB))
    world.blobs.put(staging, "out/summary.txt", f"{listed['count']} inputs".encode())
    world.blobs.put(staging, "_logs/stdout.txt", b"ok")
    world.blobs.put(staging, "_logs/stderr.txt", b"" if exit_code == 0 else b"boom")
    world.batch.finish(job_id, summary.SUMMARY_TASK_ID, exit_code)


def summary_tasks(world: World) -> list[tuple[str, str]]:
    return [(job, task) for job, task in world.batch.all_tasks() if task == summary.SUMMARY_TASK_ID]


def job_status(world: World, job_id: str) -> dict[str, object]:
    jobs = status(world.gw)["jobs"]
    assert isinstance(jobs, list)
    return next(job for job in jobs if job["job_id"] == job_id)


def test_summary_runs_once_after_the_window_closes_with_the_jobs_manifests(world: World) -> None:
    outcomes = [submit(world.gw, world.blobs.put("input", f"{n}.txt")) for n in range(3)]
    job_id = outcomes[0].job_id
    for outcome in outcomes:
        run_task(world, outcome)
    collect_all(world)
    poll(world.gw)
    assert summary_tasks(world) == []  # the window is still open
    assert job_status(world, job_id)["summary"] == {
        "state": "pending", "manifest": f"_summaries/report/{job_id}/_manifest.json"
    }  # fmt: skip

    world.clock.advance(minutes=70)
    poll(world.gw)
    poll(world.gw)  # a second poll while it runs adds nothing
    assert summary_tasks(world) == [(job_id, summary.SUMMARY_TASK_ID)]
    task = world.batch.jobs[job_id].tasks[summary.SUMMARY_TASK_ID].spec
    assert task.command_line == "python3 app/sum.py input/manifests.json out"
    assert [r.file_path for r in task.resource_files] == ["input/manifests.json", "app/sum.py"]
    # the task may write into its own staging container only
    staging = summary.staging_container(world.gw, job_id)
    assert {f.container_url.split("?")[0] for f in task.output_files} == {f"mem://{staging}"}
    listed = json.loads(world.blobs.text(staging, summary.MANIFESTS_BLOB))
    assert [m["input"] for m in listed["manifests"]] == ["0.txt", "1.txt", "2.txt"]
    assert listed["manifests"][0]["manifest"] == "0.txt/_manifest.json"
    assert job_status(world, job_id)["summary"]["state"] == "running"  # type: ignore[index]
    assert job_status(world, job_id)["counts"]["queued"] == 0  # type: ignore[index]  (inputs only)
    assert world.batch.jobs[job_id].state == "active"

    run_summary(world, job_id)
    poll(world.gw)
    poll(world.gw)
    assert world.queue.drain() == []  # the summary never goes through the completions queue
    manifest = json.loads(world.blobs.text("results", f"_summaries/report/{job_id}/_manifest.json"))
    assert manifest["status"] == "succeeded"
    assert manifest["outputs"] == [f"_summaries/report/{job_id}/summary.txt"]
    assert manifest["stdout"] == f"_summaries/report/{job_id}/_logs/stdout.txt"
    assert world.blobs.text("results", f"_summaries/report/{job_id}/summary.txt") == "3 inputs"
    assert world.batch.jobs[job_id].state == "completed"
    assert world.ledger.get_job(job_id).state is JobState.TERMINATED  # type: ignore[union-attr]
    assert job_status(world, job_id)["summary"]["state"] == "succeeded"  # type: ignore[index]
    assert staging not in world.blobs.containers
    assert len(summary_tasks(world)) == 1


def test_a_crash_before_the_state_is_saved_makes_no_second_summary(world: World) -> None:
    outcome = submit(world.gw, world.blobs.put("input", "a.txt"))
    run_task(world, outcome)
    collect_all(world)
    world.clock.advance(minutes=70)
    poll(world.gw)
    job = world.ledger.get_job(outcome.job_id)
    assert job is not None and job.summary == "running"
    job.summary = "pending"  # as if the poll died between Task_Add and saving the job's row
    world.ledger.save_job(job)
    poll(world.gw)
    assert len(summary_tasks(world)) == 1
    run_summary(world, outcome.job_id)
    job.summary = "running"  # and as if a second poll published it meanwhile, before this one read the row
    world.ledger.save_job(job)
    poll(world.gw)
    world.ledger.save_job(job)
    poll(world.gw)
    assert len(summary_tasks(world)) == 1
    assert world.ledger.get_job(outcome.job_id).summary == "succeeded"  # type: ignore[union-attr]


def test_a_failed_summary_is_published_as_failed_with_its_stderr(world: World) -> None:
    outcome = submit(world.gw, world.blobs.put("input", "a.txt"))
    run_task(world, outcome)
    collect_all(world)
    world.clock.advance(minutes=70)
    poll(world.gw)
    run_summary(world, outcome.job_id, exit_code=2)
    poll(world.gw)
    manifest = json.loads(world.blobs.text("results", f"_summaries/report/{outcome.job_id}/_manifest.json"))
    assert (manifest["status"], manifest["exit_code"], manifest["stderr_tail"]) == ("failed", 2, "boom")
    assert job_status(world, outcome.job_id)["summary"]["state"] == "failed"  # type: ignore[index]


def test_a_late_input_goes_to_an_open_job_once_the_summary_has_begun(world: World) -> None:
    first = submit(world.gw, world.blobs.put("input", "a.txt"))
    created = world.clock()
    world.clock.advance(minutes=70)
    poll(world.gw)  # window closed: summary pending, waiting for a.txt
    assert world.ledger.get_job(first.job_id).summary == "pending"  # type: ignore[union-attr]
    late = world.blobs.put("input", "late.txt")
    late = type(late)(late.container, late.name, late.etag, created)  # created in the closed window, seen late
    outcome = submit(world.gw, late)
    assert outcome.job_id != first.job_id
    assert summary_tasks(world) == []  # a.txt is not collected yet
    run_task(world, first)
    collect_all(world)
    poll(world.gw)
    listed = json.loads(world.blobs.text(summary.staging_container(world.gw, first.job_id), summary.MANIFESTS_BLOB))
    assert [m["input"] for m in listed["manifests"]] == ["a.txt"]


def test_a_pipeline_without_summary_has_none(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    outcome = submit(world.gw, world.blobs.put("input", "a.txt"))
    run_task(world, outcome)
    collect_all(world)
    world.clock.advance(minutes=70)
    poll(world.gw)
    assert summary_tasks(world) == []
    assert world.batch.jobs[outcome.job_id].state == "completed"
    assert "summary" not in job_status(world, outcome.job_id)


def test_no_input_folder_is_inside_the_summaries() -> None:
    assert ids.result_prefix("_summaries/report/report-20261124T1000Z-w60") == (
        "%_summaries/report/report-20261124T1000Z-w60/"
    )
    assert ids.result_prefix("%_summaries/x") == "%%_summaries/x/"


@pytest.mark.parametrize(
    ("summary_field", "message"),
    [
        ({"command": "run {package:tool}"}, "without application packages"),
        ({"command": "run {name}"}, "unknown placeholder"),
        ({"command": "run", "app_files": ["../x"]}, "relative path"),
        ({"command": ""}, "at least 1 character"),
        ({"command": "run", "outputs": ["x"]}, "Extra inputs"),
    ],
)
def test_summary_is_validated_like_the_pipelines_own_command(summary_field: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PipelineSpec.model_validate({**PIPELINE, "summary": summary_field})


def test_the_summary_waits_while_a_task_of_the_job_still_runs(world: World) -> None:
    outcome = submit(world.gw, world.blobs.put("input", "a.txt"))
    run_task(world, outcome)
    collect_all(world)
    stray = TaskSpec("by-hand", "true", (), (), 0, 60)  # a task the ledger does not know, added by someone else
    world.batch.add_task(outcome.job_id, stray)
    world.clock.advance(minutes=70)
    poll(world.gw)
    assert summary_tasks(world) == []
    world.batch.finish(outcome.job_id, "by-hand")
    poll(world.gw)
    assert summary_tasks(world) == [(outcome.job_id, summary.SUMMARY_TASK_ID)]


def test_a_job_closed_in_batch_before_its_summary_gets_a_failed_summary(world: World) -> None:
    outcome = submit(world.gw, world.blobs.put("input", "a.txt"))
    run_task(world, outcome)
    collect_all(world)
    world.batch.terminate_job(outcome.job_id)  # by hand, outside batchdrop
    world.clock.advance(minutes=70)
    poll(world.gw)
    manifest = json.loads(world.blobs.text("results", f"_summaries/report/{outcome.job_id}/_manifest.json"))
    assert manifest["status"] == "failed" and manifest["failure"]["code"] == "JobClosed"
    job = world.ledger.get_job(outcome.job_id)
    assert job is not None and job.summary == "failed" and job.state is JobState.TERMINATED
    assert summary.staging_container(world.gw, outcome.job_id) not in world.blobs.containers
