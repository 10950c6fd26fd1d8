"""The storage gateways against Azurite through the real SDKs."""

from __future__ import annotations

import urllib.error
import urllib.request
from datetime import UTC, datetime

import pytest
from azure.core.exceptions import HttpResponseError
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient, ContainerClient
from azure.storage.queue import QueueServiceClient

from local.stack import Azurite
from shared.ledger import TableLedger
from shared.messages import COMPLETIONS_PER_MESSAGE, decode_completions, encode_completion
from shared.models import CompletionEvent, InputRecord, InputState, JobRecord
from shared.storage import AzureBlobs, AzureQueue

pytestmark = pytest.mark.integration


@pytest.fixture
def blobs(azurite: Azurite) -> AzureBlobs:
    return AzureBlobs.from_connection_string(azurite.connection_string)


def test_read_url_reads_exactly_one_blob(azurite: Azurite, blobs: AzureBlobs, namespace: str) -> None:
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    container = service.create_container(f"in-{namespace}")
    container.upload_blob("dir/a b ☃.txt", b"hello")
    container.upload_blob("other.txt", b"secret")
    url = blobs.read_url(f"in-{namespace}", "dir/a b ☃.txt", 60)
    with urllib.request.urlopen(url) as response:
        assert response.read() == b"hello"
    other = url.replace("dir/a%20b%20%E2%98%83.txt", "other.txt")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(other)
    assert refused.value.code == 403


def test_write_url_can_create_but_not_read(azurite: Azurite, blobs: AzureBlobs, namespace: str) -> None:
    url = blobs.write_url(f"stage-{namespace}", 60)
    writer = ContainerClient.from_container_url(url)
    writer.upload_blob("job/task/out/x.txt", b"data")
    with pytest.raises(HttpResponseError):
        writer.download_blob("job/task/out/x.txt").readall()


def test_copy_json_and_tail(azurite: Azurite, blobs: AzureBlobs, namespace: str) -> None:
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    service.create_container(f"src-{namespace}").upload_blob("a/log.txt", b"x" * 10_000 + b"END")
    blobs.copy(f"src-{namespace}", "a/log.txt", f"dst-{namespace}", "b/log.txt")
    assert blobs.read_tail(f"dst-{namespace}", "b/log.txt", 3) == "END"
    blobs.write_json(f"dst-{namespace}", "b/_manifest.json", {"status": "succeeded"})
    assert blobs.read_json(f"dst-{namespace}", "b/_manifest.json") == {"status": "succeeded"}
    assert blobs.read_json(f"dst-{namespace}", "missing.json") is None
    names = [blob.name for blob in blobs.list_blobs(f"dst-{namespace}", "b/")]
    assert names == ["b/_manifest.json", "b/log.txt"]


def test_conditional_json_writes_are_create_only_or_version_checked(blobs: AzureBlobs, namespace: str) -> None:
    container = f"cond-{namespace}"
    assert blobs.write_json_if(container, "a/_manifest.json", {"task_id": "t1"}, None)
    assert not blobs.write_json_if(container, "a/_manifest.json", {"task_id": "t1-again"}, None)
    found = blobs.read_json_version(container, "a/_manifest.json")
    assert found is not None and found[0] == {"task_id": "t1"}
    first_version = found[1]
    assert blobs.write_json_if(container, "a/_manifest.json", {"task_id": "t2"}, first_version)
    # A writer still holding the first version lost the race: its write is refused, the winner's stays.
    assert not blobs.write_json_if(container, "a/_manifest.json", {"task_id": "t3"}, first_version)
    assert blobs.read_json(container, "a/_manifest.json") == {"task_id": "t2"}
    assert blobs.read_json_version(container, "missing.json") is None
    # If-Match on a blob that does not exist is refused too, not created.
    assert not blobs.write_json_if(container, "b/_manifest.json", {"task_id": "t4"}, first_version)
    assert blobs.read_json(container, "b/_manifest.json") is None


def test_ledger_keeps_an_inputs_reactivation_count(azurite: Azurite, namespace: str) -> None:
    table = TableServiceClient.from_connection_string(azurite.connection_string).get_table_client(f"r{namespace}")
    ledger = TableLedger(table)
    record = InputRecord("t-1", "input", "a.txt", "0x1", "report", "job-1", InputState.SUBMITTED)
    ledger.claim_input(record)
    record.reactivations = 2
    ledger.save_input(record)
    stored = ledger.get_input("t-1")
    assert stored is not None and stored.reactivations == 2


def test_ledger_claims_are_create_only(azurite: Azurite, namespace: str) -> None:
    table = TableServiceClient.from_connection_string(azurite.connection_string).get_table_client(f"l{namespace}")
    ledger = TableLedger(table)
    record = InputRecord("t-1", "input", "a.txt", "0x1", "report", "job-1", InputState.CLAIMED)
    assert ledger.claim_input(record) == (record, True)
    stored, created = ledger.claim_input(InputRecord("t-1", "input", "a.txt", "0x1", "x", "job-2", InputState.CLAIMED))
    assert not created and stored.job_id == "job-1"
    stored.state = InputState.SUBMITTED
    ledger.save_input(stored)
    assert ledger.known_task_ids() == {"t-1"}
    assert [r.task_id for r in ledger.inputs(job_id="job-1")] == ["t-1"]
    job = JobRecord("job-1", "report", datetime(2026, 1, 1, tzinfo=UTC), recent_task_ids=["t-1"])
    ledger.claim_job(job)
    job.watermark = datetime(2026, 1, 1, 0, 0, 1, 123456, tzinfo=UTC)
    ledger.save_job(job)
    loaded = ledger.get_job("job-1")
    assert loaded is not None and loaded.watermark == job.watermark and loaded.recent_task_ids == ["t-1"]
    ledger.record_rejection("input/x", "first")
    ledger.record_rejection("input/y", "second")
    assert [r["reason"] for r in ledger.rejections()] == ["second", "first"]


def test_queue_sends_json_and_counts_poison(azurite: Azurite, namespace: str) -> None:
    service = QueueServiceClient.from_connection_string(azurite.connection_string)
    queue = AzureQueue.from_service(service, f"c{namespace}")
    queue.send([CompletionEvent("job-1", "t-1")])
    message = service.get_queue_client(f"c{namespace}").receive_message()
    assert message is not None and message.content == '{"job_id": "job-1", "task_id": "t-1"}'
    service.get_queue_client(f"c{namespace}-poison").send_message("x")
    assert queue.poison_count() == 1


def test_completions_go_several_to_a_message_unless_sent_separately(azurite: Azurite, namespace: str) -> None:
    service = QueueServiceClient.from_connection_string(azurite.connection_string)
    queue = AzureQueue.from_service(service, f"b{namespace}")
    client = service.get_queue_client(f"b{namespace}")
    events = [CompletionEvent("job-1", f"t-{index}") for index in range(COMPLETIONS_PER_MESSAGE + 8)]

    queue.send(events)
    bodies = [message.content for message in client.receive_messages(max_messages=32)]
    assert len(bodies) == 2  # 32 + 8
    carried = sorted((event for body in bodies for event in decode_completions(body)), key=str)
    assert carried == sorted(events, key=str)

    queue.send(events[:3], separately=True)  # a message's failures, each to its own retries and poison
    assert sorted(message.content for message in client.receive_messages(max_messages=32)) == sorted(
        encode_completion(event) for event in events[:3]
    )


def test_a_task_write_url_reaches_only_its_own_staging_container(
    azurite: Azurite, blobs: AzureBlobs, namespace: str
) -> None:
    from shared import ids

    mine = ids.staging_container(f"st{namespace}", "task-a")
    theirs = ids.staging_container(f"st{namespace}", "task-b")
    assert mine != theirs
    blobs.ensure_container(theirs)
    blobs.ensure_container(f"results-{namespace}")
    url = blobs.write_url(mine, 60)
    ContainerClient.from_container_url(url).upload_blob("out/ok.txt", b"mine")
    for target in (theirs, f"results-{namespace}"):
        forged = url.replace(f"/{mine}?", f"/{target}?")
        with pytest.raises(HttpResponseError) as refused:
            ContainerClient.from_container_url(forged).upload_blob("out/evil.txt", b"x")
        assert refused.value.status_code == 403


def test_ledger_saves_many_inputs_in_transactions(azurite: Azurite, namespace: str) -> None:
    table = TableServiceClient.from_connection_string(azurite.connection_string).get_table_client(f"m{namespace}")
    ledger = TableLedger(table)
    records = [
        InputRecord(f"t-{i:03}", "input", f"{i}.txt", "0x1", "report", "job-1", InputState.SUBMITTED)
        for i in range(150)
    ]
    ledger.claim_input(records[0])
    ledger.save_inputs(records)  # 100 + 50, one of them replacing an existing row
    assert ledger.known_task_ids() == {r.task_id for r in records}
