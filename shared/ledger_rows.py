"""The ledger's Table layout: partition and row keys, and the entities of inputs, jobs and counters.

Partitions (docs/internals.md, "Ledger layout", says why):
- `input-0` … `input-f`: one row per input keyed by task id, in the partition named by the first hex digit of
  sha256(task id), so a task id alone finds its row; each also holds one counter row per job (`~count~<job id>`)
  of its own inputs in a final state, written in the same entity group transaction as the input's row.
- `job`: one row per live (active or terminated) job; `job-deleted`: deleted jobs, and `~total`, the sum of
  their counts.
- `rejected`: what was refused and why, newest first.
- `schedule`: one row per scheduled pipeline (its name the row key): when its schedule last fired, and whether a
  firing is under way (shared/schedules.py).

- `group`: one row per group of a grouped pipeline (shared/groups.py), keyed by pipeline and a digest of the
  group key (ids.group_row_key): its members and their versions, its current task, what arrived late or twice.
  Not counted: each member's own input row (state `grouped`, no job) and the group task's input row are.
- In the input partitions, beside each submitted input's row, an index row `~by-staging~<staging container>`
  naming its task id, created in the same transaction as the input's row: a completion event names only the
  staging container, a hash of the task id that cannot be inverted. The container's digest starts with the same
  hex digit as the partition's, so the container name alone finds the index row's partition.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from shared.ids import group_row_key
from shared.models import (
    FinalKey,
    GroupMember,
    GroupRecord,
    GroupState,
    InputRecord,
    InputState,
    JobRecord,
    JobState,
    ScheduleRecord,
)

INPUTS = "input"
JOBS = "job"
DELETED_JOBS = "job-deleted"
REJECTIONS = "rejected"
SCHEDULES = "schedule"

GROUPS = "group"
MAX_GROUP_LATE = 100  # late members listed in a group's row (the count goes on)
INPUT_PARTITIONS = 16
# Task ids and job ids are [A-Za-z0-9_-]: a row key starting with "~" is never theirs, and sorts after them all.
COUNTER_PREFIX = "~count~"
# Sorts before COUNTER_PREFIX (and after every task id): the counter rows' range read does not see index rows.
STAGING_INDEX_PREFIX = "~by-staging~"
DELETED_TOTAL = "~total"
MAX_RECENT_IDS = 400  # keeps the job row under Table storage's 64 KiB property limit

# Every input row, across the input partitions, without their counter rows.
INPUT_ROWS = f"PartitionKey ge '{INPUTS}-' and PartitionKey lt '{INPUTS}.' and RowKey lt '~'"


def quote(value: str) -> str:
    return value.replace("'", "''")


def input_partition(task_id: str) -> str:
    """The partition of the input's row: spread by a hash, found again from the task id alone."""
    return f"{INPUTS}-{hashlib.sha256(task_id.encode()).hexdigest()[0]}"


def input_partitions() -> list[str]:
    return [f"{INPUTS}-{digit:x}" for digit in range(INPUT_PARTITIONS)]


def staging_index_key(staging: str) -> str:
    return STAGING_INDEX_PREFIX + staging


def staging_index_partition(staging: str) -> str | None:
    """The partition of a staging container's index row (its input's partition), None if the name has no digest.

    A staging container is `<prefix>-<sha256(task id) in hex>` (shared/ids.py): the digest's first digit is the
    one input_partition takes from the same hash.
    """
    _, _, digest = staging.rpartition("-")
    digit = digest[:1]
    if not digit or digit not in "0123456789abcdef":
        return None
    return f"{INPUTS}-{digit}"


def staging_index_entity(record: InputRecord) -> dict[str, Any]:
    partition = staging_index_partition(record.staging) or input_partition(record.task_id)
    return {"PartitionKey": partition, "RowKey": staging_index_key(record.staging), "task_id": record.task_id}


def counter_key(job_id: str) -> str:
    return COUNTER_PREFIX + job_id


def encode_counts(counts: Counter[FinalKey]) -> str:
    return json.dumps(sorted([key.state.value, key.pipeline, key.outcome, n] for key, n in counts.items() if n))


def decode_counts(text: object) -> Counter[FinalKey]:
    counts: Counter[FinalKey] = Counter()
    for state, pipeline, outcome, n in json.loads(str(text or "[]")):
        counts[FinalKey(InputState(state), str(pipeline), str(outcome))] += int(n)
    return counts


def counter_entity(partition: str, job_id: str, counts: Counter[FinalKey]) -> dict[str, Any]:
    return {"PartitionKey": partition, "RowKey": counter_key(job_id), "job_id": job_id, "counts": encode_counts(counts)}


def deleted_total_entity(jobs: int, counts: Counter[FinalKey]) -> dict[str, Any]:
    return {"PartitionKey": DELETED_JOBS, "RowKey": DELETED_TOTAL, "jobs": jobs, "counts": encode_counts(counts)}


def input_entity(record: InputRecord) -> dict[str, Any]:
    return {
        "PartitionKey": input_partition(record.task_id),
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
        "run": record.run,
        "rerun_of": record.rerun_of,
        "rerun_by": record.rerun_by,
        "staging": record.staging,
        "group_key": record.group_key,
        "members": json.dumps([list(member) for member in record.members]) if record.members else "",
        "updated_at": datetime.now(UTC),
    }


def input_record(entity: Any) -> InputRecord:
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
        run=int(entity.get("run") or 1),
        rerun_of=str(entity.get("rerun_of") or ""),
        rerun_by=str(entity.get("rerun_by") or ""),
        staging=str(entity.get("staging") or ""),
        group_key=str(entity.get("group_key") or ""),
        members=tuple((str(name), str(etag)) for name, etag in json.loads(entity.get("members") or "[]")),
    )


def job_entity(record: JobRecord, partition: str = JOBS) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "PartitionKey": partition,
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
    if record.summary:
        entity["summary"] = record.summary
    return entity


def job_record(entity: Any) -> JobRecord:
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
        summary=str(entity.get("summary") or ""),
    )


def schedule_entity(record: ScheduleRecord) -> dict[str, Any]:
    entity: dict[str, Any] = {"PartitionKey": SCHEDULES, "RowKey": record.pipeline, "last_fired": record.last_fired}
    if record.firing_since is not None:
        entity["firing_since"] = record.firing_since
    return entity


def schedule_record(entity: Any) -> ScheduleRecord:
    def moment(key: str) -> datetime | None:
        value = entity.get(key)
        return value.astimezone(UTC) if isinstance(value, datetime) else None

    return ScheduleRecord(
        pipeline=str(entity["RowKey"]),
        last_fired=moment("last_fired") or datetime.fromtimestamp(0, UTC),
        firing_since=moment("firing_since"),
        version=str(entity.metadata["etag"]),
    )


def _member_json(member: GroupMember | None) -> list[str] | None:
    return None if member is None else [member.etag, member.created_on.isoformat()]


def _member_of(value: object) -> GroupMember | None:
    if not isinstance(value, list) or len(value) != 2:
        return None
    return GroupMember(str(value[0]), datetime.fromisoformat(str(value[1])))


def group_entity(record: GroupRecord) -> dict[str, Any]:
    return {
        "PartitionKey": GROUPS,
        "RowKey": group_row_key(record.pipeline, record.key),
        "pipeline": record.pipeline,
        "key": record.key,
        "first_seen": record.first_seen,
        "deadline": record.deadline,
        "members": json.dumps({name: _member_json(member) for name, member in sorted(record.members.items())}),
        "marker": json.dumps(_member_json(record.marker)),
        "state": record.state.value,
        "task_id": record.task_id,
        "job_id": record.job_id,
        "runs": record.runs,
        "duplicates": record.duplicates,
        "late": json.dumps(record.late[-MAX_GROUP_LATE:]),
        "missing": json.dumps(record.missing),
    }


def group_record(entity: Any) -> GroupRecord:
    members = {
        str(name): member
        for name, value in json.loads(entity.get("members") or "{}").items()
        if (member := _member_of(value)) is not None
    }
    return GroupRecord(
        pipeline=str(entity.get("pipeline", "")),
        key=str(entity.get("key", "")),
        first_seen=entity["first_seen"].astimezone(UTC),
        deadline=entity["deadline"].astimezone(UTC),
        members=members,
        marker=_member_of(json.loads(entity.get("marker") or "null")),
        state=GroupState(entity.get("state", GroupState.OPEN.value)),
        task_id=str(entity.get("task_id") or ""),
        job_id=str(entity.get("job_id") or ""),
        runs=int(entity.get("runs") or 0),
        duplicates=int(entity.get("duplicates") or 0),
        late=[str(name) for name in json.loads(entity.get("late") or "[]")],
        missing=[str(name) for name in json.loads(entity.get("missing") or "[]")],
    )
