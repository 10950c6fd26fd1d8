"""In-memory fakes behind the ports: small, but they behave like the services they stand for."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from shared.errors import JobClosed, PermanentError, TransientError
from shared.gateways import Gateways
from shared.models import (
    BlobRef,
    CompletedTask,
    CompletionCheck,
    CompletionEvent,
    FinalKey,
    GroupRecord,
    GroupState,
    InputRecord,
    InputState,
    JobRecord,
    JobState,
    LedgerCounts,
    ResourceFile,
    ScheduleRecord,
    TaskCounts,
    TaskResult,
    TaskSpec,
)
from shared.pipelines import PipelineSet, PipelineSpec, PoolPlan, PoolSpec
from shared.pools import PoolDrift, PoolReport
from shared.ports import FINAL_STATES
from shared.recent import RecentEntry, recent_entry_of
from shared.settings import Settings, load_settings
from shared.submit import SubmitOutcome

START = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
# Batch's rule for task ids; the emulator and Batch refuse others (400 InvalidPropertyValue).
TASK_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Clock:
    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class FakeTask:
    spec: TaskSpec
    state: str = "active"
    transition: datetime = START
    exit_code: int | None = None
    failure: dict[str, object] | None = None


@dataclass
class FakeJob:
    job_id: str
    pool_id: str
    state: str = "active"
    tasks: dict[str, FakeTask] = field(default_factory=dict)


class FakeBatch:
    """BatchPort in memory; counts requests by operation the way the emulator does."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        # pool id -> the plan it was created (and updated in place) from, and the start task files last given
        self.pools: dict[str, PoolPlan] = {}
        self.pool_files: dict[str, tuple[ResourceFile, ...]] = {}
        self.drift: dict[str, tuple[PoolDrift, ...]] = {}
        self.jobs: dict[str, FakeJob] = {}
        self.requests: Counter[str] = Counter()
        self.fail_next: list[Exception] = []
        # Batch answering this status (429 throttling, 503 an outage) to every request, past the SDK's retries:
        # the adapter raises TransientError.
        self.unavailable_status: int | None = None
        # Batch documents that reactivation fails for a task that "completed with exit code 0": the fake can
        # hold an exit-0 task whose upload failed to that reading.
        self.refuse_reactivating_exit_zero = False

    def _request(self, operation: str) -> None:
        self.requests[operation] += 1
        if self.fail_next:
            raise self.fail_next.pop(0)
        if self.unavailable_status is not None:
            raise TransientError(f"{operation}: Batch answered {self.unavailable_status}")

    @staticmethod
    def _check_task(job_id: str, task: TaskSpec) -> None:
        if not TASK_ID.match(task.task_id):
            raise PermanentError(f"add task {task.task_id} to {job_id}: Batch answered 400 InvalidPropertyValue")

    def ensure_pool(self, pool: PoolPlan | PoolSpec, start_files: Sequence[ResourceFile] = ()) -> None:
        """Like Batch: VM size, image and containers stay as created; start task and scale change in place."""
        plan = pool if isinstance(pool, PoolPlan) else PoolPlan(pool)
        self._request("Pool_Add")
        existing = self.pools.get(plan.id)
        if existing is None:
            self.pools[plan.id] = plan
            self.pool_files[plan.id] = tuple(start_files)
            return
        self._request("Pool_Get")
        drift, updated = self._drift(existing, plan)
        for name in ("start_task", "scale"):
            if any(item.field == name for item in drift):
                self._request("Pool_ReplaceProperties" if name == "start_task" else "Pool_Scale")
        self.pools[plan.id] = PoolPlan(updated, existing.containers)
        self.pool_files[plan.id] = tuple(start_files)
        self.drift[plan.id] = drift

    @staticmethod
    def _drift(existing: PoolPlan, plan: PoolPlan) -> tuple[tuple[PoolDrift, ...], PoolSpec]:
        old, new = existing.spec, plan.spec
        found = []
        if old.vm_size.lower() != new.vm_size.lower():
            found.append(PoolDrift("vm_size", new.vm_size, old.vm_size, "create a new pool"))
        if old.image(bool(existing.containers)) != new.image(bool(plan.containers)):
            found.append(
                PoolDrift("image", str(new.image(bool(plan.containers))), str(old.image(False)), "create a new pool")
            )
        if existing.containers != plan.containers:
            found.append(PoolDrift("container", str(plan.containers), str(existing.containers), "create a new pool"))
        if old.start_task != new.start_task:
            found.append(PoolDrift("start_task", str(new.start_task), str(old.start_task), "updated in place"))
        if (old.fixed_nodes(), old.autoscale()) != (new.fixed_nodes(), new.autoscale()):
            found.append(
                PoolDrift(
                    "scale",
                    str(new.fixed_nodes() or new.autoscale()),
                    str(old.fixed_nodes() or old.autoscale()),
                    "updated in place",
                )
            )
        updated = old.model_copy(
            update={
                "start_task": new.start_task,
                "scale": new.scale,
                "dedicated_nodes": new.dedicated_nodes,
                "low_priority_nodes": new.low_priority_nodes,
            }
        )
        return tuple(found), updated

    def pool_reports(self, plans: Sequence[PoolPlan]) -> list[PoolReport]:
        self._request("Account_ListPoolNodeCounts")
        reports = []
        for plan in plans:
            self._request("Pool_Get")
            existing = self.pools.get(plan.id)
            if existing is None:
                reports.append(PoolReport(plan.id, exists=False))
                continue
            drift, _ = self._drift(existing, plan)
            fixed = existing.spec.fixed_nodes() or (0, 0)
            reports.append(PoolReport(plan.id, True, drift, (("idle", fixed[0] + fixed[1]),)))
        return reports

    def ensure_job(self, job_id: str, pipeline: PipelineSpec) -> None:
        self._request("Job_Add")
        self.jobs.setdefault(job_id, FakeJob(job_id, pipeline.pool.id))

    def _open_job(self, job_id: str) -> FakeJob:
        job = self.jobs.get(job_id)
        if job is None or job.state != "active":
            raise JobClosed(f"job {job_id} is not active")
        return job

    def add_task(self, job_id: str, task: TaskSpec) -> None:
        self._request("Task_Add")
        job = self._open_job(job_id)
        self._check_task(job_id, task)
        job.tasks.setdefault(task.task_id, FakeTask(task, transition=self.clock()))

    def add_tasks(self, job_id: str, tasks: Sequence[TaskSpec]) -> None:
        for start in range(0, len(tasks), 100):
            self._request("Task_AddCollection")
            job = self._open_job(job_id)
            refused = [task for task in tasks[start : start + 100] if not TASK_ID.match(task.task_id)]
            for task in tasks[start : start + 100]:
                if task not in refused:
                    job.tasks.setdefault(task.task_id, FakeTask(task, transition=self.clock()))
            if refused:  # Batch adds the valid tasks of a collection and reports the others one by one
                names = "; ".join(f"task {task.task_id}: InvalidPropertyValue" for task in refused[:5])
                raise PermanentError(f"add {len(tasks)} tasks to {job_id}: {names}")

    def completed_since(self, job_id: str, since: datetime | None) -> list[CompletedTask]:
        self._request("Task_List")
        job = self.jobs.get(job_id)
        if job is None:
            return []
        return [
            CompletedTask(task_id, task.transition, self._result(task_id, task))
            for task_id, task in job.tasks.items()
            if task.state == "completed" and (since is None or task.transition >= since)
        ]

    def get_task(self, job_id: str, task_id: str) -> TaskResult | None:
        self._request("Task_Get")
        job = self.jobs.get(job_id)
        task = job.tasks.get(task_id) if job else None
        return self._result(task_id, task) if task is not None else None

    def reactivate_task(self, job_id: str, task_id: str) -> bool:
        self._request("Task_Reactivate")
        task = self._open_job(job_id).tasks[task_id]
        if task.state != "completed":
            return True  # Batch: TaskNotCompleted, it runs again already
        if task.exit_code == 0 and (task.failure is None or self.refuse_reactivating_exit_zero):
            return False  # Batch: TaskSucceeded
        task.state, task.exit_code, task.failure, task.transition = "active", None, None, self.clock()
        return True

    def _result(self, task_id: str, task: FakeTask) -> TaskResult:
        succeeded = task.exit_code == 0 and task.failure is None
        return TaskResult(
            task_id=task_id,
            state=task.state,
            exit_code=task.exit_code,
            result=None if task.state != "completed" else ("success" if succeeded else "failure"),
            failure=None
            if succeeded or task.state != "completed"
            else task.failure or {"category": "usererror", "code": "FailureExitCode", "message": "non-zero exit"},
            started_at=task.transition,
            finished_at=task.transition,
            retries=0,
        )

    def terminate_task(self, job_id: str, task_id: str) -> None:
        self._request("Task_Terminate")
        job = self.jobs.get(job_id)
        task = job.tasks.get(task_id) if job is not None and job.state == "active" else None
        if task is None or task.state == "completed":
            return  # Batch: JobNotFound, JobCompleted, TaskNotFound or TaskCompleted, all the end state wanted
        task.state, task.exit_code, task.transition = "completed", None, self.clock()
        task.failure = {"category": "usererror", "code": "TaskEnded", "message": "terminated (fake)", "details": {}}

    def task_counts(self, job_id: str) -> TaskCounts | None:
        self._request("Job_GetTaskCounts")
        job = self.jobs.get(job_id)
        if job is None:
            return None
        states = Counter(task.state for task in job.tasks.values())
        done = [task for task in job.tasks.values() if task.state == "completed"]
        ok = sum(1 for task in done if task.exit_code == 0)
        return TaskCounts(states["active"], states["running"], len(done), ok, len(done) - ok)

    def terminate_job(self, job_id: str) -> None:
        self._request("Job_Terminate")
        if job_id in self.jobs:
            self.jobs[job_id].state = "completed"

    def delete_job(self, job_id: str) -> None:
        self._request("Job_Delete")
        self.jobs.pop(job_id, None)

    # what a compute node would do
    def finish(self, job_id: str, task_id: str, exit_code: int = 0) -> None:
        task = self.jobs[job_id].tasks[task_id]
        task.state, task.exit_code, task.transition = "completed", exit_code, self.clock()

    def fail_download(self, job_id: str, task_id: str) -> None:
        """The node could not download a resource file: storage was unreachable (Batch: servererror)."""
        self.fail(job_id, task_id, None, "servererror", "BlobDownloadMiscError")

    def fail(self, job_id: str, task_id: str, exit_code: int | None, category: str, code: str) -> None:
        task = self.jobs[job_id].tasks[task_id]
        task.state, task.exit_code, task.transition = "completed", exit_code, self.clock()
        task.failure = {"category": category, "code": code, "message": f"{code} (fake)", "details": {}}

    def all_tasks(self) -> list[tuple[str, str]]:
        return [(job.job_id, task_id) for job in self.jobs.values() for task_id in job.tasks]

    def task_requests(self) -> int:
        return self.requests["Task_Add"] + self.requests["Task_AddCollection"]


class FakeBlobs:
    """BlobPort in memory. URLs carry a fake, expiring grant so tests can check scope and expiry."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.containers: dict[str, dict[str, tuple[bytes, str, datetime]]] = {}
        self.copies = 0
        self.bytes_read_by_client = 0
        self.json_reads: list[str] = []  # "container/name" of each read_json or read_json_version, in order
        self.property_reads = 0  # get_blob calls: on Azure, one Get Blob Properties (HEAD) each
        self._etag = 0
        # operation -> what another worker does just before this one performs it (once): races, made exact
        self.interleave: dict[str, Callable[[], None]] = {}

    def _before(self, operation: str) -> None:
        meanwhile = self.interleave.pop(operation, None)
        if meanwhile is not None:
            meanwhile()

    def put(self, container: str, name: str, data: bytes = b"x") -> BlobRef:
        self._etag += 1
        etag = f"0x{self._etag:08X}"
        self.containers.setdefault(container, {})[name] = (data, etag, self.clock())
        return BlobRef(container, name, etag, self.clock(), len(data))

    def list_blobs(self, container: str, prefix: str = "") -> Iterator[BlobRef]:
        for name, (data, etag, created) in sorted(self.containers.get(container, {}).items()):
            if name.startswith(prefix):
                yield BlobRef(container, name, etag, created, len(data))

    def get_blob(self, container: str, name: str) -> BlobRef | None:
        self.property_reads += 1
        found = self.containers.get(container, {}).get(name)
        return BlobRef(container, name, found[1], found[2], len(found[0])) if found else None

    def read_url(self, container: str, name: str, valid_seconds: int) -> str:
        expiry = (self.clock() + timedelta(seconds=valid_seconds)).isoformat()
        return f"mem://{container}/{name}?sp=r&se={expiry}&sig=SECRET"

    def write_url(self, container: str, valid_seconds: int) -> str:
        expiry = (self.clock() + timedelta(seconds=valid_seconds)).isoformat()
        return f"mem://{container}?sp=cw&se={expiry}&sig=SECRET"

    def copy(self, source_container: str, source_name: str, target_container: str, target_name: str) -> None:
        self._before("copy")
        found = self.containers.get(source_container, {}).get(source_name)
        if found is None:
            raise PermanentError(f"copy source {source_container}/{source_name} does not exist")
        data = found[0]
        self.copies += 1
        self.put(target_container, target_name, data)

    def delete_container(self, container: str) -> None:
        self.containers.pop(container, None)

    def _json(self, container: str, name: str) -> tuple[dict[str, object] | None, str] | None:
        """As AzureBlobs: (the JSON object, or None when the blob holds anything else, etag); None if absent."""
        self.json_reads.append(f"{container}/{name}")
        found = self.containers.get(container, {}).get(name)
        if not found:
            return None
        try:
            document = json.loads(found[0])
        except ValueError:
            document = None
        return (document if isinstance(document, dict) else None), found[1]

    def read_json(self, container: str, name: str) -> dict[str, object] | None:
        found = self._json(container, name)
        return found[0] if found is not None else None

    def read_json_version(self, container: str, name: str) -> tuple[dict[str, object], str] | None:
        found = self._json(container, name)
        return (found[0] or {}, found[1]) if found is not None else None

    def write_json(self, container: str, name: str, document: dict[str, object]) -> None:
        self.put(container, name, json.dumps(document, default=str).encode())

    def write_json_if(self, container: str, name: str, document: dict[str, object], version: str | None) -> bool:
        self._before("write_json_if")
        found = self.containers.get(container, {}).get(name)
        if (found[1] if found else None) != version:
            return False  # If-None-Match: * on an existing blob, or If-Match on another version
        self.write_json(container, name, document)
        return True

    def read_tail(self, container: str, name: str, max_bytes: int) -> str:
        found = self.containers.get(container, {}).get(name)
        return found[0][-max_bytes:].decode(errors="replace") if found else ""

    def text(self, container: str, name: str) -> str:
        return self.containers[container][name][0].decode()


class FakeQueue:
    def __init__(self) -> None:
        self.messages: list[CompletionEvent] = []
        self.poison: list[str] = []
        self.checks: list[tuple[CompletionCheck, int]] = []  # (check, delay in seconds), in the order sent
        self.sent_separately: list[CompletionEvent] = []  # those sent one to a message

    def send(self, events: Iterable[CompletionEvent], separately: bool = False) -> None:
        sent = list(events)
        self.messages.extend(sent)
        if separately:
            self.sent_separately.extend(sent)

    def schedule_check(self, check: CompletionCheck, delay_seconds: int) -> None:
        self.checks.append((check, delay_seconds))

    def poison_count(self) -> int:
        return len(self.poison)

    def drain(self) -> list[CompletionEvent]:
        taken, self.messages = self.messages, []
        return taken


class FakeLedger:
    """LedgerPort in memory: a row in a final state keeps it, as TableLedger's conditional writes ensure.

    Its counters are derived from the rows (TableLedger keeps them as rows of their own); a retired job's counts
    are summed when it is retired and no longer follow its rows, as in TableLedger.
    """

    def __init__(self) -> None:
        self.input_rows: dict[str, InputRecord] = {}
        self.job_rows: dict[str, JobRecord] = {}
        self.staging_index: dict[str, str] = {}  # staging container -> task id, written with the input's row
        self.rejection_rows: list[dict[str, str]] = []
        self.schedule_rows: dict[str, ScheduleRecord] = {}
        self._versions = 0
        self.recent_rows: list[RecentEntry] = []
        self._recent_ms = 0
        self.retired: dict[str, Counter[FinalKey]] = {}
        self.group_rows: dict[tuple[str, str], GroupRecord] = {}
        self.unavailable = False
        self.transactions = 0
        # operation -> what another worker does just before this one performs it (once): races, made exact
        self.interleave: dict[str, Callable[[], None]] = {}

    def _check(self) -> None:
        if self.unavailable:
            raise TransientError("ledger unavailable")

    def _before(self, operation: str) -> None:
        meanwhile = self.interleave.pop(operation, None)
        if meanwhile is not None:
            meanwhile()

    def _write_input(self, record: InputRecord) -> InputRecord:
        stored = self.input_rows.get(record.task_id)
        keeps = stored is not None and stored.state in FINAL_STATES
        if stored is not None and keeps and (record.state not in FINAL_STATES or stored.state is InputState.RERUN):
            return replace(stored)
        self.input_rows[record.task_id] = replace(record)
        before = (stored.job_id, FinalKey.of(stored)) if stored is not None else None
        if record.state in FINAL_STATES and before != (record.job_id, FinalKey.of(record)):
            self.recent_rows.append(recent_entry_of(record, self._recent_at()))
        return replace(record)

    def claim_input(self, record: InputRecord) -> tuple[InputRecord, bool]:
        self._check()
        if record.task_id in self.input_rows:
            return replace(self.input_rows[record.task_id]), False
        self.input_rows[record.task_id] = replace(record)
        if record.staging:
            self.staging_index[record.staging] = record.task_id
        self.recent_rows.append(recent_entry_of(record, self._recent_at()))
        return replace(record), True

    def claim_inputs(self, records: Sequence[InputRecord]) -> list[tuple[InputRecord, bool]]:
        self._check()
        self.transactions += 1
        claimed = {record.task_id: self.claim_input(record) for record in {r.task_id: r for r in records}.values()}
        return [claimed[record.task_id] for record in records]

    def _recent_at(self) -> datetime:
        # Milliseconds that always advance (the index's resolution), so "newest first" is exact in unit tests.
        self._recent_ms = max(self._recent_ms + 1, int(datetime.now(UTC).timestamp() * 1000))
        return datetime.fromtimestamp(self._recent_ms / 1000, UTC)

    def recent(self, limit: int, after: str | None = None) -> tuple[list[RecentEntry], str | None]:
        self._check()
        rows = sorted((row for row in self.recent_rows if after is None or row.key > after), key=lambda r: r.key)
        page = rows[:limit]
        return page, (page[-1].key if len(page) >= limit else None)

    def input_for_staging(self, staging: str) -> InputRecord | None:
        self._check()
        task_id = self.staging_index.get(staging)
        return self.get_input(task_id) if task_id is not None else None

    def get_input(self, task_id: str) -> InputRecord | None:
        self._check()
        found = self.input_rows.get(task_id)
        return replace(found) if found else None

    def save_input(self, record: InputRecord) -> InputRecord:
        self._before("save_input")
        self._check()
        return self._write_input(record)

    def save_inputs(self, records: Sequence[InputRecord]) -> None:
        self._before("save_inputs")
        self._check()
        self.transactions += 1
        for record in records:
            self._write_input(record)

    def inputs(self, state: InputState | None = None, job_id: str | None = None) -> list[InputRecord]:
        self._check()
        return [
            replace(r)
            for r in self.input_rows.values()
            if (state is None or r.state is state) and (job_id is None or r.job_id == job_id)
        ]

    def known_task_ids(self) -> set[str]:
        self._check()
        return {tid for tid, r in self.input_rows.items() if r.state is not InputState.CLAIMED}

    def counts(self) -> LedgerCounts:
        self._check()
        counts = LedgerCounts()
        for row in self.input_rows.values():
            key = FinalKey.of(row)
            if key is not None and row.job_id not in self.retired:
                counts.by_job.setdefault(row.job_id, Counter())[key] += 1
        for retired in self.retired.values():
            counts.deleted.update(retired)
        counts.deleted_jobs = len(self.retired)
        return counts

    def get_job(self, job_id: str) -> JobRecord | None:
        self._check()
        found = self.job_rows.get(job_id)
        return replace(found, recent_task_ids=list(found.recent_task_ids)) if found else None

    def claim_job(self, record: JobRecord) -> tuple[JobRecord, bool]:
        self._check()
        if record.job_id in self.job_rows:
            return self.get_job(record.job_id) or record, False
        self.job_rows[record.job_id] = replace(record, recent_task_ids=list(record.recent_task_ids))
        return replace(record, recent_task_ids=list(record.recent_task_ids)), True

    def save_job(self, record: JobRecord) -> None:
        self._check()
        self.job_rows[record.job_id] = replace(record, recent_task_ids=list(record.recent_task_ids))

    def retire_job(self, record: JobRecord) -> None:
        self._check()
        if record.job_id not in self.retired:
            self.retired[record.job_id] = Counter(
                key
                for row in self.input_rows.values()
                if row.job_id == record.job_id and (key := FinalKey.of(row)) is not None
            )
        self.job_rows[record.job_id] = replace(
            record, state=JobState.DELETED, recent_task_ids=list(record.recent_task_ids)
        )

    def jobs(self, active_only: bool = True) -> list[JobRecord]:
        self._check()
        return [
            replace(j, recent_task_ids=list(j.recent_task_ids))
            for j in self.job_rows.values()
            if j.state is JobState.ACTIVE or (not active_only and j.state is JobState.TERMINATED)
        ]

    def schedules(self) -> list[ScheduleRecord]:
        self._check()
        return [replace(row) for row in self.schedule_rows.values()]

    def save_schedule(self, record: ScheduleRecord) -> ScheduleRecord | None:
        self._before("save_schedule")
        self._check()
        stored = self.schedule_rows.get(record.pipeline)
        if (stored.version if stored is not None else "") != record.version:
            return None
        self._versions += 1
        self.schedule_rows[record.pipeline] = replace(record, version=f"v{self._versions}")
        return replace(self.schedule_rows[record.pipeline])

    def delete_schedule(self, record: ScheduleRecord) -> bool:
        self._check()
        stored = self.schedule_rows.get(record.pipeline)
        if stored is None:
            return True
        if stored.version != record.version:
            return False
        del self.schedule_rows[record.pipeline]
        return True

    def get_group(self, pipeline: str, key: str) -> GroupRecord | None:
        self._check()
        found = self.group_rows.get((pipeline, key))
        return _copy_group(found) if found else None

    def update_group(
        self, pipeline: str, key: str, change: Callable[[GroupRecord | None], GroupRecord | None]
    ) -> GroupRecord | None:
        self._before("update_group")  # another writer's change lands first: `change` sees its row
        self._check()
        while True:  # as TableLedger: written over the version `change` saw, else applied again to the newer row
            stored = self.group_rows.get((pipeline, key))
            wanted = change(_copy_group(stored) if stored else None)
            if wanted is None:
                return _copy_group(stored) if stored else None
            if self.group_rows.get((pipeline, key)) is stored:
                self.group_rows[(pipeline, key)] = _copy_group(wanted)
                return _copy_group(wanted)

    def groups(self, state: GroupState | None = None) -> list[GroupRecord]:
        self._check()
        return [_copy_group(row) for row in self.group_rows.values() if state is None or row.state is state]

    def record_rejection(self, subject: str, reason: str) -> None:
        self._check()
        self.rejection_rows.insert(0, {"input": subject, "reason": reason, "at": datetime.now(UTC).isoformat()})

    def rejections(self, limit: int = 100) -> list[dict[str, str]]:
        self._check()
        return [dict(row) for row in self.rejection_rows[:limit]]


def _copy_group(row: GroupRecord) -> GroupRecord:
    return replace(row, members=dict(row.members), late=list(row.late), missing=list(row.missing))


PIPELINE = {
    "name": "report",
    "match": {"prefix": "", "glob": "*"},
    "command": "python3 {app_dir}/report/report.py {input} {output_dir}",
    "app_files": ["report/report.py"],
    "outputs": ["**/*"],
    "pool": {"id": "pool-1", "dedicated_nodes": 1, "task_slots_per_node": 2},
    "max_retries": 1,
    "max_wall_clock_seconds": 600,
}


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "BatchdropStorage": "UseDevelopmentStorage=true",
        "BATCHDROP_BATCH_URL": "http://127.0.0.1:1",
        "BATCHDROP_PIPELINES_FILE": str(tmp_path / "pipelines.json"),
    }
    values.update(overrides)
    return load_settings(**values)


@dataclass
class World:
    """Gateways over fakes plus handles to the fakes themselves."""

    gw: Gateways
    clock: Clock
    batch: FakeBatch
    blobs: FakeBlobs
    queue: FakeQueue
    ledger: FakeLedger


def make_world(tmp_path: Path, pipelines: list[dict[str, object]] | None = None, **settings: object) -> World:
    clock = Clock()
    pipeline_set = PipelineSet.model_validate({"pipelines": pipelines or [PIPELINE]})
    batch, blobs, queue, ledger = FakeBatch(clock), FakeBlobs(clock), FakeQueue(), FakeLedger()
    gw = Gateways(make_settings(tmp_path, **settings), pipeline_set, batch, blobs, queue, ledger, clock)
    return World(gw, clock, batch, blobs, queue, ledger)


def finished_task(world: World, name: str) -> tuple[SubmitOutcome, str]:
    """`name` dropped and submitted, its task run to success (an output and both logs in its staging container):
    its submission and its staging container."""
    from shared import ids
    from shared.submit import submit

    outcome = submit(world.gw, world.blobs.put("input", name))
    staging = ids.staging_container("staging", outcome.task_id)
    world.blobs.put(staging, "out/report.json", b"{}")
    world.blobs.put(staging, "logs/stdout.txt", b"hello")
    world.blobs.put(staging, "logs/stderr.txt", b"")
    world.batch.finish(outcome.job_id, outcome.task_id)
    return outcome, staging
