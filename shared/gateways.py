"""Wiring: the settings, the pipelines and one gateway per service, built on first use and reused."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache

from shared.models import JobRecord
from shared.pipelines import PipelineSet, load_pipelines
from shared.ports import BatchPort, BlobPort, LedgerPort, QueuePort
from shared.settings import Settings, get_settings


def utc_now() -> datetime:
    return datetime.now(UTC)


class Submitted:
    """Task ids this process has seen submitted (their rows saved `submitted`), newest last, at most `limit`: a
    repeated delivery of one of them is a duplicate without a ledger read. Another process still reads the row."""

    def __init__(self, limit: int = 100_000) -> None:
        self._jobs: OrderedDict[str, str] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def add(self, task_id: str, job_id: str) -> None:
        with self._lock:
            self._jobs[task_id] = job_id
            self._jobs.move_to_end(task_id)
            while len(self._jobs) > self._limit:
                self._jobs.popitem(last=False)

    def job_of(self, task_id: str) -> str | None:
        with self._lock:
            return self._jobs.get(task_id)


@dataclass
class Gateways:
    """What a use case needs: configuration and the ports to the outside world."""

    settings: Settings
    pipelines: PipelineSet
    batch: BatchPort
    blobs: BlobPort
    queue: QueuePort
    ledger: LedgerPort
    clock: Callable[[], datetime] = field(default=utc_now)
    # Job rows this process has seen active, by job id (shared/submit.py): read again only once their window may
    # be closing.
    known_jobs: dict[str, JobRecord] = field(default_factory=dict, repr=False)
    submitted: Submitted = field(default_factory=Submitted, repr=False)


def build_gateways(settings: Settings) -> Gateways:
    """Azure-backed gateways: connection string locally, managed identity on Azure."""
    from azure.data.tables import TableClient, TableServiceClient
    from azure.storage.queue import QueueServiceClient

    from shared.batch import AzureBatch
    from shared.ledger import TableLedger
    from shared.storage import AzureBlobs, AzureQueue

    pipelines = load_pipelines(settings.pipelines_file, settings.pool_defaults, settings.schedules_schedule)
    batch = AzureBatch.connect(settings.batch_url, settings.batch_account_name, settings.batch_account_key)
    table: TableClient
    if settings.storage_connection_string:
        connection = settings.storage_connection_string
        blobs = AzureBlobs.from_connection_string(connection)
        queues = QueueServiceClient.from_connection_string(connection)
        table = TableServiceClient.from_connection_string(connection).get_table_client(settings.ledger_table)
    else:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
        blobs = AzureBlobs.from_identity(str(settings.blob_service_uri), credential)
        queues = QueueServiceClient(str(settings.queue_service_uri), credential=credential)
        table = TableServiceClient(str(settings.table_service_uri), credential=credential).get_table_client(
            settings.ledger_table
        )
    return Gateways(
        settings=settings,
        pipelines=pipelines,
        batch=batch,
        blobs=blobs,
        queue=AzureQueue.from_service(queues, settings.completions_queue, settings.completion_checks_queue),
        ledger=TableLedger(table),
    )


@lru_cache(maxsize=1)
def gateways() -> Gateways:
    """The process-wide gateways, built from the app settings on first use."""
    return build_gateways(get_settings())
