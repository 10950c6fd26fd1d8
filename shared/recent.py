"""The recent-inputs index: one small row per input event, newest first, for the status page's listing.

The input rows are spread over 16 partitions by a hash of the task id, so "the newest inputs" cannot be read
from them without reading them all. The ledger therefore also writes one index row beside the input's row, in the
same partition and the same entity group transaction (no request of its own), when an input row is created
(claimed, or refused at once) and when it moves into a final state (collected, skipped, rejected). Index row keys
are `~recent~` and the inverted time, so a range read of each partition's first index rows, merged, is the newest
events: a page of the listing reads a bounded number of rows (16 range reads) whatever the inputs ever processed.

An older event of an input that has a newer one (its claim once it is collected) is dropped by the reader.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.ledger_rows import input_partition
from shared.models import InputRecord, InputState

# Index rows sort after every task id, the staging index and the counter rows of their partition.
RECENT_PREFIX = "~recent~"
# Milliseconds since the epoch, inverted and zero-padded so that row keys sort newest first until the year 2286.
_INVERT_FROM = 10**13
# shared.ports.FINAL_STATES (no import cycle)
_FINAL = (InputState.COLLECTED, InputState.SKIPPED, InputState.REJECTED, InputState.GROUPED)


@dataclass(frozen=True)
class RecentEntry:
    """One event of one input in the recent-inputs index."""

    key: str  # the row key less RECENT_PREFIX: the cursor of the next, older page
    task_id: str
    container: str
    name: str
    pipeline: str
    job_id: str
    state: str
    outcome: str
    reason: str
    at: datetime


def recent_key(record: InputRecord, at: datetime) -> str:
    """Newest first; within one millisecond an input's final event sorts before (is newer than) its claim."""
    inverted = _INVERT_FROM - int(at.timestamp() * 1000)
    rank = 0 if record.state in _FINAL else 1
    return f"{inverted:013d}-{rank}-{record.task_id}"


def recent_entity(record: InputRecord, at: datetime) -> dict[str, Any]:
    """The index row, in the input row's own partition."""
    return {
        "PartitionKey": input_partition(record.task_id),
        "RowKey": RECENT_PREFIX + recent_key(record, at),
        "task_id": record.task_id,
        "container": record.container,
        "name": record.name,
        "pipeline": record.pipeline,
        "job_id": record.job_id,
        "state": record.state.value,
        "outcome": record.outcome,
        "reason": record.reason[:4096],
        "at": at,
    }


def recent_entry(entity: Any) -> RecentEntry:
    at = entity.get("at")
    return RecentEntry(
        key=str(entity["RowKey"]).removeprefix(RECENT_PREFIX),
        task_id=str(entity.get("task_id", "")),
        container=str(entity.get("container", "")),
        name=str(entity.get("name", "")),
        pipeline=str(entity.get("pipeline", "")),
        job_id=str(entity.get("job_id", "")),
        state=str(entity.get("state", "")),
        outcome=str(entity.get("outcome", "")),
        reason=str(entity.get("reason", "")),
        at=at.astimezone(UTC) if isinstance(at, datetime) else datetime.fromtimestamp(0, UTC),
    )


def recent_entry_of(record: InputRecord, at: datetime) -> RecentEntry:
    """The entry a write of `record` at `at` adds to the index (what the in-memory ledger keeps)."""
    return recent_entry(recent_entity(record, at))
