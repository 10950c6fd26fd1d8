"""The storage gateways: blobs (with SAS or identity references, server-side copy) and the completions queue."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.blob import (
    BlobSasPermissions,
    BlobServiceClient,
    ContainerSasPermissions,
    ContentSettings,
    UserDelegationKey,
    generate_blob_sas,
    generate_container_sas,
)
from azure.storage.queue import QueueClient, QueueServiceClient

from shared.errors import ConfigError, PermanentError, TransientError
from shared.messages import encode_check, encode_completion, encode_completions
from shared.models import BlobRef, CompletionCheck, CompletionEvent

logger = logging.getLogger(__name__)
COPY_WAIT_SECONDS = 300.0
SEND_THREADS = 8


def parse_connection_string(connection_string: str) -> dict[str, str]:
    """Key=value pairs of a storage connection string (the key part may contain '=')."""
    parts: dict[str, str] = {}
    for item in connection_string.split(";"):
        if "=" in item:
            key, value = item.split("=", 1)
            parts[key.strip()] = value.strip()
    return parts


class AzureBlobs:
    """BlobPort over azure-storage-blob. SAS from the account key locally, from a user delegation key on Azure."""

    def __init__(self, service: BlobServiceClient, account_key: str | None = None) -> None:
        self._service = service
        self._account_key = account_key
        self._delegation_key: UserDelegationKey | None = None
        self._delegation_expiry = datetime.min.replace(tzinfo=UTC)
        self._lock = threading.Lock()
        self._ensured: set[str] = set()

    @classmethod
    def from_connection_string(cls, connection_string: str) -> AzureBlobs:
        service = BlobServiceClient.from_connection_string(connection_string)
        # UseDevelopmentStorage=true has no AccountKey= part; the SDK expands it to Azurite's key.
        return cls(service, getattr(service.credential, "account_key", None))

    @classmethod
    def from_identity(cls, account_url: str, credential: Any) -> AzureBlobs:
        return cls(BlobServiceClient(account_url, credential=credential))

    def ensure_container(self, container: str) -> None:
        if container in self._ensured:
            return
        try:
            self._service.create_container(container)
        except ResourceExistsError:
            pass
        self._ensured.add(container)

    def list_blobs(self, container: str, prefix: str = "") -> Iterator[BlobRef]:
        client = self._service.get_container_client(container)
        try:
            for blob in client.list_blobs(name_starts_with=prefix or None):
                yield BlobRef(container, blob.name, blob.etag, blob.creation_time, blob.size or 0)
        except ResourceNotFoundError:
            return
        except AzureError as error:
            raise TransientError(f"list {container}/{prefix}*: {type(error).__name__}") from None

    def get_blob(self, container: str, name: str) -> BlobRef | None:
        try:
            props = self._service.get_blob_client(container, name).get_blob_properties()
        except ResourceNotFoundError:
            return None
        except AzureError as error:
            raise TransientError(f"read properties of {container}/{name}: {type(error).__name__}") from None
        return BlobRef(container, name, props.etag, props.creation_time, props.size or 0)

    def _sas_credential(self, valid_seconds: int) -> dict[str, Any]:
        if self._account_key:
            return {"account_key": self._account_key}
        with self._lock:
            needed_until = datetime.now(UTC) + timedelta(seconds=valid_seconds)
            if self._delegation_key is None or self._delegation_expiry < needed_until:
                start = datetime.now(UTC) - timedelta(minutes=5)
                expiry = needed_until + timedelta(hours=1)
                self._delegation_key = self._service.get_user_delegation_key(start, expiry)
                self._delegation_expiry = expiry
            return {"user_delegation_key": self._delegation_key}

    def read_url(self, container: str, name: str, valid_seconds: int) -> str:
        blob = self._service.get_blob_client(container, name)
        sas = generate_blob_sas(
            account_name=self._service.account_name or "",
            container_name=container,
            blob_name=name,
            permission=BlobSasPermissions(read=True),
            expiry=datetime.now(UTC) + timedelta(seconds=valid_seconds),
            **self._sas_credential(valid_seconds),
        )
        return f"{blob.url}?{sas}"

    def write_url(self, container: str, valid_seconds: int) -> str:
        self.ensure_container(container)
        client = self._service.get_container_client(container)
        sas = generate_container_sas(
            account_name=self._service.account_name or "",
            container_name=container,
            permission=ContainerSasPermissions(write=True, create=True),
            expiry=datetime.now(UTC) + timedelta(seconds=valid_seconds),
            **self._sas_credential(valid_seconds),
        )
        return f"{client.url}?{sas}"

    def copy(self, source_container: str, source_name: str, target_container: str, target_name: str) -> None:
        self.ensure_container(target_container)
        source_url = self.read_url(source_container, source_name, 3600)
        target = self._service.get_blob_client(target_container, target_name)
        try:
            started = target.start_copy_from_url(source_url)
            if started.get("copy_status") == "success":  # same-account copies usually finish at once
                return
            deadline = time.monotonic() + COPY_WAIT_SECONDS
            while True:
                status = target.get_blob_properties().copy.status
                if status == "success":
                    return
                if status in ("failed", "aborted"):
                    raise TransientError(f"copy {source_container}/{source_name} -> {target_name}: {status}")
                if time.monotonic() > deadline:
                    raise TransientError(f"copy {source_container}/{source_name} -> {target_name} still pending")
                time.sleep(0.5)
        except ResourceNotFoundError:
            raise PermanentError(f"copy source {source_container}/{source_name} does not exist") from None
        except AzureError as error:
            raise TransientError(f"copy {source_container}/{source_name}: {type(error).__name__}") from None

    def delete_container(self, container: str) -> None:
        try:
            self._service.delete_container(container)
        except ResourceNotFoundError:
            pass
        except AzureError as error:
            # A leftover staging container costs storage, not correctness: log it and go on.
            logger.warning("could not delete container %s: %s", container, type(error).__name__)
        self._ensured.discard(container)

    def read_json(self, container: str, name: str) -> dict[str, object] | None:
        found = self._download_json(container, name)
        return found[0] if found is not None else None

    def read_json_version(self, container: str, name: str) -> tuple[dict[str, object], str] | None:
        """A blob that is not a JSON object (truncated, or written by hand) reads as an empty document at its
        version: a manifest that no task wrote, which collection replaces at that version."""
        found = self._download_json(container, name)
        if found is None:
            return None
        document, etag = found
        return (document or {}), etag

    def _download_json(self, container: str, name: str) -> tuple[dict[str, object] | None, str] | None:
        """(the blob's JSON object, or None when it holds anything else; its etag); None when there is no blob."""
        try:
            downloader = self._service.get_blob_client(container, name).download_blob()
            data = downloader.readall()
        except ResourceNotFoundError:
            return None
        except AzureError as error:
            raise TransientError(f"read {container}/{name}: {type(error).__name__}") from None
        etag = str(downloader.properties.etag)
        try:
            document = json.loads(data)
        except ValueError:  # not JSON, or not UTF-8
            document = None
        if not isinstance(document, dict):
            logger.warning("%s/%s is not a JSON object (%d bytes); treating it as absent", container, name, len(data))
            return None, etag
        return document, etag

    def write_json(self, container: str, name: str, document: dict[str, object]) -> None:
        self.ensure_container(container)
        try:
            self._service.get_blob_client(container, name).upload_blob(
                _json_body(document), overwrite=True, content_settings=ContentSettings(content_type="application/json")
            )
        except AzureError as error:
            raise TransientError(f"write {container}/{name}: {type(error).__name__}") from None

    def write_json_if(self, container: str, name: str, document: dict[str, object], version: str | None) -> bool:
        self.ensure_container(container)
        blob = self._service.get_blob_client(container, name)
        settings = ContentSettings(content_type="application/json")
        try:
            if version is None:  # If-None-Match: *
                blob.upload_blob(_json_body(document), overwrite=False, content_settings=settings)
            else:  # If-Match: version
                blob.upload_blob(
                    _json_body(document),
                    overwrite=True,
                    content_settings=settings,
                    etag=version,
                    match_condition=MatchConditions.IfNotModified,
                )
        except (ResourceExistsError, ResourceModifiedError):
            return False
        except ResourceNotFoundError:
            return False  # If-Match on a blob deleted meanwhile
        except AzureError as error:
            if getattr(error, "status_code", None) == 412:
                return False
            raise TransientError(f"write {container}/{name}: {type(error).__name__}") from None
        return True

    def read_tail(self, container: str, name: str, max_bytes: int) -> str:
        blob = self._service.get_blob_client(container, name)
        try:
            size = blob.get_blob_properties().size or 0
            if size == 0:
                return ""
            offset = max(0, size - max_bytes)
            data = blob.download_blob(offset=offset, length=size - offset).readall()
        except ResourceNotFoundError:
            return ""
        except AzureError as error:
            raise TransientError(f"read {container}/{name}: {type(error).__name__}") from None
        return data.decode("utf-8", errors="replace")


def _json_body(document: dict[str, object]) -> bytes:
    return json.dumps(document, indent=2, sort_keys=True, default=str).encode()


class AzureQueue:
    """QueuePort over azure-storage-queue: the completions queue and its poison twin, and the completion checks."""

    def __init__(self, queue: QueueClient, poison: QueueClient, checks: QueueClient | None = None) -> None:
        self._queue = queue
        self._poison = poison
        self._checks = checks
        self._ensured = False

    @classmethod
    def from_service(cls, service: QueueServiceClient, name: str, checks: str = "completion-checks") -> AzureQueue:
        return cls(
            service.get_queue_client(name), service.get_queue_client(f"{name}-poison"), service.get_queue_client(checks)
        )

    def ensure(self) -> None:
        if self._ensured:
            return
        for client in (self._queue, self._poison, *([self._checks] if self._checks is not None else [])):
            try:
                client.create_queue()
            except ResourceExistsError:
                pass
        self._ensured = True

    def send(self, events: Iterable[CompletionEvent], separately: bool = False) -> None:
        """Enqueue every event, several to a message unless `separately`; returns only when all are stored (a poll
        moves its watermark after this)."""
        self.ensure()
        pending = list(events)
        bodies = [encode_completion(event) for event in pending] if separately else encode_completions(pending)

        def put(body: str) -> None:
            try:
                self._queue.send_message(body)
            except AzureError as error:
                raise TransientError(f"enqueue {len(pending)} completion(s): {type(error).__name__}") from None

        if len(bodies) <= 1:
            for body in bodies:
                put(body)
            return
        # A poll after a busy spell can have thousands of completions: send their messages several at a time.
        with ThreadPoolExecutor(SEND_THREADS) as pool:
            for _ in pool.map(put, bodies):
                pass

    def schedule_check(self, check: CompletionCheck, delay_seconds: int) -> None:
        if self._checks is None:
            raise ConfigError("this queue gateway has no completion-checks queue")
        self.ensure()
        try:
            self._checks.send_message(encode_check(check), visibility_timeout=delay_seconds)
        except AzureError as error:
            raise TransientError(f"enqueue completion check of {check.task_id}: {type(error).__name__}") from None

    def poison_count(self) -> int:
        try:
            return int(self._poison.get_queue_properties().approximate_message_count or 0)
        except ResourceNotFoundError:
            return 0
