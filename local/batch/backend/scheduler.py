"""The dispatcher: assigns active tasks to free node slots, honours dependencies, runs timers and retention."""

from __future__ import annotations

import heapq
import logging
import threading
from datetime import datetime, timedelta
from pathlib import Path

from local.batch import clock, runner, validation
from local.batch.backend.execution import Execution
from local.batch.backend.jobs import Jobs
from local.batch.backend.pools import Pools
from local.batch.backend.records import Doc, JobState, NodeState, PoolState, TaskState
from local.batch.backend.state import State

logger = logging.getLogger(__name__)


def dependency_action(task: Doc) -> str:
    """What a completed task means for tasks that depend on it (Batch: success satisfies, failure blocks)."""
    info = task.get("executionInfo") or {}
    if info.get("result") == "success":
        return "satisfy"
    conditions = task.get("exitConditions") or {}
    exit_code = info.get("exitCode")
    options: Doc | None = None
    if exit_code is not None:
        options = next(
            (c.get("exitOptions") for c in conditions.get("exitCodes") or [] if int(c.get("code", 0)) == exit_code),
            None,
        )
        if options is None:
            options = next(
                (
                    c.get("exitOptions")
                    for c in conditions.get("exitCodeRanges") or []
                    if int(c.get("start", 0)) <= exit_code <= int(c.get("end", 0))
                ),
                None,
            )
    else:
        code = str((info.get("failureInfo") or {}).get("code", ""))
        options = conditions.get("fileUploadError" if code.startswith("FileUpload") else "preProcessingError")
    if options is None:
        options = conditions.get("default")
    return str((options or {}).get("dependencyAction") or "block").lower()


class Scheduler:
    """The dispatcher thread and what it does on each pass."""

    def __init__(self, state: State, pools: Pools, jobs: Jobs, execution: Execution) -> None:
        self.state = state
        self.pools = pools
        self.jobs = jobs
        self.execution = execution
        self.dispatch_passes = 0
        self.ticks = 0
        self._compaction_queued = False
        self._thread = threading.Thread(target=self._loop, name="batch-dispatcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        state = self.state
        with state.wakeup:
            while not state.stopping:
                try:
                    sleep = self.tick()
                    started = self.dispatch()
                    self.dispatch_passes += 1
                    if started == 0:
                        state.wakeup.wait(timeout=sleep if sleep > 0 else 0.01)
                except Exception:  # the dispatcher must outlive a bug in one decision; log it loudly
                    logger.exception("dispatcher iteration failed")
                    self.dispatch_passes += 1
                    state.wakeup.wait(timeout=0.5)

    # ------------------------------------------------------------------ dispatch

    def dispatch(self) -> int:
        """Start every active task that has a free slot and whose dependencies are met; how many started."""
        state = self.state
        started = 0
        jobs = sorted(state.jobs.items(), key=lambda item: (-int(item[1].doc["priority"]), item[1].seq))
        for job_key, job_entry in jobs:
            job = job_entry.doc
            if job["state"] != JobState.ACTIVE:
                continue
            queue = state.ready.get(job_key)
            if not queue:
                continue
            pool_key = state.job_pool_key(job)
            pool_entry = state.pools.get(pool_key)
            if pool_entry is None or pool_entry.doc["state"] != PoolState.ACTIVE:
                continue
            pool = pool_entry.doc
            limit = int(job.get("maxParallelTasks", -1))
            while queue:
                if limit != -1 and state.counts[job_key].tasks.running >= limit:
                    break
                task_key = queue[0]
                entry = state.tasks[job_key].get(task_key)
                if entry is None or entry.doc["state"] != TaskState.ACTIVE or (job_key, task_key) in state.runs:
                    queue.popleft()
                    continue
                task = entry.doc
                if task.get("dependsOn") and not self._dependencies_met(job_key, task):
                    queue.popleft()
                    state.waiting.setdefault(job_key, set()).add(task_key)
                    continue
                slots = int(task.get("requiredSlots") or 1)
                if slots > int(pool["taskSlotsPerNode"]):
                    queue.popleft()
                    state.complete_without_running(
                        job_key,
                        task_key,
                        task,
                        runner.Failure(
                            "usererror",
                            "TaskSchedulingConstraintFailed",
                            "Task cannot be scheduled on the pool associated with the job",
                            {
                                "Message": f"requiredSlots {slots} exceeds the pool's taskSlotsPerNode "
                                f"{pool['taskSlotsPerNode']}"
                            },
                        ),
                    )
                    continue
                affinity = str((task.get("affinityInfo") or {}).get("affinityId") or "") or None
                node_key = self._pick_node(pool_key, pool, slots, job_key, affinity)
                if node_key is None:
                    break
                queue.popleft()
                self.execution.start(job_key, task_key, pool_key, node_key)
                started += 1
        return started

    def _pick_node(self, pool_key: str, pool: Doc, slots: int, job_key: str, affinity: str | None) -> str | None:
        state = self.state
        job = state.jobs[job_key]
        per_node = int(pool["taskSlotsPerNode"])
        blocked: set[str] = set()
        if job.doc.get("jobPreparationTask"):
            # Batch does not schedule a job's tasks on a node where its preparation task failed.
            blocked = {
                validation.key(node_id)
                for node_id, record in job.record.prep.items()
                if (record.get("preparation") or {}).get("result") == "failure"
                and (job.doc["jobPreparationTask"].get("waitForSuccess", True) is not False)
            }
        pack = str((pool.get("taskSchedulingPolicy") or {}).get("nodeFillType") or "spread").lower() == "pack"
        best: str | None = None
        best_free = -1 if not pack else per_node + 1
        for node_key, entry in state.nodes.get(pool_key, {}).items():
            node = entry.doc
            if node["schedulingState"] != "enabled" or node["state"] not in (NodeState.IDLE, NodeState.RUNNING):
                continue
            if node_key in blocked:
                continue
            free = per_node - int(node["runningTaskSlotsCount"])
            if free < slots:
                continue
            if affinity and node["affinityId"] == affinity:
                return node_key  # affinityInfo is a locality hint: honoured when that node has room
            if (not pack and free > best_free) or (pack and free < best_free):
                best, best_free = node_key, free
        return best

    def _dependencies_met(self, job_key: str, task: Doc) -> bool:
        depends = task.get("dependsOn") or {}
        wanted = [str(task_id) for task_id in depends.get("taskIds") or []]
        for id_range in depends.get("taskIdRanges") or []:
            wanted.extend(str(number) for number in range(int(id_range["start"]), int(id_range["end"]) + 1))
        tasks = self.state.tasks[job_key]
        for task_id in wanted:
            dependency = tasks.get(validation.key(task_id))
            if dependency is None or dependency.doc["state"] != TaskState.COMPLETED:
                return False
            if dependency_action(dependency.doc) != "satisfy":
                return False
        return True

    # ------------------------------------------------------------------ timers and housekeeping

    def tick(self) -> float:
        """Timers and housekeeping; returns how long the dispatcher may sleep."""
        state = self.state
        self.ticks += 1
        moment = clock.now()
        sleep = 0.5
        self._expire_retention(moment)
        if state.retention:
            sleep = min(sleep, max(0.0, (state.retention[0][0] - moment).total_seconds()))
        for job_key, job_entry in list(state.jobs.items()):
            job = job_entry.doc
            job_state = job["state"]
            if job_state == JobState.ACTIVE:
                limit = clock.duration_seconds(str(job["constraints"]["maxWallClockTime"]))
                if limit < clock.UNLIMITED_SECONDS:
                    deadline = clock.parse(str(job["creationTime"])) + timedelta(seconds=limit)
                    if deadline <= moment:
                        self.jobs.terminate(job_key, "MaxWallClockTimeExpiry")
                        continue
                    sleep = min(sleep, (deadline - moment).total_seconds())
                counts = state.counts[job_key].tasks
                if job["onAllTasksComplete"] == "terminatejob" and counts.active == 0 and counts.running == 0:
                    self.jobs.terminate(job_key, "AllTasksComplete")
            elif job_state == JobState.TERMINATING:
                if not self._has_runs(job_key) and not self.execution.start_job_release(job_key):
                    state.set_job_state(job_key, JobState.COMPLETED)
                    job["executionInfo"]["endTime"] = job["stateTransitionTime"]
                    state.save_job(job_key)
                    self.pools.release_auto_pool(job)
            elif (
                job_state == JobState.DELETING
                and not self._has_runs(job_key)
                and not self.execution.start_job_release(job_key)
            ):
                self._remove_job(job_key)
        self.pools.finish_reboots()
        sleep = min(sleep, self.pools.autoscaling.tick())
        self._compact_now_and_then()
        for pool_key, pool in list(state.pools.items()):
            if pool.doc["state"] == PoolState.DELETING and not any(
                run.pool_key == pool_key for run in state.runs.values()
            ):
                state.pools.pop(pool_key, None)
                state.nodes.pop(pool_key, None)
                state.journal.delete("pool", pool_key)
        return max(0.0, sleep)

    def _has_runs(self, job_key: str) -> bool:
        return any(run_job == job_key for run_job, _ in self.state.runs)

    def _expire_retention(self, moment: datetime) -> None:
        """Remove the files of completed tasks whose retention time has passed (off the lock, see Housekeeper)."""
        state = self.state
        doomed: list[Path] = []
        while state.retention and state.retention[0][0] <= moment:
            _expiry, job_key, task_key, attempt = heapq.heappop(state.retention)
            task = state.tasks.get(job_key, {}).get(task_key)
            if task is None or task.doc["state"] != TaskState.COMPLETED or task.record.attempt != attempt:
                continue
            task_dir = state.task_dir(job_key, task.doc)
            if task_dir is not None:
                doomed.append(task_dir)
            task.record.files_cleaned = True
            state.save_task(job_key, task_key)
        if doomed:
            state.housekeeper.discard(doomed)

    def _compact_now_and_then(self) -> None:
        state = self.state
        live = sum(len(tasks) for tasks in state.tasks.values()) + len(state.jobs) + len(state.pools)
        if self._compaction_queued or state.journal.writes_since_compaction <= 20 * live + 10_000:
            return
        # Superseded lines only cost disk and start-up time; the journal rewrites itself off the lock.
        self._compaction_queued = True

        def compact() -> None:
            try:
                state.journal.compact()
            finally:
                self._compaction_queued = False

        state.housekeeper.submit(compact)

    def _remove_job(self, job_key: str) -> None:
        state = self.state
        job = state.jobs.pop(job_key)
        tasks = state.tasks.pop(job_key, {})
        state.counts.pop(job_key, None)
        state.ready.pop(job_key, None)
        state.waiting.pop(job_key, None)
        for task_key in tasks:
            state.journal.delete("task", f"{job_key}/{task_key}")
        state.journal.delete("job", job_key)
        self.pools.release_auto_pool(job.doc)
        nodes_dir = state.state_dir / "nodes"
        if nodes_dir.is_dir():
            state.housekeeper.discard(node_dir / "workitems" / str(job.doc["id"]) for node_dir in nodes_dir.iterdir())
