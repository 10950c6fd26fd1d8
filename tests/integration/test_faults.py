"""Throttling, server errors, the job quota and the job lifecycle against the emulator: nothing is lost."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from azure.batch import BatchClient
from azure.batch import models as batch_models
from azure.batch.models._models import BatchJobTerminateOptions
from azure.core.credentials import AzureNamedKeyCredential

from local.stack import Azurite, Emulator, start_emulator
from shared import ids
from shared.errors import TransientError
from shared.gateways import utc_now
from shared.models import InputState, JobState
from shared.poll import poll
from shared.submit import submit_blob, sweep
from tests.integration.pipeline_world import DRAIN_INTERVAL, make_pipeline_world
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def emulator_factory(tmp_path: Path) -> Iterator[Callable[..., Emulator]]:
    started: list[Emulator] = []

    def start(*args: str) -> Emulator:
        emulator = start_emulator(tmp_path / f"emulator-{len(started)}", list(args))
        started.append(emulator)
        return emulator

    yield start
    for emulator in started:
        emulator.stop()


def client(emulator: Emulator) -> BatchClient:
    return BatchClient(emulator.url, AzureNamedKeyCredential(emulator.account_name, emulator.account_key))


def retry(action: Callable[[], object], attempts: int = 30) -> None:
    """What the Functions host does with a TransientError: run the trigger again."""
    for _ in range(attempts):
        try:
            action()
            return
        except TransientError:
            continue
    raise AssertionError("still failing after retries")


def test_throttling_and_server_errors_lose_nothing(
    tmp_path: Path, azurite: Azurite, emulator_factory: Callable[..., Emulator], namespace: str
) -> None:
    emulator = emulator_factory("--fault-rate", "0.3", "--fault-statuses", "429,500,503", "--fault-seed", "11")
    world = make_pipeline_world(tmp_path, azurite, emulator, namespace)
    names = [f"f{i}.txt" for i in range(12)]
    for name in names:
        world.drop(name, name.encode())
    for name in names[:6]:
        retry(lambda name=name: submit_blob(world.gw, world.names["input"], name))  # type: ignore[misc]
    retry(lambda: sweep(world.gw))

    def drain() -> bool:
        try:
            world.drain_completions()
        except TransientError:
            return False
        return all(world.manifest(name) is not None for name in names)

    wait_until(drain, 120, interval=DRAIN_INTERVAL, what="every manifest despite injected faults")
    faulted = world.emulator.stats()
    assert faulted["total"] > 0
    tasks = [t.id for job in client(emulator).list_jobs() for t in client(emulator).list_tasks(job.id)]
    assert len(tasks) == len(set(tasks)) == len(names)


def test_job_quota_waits_and_loses_nothing(
    tmp_path: Path, azurite: Azurite, emulator_factory: Callable[..., Emulator], namespace: str
) -> None:
    emulator = emulator_factory("--job-quota", "1")
    batch = client(emulator)
    batch.create_pool(batch_models.BatchPoolCreateOptions(
        id="other", vm_size="standard_d2s_v3", target_dedicated_nodes=1,
        virtual_machine_configuration=batch_models.VirtualMachineConfiguration(
            image_reference=batch_models.BatchVmImageReference(publisher="canonical", offer="ubuntu", sku="24"),
            node_agent_sku_id="batch.node.ubuntu 24.04"),
    ))  # fmt: skip
    batch.create_job(
        batch_models.BatchJobCreateOptions(id="someone-elses", pool_info=batch_models.BatchPoolInfo(pool_id="other"))
    )
    world = make_pipeline_world(tmp_path, azurite, emulator, namespace)
    world.drop("waiting.txt", b"x")
    with pytest.raises(TransientError, match="ActiveJobAndScheduleQuotaReached"):
        submit_blob(world.gw, world.names["input"], "waiting.txt")
    (row,) = world.gw.ledger.inputs()
    assert row.state is InputState.CLAIMED  # recorded, not lost
    batch.begin_terminate_job(
        "someone-elses", BatchJobTerminateOptions(termination_reason="done"), polling_interval=1
    ).result()
    assert sweep(world.gw).submitted == 1
    assert world.run_until_manifests(["waiting.txt"])["waiting.txt"]["status"] == "succeeded"


def test_closed_window_job_is_terminated_after_its_last_collection(
    tmp_path: Path, azurite: Azurite, emulator: Emulator, namespace: str
) -> None:
    world = make_pipeline_world(tmp_path, azurite, emulator, namespace, BATCHDROP_JOB_WINDOW_MINUTES=1,
                                BATCHDROP_JOB_CLOSE_GRACE_MINUTES=0, BATCHDROP_JOB_RETENTION_HOURS=1)  # fmt: skip
    world.drop("a.txt", b"a")
    outcome = submit_blob(world.gw, world.names["input"], "a.txt")
    world.gw.clock = lambda: utc_now() + timedelta(minutes=2)  # the window has closed
    world.run_until_manifests(["a.txt"])
    staging = world.blob_service.get_container_client(
        ids.staging_container(world.gw.settings.staging_prefix, outcome.task_id)
    )
    assert staging.exists()  # collect leaves it; the job's end clears it
    poll(world.gw)
    job = world.gw.ledger.get_job(outcome.job_id)
    assert job is not None and job.state is JobState.TERMINATED and job.staging_cleared
    assert not staging.exists()
    assert str(client(emulator).get_job(outcome.job_id).state) in ("completed", "BatchJobState.COMPLETED")
    world.gw.clock = lambda: utc_now() + timedelta(hours=2)
    assert poll(world.gw).deleted == [outcome.job_id]
    assert outcome.job_id not in [job.id for job in client(emulator).list_jobs()]


def test_poll_cost_does_not_grow_with_collected_tasks(
    tmp_path: Path, azurite: Azurite, emulator: Emulator, namespace: str
) -> None:
    world = make_pipeline_world(tmp_path, azurite, emulator, namespace)
    costs = []
    for round_size in (3, 12):
        for index in range(round_size):
            world.drop(f"r{round_size}-{index}.txt", b"x")
        sweep(world.gw)
        world.run_until_manifests([f"r{round_size}-{index}.txt" for index in range(round_size)])
        before = emulator.stats()["requests"]
        poll(world.gw)
        after = emulator.stats()["requests"]
        costs.append(sum(after.values()) - sum(before.values()))  # type: ignore[union-attr, arg-type]
    assert costs == [1, 1]  # one filtered list for the one active job, after 3 and after 15 collected
