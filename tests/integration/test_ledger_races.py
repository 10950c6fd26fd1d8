"""The ledger against Azurite: a row marked collected between another writer's read and its write stays collected."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from azure.data.tables import TableClient

from local.stack import Azurite
from shared.ledger import TableLedger
from shared.ledger_rows import input_partition
from shared.models import InputRecord, InputState

pytestmark = pytest.mark.integration


class Interleaved:
    """A TableLedger whose next write of a given HTTP method is preceded, once, by another writer's action.

    The other writer acts after this ledger has read the row and before its write reaches Azurite: the race,
    made exact through azure-core's public request hook. Requests and response statuses are counted.
    """

    def __init__(self, azurite: Azurite, table: str) -> None:
        self.meanwhile: dict[str, Callable[[], object]] = {}
        self.sent: Counter[str] = Counter()
        self.answered: Counter[int] = Counter()
        client = TableClient.from_connection_string(
            azurite.connection_string, table, raw_request_hook=self._request, raw_response_hook=self._response
        )
        self.ledger = TableLedger(client)

    def _request(self, request: Any) -> None:
        self.sent[request.http_request.method] += 1
        action = self.meanwhile.pop(request.http_request.method, None)
        if action is not None:
            action()

    def _response(self, response: Any) -> None:
        self.answered[response.http_response.status_code] += 1


def row(state: InputState, task_id: str = "t-1", **fields: Any) -> InputRecord:
    return InputRecord(task_id, "input", f"{task_id}.txt", "0x1", "report", "job-1", state, **fields)


def same_partition(count: int) -> list[str]:
    """Task ids whose rows share a partition, so that a bulk save writes them in one transaction."""
    ids = [f"t-{index}" for index in range(200)]
    first = input_partition(ids[0])
    return [task_id for task_id in ids if input_partition(task_id) == first][:count]


@pytest.fixture
def tables(azurite: Azurite, namespace: str) -> tuple[Interleaved, TableLedger]:
    """Two ledgers on one table, as two function instances have."""
    table = f"race{namespace}"
    other = TableLedger(TableClient.from_connection_string(azurite.connection_string, table))
    return Interleaved(azurite, table), other


def test_a_reactivation_count_written_after_the_row_was_collected_does_not_undo_it(
    tables: tuple[Interleaved, TableLedger],
) -> None:
    stale_writer, collector = tables
    collector.claim_input(row(InputState.SUBMITTED))
    stale = stale_writer.ledger.get_input("t-1")
    assert stale is not None
    stale.reactivations += 1
    # The collector publishes and marks the row collected after the stale writer's read, just before its write.
    stale_writer.meanwhile["PUT"] = lambda: collector.save_input(row(InputState.COLLECTED, outcome="succeeded"))

    stored = stale_writer.ledger.save_input(stale)

    found = collector.get_input("t-1")
    assert found is not None and found.state is InputState.COLLECTED and found.outcome == "succeeded"
    assert stale_writer.answered[412] == 1  # Azurite refused the write made against the older version
    assert stored.state is InputState.COLLECTED  # and the writer learns what the row says now


def test_a_bulk_save_of_submitted_rows_does_not_undo_one_collected_meanwhile(
    tables: tuple[Interleaved, TableLedger],
) -> None:
    sweep, collector = tables
    first, second, third = same_partition(3)
    claimed = [row(InputState.CLAIMED, task_id) for task_id in (first, second, third)]
    for record in claimed:
        sweep.ledger.claim_input(record)
    sweep.sent.clear()
    sweep.meanwhile["POST"] = lambda: collector.save_input(row(InputState.COLLECTED, second, outcome="failed"))

    sweep.ledger.save_inputs([row(InputState.SUBMITTED, record.task_id) for record in claimed])

    states = {record.task_id: record.state for record in collector.inputs()}
    assert states == {first: InputState.SUBMITTED, second: InputState.COLLECTED, third: InputState.SUBMITTED}
    assert sweep.sent["POST"] == 2  # the transaction made against the older version was refused, then redone


@pytest.mark.parametrize("final", [InputState.COLLECTED, InputState.SKIPPED, InputState.REJECTED])
def test_a_final_row_keeps_its_state_and_the_writer_learns_it(
    tables: tuple[Interleaved, TableLedger], final: InputState
) -> None:
    writer, other = tables
    other.claim_input(row(final, outcome="succeeded"))
    other.claim_input(row(InputState.CLAIMED, "t-2"))

    told = writer.ledger.save_input(row(InputState.SUBMITTED, reactivations=1))
    writer.ledger.save_inputs([row(InputState.SUBMITTED), row(InputState.SUBMITTED, "t-2")])

    stored = {record.task_id: record for record in other.inputs()}
    assert stored["t-1"].state is final and stored["t-1"].reactivations == 0
    assert stored["t-2"].state is InputState.SUBMITTED  # a row that is not final is written as before
    assert told.state is final
    assert writer.ledger.save_input(row(InputState.COLLECTED, outcome="failed")).state is InputState.COLLECTED
    found = other.get_input("t-1")
    assert found is not None and found.outcome == "failed"  # a final state is always written
