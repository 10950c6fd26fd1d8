"""Tasks: validation, creation (one or a collection of 100), updates, terminate/reactivate/delete, task files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from local.batch import clock, odata, runner, validation
from local.batch.backend import environment, listing
from local.batch.backend.jobs import require_open
from local.batch.backend.records import Doc, StopReason, Stored, TaskRecord, TaskState
from local.batch.backend.state import DEFAULT_RETENTION, TASK_ENDED_BY_USER, State, copy_given, succeeded
from local.batch.errors import BatchApiError, conflict, error_dict, invalid_property, missing_property


def _check_exit_conditions(job: Doc, conditions: Any) -> None:
    """Batch refuses exit options that the job's settings would never use."""
    if not conditions:
        return
    options: list[tuple[str, Any]] = []
    for name in ("preProcessingError", "fileUploadError", "default"):
        if conditions.get(name) is not None:
            options.append((f"exitConditions.{name}", conditions[name]))
    for index, mapping in enumerate(conditions.get("exitCodes") or []):
        if not isinstance(mapping, dict) or not isinstance(mapping.get("code"), int):
            raise invalid_property(f"exitConditions.exitCodes[{index}].code", mapping, "must be an integer")
        options.append((f"exitConditions.exitCodes[{index}].exitOptions", mapping.get("exitOptions")))
    for index, mapping in enumerate(conditions.get("exitCodeRanges") or []):
        start, end = (mapping.get("start"), mapping.get("end")) if isinstance(mapping, dict) else (None, None)
        if not isinstance(start, int) or not isinstance(end, int) or start > end:
            raise invalid_property(f"exitConditions.exitCodeRanges[{index}]", mapping, "needs integers start <= end")
        options.append((f"exitConditions.exitCodeRanges[{index}].exitOptions", mapping.get("exitOptions")))
    for where, exit_options in options:
        if not isinstance(exit_options, dict):
            continue
        if exit_options.get("jobAction") is not None and job["onTaskFailure"] == "noaction":
            raise invalid_property(
                f"{where}.jobAction",
                exit_options["jobAction"],
                "jobAction requires the job's onTaskFailure to be performexitoptionsjobaction",
            )
        if exit_options.get("dependencyAction") is not None and not job.get("usesTaskDependencies"):
            raise invalid_property(
                f"{where}.dependencyAction",
                exit_options["dependencyAction"],
                "dependencyAction requires the job's usesTaskDependencies to be true",
            )


def _require_not_completed(task: Doc) -> None:
    if task["state"] == TaskState.COMPLETED:
        raise conflict("TaskCompleted", "The specified task is already in a completed state.")


class Tasks:
    """Task operations of the REST API."""

    def __init__(self, state: State) -> None:
        self.state = state

    def _validate(self, job: Doc, body: Any) -> str:
        if not isinstance(body, dict):
            raise BatchApiError(400, "InvalidRequestBody", "The specified Request Body is not syntactically valid.")
        task_id = validation.check_id(body.get("id"))
        if not body.get("commandLine"):
            raise missing_property("commandLine")
        validation.check_resource_files(body.get("resourceFiles"))
        validation.check_output_files(body.get("outputFiles"))
        validation.check_environment(body.get("environmentSettings"), "environmentSettings")
        constraints = body.get("constraints") or {}
        validation.check_duration(constraints.get("maxWallClockTime"), "constraints.maxWallClockTime")
        validation.check_duration(constraints.get("retentionTime"), "constraints.retentionTime")
        validation.check_int(constraints.get("maxTaskRetryCount"), "constraints.maxTaskRetryCount", -1)
        validation.check_int(body.get("requiredSlots"), "requiredSlots", 1)
        validation.user_identity(body.get("userIdentity"))
        self._check_container(job, body.get("containerSettings"))
        _check_exit_conditions(job, body.get("exitConditions"))
        depends = body.get("dependsOn") or {}
        if len("".join(str(task_id) for task_id in depends.get("taskIds") or [])) > 64000:
            raise BatchApiError(
                400,
                "TaskDependencyListTooLong",
                "The task depends on too many task ids; the combined length of the ids is limited to 64000 "
                "characters. Consider task id ranges instead.",
            )
        if body.get("dependsOn") and not job.get("usesTaskDependencies"):
            raise BatchApiError(
                400,
                "TaskDependenciesNotSpecifiedOnJob",
                "The specified job does not have usesTaskDependencies set, so tasks cannot depend on other tasks.",
            )
        if body.get("multiInstanceSettings"):
            raise BatchApiError(
                400,
                "UnsupportedProperty",
                "The emulator does not run multi-instance tasks.",
                {"PropertyName": "multiInstanceSettings"},
            )
        environment.check_task_packages(body.get("applicationPackageReferences"))
        return task_id

    def _check_container(self, job: Doc, settings: Any) -> None:
        """containerSettings is checked, and refused when the job's pool (already known) runs no containers.

        The spec (BatchTaskCreateOptions.containerSettings): "If the Pool that will run this Task doesn't have
        containerConfiguration set, this must not be set." Whether Batch refuses it when the task is added or
        fails the task on the node has not been checked; refusing here is the stricter of the two. A pool not
        known yet (an auto pool, or created later) is checked again when the task starts (execution.py).
        """
        validation.check_container_settings(settings)
        pool_id = (job.get("poolInfo") or {}).get("poolId")
        pool = self.state.pools.get(validation.key(str(pool_id))) if settings is not None and pool_id else None
        if pool is not None and not (pool.doc.get("virtualMachineConfiguration") or {}).get("containerConfiguration"):
            raise invalid_property(
                "containerSettings",
                settings.get("imageName"),  # not the whole object: a registry password must not be echoed
                f"the job's pool {pool_id} has no virtualMachineConfiguration.containerConfiguration",
            )

    def _add(self, job_key: str, body: Doc) -> Doc:
        state = self.state
        job = state.jobs[job_key].doc
        task_id = str(body["id"])
        moment = clock.stamp()
        constraints = body.get("constraints") or {}
        retry = constraints.get("maxTaskRetryCount")
        task: Doc = {
            "id": task_id,
            "url": state.url("jobs", str(job["id"]), "tasks", task_id),
            "creationTime": moment,
            "state": TaskState.ACTIVE,
            "stateTransitionTime": moment,
            "commandLine": body["commandLine"],
            "constraints": {
                "maxWallClockTime": constraints.get("maxWallClockTime") or clock.UNLIMITED,
                "retentionTime": constraints.get("retentionTime") or DEFAULT_RETENTION,
                "maxTaskRetryCount": int(retry if retry is not None else job["constraints"]["maxTaskRetryCount"]),
            },
            "requiredSlots": int(body.get("requiredSlots") or 1),
            "userIdentity": validation.user_identity(body.get("userIdentity")),
            "executionInfo": {"retryCount": 0, "requeueCount": 0},
        }
        record = TaskRecord(seq=state.next_seq())
        copy_given(
            task,
            body,
            (
                "displayName",
                "exitConditions",
                "resourceFiles",
                "outputFiles",
                "environmentSettings",
                "affinityInfo",
                "containerSettings",
                "dependsOn",
                "applicationPackageReferences",
            ),
        )
        state.touch(task, moment)
        task_key = validation.key(task_id)
        state.tasks[job_key][task_key] = Stored(task, record)
        state.count(job_key, task, +1)
        state.ready[job_key].append(task_key)
        state.save_task(job_key, task_key)
        return task

    def create_task(self, job_id: str, body: Doc) -> Doc:
        state = self.state
        with state.lock:
            job = state.job(job_id).doc
            require_open(job)
            task_id = self._validate(job, body)
            job_key = validation.key(job_id)
            if validation.key(task_id) in state.tasks[job_key]:
                raise conflict("TaskExists", "The specified task already exists.")
            task = self._add(job_key, body)
            state.wakeup.notify_all()
            return listing.public(task)

    def create_task_collection(self, job_id: str, body: Any) -> list[Doc]:
        values = body.get("value") if isinstance(body, dict) else None
        if not isinstance(values, list):
            raise BatchApiError(
                400,
                "InvalidRequestBody",
                "The specified Request Body is not syntactically valid.",
                {"Reason": "the body must be an object with a 'value' array"},
            )
        if len(values) > 100:
            raise BatchApiError(
                400,
                "InvalidPropertyValue",
                "A task collection can hold at most 100 tasks.",
                {
                    "PropertyName": "value",
                    "PropertyValue": str(len(values)),
                    "Reason": "The maximum number of tasks in a collection is 100.",
                },
            )
        results: list[Doc] = []
        state = self.state
        with state.lock:
            job = state.job(job_id).doc
            require_open(job)
            job_key = validation.key(job_id)
            seen: set[str] = set()
            for item in values:
                task_id = str(item.get("id")) if isinstance(item, dict) else ""
                try:
                    self._validate(job, item)
                    task_key = validation.key(task_id)
                    if task_key in state.tasks[job_key] or task_key in seen:
                        raise conflict("TaskExists", "The specified task already exists.")
                    task = self._add(job_key, item)
                    seen.add(task_key)
                    results.append(
                        {
                            "status": "success",
                            "taskId": task["id"],
                            "eTag": task["eTag"],
                            "lastModified": task["lastModified"],
                            "location": task["url"],
                        }
                    )
                except BatchApiError as problem:
                    results.append(
                        {
                            "status": "clienterror" if problem.status < 500 else "servererror",
                            "taskId": task_id,
                            "error": error_dict(problem.code, problem.message, problem.values),
                        }
                    )
            state.wakeup.notify_all()
        return results

    def get_task(self, job_id: str, task_id: str) -> Doc:
        with self.state.lock:
            return listing.public(self.state.task(job_id, task_id)[2].doc)

    def list_tasks(self, job_id: str, query: dict[str, str]) -> tuple[list[Doc], str | None]:
        with self.state.lock:
            self.state.job(job_id)
            tasks = self.state.tasks[validation.key(job_id)].values()
            return listing.page(((t.seq, t.doc) for t in tasks), query, odata.TASK_FILTERS)

    def update_task(self, job_id: str, task_id: str, body: Doc, if_match: str | None = None) -> None:
        constraints = body.get("constraints") or {}
        validation.check_duration(constraints.get("maxWallClockTime"), "constraints.maxWallClockTime")
        validation.check_duration(constraints.get("retentionTime"), "constraints.retentionTime")
        validation.check_int(constraints.get("maxTaskRetryCount"), "constraints.maxTaskRetryCount", -1)
        state = self.state
        with state.lock:
            job_key, task_key, task = state.task(job_id, task_id)
            state.check_etag(task.doc, if_match, None)
            _require_not_completed(task.doc)
            for name in ("maxWallClockTime", "retentionTime", "maxTaskRetryCount"):
                if constraints.get(name) is not None:
                    task.doc["constraints"][name] = constraints[name]
            state.touch(task.doc)
            state.save_task(job_key, task_key)

    def terminate_task(self, job_id: str, task_id: str, if_match: str | None = None) -> None:
        state = self.state
        with state.lock:
            job_key, task_key, task = state.task(job_id, task_id)
            state.check_etag(task.doc, if_match, None)
            _require_not_completed(task.doc)
            if task.doc["state"] == TaskState.ACTIVE:
                state.complete_without_running(
                    job_key, task_key, task.doc, runner.Failure("usererror", "TaskEnded", TASK_ENDED_BY_USER)
                )
            else:
                state.stop_run(job_key, task_key, StopReason.TERMINATE)
            state.wakeup.notify_all()

    def reactivate_task(self, job_id: str, task_id: str, if_match: str | None = None) -> None:
        state = self.state
        with state.lock:
            job_key, task_key, task = state.task(job_id, task_id)
            doc = task.doc
            state.check_etag(doc, if_match, None)
            require_open(state.jobs[job_key].doc)
            if doc["state"] != TaskState.COMPLETED:
                raise conflict(
                    "TaskNotCompleted",
                    "The specified task is not in a completed state, and the "
                    "requested operation can be performed only on completed tasks.",
                )
            if succeeded(doc):
                raise conflict(
                    "TaskSucceeded",
                    "The specified task has already completed successfully, and the "
                    "requested operation cannot be performed on successful tasks.",
                )
            state.count(job_key, doc, -1)
            info = doc["executionInfo"]
            doc["executionInfo"] = {"retryCount": 0, "requeueCount": int(info.get("requeueCount", 0))}
            if info.get("lastRequeueTime"):
                doc["executionInfo"]["lastRequeueTime"] = info["lastRequeueTime"]
            state.set_task_state(job_key, doc, TaskState.ACTIVE, count=False)
            state.count(job_key, doc, +1)
            state.ready[job_key].append(task_key)
            state.save_task(job_key, task_key)
            state.wakeup.notify_all()

    def delete_task(self, job_id: str, task_id: str, if_match: str | None = None) -> None:
        state = self.state
        with state.lock:
            job_key, task_key, task = state.task(job_id, task_id)
            state.check_etag(task.doc, if_match, None)
            if (job_key, task_key) in state.runs:
                state.stop_run(job_key, task_key, StopReason.DELETE)
            state.forget_task(job_key, task_key)

    def task_file_root(self, job_id: str, task_id: str) -> Path:
        with self.state.lock:
            job_key, _task_key, task = self.state.task(job_id, task_id)
            root = self.state.task_dir(job_key, task.doc)
            if root is None:
                raise conflict("TaskFilesUnavailable", "The files of the specified task are unavailable.")
            if task.record.files_cleaned:
                raise conflict("TaskFilesCleanedup", "The files of the specified task are cleanedup.")
            return root
