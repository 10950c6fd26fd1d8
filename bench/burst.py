"""The burst scenario: N uploads whose BlobCreated events reach the bulk endpoint's use case as Event Grid
batches of at most 100, every event twice and shuffled, by WORKERS concurrent deliveries.

Batch requests come from the emulator's own counter; storage requests from a response hook on each of the
app's storage clients (blob, queue, table), filed by phase: claim, SAS, staging, collect, manifest (and poll).
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from azure.core.pipeline import PipelineResponse
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient, QueueServiceClient

from bench.scenarios import (
    COLLECT_IDLE_SECONDS,
    WORKERS,
    CountingBlobs,
    Loop,
    ScenarioConfig,
    _drain,
    _duplicates,
    _emulator,
    _manifests,
    _names,
    _redelivered,
    _retries,
    _stopped,
    _upload,
    _wait_until,
    pipelines_settings,
)
from shared.batch import AzureBatch
from shared.bulk_ingest import ingest_delivery, parse_delivery
from shared.gateways import Gateways
from shared.ledger import TableLedger
from shared.pipelines import load_pipelines
from shared.poll import poll
from shared.settings import load_settings
from shared.storage import AzureBlobs, AzureQueue, parse_connection_string

BATCH_EVENTS = 100  # the subscription's maxEventsPerBatch
PHASES = ("claim", "sas", "staging", "collect", "manifest", "poll")
# Batch operations of the event path (submission): pool and job made sure of, tasks added.
EVENT_PATH_OPERATIONS = ("Pool_", "Job_Add", "Task_Add")


class StorageRequests:
    """Counts every storage request the app's clients send (each retry too), by phase.

    The phase is the use case the calling thread runs (`phase()`), refined by what the request names: a staging
    container during ingest is `staging`, a user delegation key `sas`, a `_manifest.json` during collect `manifest`.
    Threads that a use case starts itself (its own pools) run ingest work, the default.
    """

    def __init__(self, staging_prefix: str) -> None:
        self.staging_prefix = staging_prefix
        self.counts: Counter[str] = Counter()
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

    def hook(self, response: PipelineResponse[Any, Any]) -> None:
        """`raw_response_hook` of the storage SDKs: called once per request sent, retries included."""
        request = response.http_request
        path = urllib.parse.unquote(urllib.parse.urlparse(request.url).path)
        query = urllib.parse.urlparse(request.url).query
        use_case = getattr(self._local, "phase", None) or "ingest"
        if "comp=userdelegationkey" in query:
            phase = "sas"
        elif use_case == "ingest":
            phase = "staging" if f"/{self.staging_prefix}-" in path else "claim"
        elif use_case == "collect":
            phase = "manifest" if path.endswith("/_manifest.json") else "collect"
        else:
            phase = use_case
        with self._lock:
            self.counts[phase] += 1


def _gateways(config: ScenarioConfig, names: dict[str, str], workdir: Path, counter: StorageRequests) -> Gateways:
    """The app's gateways, as build_gateways makes them, with the request counter on every storage client."""
    settings = load_settings(**pipelines_settings(config, names, workdir))
    connection = config.connection_string
    hook: dict[str, Any] = {"raw_response_hook": counter.hook}
    service = BlobServiceClient.from_connection_string(connection, **hook)
    blobs = AzureBlobs(service, parse_connection_string(connection).get("AccountKey"))
    queues = QueueServiceClient.from_connection_string(connection, **hook)
    table = TableServiceClient.from_connection_string(connection, **hook).get_table_client(settings.ledger_table)
    return Gateways(
        settings=settings,
        pipelines=load_pipelines(settings.pipelines_file),
        batch=AzureBatch.connect(settings.batch_url, settings.batch_account_name, settings.batch_account_key),
        blobs=CountingBlobs(blobs),  # type: ignore[arg-type]
        queue=AzureQueue.from_service(queues, settings.completions_queue),
        ledger=TableLedger(table),
    )


def blob_created_event(blob_endpoint: str, container: str, name: str, event_id: str) -> dict[str, object]:
    """A BlobCreated event (Event Grid schema) as Event Grid raises it for an Azurite blob."""
    account = urllib.parse.urlparse(blob_endpoint).path.strip("/")
    return {
        "id": event_id,
        "eventType": "Microsoft.Storage.BlobCreated",
        "subject": f"/blobServices/default/containers/{container}/blobs/{name}",
        "eventTime": datetime.now(UTC).isoformat(),
        "dataVersion": "",
        "topic": f"/subscriptions/bench/resourceGroups/bench/providers/Microsoft.Storage/storageAccounts/{account}",
        "data": {"url": f"{blob_endpoint}/{container}/{urllib.parse.quote(name)}", "api": "PutBlob"},
    }


def deliveries(blob_endpoint: str, container: str, inputs: list[str]) -> list[bytes]:
    """Every upload's event twice (at-least-once), shuffled, cut into Event Grid batches of BATCH_EVENTS."""
    events = [blob_created_event(blob_endpoint, container, name, f"evt-{index}") for index, name in enumerate(inputs)]
    doubled = events * 2
    random.Random(7).shuffle(doubled)
    starts = range(0, len(doubled), BATCH_EVENTS)
    return [json.dumps(doubled[start : start + BATCH_EVENTS]).encode() for start in starts]


def burst(config: ScenarioConfig) -> dict[str, float]:
    names = _names("bu")
    workdir = Path(config.workdir)
    inputs = _upload(config, names["input"], config.files)
    counter = StorageRequests(f"st{names['pool'][5:]}")
    gw = _gateways(config, names, workdir, counter)
    blob_endpoint = parse_connection_string(config.connection_string)["BlobEndpoint"].rstrip("/")
    bodies = deliveries(blob_endpoint, names["input"], inputs)
    emulator = _emulator(config)
    service = BlobServiceClient.from_connection_string(config.connection_string)
    queue = QueueClient.from_connection_string(config.connection_string, names["queue"])
    gw.queue.ensure()  # type: ignore[attr-defined]  # the Functions host creates a trigger's queue
    published = [0]
    # The collector's own threads (queue trigger instances) run collect only.
    with ThreadPoolExecutor(WORKERS, initializer=counter.enter, initargs=("collect",)) as pool:

        def collect_all() -> None:
            with counter.phase("collect"):
                published[0] += _drain(gw, queue, pool)

        def poll_once() -> None:
            with counter.phase("poll"):
                _redelivered(lambda: poll(gw))

        def deliver(body: bytes) -> None:
            with counter.phase("ingest"):
                _redelivered(lambda: ingest_delivery(gw, parse_delivery(body)))

        emulator.reset_stats()
        started = time.monotonic()
        loops = [Loop("poll", poll_once, config.poll_seconds), Loop("collect", collect_all, COLLECT_IDLE_SECONDS)]
        for loop in loops:
            loop.start()
        with ThreadPoolExecutor(WORKERS) as senders:
            list(senders.map(deliver, bodies))
        tasks_done = time.monotonic() - started
        finished = _wait_until(lambda: published[0] >= config.files, loops, config, started)
        manifests_done = time.monotonic() - started
        for loop in loops:
            loop.stop()
    stats = emulator.stats()
    requests: dict[str, int] = stats["requests"]  # type: ignore[assignment]
    print(f"  burst: Batch requests by operation {requests}", flush=True)
    event_path = sum(count for operation, count in requests.items() if operation.startswith(EVENT_PATH_OPERATIONS))
    manifests = _manifests(service, names["results"])
    assert manifests == config.files or not finished, manifests
    files = config.files
    report: dict[str, float | None] = {
        "files": files,
        "deliveries": len(bodies),
        "events_delivered": 2 * files,
        "batch_requests_event_path": event_path,
        "batch_requests_per_file": round(event_path / files, 4),
        "task_add_collection_requests": requests.get("Task_AddCollection", 0),
        "task_add_requests": requests.get("Task_Add", 0),
        "batch_requests_total": int(stats["total"]),  # type: ignore[call-overload]
        "duplicate_tasks": _duplicates(config, gw, names),
        "output_bytes_through_functions": gw.blobs.bytes_read,  # type: ignore[attr-defined]
        "seconds_to_all_tasks": round(tasks_done, 2),
        "seconds_to_all_manifests": round(manifests_done, 2),
        "redeliveries_after_transient_errors": _retries["count"],
        "storage_requests_total": sum(counter.counts.values()),
    }
    for phase in PHASES:
        report[f"storage_requests_per_file_{phase}"] = round(counter.counts[phase] / files, 3)
    _stopped(report, finished, manifests)
    return report  # type: ignore[return-value]
