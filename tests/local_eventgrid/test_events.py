"""Writes through the local Event Grid's proxy become BlobCreated events, shaped as Azure Storage raises them,
for the subscriptions whose filters they pass."""

from __future__ import annotations

import uuid
from urllib.parse import quote

import pytest
from azure.storage.blob import BlobServiceClient, ContentSettings

from tests.local_eventgrid.conftest import Receiver, StartGrid, container_through, subscription
from tests.waiting import wait_until

pytestmark = pytest.mark.integration
EVENT_KEYS = {"topic", "subject", "eventType", "id", "data", "dataVersion", "metadataVersion", "eventTime"}
DATA_KEYS = {"api", "clientRequestId", "requestId", "eTag", "contentType", "contentLength", "blobType", "url",
             "sequencer", "storageDiagnostics"}
TOPIC = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/batchdrop-local"
         "/providers/Microsoft.Storage/storageAccounts/devstoreaccount1")


def test_a_put_blob_becomes_exactly_the_event_azure_storage_sends(start_grid: StartGrid, receiver: Receiver) -> None:
    name = f"ev-{uuid.uuid4().hex[:8]}"
    begins = f"/blobServices/default/containers/{name}/"
    grid = start_grid([subscription("all-of-it", "/hook", subject_begins_with=begins)])
    container = container_through(grid, name)
    blob = "dir/a b.txt"
    container.upload_blob(blob, b"hello events", content_settings=ContentSettings(content_type="text/plain"))
    etag = container.get_blob_client(blob).get_blob_properties().etag

    [event] = wait_until(lambda: receiver.events("/hook"), 20, what="the BlobCreated event")
    assert set(event) == EVENT_KEYS
    assert event["topic"] == TOPIC
    assert event["subject"] == f"/blobServices/default/containers/{name}/blobs/dir/a b.txt"
    assert event["eventType"] == "Microsoft.Storage.BlobCreated"
    assert (event["dataVersion"], event["metadataVersion"]) == ("", "1")
    data = event["data"]
    assert set(data) == DATA_KEYS
    assert data["api"] == "PutBlob"
    assert data["eTag"] == etag and etag.startswith('"')
    assert (data["contentType"], data["contentLength"], data["blobType"]) == ("text/plain", 12, "BlockBlob")
    assert data["url"] == f"{grid.blob_endpoint}/{name}/{quote(blob)}"
    assert len(data["sequencer"]) == 32 and data["requestId"]
    [delivery] = receiver.notifications("/hook")
    assert delivery.headers["aeg-event-type"] == "Notification"
    assert delivery.headers["aeg-subscription-name"] == "ALL-OF-IT"

    # Exactly one event per write: a second upload's event arrives, and it is the second one.
    container.upload_blob("marker.txt", b"m")
    wait_until(lambda: len(receiver.events("/hook")) == 2 or None, 20, what="the marker's event")
    assert [e["subject"].rsplit("/", 1)[1] for e in receiver.events("/hook")] == ["a b.txt", "marker.txt"]
    assert event["data"]["sequencer"] < receiver.events("/hook")[1]["data"]["sequencer"]


def test_a_block_list_upload_raises_one_put_block_list_event(start_grid: StartGrid, receiver: Receiver) -> None:
    name = f"ev-{uuid.uuid4().hex[:8]}"
    begins = f"/blobServices/default/containers/{name}/"
    grid = start_grid([subscription("blocks", "/hook", subject_begins_with=begins)])
    service = BlobServiceClient.from_connection_string(grid.connection_string, max_single_put_size=4096,
                                                       max_block_size=4096)
    container = service.create_container(name)
    content = bytes(range(256)) * 80  # 20 KiB: five blocks, then the block list
    container.upload_blob("big.bin", content)

    [event] = wait_until(lambda: receiver.events("/hook"), 20, what="the PutBlockList event")
    assert event["data"]["api"] == "PutBlockList"
    assert event["data"]["eTag"] == container.get_blob_client("big.bin").get_blob_properties().etag
    assert event["data"]["contentLength"] == len(content)
    container.upload_blob("marker.txt", b"m")
    wait_until(lambda: len(receiver.events("/hook")) == 2 or None, 20, what="the marker's event")
    assert [e["data"]["api"] for e in receiver.events("/hook")] == ["PutBlockList", "PutBlob"]


def test_subject_filters_and_event_types_choose_the_subscriptions(start_grid: StartGrid, receiver: Receiver) -> None:
    token = uuid.uuid4().hex[:8]
    wanted, other = f"want-{token}", f"other-{token}"
    grid = start_grid([
        subscription("csv-in-wanted", "/csv", subject_begins_with=f"/blobServices/default/containers/{wanted}/",
                     subject_ends_with=".csv"),
        subscription("deletes-only", "/deletes", included_event_types=["Microsoft.Storage.BlobDeleted"]),
        subscription("everything", "/all"),
    ])  # fmt: skip
    first, second = container_through(grid, wanted), container_through(grid, other)
    first.upload_blob("a.CSV", b"1")
    first.upload_blob("b.txt", b"2")
    second.upload_blob("c.csv", b"3")
    first.get_blob_client("b.txt").delete_blob()  # no BlobDeleted from the local Event Grid: nothing for /deletes
    wait_until(lambda: len(receiver.events("/all")) == 3 or None, 20, what="three events for 'everything'")

    assert [e["subject"] for e in receiver.events("/csv")] == [f"/blobServices/default/containers/{wanted}/blobs/a.CSV"]
    assert receiver.events("/deletes") == []
    names = {s["name"]: s for s in grid.subscriptions()["subscriptions"]}  # type: ignore[attr-defined]
    assert names["csv-in-wanted"]["delivered"] == 1 and names["deletes-only"]["delivered"] == 0


def test_a_copy_that_completes_at_once_raises_a_copy_blob_event(start_grid: StartGrid, receiver: Receiver) -> None:
    name = f"ev-{uuid.uuid4().hex[:8]}"
    begins = f"/blobServices/default/containers/{name}/blobs/copies/"
    grid = start_grid([subscription("copies", "/hook", subject_begins_with=begins)])
    container = container_through(grid, name)
    source = container.upload_blob("original.txt", b"copy me", content_settings=ContentSettings(content_type="a/b"))
    target = container.get_blob_client("copies/one.txt")
    target.start_copy_from_url(source.url)

    [event] = wait_until(lambda: receiver.events("/hook"), 20, what="the CopyBlob event")
    assert event["subject"] == f"/blobServices/default/containers/{name}/blobs/copies/one.txt"
    assert (event["data"]["api"], event["data"]["contentLength"], event["data"]["contentType"]) == (
        "CopyBlob", 7, "a/b")
    assert event["data"]["eTag"] == target.get_blob_properties().etag
