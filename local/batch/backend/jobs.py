"""Jobs: creation (with auto pools), updates, the job state machine, prep/release status, task counts."""

from __future__ import annotations

import copy
import uuid
from collections import deque
from collections.abc import Mapping

from local.batch import clock, odata, validation
from local.batch.backend import listing
from local.batch.backend.pools import Pools
from local.batch.backend.records import Doc, JobCounts, JobRecord, JobState, StopReason, Stored
from local.batch.backend.state import State, copy_given
from local.batch.errors import BatchApiError, conflict, invalid_property, missing_property

# A job in one of these states takes no new tasks and no changes.
_CLOSED_STATES = {
    JobState.COMPLETED: ("JobCompleted", "The specified job is already in a completed state."),
    JobState.DELETING: (
        "JobBeingDeleted",
        "The specified job has been marked for deletion and is being garbage collected.",
    ),
    JobState.TERMINATING: ("JobBeingTerminated", "The specified job is being terminated."),
}


def require_open(job: Doc) -> None:
    """Refuse a change to a job that is completed, terminating or being deleted."""
    closed = _CLOSED_STATES.get(job["state"])
    if closed is not None:
        raise conflict(*closed)


def _check_side_tasks(body: Doc) -> None:
    prep, release = body.get("jobPreparationTask"), body.get("jobReleaseTask")
    if release is not None and prep is None:
        raise invalid_property(
            "jobReleaseTask", "specified", "a job release task can only be specified with a job preparation task"
        )
    for name, spec in (("jobPreparationTask", prep), ("jobReleaseTask", release)):
        if spec is None:
            continue
        if not spec.get("commandLine"):
            raise missing_property(f"{name}.commandLine")
        validation.check_resource_files(spec.get("resourceFiles"), f"{name}.resourceFiles")
        validation.check_environment(spec.get("environmentSettings"), f"{name}.environmentSettings")
        constraints = spec.get("constraints") or {}
        validation.check_duration(constraints.get("maxWallClockTime"), f"{name}.constraints.maxWallClockTime")
        validation.check_duration(spec.get("maxWallClockTime"), f"{name}.maxWallClockTime")
        validation.check_int(constraints.get("maxTaskRetryCount"), f"{name}.constraints.maxTaskRetryCount", -1)
        if spec.get("id") is not None:
            validation.check_id(spec.get("id"), f"{name}.id")


def _check_create(body: Doc) -> str:
    job_id = validation.check_id(body.get("id"))
    pool_info = body.get("poolInfo")
    if not isinstance(pool_info, dict) or not (pool_info.get("poolId") or pool_info.get("autoPoolSpecification")):
        raise missing_property("poolInfo")
    constraints = body.get("constraints") or {}
    validation.check_duration(constraints.get("maxWallClockTime"), "constraints.maxWallClockTime")
    validation.check_int(constraints.get("maxTaskRetryCount"), "constraints.maxTaskRetryCount", -1)
    validation.check_int(body.get("maxParallelTasks"), "maxParallelTasks", -1)
    validation.check_int(body.get("priority"), "priority", -1000)
    validation.check_metadata(body.get("metadata"))
    validation.check_environment(body.get("commonEnvironmentSettings"), "commonEnvironmentSettings")
    for name, allowed in (
        ("onAllTasksComplete", ("noaction", "terminatejob")),
        ("onTaskFailure", ("noaction", "performexitoptionsjobaction")),
    ):
        value = body.get(name)
        if value is not None and str(value).lower() not in allowed:
            raise invalid_property(name, value, f"must be one of {', '.join(allowed)}")
    if body.get("jobManagerTask") is not None:
        # Refused rather than ignored: a job relying on it would behave differently on Azure.
        raise BatchApiError(
            400,
            "UnsupportedProperty",
            "The Batch emulator does not run jobManagerTask; see docs/emulator.md.",
            {"PropertyName": "jobManagerTask"},
        )
    _check_side_tasks(body)
    return job_id


class Jobs:
    """Job operations of the REST API, and the job state changes the scheduler and exit conditions make."""

    def __init__(self, state: State, pools: Pools) -> None:
        self.state = state
        self.pools = pools

    def _active_jobs(self) -> int:
        return sum(
            1 for job in self.state.jobs.values() if job.doc["state"] not in (JobState.COMPLETED, JobState.DELETING)
        )

    def create_job(self, body: Doc) -> Doc:
        job_id = _check_create(body)
        pool_info = body["poolInfo"]
        constraints = body.get("constraints") or {}
        state = self.state
        with state.lock:
            job_key = validation.key(job_id)
            if job_key in state.jobs:
                raise conflict("JobExists", "The specified job already exists.")
            if state.job_quota is not None and self._active_jobs() >= state.job_quota:
                raise conflict(
                    "ActiveJobAndScheduleQuotaReached",
                    "The active job and job schedule quota for this account has been reached.",
                )
            moment = clock.stamp()
            job: Doc = {
                "id": job_id,
                "url": state.url("jobs", job_id),
                "creationTime": moment,
                "state": JobState.ACTIVE,
                "stateTransitionTime": moment,
                "priority": int(body.get("priority") or 0),
                "maxParallelTasks": -1 if body.get("maxParallelTasks") is None else int(body["maxParallelTasks"]),
                "allowTaskPreemption": bool(body.get("allowTaskPreemption") or False),
                "usesTaskDependencies": bool(body.get("usesTaskDependencies") or False),
                "constraints": {
                    "maxWallClockTime": constraints.get("maxWallClockTime") or clock.UNLIMITED,
                    "maxTaskRetryCount": int(constraints.get("maxTaskRetryCount") or 0),
                },
                "poolInfo": copy.deepcopy(pool_info),
                "onAllTasksComplete": str(body.get("onAllTasksComplete") or "noaction").lower(),
                "onTaskFailure": str(body.get("onTaskFailure") or "noaction").lower(),
                "executionInfo": {"startTime": moment},
            }
            record = JobRecord(seq=state.next_seq())
            copy_given(
                job,
                body,
                (
                    "displayName",
                    "metadata",
                    "commonEnvironmentSettings",
                    "networkConfiguration",
                    "jobPreparationTask",
                    "jobReleaseTask",
                ),
            )
            if pool_info.get("poolId"):
                job["executionInfo"]["poolId"] = pool_info["poolId"]
            else:
                spec = pool_info["autoPoolSpecification"]
                pool_spec = dict(spec.get("pool") or {})
                pool_id = (
                    f"{spec.get('autoPoolIdPrefix') or ''}{'_' if spec.get('autoPoolIdPrefix') else ''}"
                    f"{str(uuid.uuid4()).upper()}"
                )
                pool_spec["id"] = pool_id[:64]
                validation.check_pool_spec(pool_spec, "poolInfo.autoPoolSpecification.pool.")
                self.pools.add_pool(pool_spec)
                job["executionInfo"]["poolId"] = pool_spec["id"]
            state.touch(job, moment)
            state.jobs[job_key] = Stored(job, record)
            state.tasks[job_key] = {}
            state.counts[job_key] = JobCounts()
            state.ready[job_key] = deque()
            state.save_job(job_key)
            state.wakeup.notify_all()
            return listing.public(job)

    def get_job(self, job_id: str) -> Doc:
        with self.state.lock:
            return listing.public(self.state.job(job_id).doc)

    def list_jobs(self, query: dict[str, str]) -> tuple[list[Doc], str | None]:
        with self.state.lock:
            return listing.page(((j.seq, j.doc) for j in self.state.jobs.values()), query, odata.JOB_FILTERS)

    def update_job(self, job_id: str, body: Doc, replace: bool, if_match: str | None = None) -> None:
        constraints = body.get("constraints")
        if constraints is not None:
            validation.check_duration(constraints.get("maxWallClockTime"), "constraints.maxWallClockTime")
            validation.check_int(constraints.get("maxTaskRetryCount"), "constraints.maxTaskRetryCount", -1)
        validation.check_metadata(body.get("metadata"))
        value = body.get("onAllTasksComplete")
        if value is not None and str(value).lower() not in ("noaction", "terminatejob"):
            raise invalid_property("onAllTasksComplete", value, "must be noaction or terminatejob")
        if replace and not body.get("poolInfo"):
            raise missing_property("poolInfo")  # an update (PUT) replaces the job's properties: poolInfo included
        state = self.state
        with state.lock:
            job = state.job(job_id).doc
            state.check_etag(job, if_match, None)
            require_open(job)
            if "poolInfo" in body and body["poolInfo"] is not None:
                if job["state"] != JobState.DISABLED and body["poolInfo"] != job["poolInfo"]:
                    raise conflict(
                        "OperationInvalidForCurrentState",
                        "The pool of a job can only be changed while the job is disabled.",
                    )
                job["poolInfo"] = copy.deepcopy(body["poolInfo"])
                if body["poolInfo"].get("poolId"):
                    job["executionInfo"]["poolId"] = body["poolInfo"]["poolId"]
            if replace:
                _replace_properties(job, body, constraints or {})
            else:
                _patch_properties(job, body, constraints)
            state.touch(job)
            state.save_job(validation.key(job_id))
            state.wakeup.notify_all()

    def terminate_job(self, job_id: str, reason: str | None, if_match: str | None = None) -> None:
        with self.state.lock:
            job = self.state.job(job_id).doc
            self.state.check_etag(job, if_match, None)
            require_open(job)
            self.terminate(validation.key(job_id), reason or "UserTerminate")

    def terminate(self, job_key: str, reason: str) -> None:
        """Start terminating a job (the scheduler completes it once its running tasks are gone)."""
        state = self.state
        job = state.jobs[job_key].doc
        if job["state"] in (JobState.TERMINATING, JobState.COMPLETED, JobState.DELETING):
            return
        state.set_job_state(job_key, JobState.TERMINATING)
        job["executionInfo"]["terminateReason"] = reason
        # Batch: active tasks stay active (and are never scheduled); running ones are terminated.
        self._stop_runs(job_key, StopReason.TERMINATE)
        state.save_job(job_key)
        state.wakeup.notify_all()

    def _stop_runs(self, job_key: str, reason: StopReason) -> None:
        for (run_job, task_key), _run in list(self.state.runs.items()):
            if run_job == job_key:
                self.state.stop_run(job_key, task_key, reason)

    def delete_job(self, job_id: str, if_match: str | None = None) -> None:
        state = self.state
        with state.lock:
            job = state.job(job_id).doc
            state.check_etag(job, if_match, None)
            job_key = validation.key(job_id)
            if job["state"] == JobState.DELETING:
                return
            state.set_job_state(job_key, JobState.DELETING)
            self._stop_runs(job_key, StopReason.DELETE)
            state.save_job(job_key)
            state.wakeup.notify_all()

    def disable_job(self, job_id: str, option: str | None) -> None:
        with self.state.lock:
            job = self.state.job(job_id).doc
            require_open(job)
            if job["state"] != JobState.ACTIVE:
                raise conflict("JobNotActive", "The specified job is not in active state.")
            self.disable(validation.key(job_id), (option or "requeue").lower())

    def disable(self, job_key: str, option: str) -> None:
        self.state.set_job_state(job_key, JobState.DISABLED)
        if option in (StopReason.REQUEUE, StopReason.TERMINATE):
            self._stop_runs(job_key, StopReason(option))
        self.state.save_job(job_key)
        self.state.wakeup.notify_all()

    def enable_job(self, job_id: str) -> None:
        state = self.state
        with state.lock:
            job = state.job(job_id).doc
            require_open(job)
            if job["state"] != JobState.DISABLED:
                raise conflict("JobNotDisabled", "The specified job is not in disabled state.")
            state.set_job_state(validation.key(job_id), JobState.ACTIVE)
            state.save_job(validation.key(job_id))
            state.wakeup.notify_all()

    def preparation_and_release_status(self, job_id: str, query: Mapping[str, str]) -> tuple[list[Doc], str | None]:
        with self.state.lock:
            job = self.state.job(job_id)
            if not job.doc.get("jobPreparationTask"):
                raise conflict(
                    "JobPreparationTaskNotSpecified", "The specified job does not have job preparation task."
                )
            entries: list[tuple[int, Doc]] = []
            for index, (node_id, record) in enumerate(sorted(job.record.prep.items()), 1):
                entry: Doc = {
                    "poolId": record.get("poolId"),
                    "nodeId": node_id,
                    "nodeUrl": record.get("nodeUrl"),
                    "jobPreparationTaskExecutionInfo": copy.deepcopy(record.get("preparation")),
                }
                if record.get("release"):
                    entry["jobReleaseTaskExecutionInfo"] = copy.deepcopy(record["release"])
                entries.append((index, entry))
            return listing.page(entries, query, odata.PREP_RELEASE_FILTERS)

    def task_counts(self, job_id: str) -> Doc:
        with self.state.lock:
            self.state.job(job_id)
            counts = self.state.counts[validation.key(job_id)]
            return {"taskCounts": counts.tasks.as_dict(), "taskSlotCounts": counts.slots.as_dict()}


def _replace_properties(job: Doc, body: Doc, constraints: Doc) -> None:
    job["priority"] = int(body.get("priority") or 0)
    job["maxParallelTasks"] = int(body["maxParallelTasks"]) if body.get("maxParallelTasks") is not None else -1
    job["allowTaskPreemption"] = bool(body.get("allowTaskPreemption") or False)
    job["constraints"] = {
        "maxWallClockTime": constraints.get("maxWallClockTime") or clock.UNLIMITED,
        "maxTaskRetryCount": int(constraints.get("maxTaskRetryCount") or 0),
    }
    job["onAllTasksComplete"] = str(body.get("onAllTasksComplete") or "noaction").lower()
    if body.get("metadata") is not None:
        job["metadata"] = copy.deepcopy(body["metadata"])
    else:
        job.pop("metadata", None)


def _patch_properties(job: Doc, body: Doc, constraints: Doc | None) -> None:
    for name in ("priority", "maxParallelTasks", "allowTaskPreemption"):
        if body.get(name) is not None:
            job[name] = body[name]
    if constraints is not None:
        for name in ("maxWallClockTime", "maxTaskRetryCount"):
            if constraints.get(name) is not None:
                job["constraints"][name] = constraints[name]
    if body.get("onAllTasksComplete") is not None:
        job["onAllTasksComplete"] = str(body["onAllTasksComplete"]).lower()
    if body.get("metadata") is not None:
        job["metadata"] = copy.deepcopy(body["metadata"])
