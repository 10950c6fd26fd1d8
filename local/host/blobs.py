"""The blob a blob-triggered function receives: properties up front, content only as it is read."""

from __future__ import annotations

import base64
import io
import json
from types import SimpleNamespace
from typing import Any

from azure.core import MatchConditions
from azure.functions.blob import InputStream
from azure.storage.blob import BlobClient, BlobProperties

# Large enough that a sequential read makes few requests, small enough to bound memory per read.
CHUNK_BYTES = 4 * 1024 * 1024


class _BlobRange(io.RawIOBase):
    """Reads one version (etag) of a blob by ranged downloads, on demand."""

    def __init__(self, blob: BlobClient, etag: str, length: int) -> None:
        super().__init__()
        self._blob = blob
        self._etag = etag
        self._length = length
        self._position = 0

    def readable(self) -> bool:
        return True

    def _download(self, length: int) -> bytes:
        data: bytes = self._blob.download_blob(
            offset=self._position, length=length, etag=self._etag,
            match_condition=MatchConditions.IfNotModified).readall()
        self._position += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        wanted = min(len(buffer), self._length - self._position)
        if wanted <= 0:
            return 0
        data = self._download(wanted)
        buffer[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        # One (SDK-parallelised) download for read(), not one request per 8 KiB.
        remaining = self._length - self._position
        return self._download(remaining) if remaining > 0 else b""


class BlobInputStream(InputStream):
    """`func.InputStream` whose data is fetched from storage as the function reads it."""

    def __init__(self, blob: BlobClient, properties: BlobProperties) -> None:
        container, name = properties.container, properties.name
        super().__init__(data=b"", name=f"{container}/{name}", uri=blob.url, length=properties.size,
                         blob_properties=blob_properties(properties), metadata=dict(properties.metadata or {}))
        self._reader = io.BufferedReader(_BlobRange(blob, properties.etag, properties.size),
                                         buffer_size=CHUNK_BYTES)

    def read(self, size: int | None = -1) -> bytes:
        return self._reader.read(-1 if size is None else size)

    read1 = read


def sdk_blob_client(sdk_type: type, connection: str, properties: BlobProperties) -> Any:
    """What the Python worker passes for an SDK-typed blob trigger: the SDK client the extension builds
    from the host's model binding data (connection setting, container, blob), never the content."""
    binding_data = SimpleNamespace(
        version="1.0",
        source="AzureStorageBlobs",
        content_type="application/json",
        content=json.dumps({"Connection": connection, "ContainerName": properties.container,
                            "BlobName": properties.name}),
    )  # fmt: skip
    return sdk_type(data=binding_data).get_sdk_type()


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def blob_properties(properties: BlobProperties) -> dict[str, Any]:
    """The Properties the Functions host passes with a blob trigger (both spellings of the length)."""
    content = properties.content_settings
    md5 = content.content_md5 if content else None
    return {
        "ETag": properties.etag,
        "ContentLength": properties.size,
        "Content-Length": properties.size,
        "Length": properties.size,
        "ContentType": content.content_type if content else None,
        "ContentMD5": base64.b64encode(md5).decode("ascii") if md5 else None,
        "ContentEncoding": content.content_encoding if content else None,
        "LastModified": _iso(properties.last_modified),
        "CreatedOn": _iso(properties.creation_time),
        "Created": _iso(properties.creation_time),
        "BlobType": str(properties.blob_type.value if properties.blob_type else "BlockBlob"),
    }
