"""Spot (low-priority) nodes pre-empted, as Azure reclaims their capacity: a fault the emulator injects on request.

What Batch documents (BatchNodeState.preempted; "Use Spot VMs with Batch workloads"): the node goes `preempted`,
the tasks running on it are requeued (requeueCount + 1, retryCount unchanged: pre-emption is not a task failure)
and run again on another node, and the pool seeks back to its target Spot count. A preempted node stays in the
pool, counted in currentLowPriorityNodes ($CurrentLowPriorityNodes: "including any nodes that have been
preempted"), until a new node (a new id) replaces it when capacity returns.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from local.batch import clock, runner, validation
from local.batch.backend import listing
from local.batch.backend.records import Doc, NodeState, PoolState, StopReason
from local.batch.errors import conflict

if TYPE_CHECKING:
    from local.batch.backend.pools import Pools

logger = logging.getLogger(__name__)


def preempt_node(pools: Pools, pool_id: str, node_id: str, replace_after_seconds: float = 0.0) -> Doc:
    """Pre-empt a Spot node now (the emulator-only knob); a new node replaces it `replace_after_seconds` later."""
    state = pools.state
    with state.lock:
        pool_key, node_key, node = state.node(pool_id, node_id)
        if state.pools[pool_key].doc["state"] == PoolState.DELETING:
            raise conflict(
                "PoolBeingDeleted", "The specified pool has been marked for deletion and is being reclaimed."
            )
        if node.doc["isDedicated"]:
            raise conflict(
                "OperationNotValidOnNode", "Only Spot/low-priority nodes can be preempted; this node is dedicated."
            )
        if node.doc["state"] == NodeState.PREEMPTED:
            raise conflict("OperationNotValidOnNode", "The specified node is already preempted.")
        _preempt(pools, pool_key, node_key, replace_after_seconds)
        return listing.public(node.doc)


def _preempt(pools: Pools, pool_key: str, node_key: str, replace_after_seconds: float) -> None:
    state = pools.state
    node = state.nodes[pool_key][node_key]
    requeued = [
        task_key
        for (job_key, task_key), run in state.runs.items()
        if run.pool_key == pool_key and run.node_key == node_key
    ]
    pools._stop_node_tasks(pool_key, node_key, StopReason.REQUEUE)
    if (pool_key, node_key) in state.start_task_pids:
        runner.kill_tree(state.start_task_pids[(pool_key, node_key)])
    moment = clock.now()
    node.doc["state"] = NodeState.PREEMPTED
    node.doc["stateTransitionTime"] = clock.fmt(moment)
    node.record.replace_at = clock.fmt(moment + timedelta(seconds=max(0.0, replace_after_seconds)))
    state.save_node(pool_key, node_key)
    logger.info(
        "Spot node %s of pool %s preempted; running tasks requeued: %s; replaced in %.1f s",
        node.doc["id"],
        state.pools[pool_key].doc["id"],
        ", ".join(requeued) or "none",
        replace_after_seconds,
    )
    state.wakeup.notify_all()


def tick(pools: Pools) -> None:
    """Pre-empt under --preempt-spot-after, and replace preempted nodes whose capacity has returned."""
    state = pools.state
    moment = clock.now()
    if pools.preempt_spot_after is not None:
        for (job_key, task_key), run in list(state.runs.items()):
            node = state.nodes.get(run.pool_key, {}).get(run.node_key)
            task = state.tasks.get(job_key, {}).get(task_key)
            if node is None or task is None or node.doc["isDedicated"] or run.process_pid is None:
                continue
            info = task.doc["executionInfo"]
            # Once per task, so that a pipeline under this fault still finishes.
            if int(info.get("requeueCount", 0)) > 0 or node.doc["state"] == NodeState.PREEMPTED:
                continue
            started = clock.parse(str(info.get("startTime") or clock.fmt(moment)))
            if (moment - started).total_seconds() >= pools.preempt_spot_after:
                _preempt(pools, run.pool_key, run.node_key, 0.0)
    for pool_key, nodes in list(state.nodes.items()):
        pool = state.pools.get(pool_key)
        for node_key, node in list(nodes.items()):
            if node.doc["state"] != NodeState.PREEMPTED or pool is None:
                continue
            if node.record.replace_at is not None and clock.parse(node.record.replace_at) > moment:
                continue
            if any(run.pool_key == pool_key and run.node_key == node_key for run in state.runs.values()):
                continue  # its requeued attempts have not let go yet
            _replace(pools, pool_key, node_key)


def _replace(pools: Pools, pool_key: str, node_key: str) -> None:
    """A new Spot node takes a preempted one's place (a new id), with the pool's start task."""
    state = pools.state
    pool = state.pools[pool_key].doc
    nodes = state.nodes[pool_key]
    # Past every index in use, so the replacement's id is not the preempted node's, nor one just replaced.
    used = [int(node.doc["id"][-6:-2]) for node in nodes.values() if str(node.doc["id"])[-6:-2].isdigit()]
    index = max(used, default=-1) + 1
    while validation.key(pools._node_id(pool, index, False)) in nodes:
        index += 1
    new_id = pools._node_id(pool, index, False)
    new_key = validation.key(new_id)
    old_id = nodes[node_key].doc["id"]
    nodes[new_key] = pools._new_node(pool, new_id, False)
    state.save_node(pool_key, new_key)
    pools.remove_node(pool_key, node_key)
    if pool.get("startTask"):
        pools.launch_start_task(pool_key, new_key)
    logger.info("Spot capacity returned to pool %s: node %s replaces preempted %s", pool["id"], new_id, old_id)
    state.wakeup.notify_all()
