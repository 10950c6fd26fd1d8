"""Task userIdentity: what is stored and read back, the spec's defaults, and what a task-scoped task gets."""

from __future__ import annotations

import pytest
from azure.batch import BatchClient
from azure.batch import models as m
from azure.core.exceptions import HttpResponseError

from tests.emulator.conftest import wait_for_task

# Prints what the task is told about its user and the permission bits of its task directory.
REPORT = (
    'python3 -c "import os, stat; '
    "print(os.environ['AZ_BATCH_TASK_USER_IDENTITY'], "
    "oct(stat.S_IMODE(os.stat(os.environ['AZ_BATCH_TASK_DIR']).st_mode)))\""
)


def auto_user(scope: str | None, level: str | None) -> m.UserIdentity:
    return m.UserIdentity(auto_user=m.AutoUserSpecification(scope=scope, elevation_level=level))


def stdout_of(batch: BatchClient, job_id: str, task_id: str) -> str:
    return b"".join(batch.download_task_file(job_id, task_id, "stdout.txt")).decode()


def test_task_scoped_non_admin_identity_is_read_back_as_created(batch: BatchClient, job_id: str) -> None:
    identity = auto_user(m.AutoUserScope.TASK, m.ElevationLevel.NON_ADMIN)
    batch.create_task(job_id, m.BatchTaskCreateOptions(id="own", command_line="true", user_identity=identity))
    batch.create_tasks(
        job_id, [m.BatchTaskCreateOptions(id="own-in-collection", command_line="true", user_identity=identity)]
    )
    for task_id in ("own", "own-in-collection"):
        read = batch.get_task(job_id, task_id).user_identity
        assert read is not None and read.username is None and read.auto_user is not None
        assert read.auto_user.scope == m.AutoUserScope.TASK
        assert read.auto_user.elevation_level == m.ElevationLevel.NON_ADMIN
    listed = {task.id: task.user_identity for task in batch.list_tasks(job_id, select=["id", "userIdentity"])}
    assert listed["own"] is not None and listed["own"].auto_user is not None
    assert listed["own"].auto_user.scope == m.AutoUserScope.TASK


def test_omitted_identity_is_the_pools_non_admin_auto_user_as_on_a_linux_node(batch: BatchClient, job_id: str) -> None:
    # BatchJobPreparationTask.userIdentity: "a non-administrative user unique to the Pool on Linux Compute Nodes".
    batch.create_task(job_id, m.BatchTaskCreateOptions(id="default", command_line="true"))
    read = batch.get_task(job_id, "default").user_identity
    assert read is not None and read.auto_user is not None
    assert (read.auto_user.scope, read.auto_user.elevation_level) == (m.AutoUserScope.POOL, m.ElevationLevel.NON_ADMIN)


def test_auto_user_fields_left_out_take_the_documented_defaults(batch: BatchClient, job_id: str) -> None:
    # AutoUserSpecification: "The default value is pool" (scope) and "The default value is nonAdmin".
    batch.create_task(
        job_id,
        m.BatchTaskCreateOptions(
            id="admin", command_line="true", user_identity=auto_user(None, m.ElevationLevel.ADMIN)
        ),
    )
    batch.create_task(
        job_id,
        m.BatchTaskCreateOptions(id="task", command_line="true", user_identity=auto_user(m.AutoUserScope.TASK, None)),
    )
    admin = batch.get_task(job_id, "admin").user_identity
    scoped = batch.get_task(job_id, "task").user_identity
    assert admin is not None and admin.auto_user is not None and scoped is not None and scoped.auto_user is not None
    assert (admin.auto_user.scope, admin.auto_user.elevation_level) == (m.AutoUserScope.POOL, m.ElevationLevel.ADMIN)
    assert (scoped.auto_user.scope, scoped.auto_user.elevation_level) == (
        m.AutoUserScope.TASK,
        m.ElevationLevel.NON_ADMIN,
    )


@pytest.mark.parametrize(
    ("identity", "property_name"),
    [
        (m.UserIdentity(username="someone", auto_user=m.AutoUserSpecification()), "userIdentity"),
        (auto_user("node", None), "userIdentity.autoUser.scope"),
        (auto_user(None, "root"), "userIdentity.autoUser.elevationLevel"),
    ],
)
def test_an_impossible_identity_is_400_naming_the_property(
    batch: BatchClient, job_id: str, identity: m.UserIdentity, property_name: str
) -> None:
    with pytest.raises(HttpResponseError) as raised:
        batch.create_task(job_id, m.BatchTaskCreateOptions(id="bad", command_line="true", user_identity=identity))
    assert raised.value.status_code == 400
    error = raised.value.error
    assert error is not None and error.code == "InvalidPropertyValue"
    assert any(detail.code == "PropertyName" and detail.message == property_name for detail in error.details)


def test_a_task_scoped_task_is_told_its_identity_and_its_directory_is_owner_only(
    batch: BatchClient, job_id: str
) -> None:
    identity = auto_user(m.AutoUserScope.TASK, m.ElevationLevel.NON_ADMIN)
    batch.create_task(job_id, m.BatchTaskCreateOptions(id="private", command_line=REPORT, user_identity=identity))
    batch.create_task(job_id, m.BatchTaskCreateOptions(id="shared", command_line=REPORT))
    for task_id in ("private", "shared"):
        info = wait_for_task(batch, job_id, task_id).execution_info
        assert info is not None and info.exit_code == 0, info
    assert stdout_of(batch, job_id, "private").split() == ["TaskNonAdmin", "0o700"]
    assert stdout_of(batch, job_id, "shared").split()[0] == "PoolNonAdmin"
