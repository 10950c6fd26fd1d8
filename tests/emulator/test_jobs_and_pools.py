"""Pools, nodes and jobs: CRUD, long-running operations, task counts, job completion semantics."""

from __future__ import annotations

import pytest
from azure.batch import BatchClient
from azure.batch import models as m
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

from local.stack import Emulator
from tests.emulator.conftest import POOL_NODES, POOL_SLOTS, VM, unique, wait_for_job_state, wait_for_task
from tests.waiting import wait_for_dispatch_passes, wait_until


def new_job(batch: BatchClient, pool_id: str, **kwargs: object) -> str:
    job_id = unique("job")
    batch.create_job(m.BatchJobCreateOptions(id=job_id, pool_info=m.BatchPoolInfo(pool_id=pool_id), **kwargs))
    return job_id


def test_pool_lifecycle_resize_and_nodes(batch: BatchClient) -> None:
    pool_id = unique("pool")
    batch.create_pool(
        m.BatchPoolCreateOptions(
            id=pool_id,
            **VM,
            target_dedicated_nodes=1,
            task_slots_per_node=3,
            metadata=[m.BatchMetadataItem(name="k", value="v")],
        )
    )
    with pytest.raises(ResourceExistsError) as raised:
        batch.create_pool(m.BatchPoolCreateOptions(id=pool_id.upper(), **VM, target_dedicated_nodes=0))
    assert raised.value.error is not None and raised.value.error.code == "PoolExists"
    assert batch.pool_exists(pool_id)
    pool = batch.get_pool(pool_id)
    assert pool.allocation_state == m.AllocationState.STEADY and pool.state == m.BatchPoolState.ACTIVE
    assert pool.current_dedicated_nodes == 1 and pool.task_slots_per_node == 3 and pool.vm_size == "standard_d2s_v3"
    assert pool.metadata is not None and pool.metadata[0].value == "v"
    assert pool_id in {p.id for p in batch.list_pools()}
    batch.begin_resize_pool(
        pool_id, m.BatchPoolResizeOptions(target_dedicated_nodes=3, target_low_priority_nodes=1), polling_interval=0
    ).result()  # type: ignore[arg-type]
    pool = batch.get_pool(pool_id)
    assert pool.current_dedicated_nodes == 3 and pool.current_low_priority_nodes == 1
    nodes = list(batch.list_nodes(pool_id))
    assert len(nodes) == 4 and sum(1 for n in nodes if n.is_dedicated) == 3
    assert all(n.state == m.BatchNodeState.IDLE and n.scheduling_state == m.SchedulingState.ENABLED for n in nodes)
    assert batch.get_node(pool_id, nodes[0].id).id == nodes[0].id
    batch.begin_delete_pool(pool_id, polling_interval=0).result()  # type: ignore[arg-type]
    with pytest.raises(ResourceNotFoundError):
        batch.get_pool(pool_id)


def test_nodes_report_running_tasks(batch: BatchClient, pool_id: str) -> None:
    job_id = new_job(batch, pool_id)
    batch.create_tasks(job_id, [m.BatchTaskCreateOptions(id=f"n{i}", command_line="sleep 1") for i in range(3)])
    wait_until(lambda: batch.get_job_task_counts(job_id).task_counts.running == 3)
    nodes = list(batch.list_nodes(pool_id))
    assert len(nodes) == POOL_NODES
    assert sum(n.running_tasks_count or 0 for n in nodes) >= 3
    assert all((n.running_task_slots_count or 0) <= POOL_SLOTS for n in nodes)
    assert any(n.state == m.BatchNodeState.RUNNING for n in nodes)


def test_job_create_get_list_patch_update(batch: BatchClient, pool_id: str) -> None:
    job_id = new_job(
        batch,
        pool_id,
        priority=10,
        metadata=[m.BatchMetadataItem(name="pipeline", value="report")],
        constraints=m.BatchJobConstraints(max_task_retry_count=2, max_wall_clock_time="PT1H"),
    )
    with pytest.raises(ResourceExistsError) as raised:
        new_job_id = job_id.upper()
        batch.create_job(m.BatchJobCreateOptions(id=new_job_id, pool_info=m.BatchPoolInfo(pool_id=pool_id)))
    assert raised.value.error is not None and raised.value.error.code == "JobExists"
    job = batch.get_job(job_id)
    assert job.state == m.BatchJobState.ACTIVE and job.priority == 10
    assert job.constraints is not None and job.constraints.max_task_retry_count == 2
    assert (
        job.constraints.max_wall_clock_time is not None and job.constraints.max_wall_clock_time.total_seconds() == 3600
    )
    assert job.pool_info.pool_id == pool_id and job.all_tasks_complete_mode == m.BatchAllTasksCompleteMode.NO_ACTION
    assert job.execution_info is not None and job.execution_info.pool_id == pool_id
    assert job_id in {j.id for j in batch.list_jobs(filter=f"startswith(id,'{job_id[:8]}')")}
    etag = job.etag
    batch.update_job(job_id, m.BatchJobUpdateOptions(priority=5, metadata=[m.BatchMetadataItem(name="a", value="b")]))
    job = batch.get_job(job_id)
    assert job.priority == 5 and job.metadata is not None and job.metadata[0].name == "a" and job.etag != etag
    assert job.constraints is not None and job.constraints.max_task_retry_count == 2  # patch keeps what it omits
    batch.replace_job(job_id, m.BatchJob(pool_info=m.BatchPoolInfo(pool_id=pool_id), priority=1))
    job = batch.get_job(job_id)
    assert job.priority == 1 and not job.metadata  # update (PUT) resets what it omits
    assert job.constraints is not None and job.constraints.max_task_retry_count == 0


def test_terminate_job_is_a_long_running_operation_ending_in_completed(batch: BatchClient, pool_id: str) -> None:
    job_id = new_job(batch, pool_id)
    batch.create_task(job_id, m.BatchTaskCreateOptions(id="running", command_line="sleep 30"))
    wait_until(lambda: batch.get_task(job_id, "running").state == m.BatchTaskState.RUNNING)
    batch.create_tasks(job_id, [m.BatchTaskCreateOptions(id=f"w{i}", command_line="sleep 30") for i in range(12)])
    # azure-batch 15.1 raises ValueError client-side when terminate has no options; its options model is private.
    batch.begin_terminate_job(job_id, {"terminateReason": "StoppedByTest"}, polling_interval=0).result()  # type: ignore[arg-type]
    job = batch.get_job(job_id)
    assert job.state == m.BatchJobState.COMPLETED
    assert job.execution_info is not None and job.execution_info.termination_reason == "StoppedByTest"
    assert job.execution_info.end_time is not None
    # Batch: running tasks are terminated; active tasks stay active and are never scheduled.
    counts = batch.get_job_task_counts(job_id).task_counts
    assert counts.running == 0 and counts.completed >= 1 and counts.active + counts.completed == 13
    ended = batch.get_task(job_id, "running").execution_info
    assert ended is not None and ended.failure_info is not None and ended.failure_info.code == "TaskEnded"
    with pytest.raises(ResourceExistsError) as raised:
        batch.create_task(job_id, m.BatchTaskCreateOptions(id="late", command_line="true"))
    assert raised.value.error is not None and raised.value.error.code == "JobCompleted"
    with pytest.raises(m.CreateTasksError) as collection:
        batch.create_tasks(job_id, [m.BatchTaskCreateOptions(id="late2", command_line="true")])
    assert [error.error.code for error in collection.value.errors] == ["JobCompleted"]


def test_delete_job_is_a_long_running_operation(batch: BatchClient, pool_id: str) -> None:
    job_id = new_job(batch, pool_id)
    batch.create_task(job_id, m.BatchTaskCreateOptions(id="t", command_line="sleep 30"))
    wait_until(lambda: batch.get_task(job_id, "t").state == m.BatchTaskState.RUNNING)
    batch.begin_delete_job(job_id, polling_interval=0).result()  # type: ignore[arg-type]
    with pytest.raises(ResourceNotFoundError) as raised:
        batch.get_job(job_id)
    assert raised.value.error is not None and raised.value.error.code == "JobNotFound"


def test_task_counts_have_task_and_slot_counts(batch: BatchClient, pool_id: str) -> None:
    job_id = new_job(batch, pool_id)
    batch.create_tasks(
        job_id,
        [
            m.BatchTaskCreateOptions(id="ok", command_line="true"),
            m.BatchTaskCreateOptions(id="bad", command_line="false"),
        ],
    )
    wait_for_task(batch, job_id, "ok")
    wait_for_task(batch, job_id, "bad")
    counts = batch.get_job_task_counts(job_id)
    assert counts.task_counts.as_dict() == {"active": 0, "running": 0, "completed": 2, "succeeded": 1, "failed": 1}
    assert counts.task_slot_counts.as_dict() == {"active": 0, "running": 0, "completed": 2, "succeeded": 1, "failed": 1}


def test_on_all_tasks_complete_terminates_the_job(batch: BatchClient, pool_id: str) -> None:
    job_id = new_job(batch, pool_id)
    batch.create_tasks(job_id, [m.BatchTaskCreateOptions(id=f"t{i}", command_line="true") for i in range(3)])
    batch.update_job(job_id, m.BatchJobUpdateOptions(all_tasks_complete_mode=m.BatchAllTasksCompleteMode.TERMINATE_JOB))
    job = wait_for_job_state(batch, job_id, m.BatchJobState.COMPLETED)
    assert job.execution_info is not None and job.execution_info.termination_reason == "AllTasksComplete"


def test_an_empty_job_created_with_terminatejob_completes_at_once(batch: BatchClient, pool_id: str) -> None:
    # Batch: "if a Job contains no Tasks, then all Tasks are considered complete".
    job_id = new_job(batch, pool_id, all_tasks_complete_mode=m.BatchAllTasksCompleteMode.TERMINATE_JOB)
    job = wait_for_job_state(batch, job_id, m.BatchJobState.COMPLETED, timeout=5)
    assert job.execution_info is not None and job.execution_info.termination_reason == "AllTasksComplete"


def test_job_max_wall_clock_time_terminates_the_job(batch: BatchClient, pool_id: str) -> None:
    job_id = new_job(batch, pool_id, constraints=m.BatchJobConstraints(max_wall_clock_time="PT1S"))
    batch.create_task(job_id, m.BatchTaskCreateOptions(id="t", command_line="sleep 30"))
    job = wait_for_job_state(batch, job_id, m.BatchJobState.COMPLETED, timeout=10)
    assert job.execution_info is not None and job.execution_info.termination_reason == "MaxWallClockTimeExpiry"
    assert batch.get_task(job_id, "t").state == m.BatchTaskState.COMPLETED


def test_tasks_wait_for_a_pool_that_does_not_exist_yet(batch: BatchClient, emulator: Emulator) -> None:
    pool_id = unique("later")
    job_id = unique("job")
    batch.create_job(m.BatchJobCreateOptions(id=job_id, pool_info=m.BatchPoolInfo(pool_id=pool_id)))
    batch.create_task(job_id, m.BatchTaskCreateOptions(id="t", command_line="true"))
    wait_for_dispatch_passes(emulator)  # the dispatcher has seen the task, and no pool to run it on
    assert batch.get_task(job_id, "t").state == m.BatchTaskState.ACTIVE
    batch.create_pool(m.BatchPoolCreateOptions(id=pool_id, **VM, target_dedicated_nodes=1))
    assert wait_for_task(batch, job_id, "t").execution_info.exit_code == 0  # type: ignore[union-attr]
    batch.begin_delete_pool(pool_id, polling_interval=0).result()  # type: ignore[arg-type]


def test_auto_pool_is_created_for_the_job_and_removed_with_it(batch: BatchClient) -> None:
    job_id = unique("job")
    spec = m.BatchAutoPoolSpecification(
        auto_pool_id_prefix="auto",
        pool_lifetime_option=m.BatchPoolLifetimeOption.JOB,
        keep_alive=False,
        pool=m.BatchPoolSpecification(**VM, target_dedicated_nodes=1, task_slots_per_node=2),
    )
    batch.create_job(m.BatchJobCreateOptions(id=job_id, pool_info=m.BatchPoolInfo(auto_pool_specification=spec)))
    job = batch.get_job(job_id)
    assert job.execution_info is not None and job.execution_info.pool_id
    auto_pool = job.execution_info.pool_id
    assert auto_pool.startswith("auto_") and batch.get_pool(auto_pool).current_dedicated_nodes == 1
    batch.create_task(job_id, m.BatchTaskCreateOptions(id="t", command_line="true"))
    assert wait_for_task(batch, job_id, "t").node_info.pool_id == auto_pool  # type: ignore[union-attr]
    batch.begin_terminate_job(job_id, {"terminateReason": "done"}, polling_interval=0).result()  # type: ignore[arg-type]

    def gone() -> bool:
        try:
            batch.get_pool(auto_pool)
        except ResourceNotFoundError:
            return True
        return False

    wait_until(gone, timeout=10)


def test_job_quota_answers_active_job_and_schedule_quota_reached(workdir: object) -> None:
    from pathlib import Path

    from local.stack import start_emulator
    from tests.emulator.conftest import client_for

    server = start_emulator(Path(str(workdir)) / "quota", ["--job-quota", "2"])
    try:
        client = client_for(server)
        for index in range(2):
            client.create_job(m.BatchJobCreateOptions(id=f"j{index}", pool_info=m.BatchPoolInfo(pool_id="p")))
        with pytest.raises(ResourceExistsError) as raised:
            client.create_job(m.BatchJobCreateOptions(id="j2", pool_info=m.BatchPoolInfo(pool_id="p")))
        assert raised.value.error is not None and raised.value.error.code == "ActiveJobAndScheduleQuotaReached"
        client.begin_terminate_job("j0", {"terminateReason": "done"}, polling_interval=0).result()  # type: ignore[arg-type]
        client.create_job(m.BatchJobCreateOptions(id="j2", pool_info=m.BatchPoolInfo(pool_id="p")))
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("change", "property_name"),
    [
        ({"virtual_machine_configuration": None}, "virtualMachineConfiguration"),
        ({"target_dedicated_nodes": None}, "targetDedicatedNodes"),
        ({"resize_timeout": "PT1M"}, "resizeTimeout"),
        ({"task_slots_per_node": 0}, "taskSlotsPerNode"),
    ],
)
def test_pool_validation_matches_what_batch_requires(
    batch: BatchClient, change: dict[str, object], property_name: str
) -> None:
    options = {**VM, "target_dedicated_nodes": 1, **change}
    with pytest.raises(HttpResponseError) as raised:
        batch.create_pool(m.BatchPoolCreateOptions(id=unique("invalid"), **options))
    assert raised.value.status_code == 400
    error = raised.value.error
    assert error is not None and error.code in ("MissingRequiredProperty", "InvalidPropertyValue")
    assert any(detail.code == "PropertyName" and detail.message == property_name for detail in error.details)


def test_deleting_a_pool_requeues_its_running_tasks(batch: BatchClient) -> None:
    pool_id = unique("doomed")
    batch.create_pool(m.BatchPoolCreateOptions(id=pool_id, **VM, target_dedicated_nodes=1))
    job_id = new_job(batch, pool_id)
    batch.create_task(job_id, m.BatchTaskCreateOptions(id="t", command_line="sleep 30"))
    wait_until(lambda: batch.get_task(job_id, "t").state == m.BatchTaskState.RUNNING)
    batch.begin_delete_pool(pool_id, polling_interval=0).result()  # type: ignore[arg-type]
    task = wait_until(lambda: (t := batch.get_task(job_id, "t")).state == m.BatchTaskState.ACTIVE and t)
    assert task.execution_info is not None and task.execution_info.requeue_count == 1


def test_shrinking_a_pool_requeues_tasks_of_removed_nodes(batch: BatchClient) -> None:
    pool_id = unique("shrink")
    batch.create_pool(m.BatchPoolCreateOptions(id=pool_id, **VM, target_dedicated_nodes=1))
    job_id = new_job(batch, pool_id)
    batch.create_task(job_id, m.BatchTaskCreateOptions(id="t", command_line="sleep 1"))
    wait_until(lambda: batch.get_task(job_id, "t").state == m.BatchTaskState.RUNNING)
    batch.begin_resize_pool(pool_id, m.BatchPoolResizeOptions(target_dedicated_nodes=0), polling_interval=0).result()  # type: ignore[arg-type]
    requeued = wait_until(lambda: (t := batch.get_task(job_id, "t")).state == m.BatchTaskState.ACTIVE and t)
    assert requeued.execution_info is not None and requeued.execution_info.requeue_count == 1
    batch.begin_resize_pool(pool_id, m.BatchPoolResizeOptions(target_dedicated_nodes=1), polling_interval=0).result()  # type: ignore[arg-type]
    done = wait_for_task(batch, job_id, "t")
    assert done.execution_info is not None and done.execution_info.exit_code == 0
    batch.begin_delete_pool(pool_id, polling_interval=0).result()  # type: ignore[arg-type]


def test_disable_and_enable_job(batch: BatchClient, pool_id: str, emulator: Emulator) -> None:
    job_id = new_job(batch, pool_id)
    batch.create_task(job_id, m.BatchTaskCreateOptions(id="t", command_line="sleep 30"))
    wait_until(lambda: batch.get_task(job_id, "t").state == m.BatchTaskState.RUNNING)
    batch.begin_disable_job(
        job_id, m.BatchJobDisableOptions(disable_tasks=m.DisableBatchJobOption.REQUEUE), polling_interval=0
    ).result()  # type: ignore[arg-type]
    assert batch.get_job(job_id).state == m.BatchJobState.DISABLED
    task = wait_until(lambda: (t := batch.get_task(job_id, "t")).state == m.BatchTaskState.ACTIVE and t)
    assert task.execution_info is not None and task.execution_info.requeue_count == 1
    batch.create_task(job_id, m.BatchTaskCreateOptions(id="queued", command_line="true"))
    wait_for_dispatch_passes(emulator)  # the dispatcher has seen the task in a disabled job
    assert batch.get_task(job_id, "queued").state == m.BatchTaskState.ACTIVE
    batch.begin_enable_job(job_id, polling_interval=0).result()  # type: ignore[arg-type]
    assert wait_for_task(batch, job_id, "queued").execution_info.exit_code == 0  # type: ignore[union-attr]
    batch.terminate_task(job_id, "t")


def test_if_match_guards_updates(batch: BatchClient, pool_id: str) -> None:
    from azure.core import MatchConditions
    from azure.core.exceptions import ResourceModifiedError

    job_id = new_job(batch, pool_id)
    stale = batch.get_job(job_id).etag
    batch.update_job(job_id, m.BatchJobUpdateOptions(priority=3))
    with pytest.raises(ResourceModifiedError) as raised:
        batch.update_job(
            job_id, m.BatchJobUpdateOptions(priority=4), etag=stale, match_condition=MatchConditions.IfNotModified
        )
    assert raised.value.status_code == 412
    fresh = batch.get_job(job_id).etag
    batch.update_job(
        job_id, m.BatchJobUpdateOptions(priority=4), etag=fresh, match_condition=MatchConditions.IfNotModified
    )
    assert batch.get_job(job_id).priority == 4


def test_operations_on_missing_jobs_are_404(batch: BatchClient) -> None:
    with pytest.raises(ResourceNotFoundError) as raised:
        batch.create_task("no-such-job", m.BatchTaskCreateOptions(id="t", command_line="true"))
    assert raised.value.error is not None and raised.value.error.code == "JobNotFound"
    with pytest.raises(m.CreateTasksError) as collection:
        batch.create_tasks("no-such-job", [m.BatchTaskCreateOptions(id="t", command_line="true")])
    assert [e.error.code for e in collection.value.errors] == ["JobNotFound"]


def test_start_task_runs_before_tasks_when_wait_for_success(batch: BatchClient, containers: object) -> None:
    pool_id = unique("started")
    start = m.BatchStartTask(
        command_line="/bin/sh -c 'sleep 2; echo ready > $AZ_BATCH_NODE_SHARED_DIR/marker; echo $PWD'",
        environment_settings=[m.EnvironmentSetting(name="X", value="1")],
        wait_for_success=True,
    )
    batch.create_pool(m.BatchPoolCreateOptions(id=pool_id, **VM, target_dedicated_nodes=1, start_task=start))
    assert next(iter(batch.list_nodes(pool_id))).state == m.BatchNodeState.WAITING_FOR_START_TASK
    job_id = new_job(batch, pool_id)
    batch.create_task(job_id, m.BatchTaskCreateOptions(id="t", command_line="cat ../../../../../shared/marker"))
    done = wait_for_task(batch, job_id, "t")
    assert done.execution_info is not None and done.execution_info.exit_code == 0
    assert b"".join(batch.download_task_file(job_id, "t", "stdout.txt")) == b"ready\n"
    node = next(iter(batch.list_nodes(pool_id)))
    assert node.start_task_info is not None and node.start_task_info.exit_code == 0
    assert node.start_task_info.state == m.BatchStartTaskState.COMPLETED
    batch.begin_delete_pool(pool_id, polling_interval=0).result()  # type: ignore[arg-type]


def test_failed_start_task_makes_the_node_unusable_for_tasks(batch: BatchClient, emulator: Emulator) -> None:
    pool_id = unique("broken")
    start = m.BatchStartTask(command_line="false", wait_for_success=True, max_task_retry_count=1)
    batch.create_pool(m.BatchPoolCreateOptions(id=pool_id, **VM, target_dedicated_nodes=1, start_task=start))
    node = wait_until(
        lambda: (n := next(iter(batch.list_nodes(pool_id)))).state == m.BatchNodeState.START_TASK_FAILED and n
    )
    assert node.start_task_info is not None and node.start_task_info.retry_count == 1
    assert node.start_task_info.failure_info is not None
    assert node.start_task_info.failure_info.code == "FailureExitCode"
    job_id = new_job(batch, pool_id)
    batch.create_task(job_id, m.BatchTaskCreateOptions(id="t", command_line="true"))
    wait_for_dispatch_passes(emulator)  # the dispatcher has seen the task, and only the failed node
    assert batch.get_task(job_id, "t").state == m.BatchTaskState.ACTIVE
    batch.begin_delete_pool(pool_id, polling_interval=0).result()  # type: ignore[arg-type]


def _pool_with_one_node(batch: BatchClient, prefix: str) -> tuple[str, str, str]:
    pool_id = unique(prefix)
    batch.create_pool(m.BatchPoolCreateOptions(id=pool_id, **VM, target_dedicated_nodes=1))
    job_id = new_job(batch, pool_id)
    return pool_id, job_id, next(iter(batch.list_nodes(pool_id))).id


def test_rebooting_a_node_requeues_its_tasks_and_boots_again(batch: BatchClient) -> None:
    pool_id, job_id, node_id = _pool_with_one_node(batch, "reboot")
    booted = batch.get_node(pool_id, node_id).last_boot_time
    batch.create_task(job_id, m.BatchTaskCreateOptions(id="t", command_line="sleep 1"))
    wait_until(lambda: batch.get_task(job_id, "t").state == m.BatchTaskState.RUNNING)
    batch.begin_reboot_node(pool_id, node_id, {"nodeRebootOption": "requeue"}, polling_interval=0).result()  # type: ignore[arg-type]
    node = batch.get_node(pool_id, node_id)
    assert node.state in (m.BatchNodeState.IDLE, m.BatchNodeState.RUNNING) and node.last_boot_time > booted  # type: ignore[operator]
    done = wait_for_task(batch, job_id, "t")
    assert done.execution_info is not None and done.execution_info.requeue_count == 1
    assert done.execution_info.exit_code == 0
    batch.begin_delete_pool(pool_id, polling_interval=0).result()  # type: ignore[arg-type]


def test_rebooting_with_terminate_ends_the_tasks(batch: BatchClient) -> None:
    pool_id, job_id, node_id = _pool_with_one_node(batch, "reboot")
    batch.create_task(job_id, m.BatchTaskCreateOptions(id="t", command_line="sleep 30"))
    wait_until(lambda: batch.get_task(job_id, "t").state == m.BatchTaskState.RUNNING)
    batch.begin_reboot_node(pool_id, node_id, {"nodeRebootOption": "terminate"}, polling_interval=0).result()  # type: ignore[arg-type]
    info = wait_for_task(batch, job_id, "t").execution_info
    assert info is not None and info.failure_info is not None and info.failure_info.code == "TaskEnded"
    batch.begin_delete_pool(pool_id, polling_interval=0).result()  # type: ignore[arg-type]


def test_node_scheduling_can_be_disabled_and_enabled(batch: BatchClient, emulator: Emulator) -> None:
    pool_id, job_id, node_id = _pool_with_one_node(batch, "sched")
    batch.disable_node_scheduling(
        pool_id,
        node_id,
        m.BatchNodeDisableSchedulingOptions(node_disable_scheduling_option=m.BatchNodeDisableSchedulingOption.REQUEUE),
    )
    assert batch.get_node(pool_id, node_id).scheduling_state == m.SchedulingState.DISABLED
    with pytest.raises(ResourceExistsError) as raised:
        # Without options the SDK raises ValueError client-side (as for terminate and reboot).
        batch.disable_node_scheduling(pool_id, node_id, {"nodeDisableSchedulingOption": "requeue"})  # type: ignore[arg-type]
    assert raised.value.error is not None and raised.value.error.code == "NodeAlreadyInTargetSchedulingState"
    batch.create_task(job_id, m.BatchTaskCreateOptions(id="t", command_line="true"))
    wait_for_dispatch_passes(emulator)  # the dispatcher has seen the task, and only a node that takes none
    assert batch.get_task(job_id, "t").state == m.BatchTaskState.ACTIVE
    batch.enable_node_scheduling(pool_id, node_id)
    assert wait_for_task(batch, job_id, "t").execution_info.exit_code == 0  # type: ignore[union-attr]
    batch.begin_delete_pool(pool_id, polling_interval=0).result()  # type: ignore[arg-type]


def test_remove_nodes_shrinks_the_pool(batch: BatchClient) -> None:
    pool_id = unique("remove")
    batch.create_pool(m.BatchPoolCreateOptions(id=pool_id, **VM, target_dedicated_nodes=3))
    victim = next(iter(batch.list_nodes(pool_id))).id
    batch.begin_remove_nodes(pool_id, m.BatchNodeRemoveOptions(node_ids=[victim]), polling_interval=0).result()  # type: ignore[arg-type]
    pool = batch.get_pool(pool_id)
    assert pool.target_dedicated_nodes == 2 and pool.current_dedicated_nodes == 2
    assert victim not in {n.id for n in batch.list_nodes(pool_id)}
    with pytest.raises(ResourceNotFoundError):
        batch.begin_remove_nodes(pool_id, m.BatchNodeRemoveOptions(node_ids=["nope"]), polling_interval=0).result()  # type: ignore[arg-type]
    batch.begin_delete_pool(pool_id, polling_interval=0).result()  # type: ignore[arg-type]


def test_job_manager_tasks_are_refused_not_ignored(batch: BatchClient, pool_id: str) -> None:
    manager = m.BatchJobManagerTask(id="manager", command_line="true")
    with pytest.raises(HttpResponseError) as raised:
        batch.create_job(
            m.BatchJobCreateOptions(
                id=unique("mgr"), pool_info=m.BatchPoolInfo(pool_id=pool_id), job_manager_task=manager
            )
        )
    assert raised.value.status_code == 400
    assert raised.value.error is not None and raised.value.error.code == "UnsupportedProperty"


def test_job_preparation_runs_once_per_node_and_release_at_termination(batch: BatchClient) -> None:
    pool_id = unique("prep")
    batch.create_pool(m.BatchPoolCreateOptions(id=pool_id, **VM, target_dedicated_nodes=1, task_slots_per_node=4))
    job_id = unique("prep")
    shared = "$AZ_BATCH_NODE_SHARED_DIR"
    prep = m.BatchJobPreparationTask(command_line=f"/bin/sh -c 'sleep 0.3; echo prepared >> {shared}/{job_id}.log'")
    release = m.BatchJobReleaseTask(command_line=f"/bin/sh -c 'echo released >> {shared}/{job_id}.log'")
    batch.create_job(
        m.BatchJobCreateOptions(
            id=job_id, pool_info=m.BatchPoolInfo(pool_id=pool_id), job_preparation_task=prep, job_release_task=release
        )
    )
    batch.create_tasks(
        job_id,
        [
            m.BatchTaskCreateOptions(
                id=f"t{i}", command_line=f"/bin/sh -c 'cat {shared}/{job_id}.log; echo $AZ_BATCH_JOB_PREP_DIR'"
            )
            for i in range(4)
        ],
    )
    outputs = []
    for index in range(4):
        wait_for_task(batch, job_id, f"t{index}")
        outputs.append(b"".join(batch.download_task_file(job_id, f"t{index}", "stdout.txt")).decode())
    assert all(out.startswith("prepared\n") and out.rstrip().endswith("/jobpreparation") for out in outputs)
    status = list(batch.list_job_preparation_and_release_task_status(job_id))
    assert len(status) == 1 and status[0].pool_id == pool_id
    prep_info = status[0].job_preparation_task_execution_info
    assert (
        prep_info is not None
        and prep_info.exit_code == 0
        and prep_info.state == m.BatchJobPreparationTaskState.COMPLETED
    )
    batch.begin_terminate_job(job_id, {"terminateReason": "done"}, polling_interval=0).result()  # type: ignore[arg-type]
    assert batch.get_job(job_id).state == m.BatchJobState.COMPLETED
    status = list(batch.list_job_preparation_and_release_task_status(job_id))
    release_info = status[0].job_release_task_execution_info
    assert release_info is not None and release_info.exit_code == 0
    node_id = status[0].node_id
    log = b"".join(batch.download_node_file(pool_id, node_id, f"shared/{job_id}.log")).decode()
    assert log == "prepared\nreleased\n"  # one preparation for four tasks, one release
    batch.begin_delete_pool(pool_id, polling_interval=0).result()  # type: ignore[arg-type]


def test_failed_job_preparation_keeps_the_task_off_that_node(batch: BatchClient, emulator: Emulator) -> None:
    pool_id = unique("prepfail")
    batch.create_pool(m.BatchPoolCreateOptions(id=pool_id, **VM, target_dedicated_nodes=1))
    job_id = unique("prepfail")
    prep = m.BatchJobPreparationTask(command_line="false", wait_for_success=True)
    batch.create_job(
        m.BatchJobCreateOptions(id=job_id, pool_info=m.BatchPoolInfo(pool_id=pool_id), job_preparation_task=prep)
    )
    batch.create_task(job_id, m.BatchTaskCreateOptions(id="t", command_line="true"))
    status = wait_until(
        lambda: [
            s
            for s in batch.list_job_preparation_and_release_task_status(job_id)
            if s.job_preparation_task_execution_info is not None
            and s.job_preparation_task_execution_info.state == m.BatchJobPreparationTaskState.COMPLETED
        ]
    )
    info = status[0].job_preparation_task_execution_info
    assert info is not None and info.result == m.BatchTaskExecutionResult.FAILURE and info.exit_code == 1
    wait_for_dispatch_passes(emulator)  # the dispatcher has seen the failed preparation
    assert batch.get_task(job_id, "t").state == m.BatchTaskState.ACTIVE
    with pytest.raises(HttpResponseError) as raised:
        list(batch.list_job_preparation_and_release_task_status(new_job(batch, pool_id)))
    assert raised.value.error is not None and raised.value.error.code == "JobPreparationTaskNotSpecified"
    batch.begin_delete_pool(pool_id, polling_interval=0).result()  # type: ignore[arg-type]


def test_pool_node_counts_and_pool_updates(batch: BatchClient) -> None:
    pool_id = unique("counts")
    batch.create_pool(m.BatchPoolCreateOptions(id=pool_id, **VM, target_dedicated_nodes=2, target_low_priority_nodes=1))
    counts = {c.pool_id: c for c in batch.list_pool_node_counts()}[pool_id]
    assert counts.dedicated is not None and counts.dedicated.idle == 2 and counts.dedicated.total == 2
    assert counts.low_priority is not None and counts.low_priority.total == 1
    batch.update_pool(pool_id, m.BatchPoolUpdateOptions(metadata=[m.BatchMetadataItem(name="k", value="v")]))
    assert batch.get_pool(pool_id).metadata[0].value == "v"  # type: ignore[index]
    batch.replace_pool_properties(
        pool_id,
        m.BatchPoolReplaceOptions(application_package_references=[], metadata=[]),
    )
    assert not batch.get_pool(pool_id).metadata
    batch.begin_delete_pool(pool_id, polling_interval=0).result()  # type: ignore[arg-type]
