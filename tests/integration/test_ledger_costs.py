"""What the status call and the poll cost in Table storage requests, on Azurite through azure-data-tables.

Neither may grow with history: the inputs ever collected, or the jobs long deleted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.data.tables import TableClient

from local.stack import Azurite
from shared.gateways import Gateways
from shared.ledger import TableLedger
from shared.models import InputRecord, InputState, JobRecord, JobState
from shared.pipelines import PipelineSet
from shared.poll import poll
from shared.status import status
from tests.unit.fakes import PIPELINE, START, Clock, FakeBatch, FakeBlobs, FakeQueue, make_settings

pytestmark = pytest.mark.integration


class Counting(SansIOHTTPPolicy[Any, Any]):
    """Counts every request sent to the table service (each page, each retry) and the rows that came back."""

    def __init__(self) -> None:
        self.requests = 0
        self.rows = 0

    def on_request(self, request: PipelineRequest[Any]) -> None:
        self.requests += 1

    def on_response(self, request: PipelineRequest[Any], response: PipelineResponse[Any, Any]) -> None:
        body = response.http_response.text() if response.http_response.status_code == 200 else ""
        if body.startswith("{"):
            document = json.loads(body)
            self.rows += len(document["value"]) if "value" in document else 1

    def reset(self) -> None:
        self.requests = self.rows = 0


@dataclass
class Ledger:
    """A ledger table as the app sees it (counted) and as the test fills it (not counted)."""

    gw: Gateways
    counted: Counting
    filler: TableLedger
    clock: Clock
    batch: FakeBatch


@pytest.fixture
def ledgers(azurite: Azurite, namespace: str, tmp_path: Path) -> Iterator[Any]:
    made: list[str] = []

    def make(name: str) -> Ledger:
        table = f"cost{name}{namespace}"
        made.append(table)
        counted = Counting()
        client = TableClient.from_connection_string(azurite.connection_string, table, per_retry_policies=[counted])
        filler = TableLedger(TableClient.from_connection_string(azurite.connection_string, table))
        clock = Clock(START + timedelta(days=3))
        pipelines = PipelineSet.model_validate({"pipelines": [PIPELINE]})
        batch = FakeBatch(clock)
        settings = make_settings(tmp_path)
        gw = Gateways(settings, pipelines, batch, FakeBlobs(clock), FakeQueue(), TableLedger(client), clock)
        return Ledger(gw, counted, filler, clock, batch)

    yield make
    for table in made:
        TableClient.from_connection_string(azurite.connection_string, table).delete_table()


def collected(job_id: str, count: int, prefix: str = "in") -> list[InputRecord]:
    return [
        InputRecord(
            f"{prefix}-{index:05}",
            "input",
            f"{prefix}/{index}.txt",
            "0x1",
            "report",
            job_id,
            InputState.COLLECTED,
            outcome="succeeded" if index % 4 else "failed",
        )
        for index in range(count)
    ]


def fill(ledger: Ledger, inputs: int) -> None:
    """One active job holding `inputs` collected inputs, and one terminated job with a few."""
    pipeline = ledger.gw.pipelines.pipelines[0]
    active = JobRecord("report-20261127T0900Z-w60", "report", ledger.clock() + timedelta(minutes=30))
    ledger.batch.ensure_job(active.job_id, pipeline)
    ledger.filler.claim_job(active)
    ledger.filler.save_inputs(collected(active.job_id, inputs))
    ended = ledger.clock() - timedelta(hours=1)  # its retention is not over
    closed = JobRecord("report-20261126T0900Z-w60", "report", ended, JobState.TERMINATED, terminated_at=ended,
                       staging_cleared=True)  # fmt: skip
    ledger.filler.claim_job(closed)
    ledger.filler.save_inputs(collected(closed.job_id, 3, "old"))


def test_one_status_call_costs_the_same_with_10_or_1000_collected_inputs(ledgers: Any) -> None:
    small, large = ledgers("small"), ledgers("large")
    fill(small, 10)
    fill(large, 1000)
    documents = []
    for ledger in (small, large):
        ledger.gw.ledger.jobs()  # the table exists: its creation is not the status call's
        ledger.counted.reset()
        documents.append(status(ledger.gw))

    assert small.counted.requests == large.counted.requests == EXPECTED_STATUS_REQUESTS
    assert large.counted.rows <= 2 + 16 * 2 + 1  # the jobs and their counter rows, not the inputs
    totals = [document["totals"] for document in documents]
    assert [t["collected"] for t in totals] == [13, 1003]  # type: ignore[index]
    jobs = documents[1]["jobs"]
    assert isinstance(jobs, list)
    assert {job["state"]: job["counts"]["collected"] for job in jobs} == {"active": 1000, "terminated": 3}
    # The terminated job's outcomes come from the ledger: 1 of every 4 inputs failed.
    assert [job["counts"]["failed"] for job in jobs if job["state"] == "terminated"] == [1]


def retention_over(ledger: Ledger, deleted: int) -> None:
    """`deleted` terminated jobs whose staging is cleared and retention is over, 2 collected inputs each."""
    for index in range(deleted):
        ended = START - timedelta(days=40)
        job_id = f"report-202610{index + 1:02}T0000Z-w60"
        job = JobRecord(job_id, "report", ended, JobState.TERMINATED, terminated_at=ended, staging_cleared=True)
        ledger.filler.claim_job(job)
        ledger.filler.save_inputs(collected(job.job_id, 2, f"gone{index}"))


def test_a_deleted_job_leaves_the_poll_and_the_status_reads(ledgers: Any) -> None:
    costs, documents = [], []
    for deleted in (1, 30):
        ledger = ledgers(f"del{deleted}")
        fill(ledger, 5)
        retention_over(ledger, deleted)
        assert len(poll(ledger.gw).deleted) == deleted

        ledger.counted.reset()
        poll(ledger.gw)
        poll_cost = (ledger.counted.requests, ledger.counted.rows)
        ledger.counted.reset()
        documents.append(status(ledger.gw))
        costs.append((poll_cost, (ledger.counted.requests, ledger.counted.rows)))

    # The same with 1 or 30 deleted jobs: the poll reads the two live jobs (one request, two rows), and status
    # the live jobs and the counters.
    assert costs[0] == costs[1]
    assert costs[0][0] == (1, 2)
    assert costs[0][1][0] == EXPECTED_STATUS_REQUESTS
    for deleted, document in zip((1, 30), documents, strict=True):
        assert document["deleted_jobs"] == {
            "count": deleted,
            "counts": {"queued": 0, "running": 0, "succeeded": deleted, "failed": deleted,
                       "collected": 2 * deleted, "rejected": 0, "skipped": 0},
        }  # fmt: skip
        assert document["totals"]["collected"] == 5 + 3 + 2 * deleted  # type: ignore[index]
        assert sorted(job["state"] for job in document["jobs"]) == ["active", "terminated"]  # type: ignore[attr-defined]


# The live jobs (1), the counter rows of the 16 input partitions (16), the deleted jobs' sum (1), rejections (1),
# the groups' rows (1: one range read of partition `group`, shared/status.py `groups`).
EXPECTED_STATUS_REQUESTS = 20
