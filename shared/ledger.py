"""The ledger in Table storage: one row per input (the idempotency key), per job, per rejection."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, TableTransactionError, UpdateMode

from shared.errors import TransientError
from shared.models import InputRecord, InputState, JobRecord, JobState
from shared.ports import FINAL_STATES

INPUTS = "input"
JOBS = "job"
REJECTIONS = "rejected"
TRANSACTION_SIZE = 100  # Table storage's limit per entity group transaction
MAX_RECENT_IDS = 400  # keeps the job row under Table storage's 64 KiB property limit
SAVE_ATTEMPTS = 5
# An entity group transaction refused because a row changed, appeared or went after it was read.
_CONFLICTS = (404, 409, 412)


def _quote(value: str) -> str:
    return value.replace("'", "''")


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

    def _guard(self, what: str, error: AzureError) -> TransientError:
        return TransientError(f"ledger {what}: {type(error).__name__}")

    # inputs
    def claim_input(self, record: InputRecord) -> tuple[InputRecord, bool]:
        table = self._ready()
        try:
            table.create_entity(_input_entity(record))
            return record, True
        except ResourceExistsError:
            existing = self.get_input(record.task_id)
            if existing is None:  # deleted between the two calls: claim again
                return self.claim_input(record)
            return existing, False
        except AzureError as error:
            raise self._guard(f"claim {record.task_id}", error) from None

    def get_input(self, task_id: str) -> InputRecord | None:
        try:
            return _input_record(self._ready().get_entity(INPUTS, task_id))
        except ResourceNotFoundError:
            return None
        except AzureError as error:
            raise self._guard(f"read {task_id}", error) from None

    def save_input(self, record: InputRecord) -> InputRecord:
        """Write the row, except that a row in a final state keeps it; returns the row as stored.

        Another instance may finish the input between our read and this write (a collector marks it
        collected while a stale delivery saves a reactivation count, or while a sweep saves `submitted`):
        a write that would move a final row back is dropped. A final state is written as it is; anything
        else only over the version of the row it was checked against (If-Match), reading again on conflict.
        """
        try:
            table = self._ready()
            write = {"upsert": table.upsert_entity, "create": table.create_entity, "update": table.update_entity}
            for _ in range(SAVE_ATTEMPTS):
                operation, stored = _planned_write(table, record)
                if operation is None:
                    assert stored is not None
                    return stored
                kind, entity, options = operation
                try:
                    write[kind](entity, **options)
                    return replace(record)
                except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError):
                    continue  # the row changed after we read it: read again and decide again
        except AzureError as error:
            raise self._guard(f"save {record.task_id}", error) from None
        raise TransientError(f"ledger save {record.task_id}: the row kept changing; retry later")

    def save_inputs(self, records: Sequence[InputRecord]) -> None:
        """save_input for many rows, in one entity group transaction per 100 (the rule is the same)."""
        for start in range(0, len(records), TRANSACTION_SIZE):
            chunk = records[start : start + TRANSACTION_SIZE]
            try:
                self._save_chunk(self._ready(), chunk)
            except AzureError as error:
                raise self._guard(f"save {len(chunk)} inputs", error) from None

    def _save_chunk(self, table: TableClient, chunk: Sequence[InputRecord]) -> None:
        for _ in range(SAVE_ATTEMPTS):
            planned = (_planned_write(table, record)[0] for record in chunk)
            operations: list[Any] = [operation for operation in planned if operation is not None]
            if not operations:
                return
            try:
                table.submit_transaction(operations)
                return
            except TableTransactionError as error:
                if error.status_code not in _CONFLICTS:
                    raise
                # Nothing of the transaction was written; one of its rows changed after we read it.
        raise TransientError(f"ledger save {len(chunk)} inputs: rows kept changing; retry later")

    def inputs(self, state: InputState | None = None, job_id: str | None = None) -> list[InputRecord]:
        query = f"PartitionKey eq '{INPUTS}'"
        if state is not None:
            query += f" and state eq '{_quote(state.value)}'"
        if job_id is not None:
            query += f" and job_id eq '{_quote(job_id)}'"
        try:
            return [_input_record(entity) for entity in self._ready().query_entities(query)]
        except AzureError as error:
            raise self._guard("list inputs", error) from None

    def known_task_ids(self) -> set[str]:
        query = f"PartitionKey eq '{INPUTS}'"
        try:
            return {
                str(entity["RowKey"])
                for entity in self._ready().query_entities(query, select=["RowKey", "state"])
                if entity.get("state") != InputState.CLAIMED.value
            }
        except AzureError as error:
            raise self._guard("list inputs", error) from None

    # jobs
    def get_job(self, job_id: str) -> JobRecord | None:
        try:
            return _job_record(self._ready().get_entity(JOBS, job_id))
        except ResourceNotFoundError:
            return None
        except AzureError as error:
            raise self._guard(f"read job {job_id}", error) from None

    def claim_job(self, record: JobRecord) -> tuple[JobRecord, bool]:
        try:
            self._ready().create_entity(_job_entity(record))
            return record, True
        except ResourceExistsError:
            existing = self.get_job(record.job_id)
            return (existing, False) if existing is not None else self.claim_job(record)
        except AzureError as error:
            raise self._guard(f"claim job {record.job_id}", error) from None

    def save_job(self, record: JobRecord) -> None:
        try:
            self._ready().upsert_entity(_job_entity(record), mode=UpdateMode.REPLACE)
        except AzureError as error:
            raise self._guard(f"save job {record.job_id}", error) from None

    def jobs(self, active_only: bool = True) -> list[JobRecord]:
        query = f"PartitionKey eq '{JOBS}'"
        if active_only:
            query += f" and state eq '{JobState.ACTIVE.value}'"
        try:
            return [_job_record(entity) for entity in self._ready().query_entities(query)]
        except AzureError as error:
            raise self._guard("list jobs", error) from None

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
        try:
            self._ready().upsert_entity(entity)
        except AzureError as error:
            raise self._guard("record rejection", error) from None

    def rejections(self, limit: int = 100) -> list[dict[str, str]]:
        query = f"PartitionKey eq '{REJECTIONS}'"
        found: list[dict[str, str]] = []
        try:
            for entity in self._ready().query_entities(query, results_per_page=limit):
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
        except AzureError as error:
            raise self._guard("list rejections", error) from None
        return found


_Write = tuple[str, dict[str, Any], dict[str, Any]]  # (upsert | create | update, entity, options)


def _planned_write(table: TableClient, record: InputRecord) -> tuple[_Write | None, InputRecord | None]:
    """The one write that saves `record` without moving a final row back, decided against the stored row:
    (write, None), or (None, the stored row) when that row is final and keeps its state."""
    entity = _input_entity(record)
    if record.state in FINAL_STATES:
        return ("upsert", entity, {"mode": UpdateMode.REPLACE}), None
    try:
        current = table.get_entity(INPUTS, record.task_id)
    except ResourceNotFoundError:
        return ("create", entity, {}), None
    stored = _input_record(current)
    if stored.state in FINAL_STATES:
        return None, stored
    condition = {"etag": current.metadata["etag"], "match_condition": MatchConditions.IfNotModified}
    return ("update", entity, {"mode": UpdateMode.REPLACE, **condition}), None


def _input_entity(record: InputRecord) -> dict[str, Any]:
    return {
        "PartitionKey": INPUTS,
        "RowKey": record.task_id,
        "container": record.container,
        "name": record.name,
        "etag": record.etag,
        "pipeline": record.pipeline,
        "job_id": record.job_id,
        "state": record.state.value,
        "reason": record.reason,
        "outcome": record.outcome,
        "reactivations": record.reactivations,
        "updated_at": datetime.now(UTC),
    }


def _input_record(entity: Any) -> InputRecord:
    updated = entity.get("updated_at")
    return InputRecord(
        task_id=str(entity["RowKey"]),
        container=str(entity.get("container", "")),
        name=str(entity.get("name", "")),
        etag=str(entity.get("etag", "")),
        pipeline=str(entity.get("pipeline", "")),
        job_id=str(entity.get("job_id", "")),
        state=InputState(entity.get("state", InputState.CLAIMED.value)),
        reason=str(entity.get("reason", "")),
        outcome=str(entity.get("outcome", "")),
        updated_at=updated if isinstance(updated, datetime) else None,
        reactivations=int(entity.get("reactivations") or 0),
    )


def _job_entity(record: JobRecord) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "PartitionKey": JOBS,
        "RowKey": record.job_id,
        "pipeline": record.pipeline,
        "window_end": record.window_end,
        "state": record.state.value,
        "recent_task_ids": json.dumps(record.recent_task_ids[-MAX_RECENT_IDS:]),
    }
    if record.watermark is not None:
        entity["watermark"] = record.watermark
    if record.terminated_at is not None:
        entity["terminated_at"] = record.terminated_at
    if record.staging_cleared_through is not None:
        entity["staging_cleared_through"] = record.staging_cleared_through
    entity["staging_cleared"] = record.staging_cleared
    return entity


def _job_record(entity: Any) -> JobRecord:
    def moment(key: str) -> datetime | None:
        value = entity.get(key)
        return value.astimezone(UTC) if isinstance(value, datetime) else None

    return JobRecord(
        job_id=str(entity["RowKey"]),
        pipeline=str(entity.get("pipeline", "")),
        window_end=moment("window_end") or datetime.now(UTC),
        state=JobState(entity.get("state", JobState.ACTIVE.value)),
        watermark=moment("watermark"),
        recent_task_ids=list(json.loads(entity.get("recent_task_ids") or "[]")),
        terminated_at=moment("terminated_at"),
        staging_cleared_through=entity.get("staging_cleared_through"),
        staging_cleared=bool(entity.get("staging_cleared", False)),
    )
