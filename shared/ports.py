"""The interfaces the use cases talk to; adapters implement them over Azure, tests over memory."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Protocol

from shared.models import (
    BlobRef,
    CompletedTask,
    CompletionCheck,
    CompletionEvent,
    GroupRecord,
    GroupState,
    InputRecord,
    InputState,
    JobRecord,
    LedgerCounts,
    ResourceFile,
    ScheduleRecord,
    TaskCounts,
    TaskResult,
    TaskSpec,
)
from shared.pipelines import PipelineSpec, PoolPlan, PoolSpec
from shared.pools import PoolReport
from shared.recent import RecentEntry

# An input in one of these states is done with: LedgerPort.save_input never moves its row out of it again.
FINAL_STATES = frozenset(
    {InputState.COLLECTED, InputState.SKIPPED, InputState.REJECTED, InputState.RERUN, InputState.GROUPED}
)
# A row replaced by a re-run keeps that state and its `rerun_by` whoever writes later (a late collector, a second
# re-run request): the first re-run to mark it wins.


class BatchPort(Protocol):
    def ensure_pool(self, pool: PoolPlan | PoolSpec, start_files: Sequence[ResourceFile] = ()) -> None:
        """Create the pool if it does not exist; else, at most once an hour per process, compare it with the file,
        update in place what Batch allows (start task, scale) and log the rest."""

    def pool_reports(self, plans: Sequence[PoolPlan]) -> list[PoolReport]:
        """Each pool's drift from the file (nothing changed) and its nodes by state."""

    def ensure_job(self, job_id: str, pipeline: PipelineSpec) -> None:
        """Create the job on the pipeline's pool; an existing job is success."""

    def add_task(self, job_id: str, task: TaskSpec) -> None:
        """Create one task; an existing task with that id is success."""

    def add_tasks(self, job_id: str, tasks: Sequence[TaskSpec]) -> None:
        """Create many tasks in bulk (100 per request); existing ones are success."""

    def completed_since(self, job_id: str, since: datetime | None) -> list[CompletedTask]:
        """Tasks of the job that reached `completed` at or after `since`."""

    def get_task(self, job_id: str, task_id: str) -> TaskResult | None:
        """The task's state and execution info, None if Batch does not know it."""

    def reactivate_task(self, job_id: str, task_id: str) -> bool:
        """Run a completed, failed task again under the same id; True if it will run (or already runs) again.

        False when Batch counts the task as succeeded and refuses (TaskSucceeded).
        """

    def terminate_task(self, job_id: str, task_id: str) -> None:
        """End an active or running task (it completes with failure code TaskEnded); a completed or missing task,
        or a closed job, is success."""

    def task_counts(self, job_id: str) -> TaskCounts | None:
        """Batch's task counts for the job, None if the job is gone."""

    def terminate_job(self, job_id: str) -> None: ...

    def delete_job(self, job_id: str) -> None: ...


class BlobPort(Protocol):
    def list_blobs(self, container: str, prefix: str = "") -> Iterator[BlobRef]: ...

    def get_blob(self, container: str, name: str) -> BlobRef | None: ...

    def read_url(self, container: str, name: str, valid_seconds: int) -> str:
        """A URL that lets its holder read exactly this blob until it expires."""

    def write_url(self, container: str, valid_seconds: int) -> str:
        """A container URL that lets its holder create blobs until it expires."""

    def copy(self, source_container: str, source_name: str, target_container: str, target_name: str) -> None:
        """Server-side copy; returns once the copy is complete."""

    def read_json(self, container: str, name: str) -> dict[str, object] | None: ...

    def read_json_version(self, container: str, name: str) -> tuple[dict[str, object], str] | None:
        """The document and its etag (the version a conditional write names), None if absent."""

    def write_json(self, container: str, name: str, document: dict[str, object]) -> None: ...

    def write_json_if(self, container: str, name: str, document: dict[str, object], version: str | None) -> bool:
        """Write only if the blob is still at `version` (None: only if it does not exist yet).

        False when another writer got there first; the caller reads again and decides.
        """

    def read_tail(self, container: str, name: str, max_bytes: int) -> str: ...

    def delete_container(self, container: str) -> None:
        """Delete a container and its blobs; a missing container is success."""


class QueuePort(Protocol):
    def send(self, events: Iterable[CompletionEvent], separately: bool = False) -> None:
        """Put the completions on the completions queue: several to a message (messages.encode_completions), or
        with `separately` one message each (so that one that keeps failing goes to the poison queue alone)."""

    def schedule_check(self, check: CompletionCheck, delay_seconds: int) -> None:
        """Put `check` on the completion-checks queue, invisible for `delay_seconds`."""

    def poison_count(self) -> int: ...


class LedgerPort(Protocol):
    def claim_input(self, record: InputRecord) -> tuple[InputRecord, bool]:
        """Create the input's row if absent; return the stored row and whether this call created it."""

    def claim_inputs(self, records: Sequence[InputRecord]) -> list[tuple[InputRecord, bool]]:
        """claim_input for each record, in order, in bulk (a record twice: the later one is claimed)."""

    def get_input(self, task_id: str) -> InputRecord | None: ...

    def input_for_staging(self, staging: str) -> InputRecord | None:
        """The input whose task writes into the staging container `staging` (recorded when its row was claimed),
        None if no input claimed with that container is known."""

    def save_input(self, record: InputRecord) -> InputRecord:
        """Write the row unless it is in a final state (collected, skipped, rejected, rerun) and `record` is not,
        or it is in state rerun (which nothing overwrites); return the row as stored. A row never moves out of a
        final state, however writers interleave."""

    def save_inputs(self, records: Sequence[InputRecord]) -> None:
        """save_input for many rows, in as few requests as the store allows (Table transactions of 100)."""

    def inputs(self, state: InputState | None = None, job_id: str | None = None) -> list[InputRecord]: ...

    def known_task_ids(self) -> set[str]:
        """Task ids of every input the ledger has (for the sweep's one-read check)."""

    def counts(self) -> LedgerCounts:
        """Inputs in a final state, counted per live job and over the deleted jobs, in a number of reads that
        does not grow with the inputs ever processed (kept as counters where the states change)."""

    def get_job(self, job_id: str) -> JobRecord | None:
        """The job's row, a deleted job's included."""

    def claim_job(self, record: JobRecord) -> tuple[JobRecord, bool]: ...

    def save_job(self, record: JobRecord) -> None: ...

    def retire_job(self, record: JobRecord) -> None:
        """Mark the job deleted: it leaves `jobs()`, and its counts join the deleted jobs' sum once."""

    def jobs(self, active_only: bool = True) -> list[JobRecord]:
        """Active jobs; with active_only=False, terminated ones too. Never deleted ones (see retire_job)."""

    def schedules(self) -> list[ScheduleRecord]:
        """Every scheduled pipeline's row (when it last fired), each with its version."""

    def save_schedule(self, record: ScheduleRecord) -> ScheduleRecord | None:
        """Create the row if `record.version` is "", else replace it only if it is still at that version; the row
        as stored (with its new version), or None when another writer got there first."""

    def delete_schedule(self, record: ScheduleRecord) -> bool:
        """Delete the row if it is still at `record.version`: True when it is gone (now or before), False when
        another writer changed it meanwhile."""

    def recent(self, limit: int, after: str | None = None) -> tuple[list[RecentEntry], str | None]:
        """The recent-inputs index, newest first: up to `limit` events older than the cursor `after`, and the
        cursor of the next page (None at the end). An input has an event when its row is created and when it
        becomes final; one read whatever the inputs ever processed."""

    def get_group(self, pipeline: str, key: str) -> GroupRecord | None:
        """The row of a grouped pipeline's group with this key, None if no member of it arrived yet."""

    def update_group(
        self, pipeline: str, key: str, change: Callable[[GroupRecord | None], GroupRecord | None]
    ) -> GroupRecord | None:
        """Apply `change` to the group's row as stored (None if absent) and write the result atomically over that
        version, applying it again to the newer row if another writer got there first; `change` returning None
        writes nothing. Returns the row as stored afterwards."""

    def groups(self, state: GroupState | None = None) -> list[GroupRecord]:
        """Every group's row, or those in `state`."""

    def record_rejection(self, subject: str, reason: str) -> None:
        """Record something batchdrop refused (a blob, an event, a message) for the status API."""

    def rejections(self, limit: int = 100) -> list[dict[str, str]]: ...
