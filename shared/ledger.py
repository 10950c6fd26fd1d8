"""The ledger in Table storage: one row per input (the idempotency key), per job, per rejection, plus counters.

The layout (partitions, row keys, entities) is in shared/ledger_rows.py; how an input's writes are planned and
sent (versions, transactions, counter rows) in shared/ledger_writes.py.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from typing import TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

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
    counter_key,
    decode_counts,
    deleted_total_entity,
    group_entity,
    group_record,
    input_partition,
    input_partitions,
    job_entity,
    job_record,
    quote,
    schedule_entity,
    schedule_record,
    staging_index_key,
    staging_index_partition,
)
from shared.ledger_writes import (
    Conflict,
    Counters,
    Deltas,
    Write,
    claim_writes,
    delta,
    planned_write,
    submit,
    versioned,
    written,
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
from shared.recent import RECENT_PREFIX, RecentEntry, recent_entry

logger = logging.getLogger(__name__)

TRANSACTION_SIZE = 100  # Table storage's limit per entity group transaction
# Input rows per transaction in a bulk save: each may bring its recent-inputs index row and its job's counter row
# along, and 33 * 3 <= 100.
GROUP_SIZE = TRANSACTION_SIZE // 3
# Inputs per transaction in a bulk claim: the row, its staging and recent-inputs index rows, maybe a counter row.
CLAIM_GROUP = TRANSACTION_SIZE // 4
SAVE_ATTEMPTS = 8
READ_THREADS = 8
_T = TypeVar("_T")


def _backoff(attempt: int) -> None:
    # Writers that collide on one counter row would collide again at once: spread their next tries.
    time.sleep(random.uniform(0, 0.02 * (attempt + 1)))  # noqa: S311 (jitter, not a secret)


class TableLedger:
    """LedgerPort over azure-data-tables."""

    def __init__(self, table: TableClient) -> None:
        self._table = table
        self._ensured = False
        self._counters = Counters()

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
        writes = claim_writes(table, record, datetime.now(UTC))
        for attempt in range(SAVE_ATTEMPTS):
            try:
                etags = self._submit(table, partition, writes, delta(None, record))
                return written(record, etags[0]), True
            except Conflict:
                existing = _read_input(table, record.task_id)
                if existing is not None:
                    return existing, False
                _backoff(attempt)  # the row went meanwhile, or its counter row changed: claim again
        raise TransientError(f"ledger claim {record.task_id}: rows kept changing; retry later")

    def claim_inputs(self, records: Sequence[InputRecord]) -> list[tuple[InputRecord, bool]]:
        """claim_input for many rows, in order: one entity group transaction per partition (per CLAIM_GROUP rows of
        one), each row created with its index rows; a row that exists already is read (see _claim_chunk)."""
        return self._guarded(f"claim {len(records)} inputs", lambda table: self._claim_many(table, records))

    def _claim_many(self, table: TableClient, records: Sequence[InputRecord]) -> list[tuple[InputRecord, bool]]:
        now = datetime.now(UTC)
        results: dict[str, tuple[InputRecord, bool]] = {}
        groups: dict[str, list[InputRecord]] = defaultdict(list)
        for record in {record.task_id: record for record in records}.values():
            groups[input_partition(record.task_id)].append(record)
        for partition, group in groups.items():
            for start in range(0, len(group), CLAIM_GROUP):
                results.update(self._claim_chunk(table, partition, group[start : start + CLAIM_GROUP], now))
        return [results[record.task_id] for record in records]

    def _claim_chunk(
        self, table: TableClient, partition: str, chunk: list[InputRecord], now: datetime
    ) -> dict[str, tuple[InputRecord, bool]]:
        """Claim rows of one partition in one transaction. A transaction refused because one row exists (another
        submitter's, a repeated event) names that row's operation: it alone is claimed on its own (which reads
        it), and the rest go again in one transaction."""
        results: dict[str, tuple[InputRecord, bool]] = {}
        pending = list(chunk)
        rows = {record.task_id: claim_writes(table, record, now) for record in chunk}
        for _ in range(len(chunk) + SAVE_ATTEMPTS):
            if len(pending) <= 1:
                break
            writes: list[Write] = []
            owners: list[InputRecord] = []  # whose each write is
            deltas: Deltas = defaultdict(Counter)
            for record in pending:
                for write in rows[record.task_id]:
                    writes.append(write)
                    owners.append(record)
                for job_id, change in delta(None, record).items():
                    deltas[job_id].update(change)
            try:
                etags = self._submit(table, partition, writes, deltas)
            except Conflict as conflict:
                # An operation past the rows is a counter row another process changed: read again and retry.
                culprit = owners[conflict.index] if conflict.index < len(owners) else None
                if culprit is not None:
                    results[culprit.task_id] = self._claim(table, culprit)
                    pending.remove(culprit)
                continue
            for record in pending:
                results[record.task_id] = (written(record, etags[owners.index(record)]), True)
            return results
        for record in pending:  # one left, or a partition whose counter rows kept changing: one at a time
            results[record.task_id] = self._claim(table, record)
        return results

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

        A record read or written by this ledger carries the version it was read or written at: its save writes
        over that version without reading the row first, and reads only when that version is gone.
        """
        return self._guarded(f"save {record.task_id}", lambda table: self._save(table, record))

    def _save(self, table: TableClient, record: InputRecord) -> InputRecord:
        for attempt in range(SAVE_ATTEMPTS):
            write, stored, deltas = planned_write(table, record)
            if not write:
                assert stored is not None
                return stored
            try:
                etags = self._submit(table, input_partition(record.task_id), write, deltas)
                return written(record, etags[0])
            except Conflict:
                record.version = None  # that version is gone: read the row next time
                _backoff(attempt)
        raise TransientError(f"ledger save {record.task_id}: the row kept changing; retry later")

    def save_inputs(self, records: Sequence[InputRecord]) -> None:
        """save_input for many rows: one entity group transaction per partition (per GROUP_SIZE rows of one)."""
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
            writes: list[Write] = []
            saved: list[tuple[InputRecord, int]] = []  # each record written, and the index of its row's write
            deltas: Deltas = defaultdict(Counter)
            for record in chunk:
                planned, _, changes = planned_write(table, record)
                if planned:
                    saved.append((record, len(writes)))
                    writes.extend(planned)
                    for job_id, change in changes.items():
                        deltas[job_id].update(change)
            if not writes:
                return
            try:
                etags = self._submit(table, partition, writes, deltas)
            except Conflict:
                for record in chunk:
                    record.version = None  # one of the rows changed after we read it: read them all again
                _backoff(attempt)  # nothing of the transaction was written
                continue
            for record, index in saved:
                written(record, etags[index])
            return
        raise TransientError(f"ledger save {len(chunk)} inputs: rows kept changing; retry later")

    def _submit(self, table: TableClient, partition: str, writes: list[Write], deltas: Deltas) -> list[str]:
        """Make `writes` (rows of one partition) and their counter changes, all or nothing; the etag each write
        left, in order. Conflict if refused. Counter rows are written over the version this ledger last read or
        wrote (kept per process, read when unknown): a finished input costs no counter read while no other
        process wrote its counter row since; if one did, the transaction is refused and the row read again."""
        counted = any(any(change.values()) for change in deltas.values())
        with self._counters.lock(partition) if counted else nullcontext():
            counter_writes = self._counters.writes(table, partition, deltas)
            try:
                etags = submit(table, writes + counter_writes)
            except Conflict:
                self._counters.forget(partition, deltas)
                raise
            self._counters.written(partition, counter_writes, etags[len(writes) :])
        return etags[: len(writes)]

    def inputs(self, state: InputState | None = None, job_id: str | None = None) -> list[InputRecord]:
        query = INPUT_ROWS
        if state is not None:
            query += f" and state eq '{quote(state.value)}'"
        if job_id is not None:
            query += f" and job_id eq '{quote(job_id)}'"
        return self._guarded("list inputs", lambda table: [versioned(e) for e in table.query_entities(query)])

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
        """Up to `limit` index rows, newest first, older than the cursor `after`: one range read per input
        partition (in parallel), merged."""
        low = RECENT_PREFIX + after if after else RECENT_PREFIX
        query = f"RowKey gt '{quote(low)}' and RowKey lt '{RECENT_PREFIX}~'"

        def read(table: TableClient) -> tuple[list[RecentEntry], str | None]:
            def partition_rows(partition: str) -> list[RecentEntry]:
                found: list[RecentEntry] = []
                rows = table.query_entities(f"PartitionKey eq '{partition}' and {query}", results_per_page=limit)
                for entity in rows:
                    found.append(recent_entry(entity))
                    if len(found) >= limit:
                        break
                return found

            merged = sorted((entry for rows in _parallel(partition_rows, input_partitions()) for entry in rows),
                            key=lambda entry: entry.key)[:limit]  # fmt: skip
            return merged, (merged[-1].key if len(merged) >= limit else None)

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
        return versioned(table.get_entity(input_partition(task_id), task_id))
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
            total: Write = ("create", deleted_total_entity(1, counts), {})
        else:
            summed = decode_counts(current.get("counts"))
            summed.update(counts)
            condition = {"etag": current.metadata["etag"], "match_condition": MatchConditions.IfNotModified}
            entity = deleted_total_entity(int(current.get("jobs") or 0) + 1, summed)
            total = ("update", entity, {"mode": UpdateMode.REPLACE, **condition})
        try:
            submit(table, [("create", deleted, {}), total])
            break
        except Conflict:
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
