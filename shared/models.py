"""Plain data that flows between the use cases and the gateways."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import NamedTuple


class InputState(StrEnum):
    """Where one input is in its life; serialised as the plain string."""

    CLAIMED = "claimed"  # ledger row written, task not yet confirmed in Batch
    WAITING = "waiting"  # claimed for a scheduled pipeline: held until its schedule fires (shared/schedules.py)
    SUBMITTED = "submitted"  # task exists in Batch
    COLLECTED = "collected"  # manifest published
    SKIPPED = "skipped"  # no pipeline matches
    REJECTED = "rejected"  # refused, with a reason
    RERUN = "rerun"  # replaced by a re-run: the row named in `rerun_by` carries the input now (never counted)
    GROUPED = "grouped"  # a member of a group (shared/groups.py): its group's task carries it (counted, no job)


class JobState(StrEnum):
    ACTIVE = "active"
    TERMINATED = "terminated"
    DELETED = "deleted"


class TaskOutcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class BlobRef:
    """A blob as a trigger or a listing sees it."""

    container: str
    name: str
    etag: str
    created_on: datetime
    size: int = 0


@dataclass
class InputRecord:
    """The ledger row of one input: its idempotency key is the task id."""

    task_id: str
    container: str
    name: str
    etag: str
    pipeline: str
    job_id: str
    state: InputState
    reason: str = ""
    outcome: str = ""
    updated_at: datetime | None = None
    reactivations: int = 0  # times collect ran the task again after an infrastructure failure
    run: int = 1  # 1 for the upload's own task, n + 1 for a re-run of run n
    rerun_of: str = ""  # a re-run's row: the task id of the row it replaced
    rerun_by: str = ""  # a replaced row (state rerun): the task id of the re-run that replaced it
    staging: str = ""  # the task's staging container (its completion events name it); "" when it has none
    # A group's task (shared/groups.py): `name` is the group key, `members` the (name, etag) of each member it ran on.
    group_key: str = ""
    members: tuple[tuple[str, str], ...] = ()
    # The stored row this record was read or written as (set by the Table ledger, never stored): a later save of
    # the record writes over that version (If-Match) without reading the row again. Not part of equality.
    version: RowVersion | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class RowVersion:
    """An input row as stored at one etag: what a write over that version needs to know of it."""

    task_id: str  # the row's own key: a record made from another row's (a re-run's) does not write over it
    etag: str
    job_id: str
    state: InputState
    final: FinalKey | None  # what the counters count the stored row under


class GroupState(StrEnum):
    OPEN = "open"  # waiting for members (or its marker)
    SUBMITTED = "submitted"  # its task for the current members exists in Batch
    FAILED = "failed"  # incomplete past complete_within: a failed manifest names the missing members


@dataclass(frozen=True)
class GroupMember:
    """One member of a group as its upload was seen: its version and creation time."""

    etag: str
    created_on: datetime


@dataclass
class GroupRecord:
    """The ledger row of one group (pipeline + key): its members, its task, what arrived late or twice."""

    pipeline: str
    key: str
    first_seen: datetime
    deadline: datetime  # first_seen + complete_within: incomplete then, the group fails
    members: dict[str, GroupMember] = field(default_factory=dict)
    marker: GroupMember | None = None  # ready_marker groups: the marker blob, once it arrived
    state: GroupState = GroupState.OPEN
    task_id: str = ""  # the task of the newest complete member set submitted
    job_id: str = ""
    runs: int = 0  # tasks submitted for this group: a re-upload of a member after a run makes one more
    duplicates: int = 0  # deliveries of a member version already recorded
    late: list[str] = field(default_factory=list)  # members that arrived after the group ran or failed
    missing: list[str] = field(default_factory=list)  # what its failed manifest named


@dataclass
class JobRecord:
    """The ledger row of one Batch job: its poll watermark and lifecycle."""

    job_id: str
    pipeline: str
    window_end: datetime
    state: JobState = JobState.ACTIVE
    watermark: datetime | None = None
    recent_task_ids: list[str] = field(default_factory=list)
    terminated_at: datetime | None = None
    # Staging clean-up after termination: task ids up to this one have had their staging container deleted.
    staging_cleared_through: str | None = None
    staging_cleared: bool = False
    # The pipeline's summary step (shared/summary.py): "" not begun, then a SummaryState value.
    summary: str = ""


class FinalKey(NamedTuple):
    """What the ledger counts an input in a final state under: its state, pipeline and (collected) outcome."""

    state: InputState
    pipeline: str
    outcome: str = ""

    @classmethod
    def of(cls, record: InputRecord) -> FinalKey | None:
        """The key `record` is counted under, None while it is not final."""
        if record.state is InputState.COLLECTED:
            return cls(record.state, record.pipeline, record.outcome)
        if record.state in (InputState.SKIPPED, InputState.REJECTED, InputState.GROUPED):
            return cls(record.state, record.pipeline)
        if record.state is InputState.WAITING:
            # Not final, but counted while it lasts: status shows what waits for a schedule without a scan.
            return cls(record.state, record.pipeline)
        if record.state is InputState.RERUN:
            # Not an input of its own (its re-run's row counts it): kept so that status can take the replaced
            # task out of Batch's counts of its job.
            return cls(record.state, record.pipeline, record.outcome)
        return None


@dataclass
class ScheduleRecord:
    """The ledger row of one scheduled pipeline: when its schedule last fired, and a firing under way.

    `firing_since` is set while a tick submits the pipeline's waiting inputs and cleared when it is done; a tick
    that finds it set and stale takes the firing over (the first tick died halfway). `version` is the row's
    ETag as read: writes are made over it, so of two concurrent ticks only one fires.
    """

    pipeline: str
    last_fired: datetime
    firing_since: datetime | None = None
    version: str = ""


@dataclass
class LedgerCounts:
    """The ledger's counters: inputs in a final state, per live job, and the sum over every deleted job.

    `by_job` is keyed by job id ("" for inputs that never had a job: rejected, skipped). A deleted job's counts
    leave `by_job` and join `deleted` once, when the job is deleted (LedgerPort.retire_job).
    """

    by_job: dict[str, Counter[FinalKey]] = field(default_factory=dict)
    deleted: Counter[FinalKey] = field(default_factory=Counter)
    deleted_jobs: int = 0


@dataclass(frozen=True)
class ResourceFile:
    url: str
    file_path: str


@dataclass(frozen=True)
class OutputFile:
    pattern: str
    container_url: str
    path: str
    condition: str = "taskCompletion"


@dataclass(frozen=True)
class TaskContainer:
    """The container a task runs in (the pool carries the registry login)."""

    image: str
    run_options: str = ""
    working_directory: str = "taskWorkingDirectory"


@dataclass(frozen=True)
class TaskSpec:
    """Everything Batch needs to create one task."""

    task_id: str
    command_line: str
    resource_files: tuple[ResourceFile, ...]
    output_files: tuple[OutputFile, ...]
    max_retries: int
    max_wall_clock_seconds: int
    environment: tuple[tuple[str, str], ...] = ()
    container: TaskContainer | None = None
    packages: tuple[tuple[str, str | None], ...] = ()  # (application id, version or None for the default)
    required_slots: int = 1


@dataclass(frozen=True)
class CompletedTask:
    task_id: str
    completed_at: datetime
    result: TaskResult | None = None


@dataclass(frozen=True)
class TaskResult:
    """What Batch says about a finished (or unfinished) task."""

    task_id: str
    state: str
    exit_code: int | None
    result: str | None
    failure: dict[str, object] | None
    started_at: datetime | None
    finished_at: datetime | None
    retries: int

    @property
    def completed(self) -> bool:
        return self.state == "completed"

    @property
    def outcome(self) -> TaskOutcome:
        return TaskOutcome.SUCCEEDED if self.result == "success" else TaskOutcome.FAILED

    @property
    def infrastructure_failure(self) -> bool:
        """Failed for a reason outside the task's own code, so running it again can succeed.

        That is Batch's category `servererror` (storage unreachable while the node downloaded the resource
        files, a node fault), or outputs that did not upload although the task exited 0 (storage unreachable
        at the end; Batch files those as `usererror` whatever the cause). Not `TaskEnded` (the wall clock or a
        termination): another run would end the same way.
        """
        if not self.completed or self.outcome is TaskOutcome.SUCCEEDED or not self.failure:
            return False
        category = str(self.failure.get("category", "")).lower()
        code = str(self.failure.get("code", ""))
        if code == "TaskEnded":
            return False
        return category == "servererror" or (code.startswith("FileUpload") and self.exit_code == 0)


@dataclass(frozen=True)
class TaskCounts:
    active: int = 0
    running: int = 0
    completed: int = 0
    succeeded: int = 0
    failed: int = 0


@dataclass(frozen=True)
class CompletionEvent:
    """One task finished: what the poll timer puts on the completions queue.

    It carries the task's execution info from the poll's listing, so the collector needs no Batch request.
    """

    job_id: str
    task_id: str
    task: TaskResult | None = None


@dataclass(frozen=True)
class CompletionCheck:
    """Look again whether Batch calls a task completed: what task_finished puts, delayed, on the checks queue.

    `attempt` counts the re-checks, this one included (the first is 1).
    """

    task_id: str
    staging: str
    attempt: int
