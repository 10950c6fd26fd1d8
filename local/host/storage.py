"""Storage clients for a binding's `connection`, resolved from app settings as the Functions host does."""

from __future__ import annotations

import base64
import binascii
import threading
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import ResourceExistsError
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient, QueueServiceClient

from .settings import AppSettings, StartupError

# Scans dispatch with 16 threads and each queue runs up to 24 invocations: more than the
# default 10 pooled connections per service, which urllib3 would warn about and reopen.
POOL_CONNECTIONS = 64


class _PooledTransport(RequestsTransport):  # type: ignore[misc]  # typed Any by azure-core
    def _init_session(self, session: Any) -> None:
        super()._init_session(session)
        for protocol in ("http://", "https://"):
            session.get_adapter(protocol).init_poolmanager(10, POOL_CONNECTIONS)


@dataclass(frozen=True)
class StorageAccount:
    connection: str
    blobs: BlobServiceClient
    queues: QueueServiceClient

    def queue(self, name: str) -> QueueClient:
        # No encode/decode policy: the host encodes and decodes itself, so a message that is not
        # valid base64 can go to the poison queue instead of failing inside the SDK.
        return self.queues.get_queue_client(name)


def ensure_queue(queue: QueueClient) -> None:
    try:
        queue.create_queue()
    except ResourceExistsError:
        pass


def encode_message(body: bytes, encoding: str) -> str:
    """Message content as the Functions host writes it (host.json extensions.queues.messageEncoding)."""
    if encoding == "base64":
        return base64.b64encode(body).decode("ascii")
    return body.decode("utf-8")


def decode_message(content: str, encoding: str) -> bytes:
    """The message body; ValueError if it is not in the expected encoding."""
    if encoding == "base64":
        try:
            return base64.b64decode(content.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise ValueError("the message is not base64-encoded") from None
    return content.encode("utf-8")


def _looks_like_connection_string(value: str) -> bool:
    return "=" in value and (";" in value or value.lower().startswith("usedevelopmentstorage"))


class StorageAccounts:
    """One set of clients per connection name, built on first use and reused."""

    def __init__(self, settings: AppSettings) -> None:
        self._settings = settings
        self._accounts: dict[str, StorageAccount] = {}
        self._lock = threading.Lock()
        self._credential: Any = None

    def get(self, connection: str) -> StorageAccount:
        with self._lock:
            if connection not in self._accounts:
                self._accounts[connection] = self._build(connection)
            return self._accounts[connection]

    def _build(self, connection: str) -> StorageAccount:
        for name in (connection, f"AzureWebJobs{connection}"):
            value = self._settings.get(name, "")
            if value and _looks_like_connection_string(value):
                return StorageAccount(
                    connection, BlobServiceClient.from_connection_string(value, transport=_PooledTransport()),
                    QueueServiceClient.from_connection_string(value, transport=_PooledTransport()))
        blob_uri, queue_uri = self._service_uris(connection)
        if not blob_uri or not queue_uri:
            raise StartupError(
                f"connection '{connection}': set app setting {connection} to a storage connection "
                f"string, or {connection}__blobServiceUri and {connection}__queueServiceUri "
                "(identity-based connection)")
        credential = self._identity(connection)
        return StorageAccount(
            connection, BlobServiceClient(blob_uri, credential=credential, transport=_PooledTransport()),
            QueueServiceClient(queue_uri, credential=credential, transport=_PooledTransport()))

    def _service_uris(self, connection: str) -> tuple[str | None, str | None]:
        settings = self._settings
        account = settings.get(f"{connection}__accountName")
        blob_uri = settings.get(f"{connection}__blobServiceUri") or settings.get(f"{connection}__serviceUri")
        queue_uri = settings.get(f"{connection}__queueServiceUri")
        if account:
            blob_uri = blob_uri or f"https://{account}.blob.core.windows.net"
            queue_uri = queue_uri or f"https://{account}.queue.core.windows.net"
        return blob_uri, queue_uri

    def _identity(self, connection: str) -> Any:
        if self._credential is None:
            from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

            client_id = self._settings.get(f"{connection}__clientId")
            if self._settings.get(f"{connection}__credential", "").lower() == "managedidentity":
                self._credential = ManagedIdentityCredential(client_id=client_id)
            else:
                self._credential = DefaultAzureCredential()
        return self._credential
