"""What the emulator stores for each entity: its REST document, and beside it a typed record of bookkeeping.

The REST document is exactly what a client may see; everything the emulator needs to remember besides
(list order, the attempt number, the process of a running task, ...) lives in the record, which the
journal persists next to the document.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Generic, TypeVar

Doc = dict[str, Any]


class TaskState(StrEnum):
    ACTIVE = "active"
    PREPARING = "preparing"
    RUNNING = "running"
    COMPLETED = "completed"


class JobState(StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"
    TERMINATING = "terminating"
    COMPLETED = "completed"
    DELETING = "deleting"


class PoolState(StrEnum):
    ACTIVE = "active"
    DELETING = "deleting"


class NodeState(StrEnum):
    IDLE = "idle"
    RUNNING = "running"
    REBOOTING = "rebooting"
    WAITING_FOR_START_TASK = "waitingforstarttask"
    START_TASK_FAILED = "starttaskfailed"
    PREEMPTED = "preempted"


class StopReason(StrEnum):
    """Why a running attempt is being stopped by the emulator rather than ending by itself."""

    TERMINATE = "terminate"
    REQUEUE = "requeue"
    DELETE = "delete"


@dataclass
class ProcessIdentity:
    """Who a task's process is: a pid alone may be reused by another program after a restart."""

    pid: int
    create_time: float
    cmdline: list[str]


@dataclass
class Record:
    """Bookkeeping every stored entity has: its place in list order (also the paging token)."""

    seq: int

    def to_json(self) -> Doc:
        return asdict(self)


@dataclass
class PoolRecord(Record):
    @classmethod
    def from_json(cls, data: Doc) -> PoolRecord:
        return cls(seq=int(data.get("seq", 0)))


@dataclass
class NodeRecord(Record):
    # a preempted Spot node: when capacity "returns" and a new node replaces it (Batch time format)
    replace_at: str | None = None

    @classmethod
    def from_json(cls, data: Doc) -> NodeRecord:
        replace_at = data.get("replace_at")
        return cls(seq=int(data.get("seq", 0)), replace_at=str(replace_at) if replace_at else None)


@dataclass
class JobRecord(Record):
    # per node id: poolId, nodeUrl and the preparation/release executionInfo, as the prep-release list shows them
    prep: dict[str, Doc] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Doc) -> JobRecord:
        return cls(seq=int(data.get("seq", 0)), prep=dict(data.get("prep") or {}))


@dataclass
class TaskRecord(Record):
    attempt: int = 0  # the number of the latest attempt; a stale worker's result is ignored
    process: ProcessIdentity | None = None  # set while a process of this task runs
    files_cleaned: bool = False  # retention removed the task's directory

    def to_json(self) -> Doc:
        # saved on every task state change: built directly rather than by asdict's recursive deep copy
        process = self.process
        return {
            "seq": self.seq,
            "attempt": self.attempt,
            "process": None
            if process is None
            else {"pid": process.pid, "create_time": process.create_time, "cmdline": list(process.cmdline)},
            "files_cleaned": self.files_cleaned,
        }

    @classmethod
    def from_json(cls, data: Doc) -> TaskRecord:
        process = data.get("process")
        return cls(
            seq=int(data.get("seq", 0)),
            attempt=int(data.get("attempt", 0)),
            process=(
                ProcessIdentity(int(process["pid"]), float(process["create_time"]), list(process["cmdline"]))
                if isinstance(process, dict)
                else None
            ),
            files_cleaned=bool(data.get("files_cleaned", False)),
        )


R = TypeVar("R", bound=Record)


@dataclass
class Stored(Generic[R]):
    """One entity: the REST document and the record beside it."""

    doc: Doc
    record: R

    @property
    def seq(self) -> int:
        return self.record.seq


Pool = Stored[PoolRecord]
Node = Stored[NodeRecord]
Job = Stored[JobRecord]
Task = Stored[TaskRecord]


@dataclass
class Run:
    """A task attempt that holds a node slot."""

    attempt: int
    pool_key: str
    node_key: str
    slots: int
    stop_reason: StopReason | None = None
    process_pid: int | None = None


@dataclass
class Counts:
    active: int = 0
    running: int = 0
    completed: int = 0
    succeeded: int = 0
    failed: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "active": self.active,
            "running": self.running,
            "completed": self.completed,
            "succeeded": self.succeeded,
            "failed": self.failed,
        }


@dataclass
class JobCounts:
    tasks: Counts = field(default_factory=Counts)
    slots: Counts = field(default_factory=Counts)
