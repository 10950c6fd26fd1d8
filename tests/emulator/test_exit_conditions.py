"""exitConditions with onTaskFailure=performexitoptionsjobaction: exit codes, ranges, pre-processing, default."""

from __future__ import annotations

import pytest
from azure.batch import BatchClient
from azure.batch import models as m
from azure.core.exceptions import HttpResponseError

from tests.emulator.conftest import Containers, unique, wait_for_job_state, wait_for_task

TERMINATE = m.ExitOptions(job_action=m.BatchJobActionKind.TERMINATE)
NONE = m.ExitOptions(job_action=m.BatchJobActionKind.NONE)


def failure_job(batch: BatchClient, pool_id: str) -> str:
    job_id = unique("exit")
    batch.create_job(
        m.BatchJobCreateOptions(
            id=job_id,
            pool_info=m.BatchPoolInfo(pool_id=pool_id),
            task_failure_mode=m.BatchTaskFailureMode.PERFORM_EXIT_OPTIONS_JOB_ACTION,
        )
    )
    return job_id


def test_mapped_exit_code_with_none_leaves_the_job_active(batch: BatchClient, pool_id: str) -> None:
    job_id = failure_job(batch, pool_id)
    conditions = m.ExitConditions(exit_codes=[m.ExitCodeMapping(code=3, exit_options=NONE)])
    batch.create_task(
        job_id, m.BatchTaskCreateOptions(id="t", command_line="/bin/sh -c 'exit 3'", exit_conditions=conditions)
    )
    wait_for_task(batch, job_id, "t")
    assert batch.get_job(job_id).state == m.BatchJobState.ACTIVE


def test_exit_code_range_with_terminate_ends_the_job_as_task_failed(batch: BatchClient, pool_id: str) -> None:
    job_id = failure_job(batch, pool_id)
    conditions = m.ExitConditions(
        exit_code_ranges=[m.ExitCodeRangeMapping(start=10, end=20, exit_options=TERMINATE)], default=NONE
    )
    batch.create_task(
        job_id, m.BatchTaskCreateOptions(id="t", command_line="/bin/sh -c 'exit 12'", exit_conditions=conditions)
    )
    job = wait_for_job_state(batch, job_id, m.BatchJobState.COMPLETED)
    assert job.execution_info is not None and job.execution_info.termination_reason == "TaskFailed"


def test_default_job_action_for_a_failure_is_terminate(batch: BatchClient, pool_id: str) -> None:
    job_id = failure_job(batch, pool_id)
    batch.create_task(job_id, m.BatchTaskCreateOptions(id="t", command_line="false"))
    job = wait_for_job_state(batch, job_id, m.BatchJobState.COMPLETED)
    assert job.execution_info is not None and job.execution_info.termination_reason == "TaskFailed"


def test_success_does_not_trigger_a_job_action(batch: BatchClient, pool_id: str) -> None:
    job_id = failure_job(batch, pool_id)
    batch.create_task(job_id, m.BatchTaskCreateOptions(id="t", command_line="true"))
    wait_for_task(batch, job_id, "t")
    assert batch.get_job(job_id).state == m.BatchJobState.ACTIVE


def test_pre_processing_error_uses_its_own_exit_options(
    batch: BatchClient, pool_id: str, containers: Containers
) -> None:
    job_id = failure_job(batch, pool_id)
    missing = containers.sas_url(containers.create("in"), blob="missing")
    conditions = m.ExitConditions(pre_processing_error=NONE, default=TERMINATE)
    batch.create_task(
        job_id,
        m.BatchTaskCreateOptions(
            id="t",
            command_line="true",
            exit_conditions=conditions,
            resource_files=[m.ResourceFile(http_url=missing, file_path="x")],
        ),
    )
    info = wait_for_task(batch, job_id, "t").execution_info
    assert info is not None and info.failure_info is not None and info.failure_info.code == "BlobNotFound"
    assert batch.get_job(job_id).state == m.BatchJobState.ACTIVE


def test_without_perform_exit_options_a_failure_leaves_the_job_active(batch: BatchClient, job_id: str) -> None:
    batch.create_task(job_id, m.BatchTaskCreateOptions(id="t", command_line="false"))
    wait_for_task(batch, job_id, "t")
    assert batch.get_job(job_id).state == m.BatchJobState.ACTIVE


def test_job_action_on_a_job_without_perform_exit_options_is_refused(batch: BatchClient, job_id: str) -> None:
    # Batch: "It is an error to specify this if the job's onTaskFailed is noaction" (400, invalid property).
    conditions = m.ExitConditions(default=TERMINATE)
    with pytest.raises(HttpResponseError) as raised:
        batch.create_task(job_id, m.BatchTaskCreateOptions(id="t", command_line="false", exit_conditions=conditions))
    assert raised.value.status_code == 400
    assert raised.value.error is not None and raised.value.error.code == "InvalidPropertyValue"


def test_dependency_action_needs_a_job_using_dependencies(batch: BatchClient, job_id: str) -> None:
    satisfy = m.ExitConditions(default=m.ExitOptions(dependency_action=m.DependencyAction.SATISFY))
    with pytest.raises(HttpResponseError) as raised:
        batch.create_task(job_id, m.BatchTaskCreateOptions(id="t", command_line="false", exit_conditions=satisfy))
    assert raised.value.status_code == 400
