"""The burst scenario: N uploads whose BlobCreated events reach the bulk endpoint's use case as Event Grid
batches of at most 100, every event twice and shuffled, by WORKERS concurrent deliveries.

Batch requests come from the emulator's own counter; storage requests from a response hook on each of the
app's storage clients (blob, queue, table), filed by phase: claim, SAS, staging, collect, manifest (and poll).
"""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient

from bench.scenarios import (
    WORKERS,
    ScenarioConfig,
    Uploaded,
    _duplicates,
    _emulator,
    _manifests,
    _names,
    _redelivered,
    _retries,
    _stopped,
    _upload,
    blob_created_event,
    pipelines_settings,
    run_app,
)
from bench.storage_counts import StorageRequests, counting_gateways
from shared.bulk_ingest import ingest_delivery, parse_delivery
from shared.settings import load_settings

BATCH_EVENTS = 100  # the subscription's maxEventsPerBatch
# Batch operations of the event path (submission): pool and job made sure of, tasks added.
EVENT_PATH_OPERATIONS = ("Pool_", "Job_Add", "Task_Add")


def deliveries(connection_string: str, container: str, inputs: list[Uploaded]) -> list[bytes]:
    """Every upload's event (with its eTag and time, as Event Grid raises it) twice (at-least-once), shuffled, cut
    into Event Grid batches of BATCH_EVENTS."""
    events = [blob_created_event(connection_string, container, upload, f"evt-{index}")
              for index, upload in enumerate(inputs)]  # fmt: skip
    doubled = events * 2
    random.Random(7).shuffle(doubled)
    starts = range(0, len(doubled), BATCH_EVENTS)
    return [json.dumps(doubled[start : start + BATCH_EVENTS]).encode() for start in starts]


def burst(config: ScenarioConfig) -> dict[str, float]:
    names = _names("bu")
    workdir = Path(config.workdir)
    inputs = _upload(config, names["input"], config.files)
    counter = StorageRequests(f"st{names['pool'][5:]}")
    settings = load_settings(**pipelines_settings(config, names, workdir))
    gw = counting_gateways(config.connection_string, settings, counter)
    bodies = deliveries(config.connection_string, names["input"], inputs)
    emulator = _emulator(config)
    service = BlobServiceClient.from_connection_string(config.connection_string)
    queue = QueueClient.from_connection_string(config.connection_string, names["queue"])
    gw.queue.ensure()  # type: ignore[attr-defined]  # the Functions host creates a trigger's queue

    def deliver(body: bytes) -> None:
        with counter.phase("ingest"):
            _redelivered(lambda: ingest_delivery(gw, parse_delivery(body)))

    def deliver_all() -> None:
        with ThreadPoolExecutor(WORKERS) as senders:
            list(senders.map(deliver, bodies))

    emulator.reset_stats()
    tasks_done, manifests_done, finished, _ = run_app(gw, counter, queue, config, deliver_all)
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
    }
    report.update(counter.per_file(files))
    _stopped(report, finished, manifests)
    return report  # type: ignore[return-value]
