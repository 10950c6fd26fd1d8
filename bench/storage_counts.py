"""Storage requests the app's clients send, counted by phase and by operation (issue 16's measurement).

A `raw_response_hook` on each of the app's storage clients (blob, queue, table) sees every request sent, retries
included. The phase is the use case the calling thread runs (`phase()`), refined by what the request names: a
staging container during ingest is `staging`, a user delegation key `sas`, a `_manifest.json` during collect
`manifest`, a queue message from a thread no use case marked (the poll sends completions from a pool of its own)
`poll`. The operation is the service, the HTTP method and what the query names (`comp=`, `restype=`, a table
batch), e.g. `blob PUT comp=blocklist`, `table POST $batch`.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from azure.core.pipeline import PipelineResponse
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient

from shared.batch import AzureBatch
from shared.gateways import Gateways
from shared.ledger import TableLedger
from shared.pipelines import load_pipelines
from shared.settings import Settings
from shared.storage import AzureBlobs, AzureQueue, parse_connection_string

PHASES = ("claim", "sas", "staging", "collect", "manifest", "poll")
Hook = Callable[[PipelineResponse[Any, Any]], None]


class CountingBlobs:
    """Wraps the BlobPort and counts bytes that pass through this process (downloads)."""

    def __init__(self, inner: AzureBlobs) -> None:
        self.inner = inner
        self.bytes_read = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def read_tail(self, container: str, name: str, max_bytes: int) -> str:
        text = self.inner.read_tail(container, name, max_bytes)
        self.bytes_read += len(text.encode())
        return text


class StorageRequests:
    """Counts every storage request the app's clients send, by phase and by operation.

    Threads that a use case starts itself (its own pools) run ingest work, the default phase.
    """

    def __init__(self, staging_prefix: str) -> None:
        self.staging_prefix = staging_prefix
        self.counts: Counter[str] = Counter()  # by phase
        self.operations: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._local = threading.local()

    def enter(self, name: str) -> None:
        """The calling thread runs `name` from now on (a pool's initializer)."""
        self._local.phase = name

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._local.phase = name
        try:
            yield
        finally:
            self._local.phase = None

    def hook(self, service: str) -> Hook:
        """The `raw_response_hook` for one service's client."""

        def count(response: PipelineResponse[Any, Any]) -> None:
            request = response.http_request
            parsed = urllib.parse.urlparse(request.url)
            path, query = urllib.parse.unquote(parsed.path), urllib.parse.parse_qs(parsed.query)
            use_case = getattr(self._local, "phase", None) or "ingest"
            if query.get("comp") == ["userdelegationkey"]:
                phase = "sas"
            elif use_case == "ingest" and service == "queue":
                phase = "poll"  # a completion message the poll sends from a thread of its own (AzureQueue.send)
            elif use_case == "ingest":
                phase = "staging" if f"/{self.staging_prefix}-" in path else "claim"
            elif use_case == "collect":
                phase = "manifest" if path.endswith("/_manifest.json") else "collect"
            else:
                phase = use_case
            with self._lock:
                self.counts[phase] += 1
                what = "copy" if "x-ms-copy-source" in request.headers else _what(service, path, query)
                self.operations[f"{service} {request.method} {what}"] += 1

        return count

    def per_file(self, files: int) -> dict[str, float]:
        """Requests per file: `storage_requests_per_file_<phase>` and `storage_operation_per_file <operation>`."""
        report: dict[str, float] = {"storage_requests_total": sum(self.counts.values())}
        report["storage_requests_per_file"] = round(sum(self.counts.values()) / files, 3)
        for phase in PHASES:
            report[f"storage_requests_per_file_{phase}"] = round(self.counts[phase] / files, 3)
        for operation, count in self.operations.most_common():
            report[f"storage_operation_per_file {operation}"] = round(count / files, 3)
        return report


def _what(service: str, path: str, query: dict[str, list[str]]) -> str:
    if "comp" in query:
        return f"comp={query['comp'][0]}"
    if "restype" in query:
        return f"restype={query['restype'][0]}"
    if service == "table":
        return "$batch" if path.endswith("/$batch") else ("entity" if "(" in path else "table")
    if service == "queue":
        return "message" if "/messages/" in path else ("messages" if path.endswith("/messages") else "queue")
    return "blob"


def counting_gateways(connection: str, settings: Settings, counter: StorageRequests) -> Gateways:
    """The app's gateways, as build_gateways makes them, with the request counter on every storage client."""
    service = BlobServiceClient.from_connection_string(connection, raw_response_hook=counter.hook("blob"))
    blobs = AzureBlobs(service, parse_connection_string(connection).get("AccountKey"))
    queues = QueueServiceClient.from_connection_string(connection, raw_response_hook=counter.hook("queue"))
    tables = TableServiceClient.from_connection_string(connection, raw_response_hook=counter.hook("table"))
    return Gateways(
        settings=settings,
        pipelines=load_pipelines(settings.pipelines_file, settings.pool_defaults),
        batch=AzureBatch.connect(settings.batch_url, settings.batch_account_name, settings.batch_account_key),
        blobs=CountingBlobs(blobs),  # type: ignore[arg-type]
        queue=AzureQueue.from_service(queues, settings.completions_queue),
        ledger=TableLedger(tables.get_table_client(settings.ledger_table)),
    )
