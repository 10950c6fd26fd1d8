from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import pytest

from shared import ids
from shared.errors import RejectedInput
from shared.models import InputState, JobState, TaskSpec
from shared.poll import poll
from shared.submit import submit, submit_blob, sweep
from tests.unit.fakes import PIPELINE, World, make_world
from tests.unit.test_ids_and_config import HOSTILE


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


def test_event_creates_one_task_with_one_task_request(world: World) -> None:
    blob = world.blobs.put("input", "a.txt")
    outcome = submit(world.gw, blob)
    assert outcome.action == "created"
    assert world.batch.all_tasks() == [(outcome.job_id, outcome.task_id)]
    second = world.blobs.put("input", "b.txt")
    before = sum(world.batch.requests.values())
    submit(world.gw, second)
    assert sum(world.batch.requests.values()) - before == 1  # the job exists: just Task_Add


def test_same_upload_twice_yields_one_task(world: World) -> None:
    blob = world.blobs.put("input", "a.txt")
    first = submit(world.gw, blob)
    again = submit_blob(world.gw, "input", "a.txt")  # e.g. blob trigger then Event Grid
    assert again.action == "duplicate" and again.task_id == first.task_id
    assert len(world.batch.all_tasks()) == 1
    assert world.batch.task_requests() == 1


def test_replaced_blob_is_a_new_input(world: World) -> None:
    first = submit(world.gw, world.blobs.put("input", "a.txt", b"one"))
    second = submit(world.gw, world.blobs.put("input", "a.txt", b"two"))
    assert second.action == "created" and second.task_id != first.task_id


@pytest.mark.parametrize("name", [n for n in HOSTILE if len(n) <= 1024])
def test_hostile_names_run_and_never_reach_the_command_line(world: World, name: str) -> None:
    outcome = submit(world.gw, world.blobs.put("input", name))
    assert outcome.action == "created"
    task = world.batch.jobs[outcome.job_id].tasks[outcome.task_id].spec
    assert task.command_line == f"python3 app/report/report.py {ids.local_input_path(name)} out"
    assert all(value != name for _, value in task.environment)
    assert task.resource_files[0].file_path == ids.local_input_path(name)


def test_unmatched_input_is_recorded_as_skipped(tmp_path: Path) -> None:
    world = make_world(tmp_path, [{**PIPELINE, "match": {"prefix": "images/", "glob": "*.png"}}])
    outcome = submit(world.gw, world.blobs.put("input", "notes.txt"))
    assert outcome.action == "skipped"
    assert world.ledger.input_rows[outcome.task_id].state is InputState.SKIPPED
    assert world.batch.all_tasks() == []


def test_two_matching_pipelines_reject_the_input_with_the_reason(tmp_path: Path) -> None:
    world = make_world(tmp_path, [PIPELINE, {**PIPELINE, "name": "other"}])
    outcome = submit(world.gw, world.blobs.put("input", "a.txt"))
    assert outcome.action == "rejected"
    assert "report, other all match" in world.ledger.rejections()[0]["reason"]


def test_unaddressable_name_is_rejected_and_recorded(world: World) -> None:
    outcome = submit(world.gw, world.blobs.put("input", "trailing."))
    assert outcome.action == "rejected"
    assert world.ledger.rejections()[0]["input"] == "input/trailing."


def test_forged_event_for_missing_blob_is_rejected(world: World) -> None:
    with pytest.raises(RejectedInput, match="no such blob"):
        submit_blob(world.gw, "input", "ghost.txt")
    with pytest.raises(RejectedInput, match="not in the input container"):
        submit_blob(world.gw, "results", "x")


def test_task_gets_expiring_read_urls_and_its_own_staging_paths(world: World) -> None:
    outcome = submit(world.gw, world.blobs.put("input", "a.txt"))
    spec = world.batch.jobs[outcome.job_id].tasks[outcome.task_id].spec
    assert spec.resource_files[0].url.startswith("mem://input/a.txt?sp=r")
    assert spec.resource_files[1].file_path == "app/report/report.py"
    paths = {output.pattern: output.path for output in spec.output_files}
    assert paths == {"out/**/*": "out", "../stdout.txt": "logs/stdout.txt", "../stderr.txt": "logs/stderr.txt"}
    # The task can write into its own staging container and nowhere else.
    own = ids.staging_container("staging", outcome.task_id)
    assert {output.container_url.split("?")[0] for output in spec.output_files} == {f"mem://{own}"}
    other = submit(world.gw, world.blobs.put("input", "b.txt"))
    assert ids.staging_container("staging", other.task_id) != own
    expiry = spec.resource_files[0].url.split("se=")[1].split("&")[0]
    max_hours = world.gw.settings.sas_max_hours
    assert expiry <= (world.clock() + timedelta(hours=max_hours)).isoformat()


def test_sweep_submits_in_bulk_and_then_makes_no_task_requests(world: World) -> None:
    for index in range(250):
        world.blobs.put("input", f"file-{index:03}.txt")
    report = sweep(world.gw)
    assert report.submitted == 250
    assert world.batch.requests["Task_AddCollection"] == 3
    assert world.batch.requests["Task_Add"] == 0
    before = dict(world.batch.requests)
    again = sweep(world.gw)
    assert again.submitted == 0
    assert dict(world.batch.requests) == before  # nothing new: no Batch request at all


def test_sweep_and_event_agree_on_job_and_task(world: World) -> None:
    blob = world.blobs.put("input", "a.txt")
    sweep(world.gw)
    outcome = submit(world.gw, blob)
    assert outcome.action == "duplicate"
    assert len(world.batch.all_tasks()) == 1


def test_crash_between_ledger_and_batch_is_finished_by_the_sweep(world: World) -> None:
    blob = world.blobs.put("input", "a.txt")
    world.batch.fail_next = [RuntimeError("process killed")]  # dies at its first Batch call
    with pytest.raises(RuntimeError):
        submit(world.gw, blob)
    assert next(iter(world.ledger.input_rows.values())).state is InputState.CLAIMED
    sweep(world.gw)
    assert len(world.batch.all_tasks()) == 1
    assert next(iter(world.ledger.input_rows.values())).state is InputState.SUBMITTED


def test_late_input_for_a_terminated_job_moves_to_an_open_job(world: World) -> None:
    first = submit(world.gw, world.blobs.put("input", "a.txt"))
    world.batch.finish(first.job_id, first.task_id)
    record = world.ledger.input_rows[first.task_id]
    record.state = InputState.COLLECTED
    world.clock.advance(hours=2)
    poll(world.gw)
    assert world.ledger.job_rows[first.job_id].state is JobState.TERMINATED
    # a blob created in the old window turns up late (e.g. a missed event found by the sweep)
    late_blob = world.blobs.put("input", "late.txt")
    late_blob = type(late_blob)(late_blob.container, late_blob.name, late_blob.etag, first_created(world))
    outcome = submit(world.gw, late_blob)
    assert outcome.action == "created" and outcome.job_id != first.job_id
    assert world.ledger.input_rows[outcome.task_id].job_id == outcome.job_id


def test_a_sweep_into_a_job_ended_in_batch_records_the_job_its_inputs_moved_to(world: World) -> None:
    first = submit(world.gw, world.blobs.put("input", "a.txt"))
    world.blobs.put("input", "late.txt")  # its event was missed: the sweep finds it
    world.clock.advance(hours=2)
    world.batch.jobs[first.job_id].state = "completed"  # ended outside batchdrop; the ledger still says active

    assert sweep(world.gw).submitted == 1

    (late,) = [row for row in world.ledger.input_rows.values() if row.name == "late.txt"]
    assert late.state is InputState.SUBMITTED and late.job_id != first.job_id
    assert late.task_id in world.batch.jobs[late.job_id].tasks


def test_a_sweep_cut_short_keeps_the_chunks_it_sent(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shared.submit.SWEEP_CHUNK", 2)
    for name in "abcde":
        world.blobs.put("input", f"{name}.txt")
    sent: list[int] = []
    add_tasks = world.batch.add_tasks

    def stopped_after_two_chunks(job_id: str, tasks: Sequence[TaskSpec]) -> None:
        if len(sent) == 2:
            raise RuntimeError("the sweep's timer is stopped at its time limit")
        sent.append(len(tasks))
        add_tasks(job_id, tasks)

    monkeypatch.setattr(world.batch, "add_tasks", stopped_after_two_chunks)
    with pytest.raises(RuntimeError):
        sweep(world.gw)

    states = sorted(row.state.value for row in world.ledger.input_rows.values())
    assert sent == [2, 2] and states == ["claimed"] + ["submitted"] * 4
    monkeypatch.setattr(world.batch, "add_tasks", add_tasks)
    assert sweep(world.gw).submitted == 1  # only what the cut-short sweep had claimed and not sent
    assert len(world.batch.all_tasks()) == 5


def first_created(world: World):  # type: ignore[no-untyped-def]
    return world.clock() - timedelta(hours=2)


def test_a_fresh_claim_by_another_submitter_is_left_to_it_and_to_the_sweep(world: World) -> None:
    blob = world.blobs.put("input", "a.txt")
    world.batch.fail_next = [RuntimeError("the first submitter dies after claiming")]
    with pytest.raises(RuntimeError):
        submit(world.gw, blob)
    (row,) = world.ledger.input_rows.values()
    row.updated_at = world.clock()  # claimed just now
    assert submit(world.gw, blob).action == "in-progress"
    assert world.batch.all_tasks() == []
    world.clock.advance(minutes=3)  # a stale claim is taken over by the next event ...
    assert submit(world.gw, blob).action == "created"
    assert len(world.batch.all_tasks()) == 1
