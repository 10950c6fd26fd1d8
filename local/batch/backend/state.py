"""The account's state under one lock: stored entities, sequence numbers and ETags, the journal, lookups.

Every other part of the backend (pools, jobs, tasks, scheduler, execution) works on one State and
changes documents only through the helpers here, so times, ETags, task counts and the journal stay
in step.
"""

from __future__ import annotations

import copy
import heapq
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

from local.batch import clock, runner, validation
from local.batch.backend.housekeeping import Housekeeper, RemoveTree, remove_tree
from local.batch.backend.records import (
    Doc,
    Job,
    JobCounts,
    JobState,
    Node,
    Pool,
    Run,
    StopReason,
    Task,
    TaskState,
)
from local.batch.errors import BatchApiError, not_found
from local.batch.journal import Journal

DEFAULT_RETENTION = "P7D"
MAX_WORKERS = 1024  # threads start on demand; at most one per busy node slot
TASK_ENDED_BY_USER = "Task Was Ended by User Request"


def bucket(task: Doc) -> str:
    """The task-count bucket of a task's state."""
    state = str(task["state"])
    return "running" if state in (TaskState.PREPARING, TaskState.RUNNING) else state


def copy_given(target: Doc, body: Doc, names: tuple[str, ...]) -> None:
    """Copy into a new entity each optional property the request gave (not null), as Batch stores them."""
    for name in names:
        if body.get(name) is not None:
            target[name] = copy.deepcopy(body[name])


def succeeded(task: Doc) -> bool:
    return (task.get("executionInfo") or {}).get("result") == "success"


class State:
    """Everything one emulated account holds, and the primitive changes all operations are made of."""

    def __init__(
        self,
        state_dir: Path,
        account_name: str,
        *,
        packages_dir: Path | None,
        auto_storage_connection_string: str | None,
        job_quota: int | None,
        persist: bool,
        task_start_delay_ms: float,
        remover: RemoveTree = remove_tree,
        completion_lag_seconds: float = 0.0,
    ) -> None:
        self.state_dir = state_dir
        self.account_name = account_name
        self.account_url = ""
        self.packages_dir = packages_dir or state_dir / "packages"
        self.auto_storage = auto_storage_connection_string
        self.job_quota = job_quota
        self.task_start_delay = task_start_delay_ms / 1000.0
        # Batch can report a task `completed` well after its process exited and its files uploaded: the emulator
        # keeps a finished task `running` this long (tests of batchdrop's completion re-checks).
        self.completion_lag = completion_lag_seconds
        self.lock = threading.RLock()
        self.wakeup = threading.Condition(self.lock)
        self.journal = Journal(state_dir / "state.jsonl" if persist else None)
        self.housekeeper = Housekeeper(state_dir / "trash", remover)
        self.pools: dict[str, Pool] = {}
        self.nodes: dict[str, dict[str, Node]] = {}
        self.jobs: dict[str, Job] = {}
        self.tasks: dict[str, dict[str, Task]] = {}
        self.counts: dict[str, JobCounts] = {}
        self.ready: dict[str, deque[str]] = {}
        self.waiting: dict[str, set[str]] = {}  # active tasks whose dependencies are not met yet
        self.runs: dict[tuple[str, str], Run] = {}
        self.start_task_pids: dict[tuple[str, str], int] = {}
        self.prep_locks: dict[tuple[str, str], threading.Lock] = {}
        self.retention: list[tuple[datetime, str, str, int]] = []
        self.seq = 0
        self.stopping = False
        self.executor = ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="batch-node")

    # ------------------------------------------------------------------ sequence numbers, ETags, journal

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def etag(self) -> str:
        return f"0x8DE{self.next_seq():013X}"

    def touch(self, doc: Doc, moment: str | None = None) -> None:
        doc["eTag"] = self.etag()
        doc["lastModified"] = moment or clock.stamp()

    def url(self, *parts: str) -> str:
        return self.account_url + "/" + "/".join(parts)

    def save_pool(self, pool_key: str) -> None:
        pool = self.pools[pool_key]
        self.journal.put("pool", pool_key, pool.doc, pool.record.to_json())

    def save_node(self, pool_key: str, node_key: str) -> None:
        node = self.nodes[pool_key][node_key]
        self.journal.put("node", f"{pool_key}/{node_key}", node.doc, node.record.to_json())

    def save_job(self, job_key: str) -> None:
        job = self.jobs[job_key]
        self.journal.put("job", job_key, job.doc, job.record.to_json())

    def save_task(self, job_key: str, task_key: str) -> None:
        task = self.tasks[job_key][task_key]
        self.journal.put("task", f"{job_key}/{task_key}", task.doc, task.record.to_json())

    # ------------------------------------------------------------------ lookups (raise the Batch error)

    def pool(self, pool_id: str) -> Pool:
        pool = self.pools.get(validation.key(pool_id))
        if pool is None:
            raise not_found("PoolNotFound", "pool")
        return pool

    def node(self, pool_id: str, node_id: str) -> tuple[str, str, Node]:
        self.pool(pool_id)
        pool_key, node_key = validation.key(pool_id), validation.key(node_id)
        node = self.nodes.get(pool_key, {}).get(node_key)
        if node is None:
            raise not_found("NodeNotFound", "node")
        return pool_key, node_key, node

    def job(self, job_id: str) -> Job:
        job = self.jobs.get(validation.key(job_id))
        if job is None:
            raise not_found("JobNotFound", "job")
        return job

    def task(self, job_id: str, task_id: str) -> tuple[str, str, Task]:
        job_key = validation.key(job_id)
        self.job(job_id)
        task = self.tasks[job_key].get(validation.key(task_id))
        if task is None:
            raise not_found("TaskNotFound", "task")
        return job_key, validation.key(task_id), task

    def job_pool_key(self, job: Doc) -> str:
        return validation.key(
            str((job.get("executionInfo") or {}).get("poolId") or job["poolInfo"].get("poolId") or "")
        )

    @staticmethod
    def check_etag(doc: Doc, if_match: str | None, if_none_match: str | None) -> None:
        def bare(tag: str) -> str:
            # The SDK quotes ETags in conditional headers; Batch's own ETags are bare.
            return tag.strip().removeprefix("W/").strip('"')

        current = str(doc.get("eTag", ""))
        unmet = BatchApiError(
            412, "ConditionNotMet", "The condition specified using HTTP conditional header(s) is not met."
        )
        if if_match and if_match.strip() != "*" and bare(if_match) != current:
            raise unmet
        if if_none_match and (if_none_match.strip() == "*" or bare(if_none_match) == current):
            raise unmet

    # ------------------------------------------------------------------ state changes

    def set_task_state(self, job_key: str, task: Doc, state: TaskState, *, count: bool = True) -> str:
        moment = clock.stamp()
        if count:
            self.count(job_key, task, -1)
        task["previousState"] = task["state"]
        task["previousStateTransitionTime"] = task["stateTransitionTime"]
        task["state"] = state
        task["stateTransitionTime"] = moment
        self.touch(task, moment)
        if count:
            self.count(job_key, task, +1)
        return moment

    def set_job_state(self, job_key: str, state: JobState) -> None:
        job = self.jobs[job_key].doc
        moment = clock.stamp()
        job["previousState"] = job["state"]
        job["previousStateTransitionTime"] = job["stateTransitionTime"]
        job["state"] = state
        job["stateTransitionTime"] = moment
        self.touch(job, moment)

    def count(self, job_key: str, task: Doc, delta: int) -> None:
        counts = self.counts.setdefault(job_key, JobCounts())
        slots = int(task.get("requiredSlots") or 1)
        name = bucket(task)
        for target, amount in ((counts.tasks, delta), (counts.slots, delta * slots)):
            setattr(target, name, getattr(target, name) + amount)
            if name == "completed":
                if succeeded(task):
                    target.succeeded += amount
                else:
                    target.failed += amount

    def stop_run(self, job_key: str, task_key: str, reason: StopReason) -> None:
        run = self.runs.get((job_key, task_key))
        if run is None:
            return
        if run.stop_reason is None or reason == StopReason.DELETE:
            run.stop_reason = reason
        if run.process_pid:
            runner.kill_tree(run.process_pid)

    def complete_without_running(self, job_key: str, task_key: str, task: Doc, failure: runner.Failure) -> None:
        moment = self.set_task_state(job_key, task, TaskState.COMPLETED, count=False)
        self.count(job_key, {**task, "state": TaskState.ACTIVE}, -1)
        info = task.setdefault("executionInfo", {})
        info["endTime"] = moment
        info["result"] = "failure"
        info["failureInfo"] = failure.info()
        self.count(job_key, task, +1)
        self.save_task(job_key, task_key)
        self.wake_dependents(job_key)

    def wake_dependents(self, job_key: str) -> None:
        waiting = self.waiting.pop(job_key, None)
        if waiting:
            tasks = self.tasks.get(job_key, {})
            ordered = sorted(waiting, key=lambda key: tasks[key].seq if key in tasks else 0)
            self.ready[job_key].extend(ordered)
            self.wakeup.notify_all()

    def schedule_retention(self, job_key: str, task_key: str, task: Task) -> None:
        info = task.doc.get("executionInfo") or {}
        if not info.get("endTime") or task.record.files_cleaned:
            return
        try:
            seconds = clock.duration_seconds(str(task.doc["constraints"].get("retentionTime") or DEFAULT_RETENTION))
            expiry = clock.parse(str(info["endTime"])) + timedelta(seconds=min(seconds, 10 * 365 * 86400))
        except (ValueError, OverflowError):
            return
        heapq.heappush(self.retention, (expiry, job_key, task_key, task.record.attempt))

    # ------------------------------------------------------------------ task files

    def task_dir(self, job_key: str, task: Doc) -> Path | None:
        node_info = task.get("nodeInfo")
        if not node_info:
            return None
        job = self.jobs.get(job_key)
        job_id = str(job.doc["id"]) if job else job_key
        return self.state_dir / "nodes" / str(node_info["nodeId"]) / "workitems" / job_id / "job-1" / str(task["id"])

    def forget_task(self, job_key: str, task_key: str) -> None:
        task = self.tasks[job_key].pop(task_key, None)
        if task is None:
            return
        self.count(job_key, task.doc, -1)
        self.journal.delete("task", f"{job_key}/{task_key}")
        task_dir = self.task_dir(job_key, task.doc)
        if task_dir is not None and (job_key, task_key) not in self.runs:
            self.housekeeper.discard([task_dir])
