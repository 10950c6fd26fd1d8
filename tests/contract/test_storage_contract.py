"""FakeBlobs and FakeQueue against AzureBlobs and AzureQueue on Azurite: the same answers on every error path."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient, QueueServiceClient

from local.stack import Azurite
from shared.errors import PermanentError
from shared.messages import decode_check, decode_completions
from shared.models import CompletionCheck, CompletionEvent
from shared.ports import BlobPort, QueuePort
from shared.storage import AzureBlobs, AzureQueue
from tests.unit.fakes import Clock, FakeBlobs, FakeQueue

pytestmark = pytest.mark.integration


@dataclass
class Blobs:
    """A BlobPort and a way to store raw bytes in it, as another tool or a person would."""

    port: BlobPort
    put_raw: Callable[[str, str, bytes], None]


@pytest.fixture(params=["fake", "azure"])
def blobs(request: pytest.FixtureRequest) -> Blobs:
    if request.param == "fake":
        fake = FakeBlobs(Clock())

        def put_in_memory(container: str, name: str, data: bytes) -> None:
            fake.put(container, name, data)

        return Blobs(fake, put_in_memory)
    azurite: Azurite = request.getfixturevalue("azurite")
    service = BlobServiceClient.from_connection_string(azurite.connection_string)

    def put_raw(container: str, name: str, data: bytes) -> None:
        try:
            service.create_container(container)
        except ResourceExistsError:
            pass
        service.get_blob_client(container, name).upload_blob(data, overwrite=True)

    return Blobs(AzureBlobs.from_connection_string(azurite.connection_string), put_raw)


@pytest.fixture
def container() -> str:
    return f"contract-{uuid.uuid4().hex[:10]}"


def test_missing_blobs_and_containers_read_as_absent(blobs: Blobs, container: str) -> None:
    assert blobs.port.get_blob(container, "nothing") is None
    assert blobs.port.read_json(container, "nothing.json") is None
    assert blobs.port.read_json_version(container, "nothing.json") is None
    assert blobs.port.read_tail(container, "nothing.txt", 100) == ""
    assert list(blobs.port.list_blobs(container)) == []
    blobs.port.delete_container(container)  # a missing container is success


def test_a_copy_from_a_missing_source_is_permanent(blobs: Blobs, container: str) -> None:
    blobs.put_raw(container, "present", b"x")
    with pytest.raises(PermanentError, match="does not exist"):
        blobs.port.copy(container, "absent", container, "target")


def test_conditional_writes(blobs: Blobs, container: str) -> None:
    assert blobs.port.write_json_if(container, "m.json", {"v": 1}, None) is True
    assert blobs.port.write_json_if(container, "m.json", {"v": 2}, None) is False  # If-None-Match: *
    found = blobs.port.read_json_version(container, "m.json")
    assert found is not None and found[0] == {"v": 1}
    assert blobs.port.write_json_if(container, "m.json", {"v": 3}, found[1]) is True
    assert blobs.port.write_json_if(container, "m.json", {"v": 4}, found[1]) is False  # stale version
    assert blobs.port.read_json(container, "m.json") == {"v": 3}
    blobs.port.delete_container(container)
    assert blobs.port.write_json_if(container, "m.json", {"v": 5}, found[1]) is False  # If-Match on a deleted blob


@pytest.mark.parametrize("content", [b'{"task_id": "a", "sta', b"plain text", b"\xff\xfe", b"[1]", b""])
def test_a_blob_that_is_not_a_json_object_reads_as_absent_and_is_replaced_at_its_version(
    blobs: Blobs, container: str, content: bytes
) -> None:
    blobs.put_raw(container, "_manifest.json", content)
    assert blobs.port.read_json(container, "_manifest.json") is None
    found = blobs.port.read_json_version(container, "_manifest.json")
    assert found is not None and found[0] == {}
    assert blobs.port.write_json_if(container, "_manifest.json", {"v": 1}, None) is False  # it does exist
    assert blobs.port.write_json_if(container, "_manifest.json", {"v": 1}, found[1]) is True
    assert blobs.port.read_json(container, "_manifest.json") == {"v": 1}


@dataclass
class Queue:
    port: QueuePort
    count: Callable[[], int]


@pytest.fixture(params=["fake", "azure"])
def queue(request: pytest.FixtureRequest) -> Queue:
    if request.param == "fake":
        fake = FakeQueue()
        return Queue(fake, lambda: len(fake.messages))
    azurite: Azurite = request.getfixturevalue("azurite")
    name = f"contract-{uuid.uuid4().hex[:10]}"
    service = QueueServiceClient.from_connection_string(azurite.connection_string)
    client = QueueClient.from_connection_string(azurite.connection_string, name)

    def count() -> int:  # completions, whether one or many to a message
        return sum(len(decode_completions(message.content)) for message in client.peek_messages(max_messages=32))

    return Queue(AzureQueue.from_service(service, name), count)


def test_a_queue_that_was_never_created_has_no_poison_and_takes_messages(queue: Queue) -> None:
    assert queue.port.poison_count() == 0
    queue.port.send([])
    queue.port.send(CompletionEvent("job", f"task-{n}") for n in range(3))
    assert queue.count() == 3
    queue.port.send([CompletionEvent("job", "task-a"), CompletionEvent("job", "task-b")], separately=True)
    assert queue.count() == 5


@dataclass
class Checks:
    port: QueuePort
    due_now: Callable[[], list[CompletionCheck]]  # the checks a receiver would get now (their delay is over)


@pytest.fixture(params=["fake", "azure"])
def checks(request: pytest.FixtureRequest) -> Iterator[Checks]:
    if request.param == "fake":
        fake = FakeQueue()
        yield Checks(fake, lambda: [check for check, delay in fake.checks if delay == 0])
        return
    azurite: Azurite = request.getfixturevalue("azurite")
    name = f"checks-{uuid.uuid4().hex[:10]}"
    service = QueueServiceClient.from_connection_string(azurite.connection_string)
    client = QueueClient.from_connection_string(azurite.connection_string, name)

    def due_now() -> list[CompletionCheck]:
        return [decode_check(message.content) for message in client.peek_messages(max_messages=32)]

    yield Checks(AzureQueue.from_service(service, f"completions-{name}", name), due_now)
    client.delete_queue()


def test_a_scheduled_check_comes_back_intact_once_its_delay_is_over(checks: Checks) -> None:
    checks.port.schedule_check(CompletionCheck("task-1", "staging-0abc", 1), 0)
    checks.port.schedule_check(CompletionCheck("task-2", "staging-1abc", 3), 3600)  # hidden for an hour
    assert checks.due_now() == [CompletionCheck("task-1", "staging-0abc", 1)]
