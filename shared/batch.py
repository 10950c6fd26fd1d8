"""The Batch gateway: the only module that imports azure.batch (BatchClient, SDK 15.x)."""

from __future__ import annotations

import logging
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

from shared.errors import JobClosed, PermanentError, TransientError
from shared.models import CompletedTask, TaskCounts, TaskResult, TaskSpec
from shared.pipelines import PipelineSpec, PoolSpec
from shared.redact import redact, redact_value

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Batch answers these codes when a job can take no more tasks; submit then moves the input to a new job.
JOB_CLOSED_CODES = frozenset({"JobCompleted", "JobNotFound", "JobTerminating", "JobBeingDeleted"})
QUOTA_CODES = frozenset({"ActiveJobAndScheduleQuotaReached", "TooManyRequests", "ServerBusy"})
TASK_SELECT = ["id", "state", "stateTransitionTime", "executionInfo"]
TASKS_PER_REQUEST = 100  # Batch's limit for one add-collection request
SERVER_ERROR_ROUNDS = 3  # resubmissions of tasks that Batch answered `servererror`, then TransientError


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

    def __init__(self, client: BatchClient) -> None:
        self._client = client

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

    def ensure_pool(self, pool: PoolSpec) -> None:
        # Create and accept PoolExists: one request, and no pool_exists(), which in SDK 15.1 raises
        # ResourceNotFoundError for a missing pool (its error policy fires before the 404 -> False mapping).
        def create() -> None:
            try:
                self._client.create_pool(_pool_options(pool))
                logger.info("created pool %s", pool.id, extra={"pool_id": pool.id})
            except ResourceExistsError as error:
                if _error_code(error) != "PoolExists":
                    raise

        self._call(f"ensure pool {pool.id}", create)

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


def _pool_options(pool: PoolSpec) -> batch_models.BatchPoolCreateOptions:
    return batch_models.BatchPoolCreateOptions(
        id=pool.id,
        vm_size=pool.vm_size,
        virtual_machine_configuration=batch_models.VirtualMachineConfiguration(
            image_reference=batch_models.BatchVmImageReference(
                publisher=pool.image_publisher, offer=pool.image_offer, sku=pool.image_sku, version="latest"
            ),
            node_agent_sku_id=pool.node_agent_sku_id,
        ),
        target_dedicated_nodes=pool.dedicated_nodes,
        target_low_priority_nodes=pool.low_priority_nodes,
        task_slots_per_node=pool.task_slots_per_node,
    )


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
