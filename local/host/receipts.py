"""Blob receipts and the blob-trigger dispatch queue, laid out as the Functions host lays them out.

A receipt `azure-webjobs-hosts/blobreceipts/<hostId>/<function id>/<etag>/<container>/<blob>` says
"this version of this blob was handed to this function". It is created incomplete, the blob is
enqueued on `azure-webjobs-blobtrigger-<hostId>`, then the receipt is marked complete; so a restart
re-dispatches only what was caught between the two, and never what was already enqueued.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

from .storage import StorageAccount, encode_message, ensure_queue

logger = logging.getLogger(__name__)

RECEIPTS_CONTAINER = "azure-webjobs-hosts"
POISON_QUEUE = "webjobs-blobtrigger-poison"
_INCOMPLETE = "IncompleteReceipt"
MAX_BLOB_NAME = 1024


def quoted_etag(etag: str) -> str:
    """The ETag as its HTTP header carries it: listings give it bare, property reads quoted."""
    return etag if etag.startswith('"') else f'"{etag}"'


def dispatch_queue_name(host_id: str) -> str:
    return f"azure-webjobs-blobtrigger-{host_id}"


def receipt_prefix(host_id: str, function_id: str) -> str:
    return f"blobreceipts/{host_id}/{function_id}/"


def receipt_name(host_id: str, function_id: str, etag: str, container: str, blob_name: str) -> str:
    name = f"{receipt_prefix(host_id, function_id)}{etag}/{container}/{blob_name}"
    if len(name) <= MAX_BLOB_NAME:
        return name
    # A blob name near the 1,024-character limit leaves no room for the receipt's prefix: such a
    # receipt is named by a digest of the blob name instead (unique, but not readable back).
    digest = hashlib.sha256(blob_name.encode("utf-8")).hexdigest()
    return f"{receipt_prefix(host_id, function_id)}{etag}/{container}/{blob_name[:200]}~sha256-{digest}"


@dataclass(frozen=True)
class BlobVersion:
    container: str
    name: str
    etag: str


@dataclass(frozen=True)
class TriggerMessage:
    """The dispatch queue's message (and the poison message), as the Functions host writes it."""

    function_id: str
    blob: BlobVersion

    def to_json(self) -> str:
        return json.dumps({"Type": "BlobTrigger", "FunctionId": self.function_id, "BlobType": "BlockBlob",
                           "ContainerName": self.blob.container, "BlobName": self.blob.name,
                           "ETag": self.blob.etag})

    @classmethod
    def from_json(cls, text: bytes | str) -> TriggerMessage:
        document = json.loads(text)
        return cls(str(document["FunctionId"]),
                   BlobVersion(str(document["ContainerName"]), str(document["BlobName"]),
                               str(document["ETag"])))


class Receipts:
    """Receipts and dispatch for one storage account."""

    def __init__(self, account: StorageAccount, host_id: str, message_encoding: str) -> None:
        self.account = account
        self.host_id = host_id
        self.message_encoding = message_encoding
        self.container = account.blobs.get_container_client(RECEIPTS_CONTAINER)
        self.dispatch_queue = account.queue(dispatch_queue_name(host_id))
        self.poison_queue = account.queue(POISON_QUEUE)
        # One dispatch at a time per receipt in this process: a scan and an Event Grid push may race
        # for the same blob. Striped, so that different blobs dispatch in parallel.
        self._locks = [threading.Lock() for _ in range(64)]
        self._ready_lock = threading.Lock()
        self._ready = False

    def _ensure(self) -> None:
        with self._ready_lock:
            if self._ready:
                return
            try:
                self.container.create_container()
            except ResourceExistsError:
                pass
            ensure_queue(self.dispatch_queue)
            self._ready = True

    def completed(self, function_id: str) -> set[BlobVersion]:
        """Blob versions this function has complete receipts for."""
        self._ensure()
        prefix = receipt_prefix(self.host_id, function_id)
        versions: set[BlobVersion] = set()
        for receipt in self.container.list_blobs(name_starts_with=prefix, include=["metadata"]):
            if _is_incomplete(receipt.metadata):
                continue
            parts = receipt.name[len(prefix):].split("/", 2)
            if len(parts) == 3:
                etag, container, name = parts
                versions.add(BlobVersion(container, name, etag))
        return versions

    def dispatch(self, function_id: str, blob: BlobVersion) -> bool:
        """Enqueue the blob for the function unless a complete receipt says it was; True if enqueued."""
        try:
            return self._dispatch(function_id, blob)
        except ResourceNotFoundError:
            # The receipts container or the dispatch queue was deleted under us: create them again.
            with self._ready_lock:
                self._ready = False
            return self._dispatch(function_id, blob)

    def _dispatch(self, function_id: str, blob: BlobVersion) -> bool:
        name = receipt_name(self.host_id, function_id, blob.etag, blob.container, blob.name)
        self._ensure()
        with self._locks[hash(name) % len(self._locks)]:
            receipt = self.container.get_blob_client(name)
            try:
                receipt.upload_blob(b"", metadata={_INCOMPLETE: "TRUE"}, overwrite=False)
            except ResourceExistsError:
                if not _is_incomplete(receipt.get_blob_properties().metadata):
                    return False
                logger.info("Resuming an incomplete receipt for %s/%s", blob.container, blob.name)
            message = TriggerMessage(function_id, blob).to_json()
            self.dispatch_queue.send_message(encode_message(message.encode("utf-8"), self.message_encoding))
            receipt.set_blob_metadata({})
            return True


def _is_incomplete(metadata: dict[str, str] | None) -> bool:
    return any(key.lower() == _INCOMPLETE.lower() for key in (metadata or {}))
