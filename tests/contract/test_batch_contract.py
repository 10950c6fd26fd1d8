"""The unit tests' FakeBatch and the real AzureBatch (on the emulator, through azure-batch) fail alike.

Each case runs against both; the fake may only be trusted where they agree. The bug this catches: a bulk add to
a completed job, which AzureBatch reported as a PermanentError with an empty reason while the fake raised
JobClosed, so the sweep's move-to-an-open-job path was tested only against the fake.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from azure.batch import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from local.stack import Emulator, start_emulator
from shared.batch import AzureBatch
from shared.errors import JobClosed, PermanentError, TransientError
from shared.models import TaskSpec
from shared.pipelines import PipelineSpec
from shared.ports import BatchPort
from tests.unit.fakes import PIPELINE, Clock, FakeBatch

pytestmark = pytest.mark.integration


@dataclass
class Subject:
    """A BatchPort, with a way to make one of its jobs stop taking tasks and to count a job's tasks."""

    batch: BatchPort
    complete_job: Callable[[str], None]
    task_ids: Callable[[str], set[str]]


def pipeline(pool_id: str) -> PipelineSpec:
    return PipelineSpec.model_validate({**PIPELINE, "name": "contract", "pool": {"id": pool_id, "dedicated_nodes": 0}})


def spec(task_id: str) -> TaskSpec:
    return TaskSpec(task_id, "python3 -c pass", (), (), 0, 60, ())


def client_for(emulator: Emulator, **kwargs: object) -> BatchClient:
    return BatchClient(emulator.url, AzureNamedKeyCredential(emulator.account_name, emulator.account_key), **kwargs)


def fake_subject() -> Subject:
    fake = FakeBatch(Clock())
    return Subject(fake, fake.terminate_job, lambda job_id: set(fake.jobs[job_id].tasks))


def azure_subject(emulator: Emulator) -> Subject:
    client = client_for(emulator)

    def task_ids(job_id: str) -> set[str]:
        return {task.id for task in client.list_tasks(job_id, select=["id"]) if task.id}

    adapter = AzureBatch(client)
    return Subject(adapter, adapter.terminate_job, task_ids)


@pytest.fixture(params=["fake", "azure"])
def subject(request: pytest.FixtureRequest) -> Subject:
    if request.param == "fake":
        return fake_subject()
    emulator: Emulator = request.getfixturevalue("emulator")
    return azure_subject(emulator)


@pytest.fixture(scope="module")
def failing_emulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[int], Emulator]]:
    """Emulators that answer one status to every API request (throttling or an outage past the SDK's retries)."""
    started: dict[int, Emulator] = {}

    def answering(status: int) -> Emulator:
        if status not in started:
            workdir = tmp_path_factory.mktemp(f"answers-{status}")
            started[status] = start_emulator(workdir, ["--fault-rate", "1", "--fault-statuses", str(status)])
        return started[status]

    yield answering
    for server in started.values():
        server.stop()


@pytest.fixture
def job(subject: Subject) -> str:
    pool_id = f"contract-{uuid.uuid4().hex[:8]}"
    job_id = f"contract-{uuid.uuid4().hex[:10]}"
    subject.batch.ensure_pool(pipeline(pool_id).pool)
    subject.batch.ensure_job(job_id, pipeline(pool_id))
    return job_id


def test_an_existing_task_is_success_one_by_one_and_in_bulk(subject: Subject, job: str) -> None:
    subject.batch.add_task(job, spec("t-1"))
    subject.batch.add_task(job, spec("t-1"))
    subject.batch.add_tasks(job, [spec("t-1"), spec("t-2")])
    subject.batch.add_tasks(job, [spec("t-2"), spec("t-3")])
    assert subject.task_ids(job) == {"t-1", "t-2", "t-3"}


def test_terminating_a_task_completes_it_as_ended_and_a_repeat_is_success(subject: Subject, job: str) -> None:
    # The job's pool has no nodes: the task stays active until terminated.
    subject.batch.add_task(job, spec("t-1"))
    subject.batch.terminate_task(job, "t-1")
    result = subject.batch.get_task(job, "t-1")
    assert result is not None and result.completed, result
    assert result.failure is not None and result.failure.get("code") == "TaskEnded", result
    subject.batch.terminate_task(job, "t-1")  # TaskCompleted: already the end state wanted
    subject.batch.terminate_task(job, "no-such-task")
    subject.complete_job(job)
    subject.batch.terminate_task(job, "t-1")


@pytest.mark.parametrize("bulk", [False, True], ids=["one", "bulk"])
def test_a_completed_job_is_job_closed(subject: Subject, job: str, bulk: bool) -> None:
    subject.complete_job(job)
    with pytest.raises(JobClosed, match=r"JobCompleted|not active"):
        if bulk:
            subject.batch.add_tasks(job, [spec("t-1"), spec("t-2")])
        else:
            subject.batch.add_task(job, spec("t-1"))


@pytest.mark.parametrize("bulk", [False, True], ids=["one", "bulk"])
def test_a_missing_job_is_job_closed(subject: Subject, bulk: bool) -> None:
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(JobClosed):
        if bulk:
            subject.batch.add_tasks(missing, [spec("t-1")])
        else:
            subject.batch.add_task(missing, spec("t-1"))


@pytest.mark.parametrize("bulk", [False, True], ids=["one", "bulk"])
def test_a_task_batch_refuses_is_permanent_and_names_it(subject: Subject, job: str, bulk: bool) -> None:
    with pytest.raises(PermanentError) as refused:
        if bulk:
            subject.batch.add_tasks(job, [spec("good"), spec("bad id!")])
        else:
            subject.batch.add_task(job, spec("bad id!"))
    assert not isinstance(refused.value, JobClosed)
    assert "bad id!" in str(refused.value) and "InvalidPropertyValue" in str(refused.value)
    if bulk:  # Batch adds the valid tasks of a collection
        assert subject.task_ids(job) == {"good"}


@pytest.mark.timeout(60)  # the SDK's create_tasks resubmitted a chunk answered 503 forever
@pytest.mark.parametrize("bulk", [False, True], ids=["one", "bulk"])
@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize("kind", ["fake", "azure"])
def test_throttling_or_an_outage_past_the_retries_is_transient(
    failing_emulators: Callable[[int], Emulator], kind: str, status: int, bulk: bool
) -> None:
    batch: BatchPort
    if kind == "fake":
        fake = FakeBatch(Clock())
        fake.ensure_job("j", pipeline("p"))
        fake.unavailable_status = status
        batch = fake
    else:
        batch = AzureBatch(client_for(failing_emulators(status), retry_total=0))
    with pytest.raises(TransientError, match=str(status)):
        if bulk:
            batch.add_tasks("j", [spec("t-1"), spec("t-2")])
        else:
            batch.add_task("j", spec("t-1"))


def test_a_collection_too_large_for_one_request_is_split(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Batch refuses an add-collection body over its limit (RequestBodyTooLarge); the adapter halves it."""
    server = start_emulator(tmp_path_factory.mktemp("small-bodies"), ["--max-body-bytes", "20000"])
    try:
        subject = azure_subject(server)
        pool_id = f"contract-{uuid.uuid4().hex[:8]}"
        subject.batch.ensure_pool(pipeline(pool_id).pool)
        subject.batch.ensure_job("big", pipeline(pool_id))
        tasks = [TaskSpec(f"t-{n}", "python3 -c pass " + "x" * 1000, (), (), 0, 60, ()) for n in range(60)]
        subject.batch.add_tasks("big", tasks)
        assert subject.task_ids("big") == {task.task_id for task in tasks}
        assert server.stats()["requests"]["Task_AddCollection"] > 3  # type: ignore[index]
    finally:
        server.stop()
