"""batchdrop's tasks run as a non-admin auto-user of their own, whichever submit path created them."""

from __future__ import annotations

from pathlib import Path

import pytest
from azure.batch import BatchClient
from azure.batch import models as m
from azure.core.credentials import AzureNamedKeyCredential

from local.stack import Azurite, Emulator
from shared.submit import submit_blob, sweep
from tests.integration.pipeline_world import PipelineWorld, make_pipeline_world

pytestmark = pytest.mark.integration


@pytest.fixture
def world(tmp_path: Path, azurite: Azurite, emulator: Emulator, namespace: str) -> PipelineWorld:
    return make_pipeline_world(tmp_path, azurite, emulator, namespace)


def test_submitted_tasks_run_as_a_task_scoped_non_admin_auto_user(world: PipelineWorld) -> None:
    world.drop("by-event.txt", b"one\n")
    by_event = submit_blob(world.gw, world.names["input"], "by-event.txt")  # one task: create_task
    world.drop("by-sweep-1.txt", b"two\n")
    world.drop("by-sweep-2.txt", b"three\n")
    assert sweep(world.gw).submitted == 2  # a collection: create_tasks
    batch = BatchClient(
        world.emulator.url, AzureNamedKeyCredential(world.emulator.account_name, world.emulator.account_key)
    )
    assert by_event.action == "created"
    tasks = list(batch.list_tasks(by_event.job_id, select=["id"]))
    assert len(tasks) == 3
    for listed in tasks:
        identity = batch.get_task(by_event.job_id, listed.id).user_identity
        assert identity is not None and identity.username is None and identity.auto_user is not None
        assert identity.auto_user.scope == m.AutoUserScope.TASK
        assert identity.auto_user.elevation_level == m.ElevationLevel.NON_ADMIN
    # and they still do their work under it: Batch downloads, runs and uploads for the task's own user
    manifests = world.run_until_manifests(["by-event.txt", "by-sweep-1.txt", "by-sweep-2.txt"])
    assert {str(manifest["status"]) for manifest in manifests.values()} == {"succeeded"}
