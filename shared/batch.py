"""The Batch gateway: with shared/batch_pools.py (its pool requests), the only module that imports azure.batch
(BatchClient, SDK 15.x)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from enum import Enum
from functools import partial
from typing import TypeVar

from azure.batch import BatchClient
from azure.batch import models as batch_models
from azure.batch.models._models import BatchJobTerminateOptions  # not re-exported in 15.1
from azure.core.credentials import AzureNamedKeyCredential, TokenCredential
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from shared import pool_drift
from shared.batch_pools import node_counts, pool_options
from shared.errors import ConfigError, JobClosed, PermanentError, TransientError
from shared.models import CompletedTask, ResourceFile, TaskCounts, TaskResult, TaskSpec
from shared.pipelines import PipelineSpec, PoolPlan, PoolSpec
from shared.pools import PoolDrift, PoolReport
from shared.redact import redact, redact_value

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Batch answers these codes when a job can take no more tasks; submit then moves the input to a new job.
JOB_CLOSED_CODES = frozenset({"JobCompleted", "JobNotFound", "JobTerminating", "JobBeingDeleted"})
QUOTA_CODES = frozenset({"ActiveJobAndScheduleQuotaReached", "TooManyRequests", "ServerBusy"})
TASK_SELECT = ["id", "state", "stateTransitionTime", "executionInfo"]
TASKS_PER_REQUEST = 100  # Batch's limit for one add-collection request
SERVER_ERROR_ROUNDS = 3  # resubmissions of tasks that Batch answered `servererror`, then TransientError
# An existing pool is read and compared with the file once per this many seconds per process, not per input.
POOL_CHECK_SECONDS = 3600.0


def _error_code(error: HttpResponseError) -> str:
    code = getattr(error.error, "code", None) if error.error is not None else None
    return str(code or "")


def _is_transient(code: str, status: int) -> bool:
    return code in QUOTA_CODES or status == 429 or status >= 500


def _retry_after(error: HttpResponseError) -> float | None:
    headers = getattr(error.response, "headers", None) or {}
    value = headers.get("Retry-After")
    try:
        return float(value) if value else None
    except ValueError:
        return None


class AzureBatch:
    """BatchPort over azure.batch.BatchClient; azure-core errors are translated here."""

    def __init__(
        self,
        client: BatchClient,
        app_setting: Callable[[str], str | None] = os.environ.get,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._app_setting = app_setting  # where a registry's password_setting is read
        self._monotonic = monotonic
        self._pools_checked: dict[str, float] = {}
        self._pool_lock = threading.Lock()
        self.pool_drift: dict[str, tuple[PoolDrift, ...]] = {}  # the last check of each pool in this process

    @classmethod
    def connect(cls, url: str, account_name: str | None, account_key: str | None) -> AzureBatch:
        """SharedKey where a key is given (the local emulator), managed identity otherwise."""
        credential: AzureNamedKeyCredential | TokenCredential
        if account_name and account_key:
            credential = AzureNamedKeyCredential(account_name, account_key)
        else:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        return cls(BatchClient(endpoint=url, credential=credential))

    def _call(self, what: str, action: Callable[[], T]) -> T:
        try:
            return action()
        except HttpResponseError as error:
            code = _error_code(error)
            status = error.status_code or 0
            if code in JOB_CLOSED_CODES:
                raise JobClosed(f"{what}: {code}") from None
            if _is_transient(code, status):
                raise TransientError(f"{what}: Batch answered {status} {code}", _retry_after(error)) from None
            raise PermanentError(f"{what}: Batch answered {status} {code}: {redact(str(error.message))}") from None
        except (ServiceRequestError, ServiceResponseError) as error:
            raise TransientError(f"{what}: Batch unreachable: {type(error).__name__}") from None
        except AzureError as error:
            raise TransientError(f"{what}: {type(error).__name__}: {redact(str(error))}") from None

    def ensure_pool(self, pool: PoolPlan | PoolSpec, start_files: Sequence[ResourceFile] = ()) -> None:
        """Create the pool; an existing one is compared with the file once per POOL_CHECK_SECONDS per process.

        Create and accept PoolExists: one request, and no pool_exists(), which in SDK 15.1 raises
        ResourceNotFoundError for a missing pool (its error policy fires before the 404 -> False mapping).
        """
        plan = pool if isinstance(pool, PoolPlan) else PoolPlan(pool)
        options = pool_options(plan, start_files, self._registry_password)

        def create() -> bool:
            try:
                self._client.create_pool(options)
            except ResourceExistsError as error:
                if _error_code(error) != "PoolExists":
                    raise
                return False
            logger.info("created pool %s", plan.id, extra={"pool_id": plan.id})
            return True

        created = self._call(f"ensure pool {plan.id}", create)
        key = plan.id.lower()
        with self._pool_lock:
            checked = self._pools_checked.get(key)
            if not created and checked is not None and self._monotonic() - checked < POOL_CHECK_SECONDS:
                return
            self._pools_checked[key] = self._monotonic()  # one check at a time per pool, whoever is first
        if created:
            return
        try:
            self.pool_drift[plan.id] = self._reconcile_pool(plan, options)
        except (PermanentError, TransientError) as error:
            # The pool exists, so the input can go ahead; the check is tried again by the next job's creation.
            with self._pool_lock:
                self._pools_checked.pop(key, None)
            logger.warning("pool %s could not be checked against the pipelines file: %s", plan.id, error,
                           extra={"pool_id": plan.id})  # fmt: skip

    def _registry_password(self, setting: str) -> str:
        password = self._app_setting(setting)
        if not password:
            raise ConfigError(f"app setting {setting} (a container registry's password_setting) is not set")
        return password

    def _reconcile_pool(self, plan: PoolPlan, options: batch_models.BatchPoolCreateOptions) -> tuple[PoolDrift, ...]:
        """Update in place what Batch allows (start task, scale); report the rest in the log and the result."""
        pool = self._call(f"get pool {plan.id}", partial(self._client.get_pool, plan.id))
        found: list[PoolDrift] = []
        for difference in pool_drift.differences(options.as_dict(), pool.as_dict()):
            action = difference.what_to_do
            if difference.update is not None:
                try:
                    self._call(f"update pool {plan.id}", partial(self._update_pool, plan.id, difference.update, pool))
                    action = "updated in place"
                except (PermanentError, TransientError) as error:
                    action = f"update failed ({error}); {difference.what_to_do}"
            drift = PoolDrift(difference.field, difference.wanted, difference.actual, action)
            found.append(drift)
            logger.warning(
                "pool %s drifted from the pipelines file: %s is %s, the file says %s: %s",
                plan.id,
                drift.field,
                drift.actual,
                drift.wanted,
                drift.action,
                extra={"pool_id": plan.id},
            )
        return tuple(found)

    def _update_pool(self, pool_id: str, update: pool_drift.Update, pool: batch_models.BatchPool) -> None:
        if update.kind == "start_task":
            # Pool_ReplacePoolProperties (spec example Pools_ReplacePoolProperties.json) replaces the start task,
            # package references and metadata together: the last two are sent back as they are.
            start_task = batch_models.BatchStartTask(update.body) if update.body else None
            self._client.replace_pool_properties(
                pool_id,
                batch_models.BatchPoolReplaceOptions(
                    start_task=start_task,
                    application_package_references=list(pool.application_package_references or []),
                    metadata=list(pool.metadata or []),
                ),
            )
        elif update.kind == "autoscale":
            # Pools_EnablePoolAutoscale.json: {autoScaleFormula, autoScaleEvaluationInterval}
            self._client.enable_pool_auto_scale(
                pool_id,
                batch_models.BatchPoolEnableAutoScaleOptions(
                    auto_scale_formula=str(update.body["autoScaleFormula"]),
                    auto_scale_evaluation_interval=timedelta(minutes=int(update.body["minutes"])),
                ),
            )
        elif update.kind == "fixed":
            if pool.enable_auto_scale:
                self._client.disable_pool_auto_scale(pool_id)
            self._client.begin_resize_pool(
                pool_id,
                batch_models.BatchPoolResizeOptions(
                    target_dedicated_nodes=int(update.body["targetDedicatedNodes"]),
                    target_low_priority_nodes=int(update.body["targetLowPriorityNodes"]),
                    node_deallocation_option=batch_models.BatchNodeDeallocationOption.TASK_COMPLETION,
                ),
                polling_interval=1,
            )

    def pool_reports(self, plans: Sequence[PoolPlan]) -> list[PoolReport]:
        """Each pool's drift from the file (read, not changed) and its nodes by state: one pool read per pool and
        one account-wide node counts listing."""
        if not plans:
            return []
        wanted = {plan.id.lower() for plan in plans}

        def counts() -> dict[str, dict[str, int]]:
            by_pool: dict[str, dict[str, int]] = {}
            for item in self._client.list_pool_node_counts():
                if item.pool_id.lower() in wanted:
                    by_pool[item.pool_id.lower()] = node_counts(item)
            return by_pool

        nodes = self._call("list pool node counts", counts)
        reports = []
        for plan in plans:

            def read(pool_id: str = plan.id) -> batch_models.BatchPool | None:
                try:
                    return self._client.get_pool(pool_id)
                except ResourceNotFoundError:
                    return None

            pool = self._call(f"get pool {plan.id}", read)
            if pool is None:
                reports.append(PoolReport(plan.id, exists=False))
                continue
            start = plan.spec.start_task
            # The SAS of the start task's files is no drift: each file is compared by its path and its blob name.
            files = [ResourceFile(f"/{name}", f"app/{name}") for name in (start.resource_files if start else ())]
            options = pool_options(plan, files, lambda setting: "")
            drift = tuple(
                PoolDrift(
                    d.field,
                    d.wanted,
                    d.actual,
                    d.what_to_do
                    if d.update is None
                    else "updated in place when batchdrop next creates a job on the pool",
                )
                for d in pool_drift.differences(options.as_dict(), pool.as_dict(), compare_sas=False)
            )
            counted = nodes.get(plan.id.lower(), {})
            reports.append(PoolReport(plan.id, True, drift, tuple(sorted(counted.items()))))
        return reports

    def ensure_job(self, job_id: str, pipeline: PipelineSpec) -> None:
        def create() -> None:
            try:
                self._client.create_job(_job_options(job_id, pipeline))
                logger.info("created job %s", job_id, extra={"job_id": job_id})
            except ResourceExistsError as error:
                if _error_code(error) != "JobExists":
                    raise

        self._call(f"ensure job {job_id}", create)

    def add_task(self, job_id: str, task: TaskSpec) -> None:
        def create() -> None:
            try:
                self._client.create_task(job_id, _task_options(task))
            except ResourceExistsError as error:
                if _error_code(error) != "TaskExists":
                    raise

        self._call(f"add task {task.task_id} to {job_id}", create)

    def add_tasks(self, job_id: str, tasks: Sequence[TaskSpec]) -> None:
        """Add-collection requests of up to 100 tasks, sent one by one and read task by task.

        Not the SDK's `create_tasks`: it resubmits a chunk that keeps failing with a 5xx without end (a Batch
        outage would hang the sweep until the Functions host kills it), and it reports a job that closed as an
        anonymous aggregate error. Here every outcome has its exception: a closed or missing job `JobClosed`,
        throttling or a server error `TransientError` (after SERVER_ERROR_ROUNDS for tasks Batch answered
        `servererror`), tasks Batch refused one by one `PermanentError` naming them, after the rest were added.
        """
        what = f"add {len(tasks)} tasks to {job_id}"
        pending = list(tasks)
        per_request = TASKS_PER_REQUEST
        refused: list[str] = []
        server_error_rounds = 0
        while pending:
            chunk, pending = pending[:per_request], pending[per_request:]
            results = self._call(what, partial(self._add_collection, job_id, chunk))
            if results is None:  # RequestBodyTooLarge: halve the chunk, as the SDK does
                if len(chunk) == 1:
                    refused.append(f"task {chunk[0].task_id}: RequestBodyTooLarge")
                    continue
                per_request = max(1, len(chunk) // 2)
                pending = chunk + pending
                continue
            by_id = {task.task_id: task for task in chunk}
            again: list[TaskSpec] = []
            for result in results:
                status = _text(result.status)
                code = str(result.error.code or "") if result.error else ""
                if status == "success" or code == "TaskExists":
                    continue
                if code in JOB_CLOSED_CODES:
                    raise JobClosed(f"{what}: {code}")
                if status == "servererror" and result.task_id in by_id:
                    again.append(by_id[result.task_id])
                else:
                    refused.append(_refusal(result))
            if again:
                server_error_rounds += 1
                if server_error_rounds > SERVER_ERROR_ROUNDS:
                    raise TransientError(f"{what}: Batch answered servererror for {len(again)} tasks; retry later")
                pending = again + pending
        if refused:
            raise PermanentError(f"{what}: {'; '.join(refused[:5])}")

    def _add_collection(
        self, job_id: str, chunk: Sequence[TaskSpec]
    ) -> list[batch_models.BatchTaskCreateResult] | None:
        """Batch's answer for each task of one add-collection request; None when the body is too large."""
        group = batch_models.BatchTaskGroup(task_values=[_task_options(task) for task in chunk])
        try:
            answer = self._client.create_task_collection(job_id, group)
        except HttpResponseError as error:
            if _error_code(error) == "RequestBodyTooLarge":
                return None
            raise
        return list(answer.result_values or [])

    def completed_since(self, job_id: str, since: datetime | None) -> list[CompletedTask]:
        query = "state eq 'completed'"
        if since is not None:
            query += f" and stateTransitionTime ge datetime'{_odata_time(since)}'"

        def listing() -> list[CompletedTask]:
            return [
                CompletedTask(task.id, task.state_transition_time, _task_result(task))
                for task in self._client.list_tasks(job_id, filter=query, select=TASK_SELECT)
            ]

        try:
            return self._call(f"list completed tasks of {job_id}", listing)
        except JobClosed:
            return []

    def get_task(self, job_id: str, task_id: str) -> TaskResult | None:
        def get() -> TaskResult | None:
            try:
                task = self._client.get_task(job_id, task_id, select=TASK_SELECT)
            except ResourceNotFoundError:
                return None
            return _task_result(task)

        try:
            return self._call(f"get task {task_id} of {job_id}", get)
        except JobClosed:
            return None

    def reactivate_task(self, job_id: str, task_id: str) -> bool:
        def reactivate() -> bool:
            try:
                self._client.reactivate_task(job_id, task_id)
            except ResourceExistsError as error:
                code = _error_code(error)
                if code == "TaskNotCompleted":
                    return True  # another delivery reactivated it: it is running again already
                if code == "TaskSucceeded":
                    return False
                raise
            logger.info("reactivated task %s", task_id, extra={"job_id": job_id, "task_id": task_id})
            return True

        return self._call(f"reactivate task {task_id} of {job_id}", reactivate)

    def terminate_task(self, job_id: str, task_id: str) -> None:
        def terminate() -> None:
            try:
                self._client.terminate_task(job_id, task_id)
            except ResourceNotFoundError:
                return  # no such task (or job): nothing runs
            except ResourceExistsError as error:
                if _error_code(error) != "TaskCompleted":
                    raise
                return  # it finished meanwhile: the end state wanted
            logger.info("terminated task %s", task_id, extra={"job_id": job_id, "task_id": task_id})

        try:
            self._call(f"terminate task {task_id} of {job_id}", terminate)
        except JobClosed:
            pass  # a closed job runs none of its tasks

    def task_counts(self, job_id: str) -> TaskCounts | None:
        def get() -> TaskCounts | None:
            try:
                counts = self._client.get_job_task_counts(job_id).task_counts
            except ResourceNotFoundError:
                return None
            return TaskCounts(counts.active, counts.running, counts.completed, counts.succeeded, counts.failed)

        try:
            return self._call(f"task counts of {job_id}", get)
        except JobClosed:
            return None

    def terminate_job(self, job_id: str) -> None:
        def terminate() -> None:
            try:
                # SDK 15.1 fails to serialise a terminate request whose options are absent or empty.
                options = BatchJobTerminateOptions(termination_reason="batchdrop: window closed, all collected")
                self._client.begin_terminate_job(job_id, options, polling_interval=1).result()
            except (ResourceNotFoundError, ResourceExistsError):
                pass  # already gone or already completed: the end state we want

        try:
            self._call(f"terminate job {job_id}", terminate)
        except JobClosed:
            pass

    def delete_job(self, job_id: str) -> None:
        def delete() -> None:
            try:
                self._client.begin_delete_job(job_id, polling_interval=1).result()
            except ResourceNotFoundError:
                pass

        try:
            self._call(f"delete job {job_id}", delete)
        except JobClosed:
            pass


def _refusal(result: batch_models.BatchTaskCreateResult) -> str:
    """One task Batch refused, as `task <id>: <code>: <message> <details>`."""
    error = result.error
    code = str(error.code if error and error.code else _text(result.status))
    message = error.message.value if error and error.message else ""
    details = ", ".join(f"{item.key}={item.value}" for item in (error.error_values or [])) if error else ""
    return redact(f"task {result.task_id}: {code}: {message} {details}".strip())


def _text(value: object) -> str:
    """SDK enums are str subclasses whose str() is 'Enum.MEMBER'; the wire value is what we store."""
    return str(value.value) if isinstance(value, Enum) else str(value)


def _odata_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _job_options(job_id: str, pipeline: PipelineSpec) -> batch_models.BatchJobCreateOptions:
    return batch_models.BatchJobCreateOptions(
        id=job_id,
        pool_info=batch_models.BatchPoolInfo(pool_id=pipeline.pool.id),
        constraints=batch_models.BatchJobConstraints(max_task_retry_count=pipeline.max_retries),
        metadata=[batch_models.BatchMetadataItem(name="batchdrop-pipeline", value=pipeline.name)],
    )


def _task_user() -> batch_models.UserIdentity:
    # A non-admin auto-user of its own per task. Without it a task runs as the pool's shared auto-user, so
    # tasks sharing a node (task_slots_per_node > 1) could read each other's inputs and outputs.
    return batch_models.UserIdentity(
        auto_user=batch_models.AutoUserSpecification(
            scope=batch_models.AutoUserScope.TASK, elevation_level=batch_models.ElevationLevel.NON_ADMIN
        )
    )


def _task_options(task: TaskSpec) -> batch_models.BatchTaskCreateOptions:
    return batch_models.BatchTaskCreateOptions(
        id=task.task_id,
        command_line=task.command_line,
        user_identity=_task_user(),
        resource_files=[
            batch_models.ResourceFile(http_url=resource.url, file_path=resource.file_path)
            for resource in task.resource_files
        ],
        output_files=[
            batch_models.OutputFile(
                file_pattern=output.pattern,
                destination=batch_models.OutputFileDestination(
                    container=batch_models.OutputFileBlobContainerDestination(
                        container_url=output.container_url, path=output.path
                    )
                ),
                upload_options=batch_models.OutputFileUploadConfiguration(upload_condition=output.condition),
            )
            for output in task.output_files
        ],
        environment_settings=[batch_models.EnvironmentSetting(name=n, value=v) for n, v in task.environment],
        constraints=batch_models.BatchTaskConstraints(
            max_wall_clock_time=timedelta(seconds=task.max_wall_clock_seconds),
            max_task_retry_count=task.max_retries,
        ),
        # Only sent when they differ from Batch's defaults, so a plain task's request is as it was.
        container_settings=batch_models.BatchTaskContainerSettings(
            image_name=task.container.image,
            container_run_options=task.container.run_options or None,
            working_directory=task.container.working_directory,
        )
        if task.container is not None
        else None,
        application_package_references=[
            batch_models.BatchApplicationPackageReference(application_id=app, version=version)
            for app, version in task.packages
        ]
        or None,
        required_slots=task.required_slots if task.required_slots != 1 else None,
    )


def _task_result(task: batch_models.BatchTask) -> TaskResult:
    info = task.execution_info
    failure: dict[str, object] | None = None
    if info is not None and info.failure_info is not None:
        failure_info = info.failure_info
        # Batch copies what a node saw into failure info: a storage error there can carry a SAS URL.
        failure = {
            "category": _text(failure_info.category),
            "code": failure_info.code,
            "message": redact(failure_info.message or "") or failure_info.message,
            "details": {d.name: redact_value(d.value) for d in failure_info.details or []},
        }
    return TaskResult(
        task_id=task.id,
        state=_text(task.state),
        exit_code=info.exit_code if info else None,
        result=_text(info.result) if info and info.result else None,
        failure=failure,
        started_at=info.start_time if info else None,
        finished_at=info.end_time if info else None,
        retries=info.retry_count if info else 0,
    )
