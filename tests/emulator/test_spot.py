"""Spot (low-priority) nodes pre-empted mid-task, through the real SDK: the emulator-only fault knob
`POST /_emulator/pools/{pool}/nodes/{node}/preempt` (`Emulator.preempt`), and what Batch documents it does."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest
from azure.batch import BatchClient
from azure.batch import models as m

from local.stack import Emulator, start_emulator
from tests.emulator.conftest import VM, client_for, unique, wait_for_task
from tests.waiting import NotYet, wait_until


def _spot_pool(batch: BatchClient, prefix: str, spot: int = 1, dedicated: int = 0) -> tuple[str, str]:
    pool_id = unique(prefix)
    batch.create_pool(
        m.BatchPoolCreateOptions(
            id=pool_id, **VM, target_dedicated_nodes=dedicated, target_low_priority_nodes=spot, task_slots_per_node=1
        )
    )
    job_id = unique(prefix)
    batch.create_job(m.BatchJobCreateOptions(id=job_id, pool_info=m.BatchPoolInfo(pool_id=pool_id)))
    return pool_id, job_id


def _running_node(batch: BatchClient, job_id: str, task_id: str) -> str:
    def running() -> str | NotYet:
        task = batch.get_task(job_id, task_id)
        if task.state != m.BatchTaskState.RUNNING or task.node_info is None:
            return NotYet(task.state)
        return str(task.node_info.node_id)

    return wait_until(running, what=f"task {task_id} to run")


def test_a_preempted_spot_node_requeues_its_task_which_completes_once_on_a_replacement(
    batch: BatchClient, emulator: Emulator
) -> None:
    pool_id, job_id = _spot_pool(batch, "spot")
    # Long enough to be caught running; the rerun on the replacement node is the same length.
    batch.create_task(job_id, m.BatchTaskCreateOptions(id="t", command_line="sleep 1"))
    first_node = _running_node(batch, job_id, "t")
    assert batch.get_node(pool_id, first_node).is_dedicated is False

    answered = emulator.preempt(pool_id, first_node, replace_after_seconds=30)
    assert answered["state"] == "preempted"
    # The node stays in the pool, preempted and still counted (as $CurrentLowPriorityNodes counts it), and the
    # task goes back to the queue with requeueCount 1: pre-emption is not one of the task's retries.
    node = batch.get_node(pool_id, first_node)
    assert node.state == m.BatchNodeState.PREEMPTED
    assert batch.get_pool(pool_id).current_low_priority_nodes == 1

    def requeued() -> m.BatchTask | NotYet:
        task = batch.get_task(job_id, "t")
        info = task.execution_info
        return task if task.state == m.BatchTaskState.ACTIVE and info and info.requeue_count == 1 else NotYet(task)

    waiting = wait_until(requeued, what="the task to be requeued")
    assert waiting.execution_info is not None and waiting.execution_info.retry_count == 0
    counts = batch.list_pool_node_counts()
    spot_counts = next(c for c in counts if c.pool_id == pool_id).low_priority
    assert spot_counts is not None and spot_counts.preempted == 1 and spot_counts.total == 1

    batch.begin_delete_pool(pool_id, polling_interval=0).result()  # type: ignore[arg-type]


def test_capacity_returns_and_the_task_completes_once_on_another_node(batch: BatchClient, emulator: Emulator) -> None:
    pool_id, job_id = _spot_pool(batch, "spotback")
    batch.create_task(job_id, m.BatchTaskCreateOptions(id="t", command_line="sleep 1"))
    first_node = _running_node(batch, job_id, "t")
    emulator.preempt(pool_id, first_node)  # capacity returns at once: a new node replaces it on the next tick

    done = wait_for_task(batch, job_id, "t")
    info = done.execution_info
    assert info is not None and info.result == m.BatchTaskExecutionResult.SUCCESS and info.exit_code == 0
    assert info.requeue_count == 1 and info.retry_count == 0
    assert done.node_info is not None and done.node_info.node_id != first_node
    nodes = {node.id: node for node in batch.list_nodes(pool_id)}
    assert first_node not in nodes and done.node_info.node_id in nodes
    assert [node.total_tasks_succeeded for node in nodes.values()] == [1]  # one completion, on the replacement
    pool = batch.get_pool(pool_id)
    assert pool.current_low_priority_nodes == 1 and pool.target_low_priority_nodes == 1
    counts = batch.get_job_task_counts(job_id).task_counts
    assert (counts.completed, counts.succeeded, counts.failed) == (1, 1, 0)
    batch.begin_delete_pool(pool_id, polling_interval=0).result()  # type: ignore[arg-type]


def test_only_spot_nodes_can_be_preempted_and_the_knob_needs_the_key(batch: BatchClient, emulator: Emulator) -> None:
    pool_id, _job_id = _spot_pool(batch, "spotmix", spot=0, dedicated=1)
    dedicated = next(iter(batch.list_nodes(pool_id))).id
    with pytest.raises(urllib.error.HTTPError) as refused:
        emulator.preempt(pool_id, str(dedicated))
    assert refused.value.code == 409 and b"dedicated" in refused.value.read()
    with pytest.raises(urllib.error.HTTPError) as missing:
        emulator.preempt(pool_id, "no-such-node")
    assert missing.value.code == 404
    unsigned = urllib.request.Request(
        f"{emulator.url}/_emulator/pools/{pool_id}/nodes/{dedicated}/preempt", b"", method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(unsigned, timeout=10)
    assert anonymous.value.code == 401
    assert batch.get_node(pool_id, str(dedicated)).state == m.BatchNodeState.IDLE
    batch.begin_delete_pool(pool_id, polling_interval=0).result()  # type: ignore[arg-type]


def test_preempt_spot_after_preempts_each_task_once_and_it_still_completes(tmp_path: Path) -> None:
    emulator = start_emulator(tmp_path, ["--preempt-spot-after", "0.3"])
    try:
        batch = client_for(emulator)
        _pool_id, job_id = _spot_pool(batch, "autopreempt", spot=2)
        for task_id in ("a", "b"):
            batch.create_task(job_id, m.BatchTaskCreateOptions(id=task_id, command_line="sleep 1"))
        for task_id in ("a", "b"):
            info = wait_for_task(batch, job_id, task_id).execution_info
            assert info is not None and info.exit_code == 0
            assert (info.requeue_count, info.retry_count) == (1, 0)
        assert "preempted; running tasks requeued" in emulator.log_path.read_text()
    finally:
        emulator.stop()
