"""Task attempts on worker threads: start, job preparation/release, run, retry, finish, exit conditions.

An attempt takes the lock only to record what happened; the process, downloads and uploads run
without it. A result is applied only if the attempt is still the task's current one (`Run.attempt`).
"""

from __future__ import annotations

import logging
import threading
import time

from local.batch import clock, runner, validation
from local.batch.backend import environment, processes
from local.batch.backend.jobs import Jobs
from local.batch.backend.records import Doc, JobState, NodeState, Run, StopReason, TaskState
from local.batch.backend.state import TASK_ENDED_BY_USER, State

logger = logging.getLogger(__name__)


def run_side_task(attempt: runner.Attempt, retries: int) -> Doc:
    """Run a start-like task to completion (with retries); its executionInfo as Batch reports it."""
    info: Doc = {"state": "running", "startTime": clock.stamp(), "retryCount": 0,
                 "taskRootDirectory": str(attempt.task_dir)}  # fmt: skip
    while True:
        exit_code: int | None = None
        failure: runner.Failure | None = None
        timed_out = False
        try:
            runner.prepare(attempt)
            process = runner.launch(attempt)
            exit_code, timed_out = runner.wait(process, attempt.wall_clock_seconds)
            if timed_out:
                failure = runner.Failure("usererror", "TaskEnded", "The task exceeded its maximum wall clock time.")
            elif exit_code != 0:
                failure = runner.exit_code_failure()
        except runner.Failure as problem:
            failure = problem
        if failure is not None and exit_code not in (None, 0) and not timed_out and info["retryCount"] < retries:
            info["retryCount"] += 1
            info["lastRetryTime"] = clock.stamp()
            continue
        info.update({"state": "completed", "endTime": clock.stamp(),
                     "result": "success" if failure is None else "failure"})  # fmt: skip
        if exit_code is not None:
            info["exitCode"] = exit_code
        if failure is not None:
            info["failureInfo"] = failure.info()
        return info


def container_mismatch(pool: Doc, task: Doc) -> runner.Failure | None:
    """A task and a pool that disagree about containers fail on the node, before anything runs.

    The spec (BatchTaskCreateOptions.containerSettings): "If the Pool that will run this Task has
    containerConfiguration set, this must be set as well. If the Pool ... doesn't have containerConfiguration
    set, this must not be set." A task without settings on a container pool fails with the code and message
    users report from Batch (ContainerTaskSettingsNotFound, "Container-enabled compute node requires task
    container settings"); the other way round is refused when the task is added if the pool exists then
    (tasks.py), and otherwise fails here as invalid container settings.
    """
    configured = bool((pool.get("virtualMachineConfiguration") or {}).get("containerConfiguration"))
    settings = task.get("containerSettings")
    if configured and not settings:
        return runner.Failure(
            "usererror",
            "ContainerTaskSettingsNotFound",
            "Container-enabled compute node requires task container settings",
            {"Message": f"pool {pool['id']} has a containerConfiguration; the task has no containerSettings"},
        )
    if settings and not configured:
        return runner.container_failure(
            f"pool {pool['id']} has no virtualMachineConfiguration.containerConfiguration, so its nodes run no "
            "containers; the command was not run"
        )
    return None


def exit_options(conditions: Doc, exit_code: int) -> Doc | None:
    """The exitOptions an exit code maps to (exitCodes first, then exitCodeRanges); None if none does."""
    for mapping in conditions.get("exitCodes") or []:
        if int(mapping.get("code", 0)) == exit_code:
            return dict(mapping.get("exitOptions") or {})
    for mapping in conditions.get("exitCodeRanges") or []:
        if int(mapping.get("start", 0)) <= exit_code <= int(mapping.get("end", 0)):
            return dict(mapping.get("exitOptions") or {})
    return None


class Execution:
    """Runs attempts on the worker pool and records their outcome in the state."""

    def __init__(self, state: State, jobs: Jobs) -> None:
        self.state = state
        self.jobs = jobs

    def start(self, job_key: str, task_key: str, pool_key: str, node_key: str) -> None:
        """Give a task a slot on a node and hand its attempt to a worker (under the lock)."""
        state = self.state
        job = state.jobs[job_key].doc
        task = state.tasks[job_key][task_key]
        pool = state.pools[pool_key].doc
        node = state.nodes[pool_key][node_key].doc
        slots = int(task.doc.get("requiredSlots") or 1)
        moment = state.set_task_state(job_key, task.doc, TaskState.PREPARING)
        info = task.doc["executionInfo"]
        info["startTime"] = moment
        for name in ("endTime", "exitCode", "result", "failureInfo"):
            info.pop(name, None)
        if int(info.get("retryCount", 0)) > 0:
            info["lastRetryTime"] = moment
        task_root = f"workitems/{job['id']}/job-1/{task.doc['id']}"
        task.doc["nodeInfo"] = {
            "affinityId": node["affinityId"],
            "nodeUrl": node["url"],
            "poolId": pool["id"],
            "nodeId": node["id"],
            "taskRootDirectory": task_root,
            "taskRootDirectoryUrl": f"{node['url']}/files/{task_root}",
        }
        task.record.files_cleaned = False
        task.record.attempt += 1
        attempt_number = task.record.attempt
        node["runningTasksCount"] += 1
        node["runningTaskSlotsCount"] += slots
        node["totalTasksRun"] += 1
        if node["state"] != NodeState.RUNNING:
            node["state"] = NodeState.RUNNING
            node["stateTransitionTime"] = moment
        state.runs[(job_key, task_key)] = Run(attempt_number, pool_key, node_key, slots)
        attempt = environment.task_attempt(state, job, task.doc, pool, node)
        key = f"{state.account_name}/{node['id']}/{job['id']}/{task.doc['id']}/{attempt_number}"
        runner.with_container(attempt, task.doc.get("containerSettings"), key)
        attempt.refusal = container_mismatch(pool, task.doc)
        state.save_task(job_key, task_key)
        state.executor.submit(self._execute, job_key, task_key, attempt_number, attempt)

    def _current_run(self, job_key: str, task_key: str, attempt_number: int) -> Run | None:
        run = self.state.runs.get((job_key, task_key))
        return run if run is not None and run.attempt == attempt_number else None

    def _execute(self, job_key: str, task_key: str, attempt_number: int, attempt: runner.Attempt) -> None:
        """One attempt on a worker thread: prepare, run, upload, record. Never raises."""
        try:
            self._execute_attempt(job_key, task_key, attempt_number, attempt)
        except Exception as problem:  # the boundary of a worker thread: record, never lose the slot
            logger.exception(
                "task %s/%s attempt %d crashed in the emulator", attempt.job_id, attempt.task_id, attempt_number
            )
            with self.state.lock:
                self._finish(
                    job_key,
                    task_key,
                    attempt_number,
                    None,
                    runner.Failure(
                        "servererror",
                        "Unknown",
                        "An unknown scheduling error has occurred.",
                        {"Message": runner.redact_queries(str(problem))[:500]},
                    ),
                    launched=False,
                )

    def _still_wanted(self, job_key: str, task_key: str, attempt_number: int) -> bool:
        run = self._current_run(job_key, task_key, attempt_number)
        return run is not None and run.stop_reason is None and not self.state.stopping

    def _execute_attempt(self, job_key: str, task_key: str, attempt_number: int, attempt: runner.Attempt) -> None:
        state = self.state
        started = time.monotonic()
        if state.task_start_delay > 0:
            time.sleep(state.task_start_delay)  # a node agent is not instantaneous; the task stays preparing
        if attempt.refusal is not None:
            with state.lock:
                self._finish(job_key, task_key, attempt_number, None, attempt.refusal, launched=False)
            return
        if not self._ensure_job_preparation(job_key, task_key, attempt_number):
            return
        try:
            environment.install_packages(attempt)
            runner.prepare(attempt)
        except runner.Failure as prepare_failure:
            with state.lock:
                self._finish(job_key, task_key, attempt_number, None, prepare_failure, launched=False)
            return
        with state.lock:
            if not self._still_wanted(job_key, task_key, attempt_number):
                self._finish(job_key, task_key, attempt_number, None, None, launched=False)
                return
        # Spawning takes milliseconds: do it outside the lock, then register it (or kill it if the
        # task was terminated, deleted or requeued meanwhile).
        try:
            process = runner.launch(attempt)
        except runner.Failure as launch_failure:
            with state.lock:
                self._finish(job_key, task_key, attempt_number, None, launch_failure, launched=False)
            return
        identity = processes.identify(process.pid)  # read before taking the lock: it is a few /proc reads
        with state.lock:
            run = self._current_run(job_key, task_key, attempt_number)
            if run is None or run.stop_reason is not None or state.stopping:
                runner.kill_tree(process.pid)
                process.wait()
                self._finish(job_key, task_key, attempt_number, None, None, launched=False)
                return
            run.process_pid = process.pid
            task = state.tasks[job_key][task_key]
            state.set_task_state(job_key, task.doc, TaskState.RUNNING)
            task.record.process = identity
            state.save_task(job_key, task_key)
        remaining = None
        if attempt.wall_clock_seconds is not None:
            remaining = max(0.0, attempt.wall_clock_seconds - (time.monotonic() - started))
        exit_code, timed_out = runner.wait(process, remaining)
        with state.lock:
            run = self._current_run(job_key, task_key, attempt_number)
            if run is None:
                return
            run.process_pid = None
            reason = run.stop_reason
            if reason in (StopReason.REQUEUE, StopReason.DELETE) or state.stopping:
                self._finish(job_key, task_key, attempt_number, exit_code, None, launched=True)
                return
            task_doc = state.tasks[job_key][task_key].doc
            retries = int(task_doc["constraints"]["maxTaskRetryCount"])
            retry_count = int(task_doc["executionInfo"].get("retryCount", 0))
            if exit_code != 0 and not timed_out and reason is None and (retries == -1 or retry_count < retries):
                self._retry(job_key, task_key, exit_code)
                return
        failure: runner.Failure | None = None
        if reason == StopReason.TERMINATE:
            failure = runner.Failure("usererror", "TaskEnded", TASK_ENDED_BY_USER)
        elif timed_out:
            failure = runner.Failure(
                "usererror",
                "TaskEnded",
                "The task exceeded its maximum wall clock time and was ended.",
                {"Message": f"maxWallClockTime {task_doc['constraints']['maxWallClockTime']} was exceeded"},
            )
        elif exit_code != 0:
            failure = runner.exit_code_failure()
        upload_failed = False
        try:
            runner.upload_outputs(attempt, succeeded=failure is None)
        except runner.Failure as upload_failure:
            upload_failed = True
            if failure is None:
                failure = upload_failure
            else:
                failure.details.setdefault("FileUploadError", upload_failure.details.get("Message", ""))
        with state.lock:
            if state.completion_lag > 0:
                # The process has exited and its files are uploaded, yet the task stays `running` a while, as
                # Batch's state can lag behind the node (--completion-lag-seconds); a stopping emulator cuts it.
                state.wakeup.wait_for(lambda: state.stopping, timeout=state.completion_lag)
            self._finish(
                job_key, task_key, attempt_number, exit_code, failure, launched=True, upload_failed=upload_failed
            )

    # ------------------------------------------------------------------ job preparation and release

    def _ensure_job_preparation(self, job_key: str, task_key: str, attempt_number: int) -> bool:
        """Run the job's preparation task on this node once; False if the task must not run here."""
        state = self.state
        with state.lock:
            job = state.jobs.get(job_key)
            if job is None or not job.doc.get("jobPreparationTask"):
                return True
            run = self._current_run(job_key, task_key, attempt_number)
            if run is None:
                return False
            pool = state.pools[run.pool_key].doc
            node_entry = state.nodes[run.pool_key].get(run.node_key)
            if node_entry is None:
                return True  # the node went away; the run will be requeued
            node = node_entry.doc
            lock = state.prep_locks.setdefault((job_key, run.node_key), threading.Lock())
        wait_for_success = job.doc["jobPreparationTask"].get("waitForSuccess", True) is not False
        node_id = str(node["id"])
        with lock:  # two tasks starting together on one node run the preparation once
            with state.lock:
                record: Doc = job.record.prep.get(node_id) or {}
                done = (record.get("preparation") or {}).get("state") == "completed"
                if not done:
                    side, retries = environment.side_task_attempt(state, job.doc, pool, node, "preparation")
                    spec = job.doc["jobPreparationTask"]
                    runner.with_container(side, spec.get("containerSettings"), f"{job_key}/{node_id}/prep")
                    job.record.prep[node_id] = {
                        "poolId": pool["id"],
                        "nodeUrl": node["url"],
                        "preparation": {"state": "running", "startTime": clock.stamp()},
                    }
                    state.save_job(job_key)
            if not done:
                info = run_side_task(side, retries)
                with state.lock:
                    if job_key in state.jobs:
                        job.record.prep[node_id]["preparation"] = info
                        state.save_job(job_key)
                record = {"preparation": info}
        if (record.get("preparation") or {}).get("result") == "success" or not wait_for_success:
            return True
        with state.lock:
            # Batch: "the triggering task will revert to the active state and will not be run" (on this node).
            task = state.tasks.get(job_key, {}).get(task_key)
            if self._current_run(job_key, task_key, attempt_number) is not None and task is not None:
                self._release(job_key, task_key)
                task.record.process = None
                state.set_task_state(job_key, task.doc, TaskState.ACTIVE)
                state.ready[job_key].append(task_key)
                state.save_task(job_key, task_key)
        return False

    def start_job_release(self, job_key: str) -> bool:
        """Start the release task on every node that ran the preparation; True while any is running."""
        state = self.state
        job = state.jobs[job_key]
        if not job.doc.get("jobReleaseTask"):
            return False
        pending = False
        for node_id, record in job.record.prep.items():
            release = record.get("release")
            if release is not None:
                pending = pending or release.get("state") == "running"
                continue
            pool_key = validation.key(str(record.get("poolId") or ""))
            node = state.nodes.get(pool_key, {}).get(validation.key(node_id))
            if node is None or pool_key not in state.pools:
                continue
            side, _retries = environment.side_task_attempt(
                state, job.doc, state.pools[pool_key].doc, node.doc, "release"
            )
            settings = job.doc["jobReleaseTask"].get("containerSettings")
            runner.with_container(side, settings, f"{job_key}/{node_id}/release")
            record["release"] = {"state": "running", "startTime": clock.stamp()}
            pending = True
            state.executor.submit(self._run_release, job_key, node_id, side)
        state.save_job(job_key)
        return pending

    def _run_release(self, job_key: str, node_id: str, side: runner.Attempt) -> None:
        info = run_side_task(side, 0)
        state = self.state
        with state.lock:
            job = state.jobs.get(job_key)
            if job is not None and node_id in job.record.prep:
                job.record.prep[node_id]["release"] = info
                state.save_job(job_key)
            state.wakeup.notify_all()

    # ------------------------------------------------------------------ outcomes (under the lock)

    def _release(self, job_key: str, task_key: str) -> Run | None:
        """Give the attempt's node slots back."""
        state = self.state
        run = state.runs.pop((job_key, task_key), None)
        if run is None:
            return None
        entry = state.nodes.get(run.pool_key, {}).get(run.node_key)
        if entry is not None:
            node = entry.doc
            node["runningTasksCount"] = max(0, int(node["runningTasksCount"]) - 1)
            node["runningTaskSlotsCount"] = max(0, int(node["runningTaskSlotsCount"]) - run.slots)
            if node["runningTasksCount"] == 0 and node["state"] == NodeState.RUNNING:
                node["state"] = NodeState.IDLE
                node["stateTransitionTime"] = clock.stamp()
        state.wakeup.notify_all()
        return run

    def _retry(self, job_key: str, task_key: str, exit_code: int) -> None:
        state = self.state
        task = state.tasks[job_key][task_key]
        self._release(job_key, task_key)
        info = task.doc["executionInfo"]
        info["retryCount"] = int(info.get("retryCount", 0)) + 1
        info["exitCode"] = exit_code
        task.record.process = None
        state.set_task_state(job_key, task.doc, TaskState.ACTIVE)
        state.ready[job_key].appendleft(task_key)
        state.save_task(job_key, task_key)

    def _finish(
        self,
        job_key: str,
        task_key: str,
        attempt_number: int,
        exit_code: int | None,
        failure: runner.Failure | None,
        *,
        launched: bool,
        upload_failed: bool = False,
    ) -> None:
        state = self.state
        run = self._current_run(job_key, task_key, attempt_number)
        if run is None:
            return
        self._release(job_key, task_key)
        task = state.tasks.get(job_key, {}).get(task_key)
        if task is None:
            return
        task.record.process = None
        reason = run.stop_reason
        if reason == StopReason.DELETE:
            state.forget_task(job_key, task_key)
            return
        doc = task.doc
        if reason == StopReason.REQUEUE or (state.stopping and reason is None):
            if state.stopping:
                return  # the journal keeps it running; the next start requeues it
            info = doc["executionInfo"]
            info["requeueCount"] = int(info.get("requeueCount", 0)) + 1
            info["lastRequeueTime"] = clock.stamp()
            state.set_task_state(job_key, doc, TaskState.ACTIVE)
            state.ready[job_key].appendleft(task_key)
            state.save_task(job_key, task_key)
            return
        if reason == StopReason.TERMINATE and failure is None:
            failure = runner.Failure("usererror", "TaskEnded", TASK_ENDED_BY_USER)
        state.count(job_key, doc, -1)
        moment = clock.stamp()
        doc["previousState"] = doc["state"]
        doc["previousStateTransitionTime"] = doc["stateTransitionTime"]
        doc["state"] = TaskState.COMPLETED
        doc["stateTransitionTime"] = moment
        state.touch(doc, moment)
        info = doc["executionInfo"]
        info["endTime"] = moment
        if launched and exit_code is not None:
            info["exitCode"] = exit_code
        else:
            info.pop("exitCode", None)
        info["result"] = "success" if failure is None else "failure"
        if failure is not None:
            info["failureInfo"] = failure.info()
        else:
            info.pop("failureInfo", None)
        state.count(job_key, doc, +1)
        node = state.nodes.get(run.pool_key, {}).get(run.node_key)
        if node is not None and failure is None:
            node.doc["totalTasksSucceeded"] += 1
        state.save_task(job_key, task_key)
        state.schedule_retention(job_key, task_key, task)
        state.wake_dependents(job_key)
        if reason is None:
            self._apply_exit_conditions(job_key, doc, failure, launched, upload_failed)

    def _apply_exit_conditions(
        self, job_key: str, task: Doc, failure: runner.Failure | None, launched: bool, upload_failed: bool
    ) -> None:
        job = self.state.jobs[job_key].doc
        if job["onTaskFailure"] != "performexitoptionsjobaction" or job["state"] != JobState.ACTIVE:
            return
        conditions = task.get("exitConditions") or {}
        exit_code = (task.get("executionInfo") or {}).get("exitCode")
        options: Doc | None = None
        if launched and exit_code is not None:
            options = exit_options(conditions, int(exit_code))
        if options is None and not launched and failure is not None:
            options = conditions.get("preProcessingError")
        if options is None and upload_failed:
            options = conditions.get("fileUploadError")
        if options is None and failure is not None:
            options = conditions.get("default")
        if options is None and failure is None:
            return
        action = str((options or {}).get("jobAction") or ("terminate" if failure is not None else "none")).lower()
        if action == "terminate":
            self.jobs.terminate(job_key, "TaskFailed")
        elif action == "disable":
            self.jobs.disable(job_key, "requeue")
