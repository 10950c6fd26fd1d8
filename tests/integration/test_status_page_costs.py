"""What one page of the status page's recent-inputs listing costs on Azurite: storage requests counted by an
azure-core pipeline policy on the Table and Blob clients, Batch requests by the fake's counter.

It may not grow with the inputs ever processed: 25 or 250 collected inputs cost the same.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from azure.data.tables import TableClient
from azure.storage.blob import BlobServiceClient

from local.stack import Azurite
from shared import ids
from shared.gateways import Gateways
from shared.ledger import TableLedger
from shared.ledger_rows import input_partitions
from shared.models import InputRecord, InputState
from shared.pipelines import PipelineSet
from shared.status_page import RecentQuery, recent_inputs
from shared.storage import AzureBlobs
from tests.integration.test_ledger_costs import Counting
from tests.unit.fakes import PIPELINE, Clock, FakeBatch, FakeQueue, make_settings

pytestmark = pytest.mark.integration

PAGE = 20
PENDING = 3
# One range read of the index per input partition (its rows live beside the inputs'); one point read per pending
# input on the page (are they final by now?); one manifest read per collected input on the page.
EXPECTED_REQUESTS = len(input_partitions()) + PENDING + (PAGE - PENDING)


@dataclass
class Store:
    gw: Gateways
    counted: Counting
    filler: TableLedger
    blobs: BlobServiceClient
    batch: FakeBatch


@pytest.fixture
def stores(azurite: Azurite, namespace: str, tmp_path: Path) -> Iterator[Any]:
    made: list[tuple[str, str]] = []

    def make(name: str) -> Store:
        table, results = f"page{name}{namespace}", f"results-{name}-{namespace}"
        made.append((table, results))
        counted = Counting()
        connection = azurite.connection_string
        ledger = TableLedger(TableClient.from_connection_string(connection, table, per_retry_policies=[counted]))
        # The storage SDKs take no extra pipeline policy; their per-request hook runs after the retry policy too.
        blob_service = BlobServiceClient.from_connection_string(connection, raw_request_hook=counted.on_request)
        blob_service.create_container(results)
        settings = make_settings(tmp_path, BATCHDROP_RESULTS_CONTAINER=results)
        clock = Clock()
        batch = FakeBatch(clock)
        pipelines = PipelineSet.model_validate({"pipelines": [PIPELINE]})
        gw = Gateways(settings, pipelines, batch, AzureBlobs(blob_service), FakeQueue(), ledger, clock)
        filler = TableLedger(TableClient.from_connection_string(connection, table))
        return Store(gw, counted, filler, BlobServiceClient.from_connection_string(connection), batch)

    yield make
    for table, results in made:
        TableClient.from_connection_string(azurite.connection_string, table).delete_table()
        BlobServiceClient.from_connection_string(azurite.connection_string).delete_container(results)


def record(index: int, state: InputState) -> InputRecord:
    outcome = "" if state is InputState.CLAIMED else ("failed" if index % 4 == 0 else "succeeded")
    return InputRecord(f"t-{index:05}", "input", f"in/{index}.txt", "0x1", "report", "job-1", state, outcome=outcome)


def fill(store: Store, collected: int) -> None:
    """`collected` inputs with their manifests, then PENDING inputs still queued (the newest)."""
    rows = [record(index, InputState.COLLECTED) for index in range(collected)]
    store.filler.save_inputs(rows)
    results = store.blobs.get_container_client(store.gw.settings.results_container)

    def manifest(row: InputRecord) -> None:
        document = {"task_id": row.task_id, "status": row.outcome, "exit_code": 0 if row.outcome == "succeeded" else 1,
                    "outputs": [f"{ids.result_prefix(row.name)}out.txt"], "stderr_tail": "boom\n",
                    "started_at": "2026-11-27T09:00:00+00:00", "finished_at": "2026-11-27T09:00:02+00:00"}  # fmt: skip
        results.upload_blob(ids.result_prefix(row.name) + ids.MANIFEST_NAME, json.dumps(document), overwrite=True)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(manifest, rows))
    for index in range(collected, collected + PENDING):
        store.filler.claim_input(record(index, InputState.CLAIMED))


def test_a_listing_page_costs_the_same_with_25_or_250_inputs_and_no_batch_request(stores: Any) -> None:
    small, large = stores("small"), stores("large")
    fill(small, 25)
    fill(large, 250)
    pages = []
    for store in (small, large):
        store.gw.ledger.recent(1)  # the table exists: its creation is not the page's
        store.counted.reset()
        pages.append(recent_inputs(store.gw, RecentQuery(limit=PAGE)))
        assert sum(store.batch.requests.values()) == 0
    assert small.counted.requests == large.counted.requests == EXPECTED_REQUESTS
    for page, newest in zip(pages, (25, 250), strict=True):
        inputs = page["inputs"]
        assert isinstance(inputs, list) and len(inputs) == PAGE
        # The pending inputs were claimed last, one by one; the collected ones were saved in bulk before them.
        assert {entry["name"] for entry in inputs[:PENDING]} == {f"in/{newest + i}.txt" for i in range(PENDING)}
        assert [entry["state"] for entry in inputs[:PENDING]] == ["queued"] * PENDING
        assert inputs[PENDING]["duration_seconds"] == 2.0 and inputs[PENDING]["outputs"][0]["name"] == "out.txt"
