"""The ledger in Table storage: one row per input (the idempotency key), per job, per rejection, plus counters.

The layout (partitions, row keys, entities) is in shared/ledger_rows.py.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, TableTransactionError, UpdateMode

from shared.errors import TransientError
from shared.ids import group_row_key
from shared.ledger_rows import (
    COUNTER_PREFIX,
    DELETED_JOBS,
    DELETED_TOTAL,
    GROUPS,
    INPUT_ROWS,
    JOBS,
    REJECTIONS,
    SCHEDULES,
    counter_entity,
    counter_key,
    decode_counts,
    deleted_total_entity,
    group_entity,
    group_record,
    input_entity,
    input_partition,
    input_partitions,
    input_record,
    job_entity,
    job_record,
    quote,
    schedule_entity,
    schedule_record,
    staging_index_entity,
    staging_index_key,
    staging_index_partition,
)
from shared.models import (
    FinalKey,
    GroupRecord,
    GroupState,
    InputRecord,
    InputState,
    JobRecord,
    JobState,
    LedgerCounts,
    ScheduleRecord,
)
from shared.ports import FINAL_STATES
from shared.recent import RECENT, RecentEntry, recent_entity, recent_entry

logger = logging.getLogger(__name__)

TRANSACTION_SIZE = 100  # Table storage's limit per entity group transaction
# Input rows per transaction in a bulk save: each may bring its job's counter row along, and 50 + 50 <= 100.
GROUP_SIZE = TRANSACTION_SIZE // 2
SAVE_ATTEMPTS = 8
READ_THREADS = 8
# An entity group transaction refused because a row changed, appeared or went after it was read.
_CONFLICTS = (404, 409, 412)

_Write = tuple[str, dict[str, Any], dict[str, Any]]  # (create | update | upsert, entity, options)
_Deltas = dict[str, Counter[FinalKey]]  # job id -> change to its counters
_T = TypeVar("_T")


class _Conflict(Exception):
    """A conditional write lost to another writer: read again and decide again."""


def _backoff(attempt: int) -> None:
    # Writers that collide on one counter row would collide again at once: spread their next tries.
    time.sleep(random.uniform(0, 0.02 * (attempt + 1)))  # noqa: S311 (jitter, not a secret)


class TableLedger:
    """LedgerPort over azure-data-tables."""

    def __init__(self, table: TableClient) -> None:
        self._table = table
        self._ensured = False

    def _ready(self) -> TableClient:
        if not self._ensured:
            try:
                self._table.create_table()
            except ResourceExistsError:
                pass
            self._ensured = True
        return self._table

    def _guarded(self, what: str, action: Callable[[TableClient], _T]) -> _T:
        """Run `action` on the table; an Azure error becomes TransientError, which the triggers retry."""
        try:
            return action(self._ready())
        except AzureError as error:
            raise TransientError(f"ledger {what}: {type(error).__name__}") from None

    # inputs
    def claim_input(self, record: InputRecord) -> tuple[InputRecord, bool]:
        return self._guarded(f"claim {record.task_id}", lambda table: self._claim(table, record))

    def _claim(self, table: TableClient, record: InputRecord) -> tuple[InputRecord, bool]:
        partition = input_partition(record.task_id)
        writes: list[_Write] = [("create", input_entity(record), {})]
        if record.staging:
            index = staging_index_entity(record)
            if index["PartitionKey"] == partition:  # always, for a container named by shared/ids.py
                writes.append(("upsert", index, {}))
            else:  # a staging name of another shape: its index row first, in a request of its own
                table.upsert_entity(index)
        for attempt in range(SAVE_ATTEMPTS):
            try:
                _submit(table, partition, writes, _delta(None, record))
                _note_recent(table, [record])
                return replace(record), True
            except _Conflict:
                existing = _read_input(table, record.task_id)
                if existing is not None:
                    return existing, False
                _backoff(attempt)  # the row went meanwhile, or its counter row changed: claim again
        raise TransientError(f"ledger claim {record.task_id}: rows kept changing; retry later")

    def get_input(self, task_id: str) -> InputRecord | None:
        return self._guarded(f"read {task_id}", lambda table: _read_input(table, task_id))

    def input_for_staging(self, staging: str) -> InputRecord | None:
        """The input whose task writes into `staging`: two point reads in one partition, None if unknown."""
        return self._guarded(f"read staging index {staging}", lambda table: _read_staging(table, staging))

    def save_input(self, record: InputRecord) -> InputRecord:
        """Write the row, except that a row in a final state keeps it; returns the row as stored.

        Another instance may finish the input between our read and this write (a collector marks it
        collected while a stale delivery saves a reactivation count, or while a sweep saves `submitted`):
        a write that would move a final row back is dropped. Every write is made over the version of the row
        it was checked against (If-Match, or create-only), reading again on conflict; a write that moves the
        row into or between final states updates its job's counter row in the same transaction, so the counters
        count each input once however collectors interleave.
        """
        return self._guarded(f"save {record.task_id}", lambda table: self._save(table, record))

    def _save(self, table: TableClient, record: InputRecord) -> InputRecord:
        for attempt in range(SAVE_ATTEMPTS):
            write, stored, deltas = _planned_write(table, record)
            if write is None:
                assert stored is not None
                return stored
            try:
                _submit(table, input_partition(record.task_id), [write], deltas)
                if _became_final(record, deltas):
                    _note_recent(table, [record])
                return replace(record)
            except _Conflict:
                _backoff(attempt)
        raise TransientError(f"ledger save {record.task_id}: the row kept changing; retry later")

    def save_inputs(self, records: Sequence[InputRecord]) -> None:
        """save_input for many rows: one entity group transaction per partition (per 50 rows of one)."""
        latest = {record.task_id: record for record in records}  # a row twice in one transaction is refused
        groups: dict[str, list[InputRecord]] = defaultdict(list)
        for record in latest.values():
            groups[input_partition(record.task_id)].append(record)
        chunks = [
            (partition, group[start : start + GROUP_SIZE])
            for partition, group in groups.items()
            for start in range(0, len(group), GROUP_SIZE)
        ]
        for partition, chunk in chunks:
            self._guarded(f"save {len(chunk)} inputs", partial(self._save_chunk, partition=partition, chunk=chunk))

    def _save_chunk(self, table: TableClient, *, partition: str, chunk: Sequence[InputRecord]) -> None:
        for attempt in range(SAVE_ATTEMPTS):
            writes: list[_Write] = []
            deltas: _Deltas = defaultdict(Counter)
            finished: list[InputRecord] = []
            for record in chunk:
                write, _, delta = _planned_write(table, record)
                if write is not None:
                    writes.append(write)
                    for job_id, change in delta.items():
                        deltas[job_id].update(change)
                    if _became_final(record, delta):
                        finished.append(record)
            if not writes:
                return
            try:
                _submit(table, partition, writes, deltas)
                _note_recent(table, finished)
                return
            except _Conflict:
                _backoff(attempt)  # nothing of the transaction was written; one of its rows changed after we read it
        raise TransientError(f"ledger save {len(chunk)} inputs: rows kept changing; retry later")

    def inputs(self, state: InputState | None = None, job_id: str | None = None) -> list[InputRecord]:
        query = INPUT_ROWS
        if state is not None:
            query += f" and state eq '{quote(state.value)}'"
        if job_id is not None:
            query += f" and job_id eq '{quote(job_id)}'"
        return self._guarded("list inputs", lambda table: [input_record(e) for e in table.query_entities(query)])

    def known_task_ids(self) -> set[str]:
        def read(table: TableClient) -> set[str]:
            return {
                str(entity["RowKey"])
                for entity in table.query_entities(INPUT_ROWS, select=["RowKey", "state"])
                if entity.get("state") != InputState.CLAIMED.value
            }

        return self._guarded("list inputs", read)

    def counts(self) -> LedgerCounts:
        """One range read of counter rows per input partition, and one of the deleted jobs' sum."""
        return self._guarded("read counts", _read_counts)

    # jobs
    def get_job(self, job_id: str) -> JobRecord | None:
        return self._guarded(f"read job {job_id}", lambda table: _read_job(table, job_id))

    def claim_job(self, record: JobRecord) -> tuple[JobRecord, bool]:
        def claim(table: TableClient) -> tuple[JobRecord, bool]:
            for _ in range(SAVE_ATTEMPTS):
                try:
                    table.create_entity(job_entity(record))
                    return replace(record, recent_task_ids=list(record.recent_task_ids)), True
                except ResourceExistsError:
                    existing = _read_job(table, record.job_id)
                    if existing is not None:
                        return existing, False
            raise TransientError(f"ledger claim job {record.job_id}: the row kept changing; retry later")

        return self._guarded(f"claim job {record.job_id}", claim)

    def save_job(self, record: JobRecord) -> None:
        self._guarded(
            f"save job {record.job_id}", lambda table: table.upsert_entity(job_entity(record), mode=UpdateMode.REPLACE)
        )

    def retire_job(self, record: JobRecord) -> None:
        """Move the job's row to the deleted jobs, its counts into their sum (once), and drop its counter rows.

        Each step can be repeated after a crash: the deleted row is created create-only in the same transaction
        that adds to the sum, so a second retirement finds it and only finishes the clean-up.
        """
        self._guarded(f"retire job {record.job_id}", lambda table: _retire(table, record))

    def jobs(self, active_only: bool = True) -> list[JobRecord]:
        query = f"PartitionKey eq '{JOBS}'"
        # A deleted job's row is moved out of this partition; the filter also hides rows of the older layout.
        query += f" and state eq '{JobState.ACTIVE.value}'" if active_only else f" and state ne '{JobState.DELETED}'"
        return self._guarded("list jobs", lambda table: [job_record(e) for e in table.query_entities(query)])

    # schedules (shared/schedules.py)
    def schedules(self) -> list[ScheduleRecord]:
        """Every scheduled pipeline's row: one range read."""
        query = f"PartitionKey eq '{SCHEDULES}'"
        return self._guarded("list schedules", lambda table: [schedule_record(e) for e in table.query_entities(query)])

    def save_schedule(self, record: ScheduleRecord) -> ScheduleRecord | None:
        """Create the row (`version` "") or replace it over the version read; None when another writer was first."""
        return self._guarded(f"save schedule {record.pipeline}", lambda table: _save_schedule(table, record))

    def delete_schedule(self, record: ScheduleRecord) -> bool:
        """Delete the row if it is still at the version read."""

        def delete(table: TableClient) -> bool:
            try:
                table.delete_entity(
                    SCHEDULES, record.pipeline, etag=record.version, match_condition=MatchConditions.IfNotModified
                )
            except ResourceModifiedError:
                return False
            return True  # the SDK takes a missing row as deleted

        return self._guarded(f"delete schedule {record.pipeline}", delete)

    # groups (shared/groups.py)
    def get_group(self, pipeline: str, key: str) -> GroupRecord | None:
        return self._guarded(f"read group of {pipeline}", lambda table: _read_group(table, pipeline, key)[0])

    def update_group(
        self, pipeline: str, key: str, change: Callable[[GroupRecord | None], GroupRecord | None]
    ) -> GroupRecord | None:
        """Apply `change` to the group's row as stored (None: no row yet) and write what it returns, over the
        version it was given (create-only for a new row), reading again on conflict; `change` returning None
        writes nothing. Returns the row as stored after."""
        return self._guarded(f"update group of {pipeline}", lambda table: _update_group(table, pipeline, key, change))

    def groups(self, state: GroupState | None = None) -> list[GroupRecord]:
        query = f"PartitionKey eq '{GROUPS}'"
        if state is not None:
            query += f" and state eq '{quote(state.value)}'"
        return self._guarded("list groups", lambda table: [group_record(e) for e in table.query_entities(query)])

    # the recent-inputs index (shared/recent.py)
    def recent(self, limit: int, after: str | None = None) -> tuple[list[RecentEntry], str | None]:
        """Up to `limit` index rows, newest first, older than the cursor `after`; one range read."""

        def read(table: TableClient) -> tuple[list[RecentEntry], str | None]:
            query = f"PartitionKey eq '{RECENT}'"
            if after:
                query += f" and RowKey gt '{quote(after)}'"
            found: list[RecentEntry] = []
            for entity in table.query_entities(query, results_per_page=limit):
                found.append(recent_entry(entity))
                if len(found) >= limit:
                    break
            return found, (found[-1].key if len(found) >= limit else None)

        return self._guarded("list recent inputs", read)

    # rejections
    def record_rejection(self, subject: str, reason: str) -> None:
        now = datetime.now(UTC)
        # Newest first: row keys sort ascending, so invert the timestamp.
        inverted = f"{10**13 - int(now.timestamp() * 1000):013d}"
        digest = hashlib.sha256(f"{subject}\n{reason}".encode()).hexdigest()[:16]
        entity = {
            "PartitionKey": REJECTIONS,
            "RowKey": f"{inverted}-{digest}",
            "subject": subject[:2048],
            "reason": reason[:4096],
            "at": now,
        }
        self._guarded("record rejection", lambda table: table.upsert_entity(entity))

    def rejections(self, limit: int = 100) -> list[dict[str, str]]:
        def read(table: TableClient) -> list[dict[str, str]]:
            found: list[dict[str, str]] = []
            for entity in table.query_entities(f"PartitionKey eq '{REJECTIONS}'", results_per_page=limit):
                at = entity.get("at")
                found.append(
                    {
                        "input": str(entity.get("subject", "")),
                        "reason": str(entity.get("reason", "")),
                        "at": at.isoformat() if isinstance(at, datetime) else str(at or ""),
                    }
                )
                if len(found) >= limit:
                    break
            return found

        return self._guarded("list rejections", read)


def _save_schedule(table: TableClient, record: ScheduleRecord) -> ScheduleRecord | None:
    entity = schedule_entity(record)
    try:
        if not record.version:
            written = table.create_entity(entity)
        else:
            written = table.update_entity(
                entity, mode=UpdateMode.REPLACE, etag=record.version, match_condition=MatchConditions.IfNotModified
            )
    except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError):
        return None
    return replace(record, version=str(written["etag"]))


def _read_input(table: TableClient, task_id: str) -> InputRecord | None:
    try:
        return input_record(table.get_entity(input_partition(task_id), task_id))
    except ResourceNotFoundError:
        return None


def _read_staging(table: TableClient, staging: str) -> InputRecord | None:
    partition = staging_index_partition(staging)
    if partition is None:
        return None
    try:
        index = table.get_entity(partition, staging_index_key(staging))
    except ResourceNotFoundError:
        return None
    task_id = str(index.get("task_id") or "")
    return _read_input(table, task_id) if task_id else None


def _read_group(table: TableClient, pipeline: str, key: str) -> tuple[GroupRecord | None, str | None]:
    try:
        entity = table.get_entity(GROUPS, group_row_key(pipeline, key))
    except ResourceNotFoundError:
        return None, None
    return group_record(entity), str(entity.metadata["etag"])


def _update_group(
    table: TableClient, pipeline: str, key: str, change: Callable[[GroupRecord | None], GroupRecord | None]
) -> GroupRecord | None:
    for attempt in range(SAVE_ATTEMPTS):
        stored, version = _read_group(table, pipeline, key)
        wanted = change(None if stored is None else replace(stored, members=dict(stored.members)))
        if wanted is None:
            return stored
        try:
            if version is None:
                table.create_entity(group_entity(wanted))
            else:
                table.update_entity(
                    group_entity(wanted), mode=UpdateMode.REPLACE, etag=version,
                    match_condition=MatchConditions.IfNotModified,
                )  # fmt: skip
            return wanted
        except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError):
            _backoff(attempt)
    raise TransientError(f"ledger update group of {pipeline}: the row kept changing; retry later")


def _read_job(table: TableClient, job_id: str) -> JobRecord | None:
    for partition in (JOBS, DELETED_JOBS):
        try:
            return job_record(table.get_entity(partition, job_id))
        except ResourceNotFoundError:
            continue
    return None


def _delta(before: InputRecord | None, after: InputRecord) -> _Deltas:
    """How the counters change when the row goes from `before` to `after`."""
    old = FinalKey.of(before) if before is not None else None
    new = FinalKey.of(after)
    deltas: _Deltas = defaultdict(Counter)
    if before is not None and old is not None and (before.job_id, old) != (after.job_id, new):
        deltas[before.job_id][old] -= 1
    if new is not None and (before is None or (before.job_id, old) != (after.job_id, new)):
        deltas[after.job_id][new] += 1
    return deltas


def _planned_write(table: TableClient, record: InputRecord) -> tuple[_Write | None, InputRecord | None, _Deltas]:
    """The one write that saves `record` without moving a final row back, decided against the stored row:
    (write, None, counter changes), or (None, the stored row, {}) when that row is final and keeps its state."""
    entity = input_entity(record)
    try:
        current = table.get_entity(entity["PartitionKey"], record.task_id)
    except ResourceNotFoundError:
        return ("create", entity, {}), None, _delta(None, record)
    stored = input_record(current)
    if stored.state in FINAL_STATES and (record.state not in FINAL_STATES or stored.state is InputState.RERUN):
        return None, stored, {}
    condition = {"etag": current.metadata["etag"], "match_condition": MatchConditions.IfNotModified}
    return ("update", entity, {"mode": UpdateMode.REPLACE, **condition}), None, _delta(stored, record)


def _became_final(record: InputRecord, deltas: _Deltas) -> bool:
    """Whether a write of `record` with these counter changes moved it into (or between) final states."""
    return record.state in FINAL_STATES and any(any(change.values()) for change in deltas.values())


def _note_recent(table: TableClient, records: Sequence[InputRecord]) -> None:
    """Add the records' events to the recent-inputs index: one request per 100 records.

    The index is a view for the status page, written after the input's own transaction: if this write fails
    the input is still recorded (and counted) correctly, so the failure is logged, not raised into a retry.
    """
    now = datetime.now(UTC)
    entities = [recent_entity(record, now) for record in records]
    try:
        for start in range(0, len(entities), TRANSACTION_SIZE):
            chunk = entities[start : start + TRANSACTION_SIZE]
            if len(chunk) == 1:
                table.upsert_entity(chunk[0])
            else:
                table.submit_transaction([("upsert", entity) for entity in chunk])
    except AzureError as error:
        logger.warning("recent-inputs index: %d event(s) not written: %s", len(entities), type(error).__name__)


def _counter_writes(table: TableClient, partition: str, deltas: _Deltas) -> list[_Write]:
    """The counter rows of `partition` with `deltas` applied, each written over the version read."""
    writes: list[_Write] = []
    for job_id, delta in deltas.items():
        if not any(delta.values()):
            continue
        try:
            current = table.get_entity(partition, counter_key(job_id))
        except ResourceNotFoundError:
            counts: Counter[FinalKey] = Counter()
            counts.update(delta)
            writes.append(("create", counter_entity(partition, job_id, counts), {}))
            continue
        counts = decode_counts(current.get("counts"))
        counts.update(delta)
        condition = {"etag": current.metadata["etag"], "match_condition": MatchConditions.IfNotModified}
        writes.append(("update", counter_entity(partition, job_id, counts), {"mode": UpdateMode.REPLACE, **condition}))
    return writes


def _submit(table: TableClient, partition: str, writes: list[_Write], deltas: _Deltas) -> None:
    """Make `writes` (rows of one partition) and their counter changes, all or nothing; _Conflict if refused."""
    operations = writes + _counter_writes(table, partition, deltas)
    if len(operations) == 1:  # one row: a plain request, cheaper than a transaction
        kind, entity, options = operations[0]
        single = {"create": table.create_entity, "update": table.update_entity, "upsert": table.upsert_entity}
        try:
            single[kind](entity, **options)
        except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError):
            raise _Conflict from None
        return
    try:
        table.submit_transaction(operations)  # type: ignore[arg-type]
    except TableTransactionError as error:
        if error.status_code not in _CONFLICTS:
            raise
        raise _Conflict from None


def _parallel(read: Callable[[str], _T], keys: list[str]) -> list[_T]:
    with ThreadPoolExecutor(READ_THREADS) as pool:
        return list(pool.map(read, keys))


def _read_counts(table: TableClient) -> LedgerCounts:
    def partition_counters(partition: str) -> list[tuple[str, Counter[FinalKey]]]:
        # Bounded above: other "~" rows (the staging index) are not counters; job ids have no "~" to sort past it.
        query = f"PartitionKey eq '{partition}' and RowKey ge '{COUNTER_PREFIX}' and RowKey lt '{COUNTER_PREFIX}~'"
        return [(str(e.get("job_id", "")), decode_counts(e.get("counts"))) for e in table.query_entities(query)]

    counts = LedgerCounts()
    for rows in _parallel(partition_counters, input_partitions()):
        for job_id, job_counts in rows:
            counts.by_job.setdefault(job_id, Counter()).update(job_counts)
    try:
        total = table.get_entity(DELETED_JOBS, DELETED_TOTAL)
    except ResourceNotFoundError:
        return counts
    counts.deleted = decode_counts(total.get("counts"))
    counts.deleted_jobs = int(total.get("jobs") or 0)
    return counts


def _job_counts(table: TableClient, job_id: str) -> Counter[FinalKey]:
    def partition_counter(partition: str) -> Counter[FinalKey]:
        try:
            return decode_counts(table.get_entity(partition, counter_key(job_id)).get("counts"))
        except ResourceNotFoundError:
            return Counter()

    total: Counter[FinalKey] = Counter()
    for found in _parallel(partition_counter, input_partitions()):
        total.update(found)
    return total


def _retire(table: TableClient, record: JobRecord) -> None:
    counts = _job_counts(table, record.job_id)
    deleted = job_entity(replace(record, state=JobState.DELETED), DELETED_JOBS)
    for attempt in range(SAVE_ATTEMPTS):
        try:
            current = table.get_entity(DELETED_JOBS, DELETED_TOTAL)
        except ResourceNotFoundError:
            total: _Write = ("create", deleted_total_entity(1, counts), {})
        else:
            summed = decode_counts(current.get("counts"))
            summed.update(counts)
            condition = {"etag": current.metadata["etag"], "match_condition": MatchConditions.IfNotModified}
            entity = deleted_total_entity(int(current.get("jobs") or 0) + 1, summed)
            total = ("update", entity, {"mode": UpdateMode.REPLACE, **condition})
        try:
            _submit(table, DELETED_JOBS, [("create", deleted, {}), total], {})
            break
        except _Conflict:
            if _exists(table, DELETED_JOBS, record.job_id):
                break  # retired before: its counts are in the sum already
            _backoff(attempt)
    else:
        raise TransientError(f"ledger retire job {record.job_id}: the deleted jobs' sum kept changing; retry later")
    for partition in input_partitions():
        _delete(table, partition, counter_key(record.job_id))
    _delete(table, JOBS, record.job_id)


def _exists(table: TableClient, partition: str, row: str) -> bool:
    try:
        table.get_entity(partition, row, select=["RowKey"])
        return True
    except ResourceNotFoundError:
        return False


def _delete(table: TableClient, partition: str, row: str) -> None:
    try:
        table.delete_entity(partition, row)
    except ResourceNotFoundError:
        pass
