"""How the Table ledger writes an input's rows: each write over the version it was read at, in one entity group
transaction with its index rows and its job's counter row, and the counter rows this process knows.

The adapter (shared/ledger.py) decides what to write; this module plans the writes and sends them.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, TableTransactionError, UpdateMode

from shared.ledger_rows import (
    counter_entity,
    counter_key,
    decode_counts,
    input_entity,
    input_partition,
    input_record,
    staging_index_entity,
)
from shared.models import FinalKey, InputRecord, InputState, RowVersion
from shared.ports import FINAL_STATES
from shared.recent import recent_entity

# An entity group transaction refused because a row changed, appeared or went after it was read.
CONFLICTS = (404, 409, 412)

Write = tuple[str, dict[str, Any], dict[str, Any]]  # (create | update | upsert, entity, options)
Deltas = dict[str, Counter[FinalKey]]  # job id -> change to its counters


class Conflict(Exception):
    """A conditional write lost to another writer: read again and decide again."""

    def __init__(self, index: int = 0) -> None:
        super().__init__(index)
        self.index = index  # the refused operation's place in the request, where the service names it (else 0)


def versioned(entity: Any) -> InputRecord:
    """The input row an entity holds, carrying the version it was read at."""
    record = input_record(entity)
    record.version = version_of(record, str(entity.metadata["etag"]))
    return record


def version_of(record: InputRecord, etag: str) -> RowVersion:
    return RowVersion(record.task_id, etag, record.job_id, record.state, FinalKey.of(record))


def written(record: InputRecord, etag: str) -> InputRecord:
    """`record` now stored at `etag`: the caller's object carries the new version too (its next save writes over
    it without a read), and a copy is returned as the row as stored."""
    record.version = version_of(record, etag)
    return replace(record)


def claim_writes(table: TableClient, record: InputRecord, now: datetime) -> list[Write]:
    """The rows a claim creates in the input's partition: the row itself (first), its staging index row and its
    recent-inputs index row."""
    partition = input_partition(record.task_id)
    writes: list[Write] = [("create", input_entity(record), {})]
    if record.staging:
        index = staging_index_entity(record)
        if index["PartitionKey"] == partition:  # always, for a container named by shared/ids.py
            writes.append(("upsert", index, {}))
        else:  # a staging name of another shape: its index row first, in a request of its own
            table.upsert_entity(index)
    writes.append(("upsert", recent_entity(record, now), {}))
    return writes


def delta(before: RowVersion | None, after: InputRecord) -> Deltas:
    """How the counters change when the row goes from the stored version `before` (None: no row) to `after`."""
    old = before.final if before is not None else None
    new = FinalKey.of(after)
    deltas: Deltas = defaultdict(Counter)
    if before is not None and old is not None and (before.job_id, old) != (after.job_id, new):
        deltas[before.job_id][old] -= 1
    if new is not None and (before is None or (before.job_id, old) != (after.job_id, new)):
        deltas[after.job_id][new] += 1
    return deltas


def planned_write(table: TableClient, record: InputRecord) -> tuple[list[Write], InputRecord | None, Deltas]:
    """The writes that save `record` without moving a final row back, decided against the stored row:
    (the row's write first, then its recent-inputs index row if it becomes final; None; counter changes), or
    ([], the stored row, {}) when that row is final and keeps its state.

    The stored row is the version the record carries when that version was not final (no read), else read.
    """
    entity = input_entity(record)
    version = record.version
    if version is None or version.task_id != record.task_id or version.state in FINAL_STATES:
        try:
            current = table.get_entity(entity["PartitionKey"], record.task_id)
        except ResourceNotFoundError:
            created = delta(None, record)
            return [("create", entity, {}), *recent_write(record, created)], None, created
        stored = versioned(current)
        if stored.state in FINAL_STATES and (record.state not in FINAL_STATES or stored.state is InputState.RERUN):
            return [], stored, {}
        version = stored.version
        assert version is not None
    condition = {"etag": version.etag, "match_condition": MatchConditions.IfNotModified}
    deltas = delta(version, record)
    return [("update", entity, {"mode": UpdateMode.REPLACE, **condition}), *recent_write(record, deltas)], None, deltas


def recent_write(record: InputRecord, deltas: Deltas) -> list[Write]:
    """The recent-inputs index row of a write that moves the row into (or between) final states."""
    final = record.state in FINAL_STATES and any(any(change.values()) for change in deltas.values())
    return [("upsert", recent_entity(record, datetime.now(UTC)), {})] if final else []


class Counters:
    """The counter rows this ledger last read or wrote, per partition and job: (counts, etag)."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, str], tuple[Counter[FinalKey], str]] = {}
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = defaultdict(threading.Lock)

    def lock(self, partition: str) -> threading.Lock:
        """Held while a partition's counter rows are written: this process's writers take turns, not conflicts."""
        with self._guard:
            return self._locks[partition]

    def writes(self, table: TableClient, partition: str, deltas: Deltas) -> list[Write]:
        """The counter rows of `partition` with `deltas` applied, each written over the version known (or read)."""
        writes: list[Write] = []
        for job_id, delta in deltas.items():
            if not any(delta.values()):
                continue
            with self._guard:
                known = self._known.get((partition, job_id))
            if known is None:
                try:
                    current = table.get_entity(partition, counter_key(job_id))
                except ResourceNotFoundError:
                    counts: Counter[FinalKey] = Counter()
                    counts.update(delta)
                    writes.append(("create", counter_entity(partition, job_id, counts), {}))
                    continue
                known = decode_counts(current.get("counts")), str(current.metadata["etag"])
            counts = Counter(known[0])
            counts.update(delta)
            options = {"mode": UpdateMode.REPLACE, "etag": known[1], "match_condition": MatchConditions.IfNotModified}
            writes.append(("update", counter_entity(partition, job_id, counts), options))
        return writes

    def written(self, partition: str, writes: list[Write], etags: list[str]) -> None:
        with self._guard:
            for (_, entity, _), etag in zip(writes, etags, strict=True):
                self._known[(partition, str(entity["job_id"]))] = decode_counts(entity["counts"]), etag

    def forget(self, partition: str, deltas: Deltas) -> None:
        """A transaction with these counter rows was refused: read them again next time."""
        with self._guard:
            for job_id in deltas:
                self._known.pop((partition, job_id), None)


def submit(table: TableClient, operations: list[Write]) -> list[str]:
    """Make `operations` (rows of one partition), all or nothing; the etag each left. Conflict if refused."""
    if len(operations) == 1:  # one row: a plain request, cheaper than a transaction
        kind, entity, options = operations[0]
        single = {"create": table.create_entity, "update": table.update_entity, "upsert": table.upsert_entity}
        try:
            result = single[kind](entity, **options)
        except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError):
            raise Conflict from None
        return [str(result.get("etag", ""))]
    try:
        results = table.submit_transaction(operations)  # type: ignore[arg-type]
    except TableTransactionError as error:
        if error.status_code not in CONFLICTS:
            raise
        raise Conflict(error.index) from None
    return [str(result.get("etag", "")) for result in results]
