"""The blob a function receives streams its content: nothing is downloaded until the function reads."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from azure.storage.blob import BlobProperties

from local.host.blobs import CHUNK_BYTES, BlobInputStream


class Downloaded:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def readall(self) -> bytes:
        return self.data


class FakeBlob:
    """A blob in memory that serves ranged downloads of one version, like BlobClient.download_blob."""

    url = "http://127.0.0.1:10000/devstoreaccount1/input/big.bin"

    def __init__(self, content: bytes, etag: str) -> None:
        self.content = content
        self.etag = etag
        self.bytes_served = 0
        self.requests = 0

    def download_blob(self, offset: int, length: int, etag: str, match_condition: Any) -> Downloaded:
        if etag != self.etag:
            raise RuntimeError("ConditionNotMet")
        chunk = self.content[offset : offset + length]
        self.bytes_served += len(chunk)
        self.requests += 1
        return Downloaded(chunk)


def properties(size: int, etag: str) -> BlobProperties:
    found = BlobProperties()
    found.name, found.container, found.size, found.etag = "big.bin", "input", size, etag
    found.last_modified = found.creation_time = dt.datetime(2026, 11, 24, tzinfo=dt.UTC)
    found.metadata = {"owner": "tests"}
    return found


def test_properties_are_there_and_content_is_fetched_only_as_read() -> None:
    content = bytes(range(256)) * (3 * CHUNK_BYTES // 256 + 7)
    blob = FakeBlob(content, '"0x1"')
    stream = BlobInputStream(blob, properties(len(content), '"0x1"'))  # type: ignore[arg-type]
    assert blob.bytes_served == 0
    assert (stream.name, stream.length, stream.uri) == ("input/big.bin", len(content), FakeBlob.url)
    assert stream.blob_properties["ETag"] == '"0x1"'
    assert stream.blob_properties["Content-Length"] == stream.blob_properties["ContentLength"] == len(content)
    assert stream.blob_properties["LastModified"] == "2026-11-24T00:00:00+00:00"
    assert stream.metadata == {"owner": "tests"}
    assert stream.read(10) == content[:10]
    assert blob.bytes_served <= CHUNK_BYTES  # one buffered range, not the blob
    digest = hashlib.sha256(content[:10])
    while chunk := stream.read(1_000_000):
        digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(content).hexdigest()
    assert blob.bytes_served == len(content)


def test_read_all_returns_the_whole_blob_in_few_requests() -> None:
    blob = FakeBlob(b"hello world", '"0x2"')
    assert BlobInputStream(blob, properties(11, '"0x2"')).read() == b"hello world"  # type: ignore[arg-type]
    content = b"z" * (3 * CHUNK_BYTES)
    large = FakeBlob(content, '"0x3"')
    stream = BlobInputStream(large, properties(len(content), '"0x3"'))  # type: ignore[arg-type]
    assert stream.read(5) == b"zzzzz"
    assert stream.read() == content[5:]
    assert large.requests == 2
