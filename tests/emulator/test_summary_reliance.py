"""What the summary step (shared/summary.py) relies on, as Batch documents it; and the task dependency limit it
names as a reason not to use dependencies (docs/pipelines.md, "summary")."""

from __future__ import annotations

import pytest
from azure.batch import BatchClient
from azure.batch import models as m
from azure.core.exceptions import HttpResponseError, ResourceExistsError

from tests.emulator.conftest import unique, wait_for_task


def task(task_id: str, command: str, **kwargs: object) -> m.BatchTaskCreateOptions:
    return m.BatchTaskCreateOptions(id=task_id, command_line=command, **kwargs)


def test_a_task_id_may_begin_with_an_underscore_and_a_second_add_is_task_exists(
    batch: BatchClient, job_id: str
) -> None:
    # Batch: "any combination of alphanumeric characters including hyphens and underscores", 64 at most.
    batch.create_task(job_id, task("_summary", "true"))
    with pytest.raises(ResourceExistsError) as raised:
        batch.create_task(job_id, task("_summary", "true"))
    assert raised.value.error is not None and raised.value.error.code == "TaskExists"
    assert wait_for_task(batch, job_id, "_summary").execution_info.exit_code == 0  # type: ignore[union-attr]
    assert [t.id for t in batch.list_tasks(job_id)] == ["_summary"]


def test_a_dependency_list_over_64000_characters_is_task_dependency_list_too_long(
    batch: BatchClient, pool_id: str
) -> None:
    job_id = unique("deps-long")
    batch.create_job(
        m.BatchJobCreateOptions(id=job_id, pool_info=m.BatchPoolInfo(pool_id=pool_id), uses_task_dependencies=True)
    )
    ids = [f"{index:063d}x" for index in range(1001)]  # 1,001 ids of 64 characters: 64,064 characters
    with pytest.raises(HttpResponseError) as raised:
        batch.create_task(job_id, task("after", "true", depends_on=m.BatchTaskDependencies(task_ids=ids)))
    assert raised.value.status_code == 400
    assert raised.value.error is not None and raised.value.error.code == "TaskDependencyListTooLong"
    # 64,000 characters exactly is accepted
    batch.create_task(job_id, task("fits", "true", depends_on=m.BatchTaskDependencies(task_ids=ids[:1000])))
    assert batch.get_task(job_id, "fits").state == m.BatchTaskState.ACTIVE
