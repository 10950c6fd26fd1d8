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
from shared import ids
from shared.gateways import Gateways
from shared.ledger import TableLedger
from shared.ledger_rows import input_partition
from shared.models import FinalKey, InputRecord, InputState, JobRecord, JobState
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


def same_partition(count: int, partition: str = "input-0") -> list[str]:
    """`count` task ids whose rows share one input partition (and so one counter row per job)."""
    found = (f"t-{index}" for index in range(10_000))
    return [task_id for task_id in found if input_partition(task_id) == partition][:count]


def claimed(task_id: str) -> InputRecord:
    staging = ids.staging_container("st", task_id)
    return InputRecord(task_id, "input", f"{task_id}.txt", "0x1", "report", JOB, InputState.CLAIMED, staging=staging)


JOB = "report-20261127T0900Z-w60"


def test_an_inputs_ledger_writes_are_one_request_each_with_no_read_before_them(ledgers: Any) -> None:
    ledger = ledgers("writes")
    table = ledger.gw.ledger
    table.jobs()  # the table exists: its creation is not the input's
    first, second = same_partition(2)
    for task_id in (first, second):  # the first input of a job in a partition reads its counter row once
        ledger.counted.reset()
        record, created = table.claim_input(claimed(task_id))  # its row, staging index and recent rows
        assert created and ledger.counted.requests == 1
        record.state = InputState.SUBMITTED
        table.save_input(record)  # over the version the claim left: no read
        assert ledger.counted.requests == 2
        read = table.get_input(task_id)  # what collect reads
        assert read is not None and read.state is InputState.SUBMITTED and ledger.counted.requests == 3
        read.state, read.outcome = InputState.COLLECTED, "succeeded"
        table.save_input(read)  # the row, its recent row and the job's counter row in one transaction
        assert ledger.counted.requests == (5 if task_id == first else 4)  # the counter row: read once, then known

    assert table.counts().by_job[JOB][FinalKey(InputState.COLLECTED, "report", "succeeded")] == 2
    events, _ = table.recent(10)
    assert [(entry.task_id, entry.state) for entry in events] == [
        (second, "collected"), (second, "claimed"), (first, "collected"), (first, "claimed"),
    ]  # fmt: skip


def test_processes_that_finish_inputs_of_one_job_in_turn_keep_its_counts_exact(ledgers: Any, azurite: Azurite) -> None:
    ledger = ledgers("turns")
    mine = ledger.gw.ledger
    theirs = TableLedger(TableClient.from_connection_string(azurite.connection_string, mine._table.table_name))  # type: ignore[attr-defined]
    task_ids = same_partition(6)
    for task_id in task_ids:
        mine.claim_input(claimed(task_id))
    for index, task_id in enumerate(task_ids):  # each process's known counter row is stale every other time
        process = (mine, theirs)[index % 2]
        record = process.get_input(task_id)
        assert record is not None
        record.state, record.outcome = InputState.COLLECTED, "succeeded"
        process.save_input(record)

    assert mine.counts().by_job[JOB] == theirs.counts().by_job[JOB] == {
        FinalKey(InputState.COLLECTED, "report", "succeeded"): 6
    }


def test_a_bulk_claim_is_one_request_per_partition(ledgers: Any) -> None:
    ledger = ledgers("bulk")
    table = ledger.gw.ledger
    table.jobs()  # the table exists: its creation is not the claim's
    records = [claimed(f"t-{index}") for index in range(60)]
    ledger.counted.reset()

    results = table.claim_inputs(records)

    assert all(created for _, created in results)
    partitions = {input_partition(record.task_id) for record in records}
    assert len(partitions) == 16 and ledger.counted.requests == len(partitions)
    records[0].state = InputState.SUBMITTED
    ledger.counted.reset()
    table.save_inputs([record for record, _ in results])  # over the versions the claim left: no reads
    assert ledger.counted.requests == len(partitions)


def test_a_bulk_claim_meeting_existing_rows_claims_the_others_in_one_transaction(ledgers: Any) -> None:
    ledger = ledgers("meeting")
    table = ledger.gw.ledger
    task_ids = same_partition(20)
    for task_id in task_ids[5:7]:  # claimed before: a repeated event, another submitter
        table.claim_input(claimed(task_id))
    ledger.counted.reset()

    results = table.claim_inputs([claimed(task_id) for task_id in task_ids])

    assert [created for _, created in results] == [index not in (5, 6) for index in range(20)]
    # Each refused transaction names the existing row: it is claimed alone (create refused, row read), the rest
    # go again. 3 transactions + 2 x 2, not one request per row.
    assert ledger.counted.requests == 3 + 2 * 2
    assert {record.task_id for record in table.inputs()} == set(task_ids)
