"""Storage writes as Azure Storage raises them: `Microsoft.Storage.BlobCreated` in the Event Grid schema.

The shape follows "Azure Blob Storage as an Event Grid source"
(https://learn.microsoft.com/azure/event-grid/event-schema-blob-storage): BlobCreated is raised for PutBlob,
PutBlockList and CopyBlob once the block blob is committed; `data` carries api, clientRequestId, requestId,
eTag, contentType, contentLength, blobType, url, sequencer and storageDiagnostics.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from .subscriptions import BLOB_CREATED

# The resource group and subscription of a storage account do not exist locally; the account name does.
LOCAL_SUBSCRIPTION_ID = "00000000-0000-0000-0000-000000000000"
LOCAL_RESOURCE_GROUP = "batchdrop-local"


def storage_topic(account: str) -> str:
    """The topic Azure Storage puts on its events: the storage account's resource id."""
    return (f"/subscriptions/{LOCAL_SUBSCRIPTION_ID}/resourceGroups/{LOCAL_RESOURCE_GROUP}"
            f"/providers/Microsoft.Storage/storageAccounts/{account}")


def blob_subject(container: str, name: str) -> str:
    return f"/blobServices/default/containers/{container}/blobs/{name}"


@dataclass(frozen=True)
class BlobWrite:
    """A successful write the proxy saw: which blob, by which operation, with what the service answered."""

    account: str
    container: str
    name: str
    api: str  # PutBlob, PutBlockList or CopyBlob
    etag: str
    content_type: str
    content_length: int
    client_request_id: str = ""
    request_id: str = ""


_counter = itertools.count(1)
_counter_lock = threading.Lock()


def next_sequencer() -> str:
    """An opaque 32-character value that orders the events of one blob by string comparison, as Azure's does
    (nanoseconds since the epoch, then a per-process counter, both zero-padded)."""
    with _counter_lock:
        return f"{time.time_ns():020d}{next(_counter) % 10**12:012d}"


def event_time() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def blob_created(write: BlobWrite, blob_endpoint: str) -> dict[str, Any]:
    """The BlobCreated event for `write`; `blob_endpoint` is the account's URL as its clients see it."""
    url = f"{blob_endpoint.rstrip('/')}/{quote(write.container)}/{quote(write.name)}"
    return {
        "topic": storage_topic(write.account),
        "subject": blob_subject(write.container, write.name),
        "eventType": BLOB_CREATED,
        "id": str(uuid.uuid4()),
        "data": {
            "api": write.api,
            "clientRequestId": write.client_request_id,
            "requestId": write.request_id,
            "eTag": write.etag,
            "contentType": write.content_type,
            "contentLength": write.content_length,
            "blobType": "BlockBlob",
            "url": url,
            "sequencer": next_sequencer(),
            "storageDiagnostics": {"batchId": str(uuid.uuid4())},
        },
        "dataVersion": "",
        "metadataVersion": "1",
        "eventTime": event_time(),
    }


def validation_event(account: str, code: str) -> dict[str, Any]:
    """The SubscriptionValidationEvent Event Grid posts to a webhook when the subscription is created."""
    return {
        "id": str(uuid.uuid4()),
        "topic": storage_topic(account),
        "subject": "",
        "data": {"validationCode": code},
        "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
        "eventTime": event_time(),
        "metadataVersion": "1",
        "dataVersion": "2",
    }
