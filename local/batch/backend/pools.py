"""Pools and their compute nodes: allocation, node operations, the start task."""

from __future__ import annotations

import copy
import logging
import uuid
from pathlib import Path

from local.batch import clock, containers, odata, runner, validation
from local.batch.backend import environment, listing, spot
from local.batch.backend.autoscaling import Autoscaling
from local.batch.backend.records import (
    Doc,
    Node,
    NodeRecord,
    NodeState,
    PoolRecord,
    PoolState,
    StopReason,
    Stored,
)
from local.batch.backend.state import State, copy_given
from local.batch.errors import BatchApiError, conflict, invalid_property, not_found

logger = logging.getLogger(__name__)

NODE_STATE_COUNTS = (
    "creating",
    "idle",
    "offline",
    "preempted",
    "rebooting",
    "reimaging",
    "running",
    "starting",
    "startTaskFailed",
    "leavingPool",
    "unknown",
    "unusable",
    "waitingForStartTask",
    "deallocated",
    "deallocating",
    "total",
    "upgradingOS",
)


def _pool_being_deleted() -> BatchApiError:
    return conflict("PoolBeingDeleted", "The specified pool has been marked for deletion and is being reclaimed.")


class Pools:
    """Pool and node operations of the REST API, and what the dispatcher asks of nodes."""

    def __init__(self, state: State, autoscale_interval_seconds: float | None = None) -> None:
        self.state = state
        self.autoscaling = Autoscaling(state, self, autoscale_interval_seconds)
        # --preempt-spot-after: pre-empt a Spot node this many seconds into a task's first run (None: never)
        self.preempt_spot_after: float | None = None

    # ------------------------------------------------------------------ pools

    def create_pool(self, body: Doc) -> Doc:
        pool_id = validation.check_id(body.get("id"))
        validation.check_pool_spec(body)
        environment.check_packages(self.state, body.get("applicationPackageReferences"))
        with self.state.lock:
            if validation.key(pool_id) in self.state.pools:
                raise conflict("PoolExists", "The specified pool already exists.")
            return self.add_pool(body)

    def add_pool(self, body: Doc) -> Doc:
        state = self.state
        pool_id = str(body["id"])
        moment = clock.stamp()
        pool: Doc = {
            "id": pool_id,
            "url": state.url("pools", pool_id),
            "creationTime": moment,
            "state": PoolState.ACTIVE,
            "stateTransitionTime": moment,
            "allocationState": "steady",
            "allocationStateTransitionTime": moment,
            "vmSize": str(body["vmSize"]).lower(),
            "resizeTimeout": body.get("resizeTimeout") or "PT15M",
            "currentDedicatedNodes": 0,
            "currentLowPriorityNodes": 0,
            "targetDedicatedNodes": int(body.get("targetDedicatedNodes") or 0),
            "targetLowPriorityNodes": int(body.get("targetLowPriorityNodes") or 0),
            "enableAutoScale": bool(body.get("enableAutoScale") or False),
            "enableInterNodeCommunication": bool(body.get("enableInterNodeCommunication") or False),
            "taskSlotsPerNode": int(body.get("taskSlotsPerNode") or 1),
            "taskSchedulingPolicy": body.get("taskSchedulingPolicy") or {"nodeFillType": "spread"},
        }
        record = PoolRecord(seq=state.next_seq())
        copy_given(
            pool,
            body,
            (
                "displayName",
                "virtualMachineConfiguration",
                "networkConfiguration",
                "startTask",
                "applicationPackageReferences",
                "userAccounts",
                "metadata",
                "mountConfiguration",
                "upgradePolicy",
                "autoScaleFormula",
                "autoScaleEvaluationInterval",
            ),
        )
        state.touch(pool, moment)
        pool_key = validation.key(pool_id)
        state.pools[pool_key] = Stored(pool, record)
        state.nodes[pool_key] = {}
        if pool["enableAutoScale"]:
            self.autoscaling.start(pool_key)  # Batch evaluates the formula as the pool is created
        self.resize_nodes(pool_key)
        state.save_pool(pool_key)
        self._announce_containers(pool)
        state.wakeup.notify_all()
        return pool

    def get_pool(self, pool_id: str) -> Doc:
        with self.state.lock:
            return listing.public(self.state.pool(pool_id).doc)

    def pool_exists(self, pool_id: str) -> bool:
        with self.state.lock:
            return validation.key(pool_id) in self.state.pools

    def list_pools(self, query: dict[str, str]) -> tuple[list[Doc], str | None]:
        with self.state.lock:
            return listing.page(((p.seq, p.doc) for p in self.state.pools.values()), query, odata.POOL_FILTERS)

    def delete_pool(self, pool_id: str) -> None:
        state = self.state
        with state.lock:
            pool = state.pool(pool_id).doc
            pool_key = validation.key(pool_id)
            if pool["state"] != PoolState.DELETING:
                pool["state"] = PoolState.DELETING
                pool["stateTransitionTime"] = clock.stamp()
                state.touch(pool)
                state.save_pool(pool_key)
            for node_key in list(state.nodes.get(pool_key, {})):
                self.remove_node(pool_key, node_key)
            state.wakeup.notify_all()

    def resize_pool(self, pool_id: str, body: Doc) -> None:
        validation.check_int(body.get("targetDedicatedNodes"), "targetDedicatedNodes", 0)
        validation.check_int(body.get("targetLowPriorityNodes"), "targetLowPriorityNodes", 0)
        state = self.state
        with state.lock:
            pool = state.pool(pool_id).doc
            if pool["state"] == PoolState.DELETING:
                raise _pool_being_deleted()
            if pool.get("enableAutoScale"):
                raise conflict(
                    "AutoScalingEnabled",
                    "The specified pool has automatic scaling enabled; it cannot be resized manually.",
                )
            if body.get("targetDedicatedNodes") is not None:
                pool["targetDedicatedNodes"] = int(body["targetDedicatedNodes"])
            if body.get("targetLowPriorityNodes") is not None:
                pool["targetLowPriorityNodes"] = int(body["targetLowPriorityNodes"])
            pool_key = validation.key(pool_id)
            self.resize_nodes(pool_key)
            state.touch(pool)
            state.save_pool(pool_key)
            state.wakeup.notify_all()

    def stop_pool_resize(self, pool_id: str) -> None:
        with self.state.lock:
            self.state.pool(pool_id)

    def update_pool(self, pool_id: str, body: Doc, replace: bool) -> None:
        validation.check_metadata(body.get("metadata"))
        environment.check_packages(self.state, body.get("applicationPackageReferences"))
        state = self.state
        with state.lock:
            pool = state.pool(pool_id).doc
            for name in (
                "startTask",
                "applicationPackageReferences",
                "metadata",
                "displayName",
                "taskSchedulingPolicy",
            ):
                if name in body:
                    pool[name] = copy.deepcopy(body[name])
                elif replace and name in ("startTask", "applicationPackageReferences", "metadata"):
                    pool.pop(name, None)
            if "taskSlotsPerNode" in body and not replace:
                pool["taskSlotsPerNode"] = int(body["taskSlotsPerNode"])
            state.touch(pool)
            state.save_pool(validation.key(pool_id))
            state.wakeup.notify_all()

    def release_auto_pool(self, job: Doc) -> None:
        """An auto pool whose lifetime is the job's goes when the job completes or is deleted."""
        spec = (job.get("poolInfo") or {}).get("autoPoolSpecification")
        if not spec or spec.get("keepAlive") or str(spec.get("poolLifetimeOption") or "job").lower() != "job":
            return
        pool_key = self.state.job_pool_key(job)
        if pool_key in self.state.pools:
            self.state.pools[pool_key].doc["state"] = PoolState.DELETING
            for node_key in list(self.state.nodes.get(pool_key, {})):
                self.remove_node(pool_key, node_key)

    # ------------------------------------------------------------------ nodes

    def _node_id(self, pool: Doc, index: int, dedicated: bool) -> str:
        digest = uuid.uuid5(uuid.NAMESPACE_URL, self.state.account_name + "/" + str(pool["id"])).hex[:10]
        return f"tvmps_{digest}{index:04d}_{'d' if dedicated else 'p'}"

    def resize_nodes(self, pool_key: str) -> None:
        """Make the pool's nodes match its targets now (allocation is instantaneous here)."""
        state = self.state
        pool = state.pools[pool_key].doc
        nodes = state.nodes.setdefault(pool_key, {})
        for dedicated, target_name, current_name in (
            (True, "targetDedicatedNodes", "currentDedicatedNodes"),
            (False, "targetLowPriorityNodes", "currentLowPriorityNodes"),
        ):
            mine = [key for key, node in nodes.items() if bool(node.doc["isDedicated"]) == dedicated]
            target = int(pool[target_name])
            index = 0
            while len(mine) < target:
                node_id = self._node_id(pool, index, dedicated)
                index += 1
                node_key = validation.key(node_id)
                if node_key in nodes:
                    continue
                nodes[node_key] = self._new_node(pool, node_id, dedicated)
                mine.append(node_key)
                state.save_node(pool_key, node_key)
                if pool.get("startTask"):
                    self.launch_start_task(pool_key, node_key)
            if len(mine) > target:
                # Remove idle nodes first; tasks on removed busy nodes are requeued (the default option).
                mine.sort(key=lambda key: (nodes[key].doc["runningTasksCount"] > 0, key), reverse=False)
                for node_key in mine[target:]:
                    self.remove_node(pool_key, node_key)
            pool[current_name] = target
        pool["allocationState"] = "steady"
        pool["allocationStateTransitionTime"] = clock.stamp()

    def _new_node(self, pool: Doc, node_id: str, dedicated: bool) -> Node:
        moment = clock.stamp()
        doc: Doc = {
            "id": node_id,
            "url": self.state.url("pools", str(pool["id"]), "nodes", node_id),
            "state": NodeState.IDLE,
            "schedulingState": "enabled",
            "stateTransitionTime": moment,
            "lastBootTime": moment,
            "allocationTime": moment,
            "ipAddress": "127.0.0.1",
            "affinityId": f"TVM:{node_id}",
            "vmSize": pool["vmSize"],
            "totalTasksRun": 0,
            "runningTasksCount": 0,
            "runningTaskSlotsCount": 0,
            "totalTasksSucceeded": 0,
            "isDedicated": dedicated,
            "nodeAgentInfo": {"version": "emulator", "lastUpdateTime": moment},
        }
        return Stored(doc, NodeRecord(seq=self.state.next_seq()))

    def remove_node(self, pool_key: str, node_key: str, option: str = StopReason.REQUEUE) -> None:
        self._stop_node_tasks(pool_key, node_key, option)
        self.state.nodes[pool_key].pop(node_key, None)
        self.state.journal.delete("node", f"{pool_key}/{node_key}")

    def _stop_node_tasks(self, pool_key: str, node_key: str, option: str) -> None:
        """requeue / terminate the node's running tasks (taskcompletion and retaineddata let them finish)."""
        if option not in (StopReason.REQUEUE, StopReason.TERMINATE):
            return
        for (job_key, task_key), run in list(self.state.runs.items()):
            if run.pool_key == pool_key and run.node_key == node_key:
                self.state.stop_run(job_key, task_key, StopReason(option))

    def reboot_node(self, pool_id: str, node_id: str, option: str | None) -> None:
        state = self.state
        with state.lock:
            pool_key, node_key, node = state.node(pool_id, node_id)
            if node.doc["state"] not in (NodeState.IDLE, NodeState.RUNNING, NodeState.START_TASK_FAILED):
                raise conflict("OperationNotValidOnNode", "The specified operation is not valid on the node.")
            node.doc["state"] = NodeState.REBOOTING
            node.doc["stateTransitionTime"] = clock.stamp()
            self._stop_node_tasks(pool_key, node_key, (option or "requeue").lower())
            state.save_node(pool_key, node_key)
            state.wakeup.notify_all()

    def finish_reboots(self) -> None:
        """A rebooting node comes back once its tasks are gone: new boot time, start task again.

        The dispatcher's tick calls this; it also runs the Spot pre-emption timers (backend/spot.py).
        """
        spot.tick(self)
        state = self.state
        busy = {(run.pool_key, run.node_key) for run in state.runs.values()}
        for pool_key, nodes in state.nodes.items():
            pool = state.pools.get(pool_key)
            for node_key, node in nodes.items():
                if node.doc["state"] != NodeState.REBOOTING or (pool_key, node_key) in busy or pool is None:
                    continue
                moment = clock.stamp()
                node.doc["lastBootTime"] = moment
                node.doc["state"] = NodeState.IDLE
                node.doc["stateTransitionTime"] = moment
                state.save_node(pool_key, node_key)
                if pool.doc.get("startTask"):
                    self.launch_start_task(pool_key, node_key)

    def set_node_scheduling(self, pool_id: str, node_id: str, enabled: bool, option: str | None = None) -> None:
        state = self.state
        with state.lock:
            pool_key, node_key, node = state.node(pool_id, node_id)
            wanted = "enabled" if enabled else "disabled"
            if node.doc["schedulingState"] == wanted:
                raise conflict(
                    "NodeAlreadyInTargetSchedulingState",
                    "The specified node is already in the target scheduling state.",
                )
            node.doc["schedulingState"] = wanted
            if not enabled:
                self._stop_node_tasks(pool_key, node_key, (option or "requeue").lower())
            state.save_node(pool_key, node_key)
            state.wakeup.notify_all()

    def remove_nodes(self, pool_id: str, body: Doc) -> None:
        node_ids = body.get("nodeList")
        if not isinstance(node_ids, list) or not node_ids or len(node_ids) > 100:
            raise invalid_property("nodeList", node_ids, "must list 1 to 100 node ids")
        option = str(body.get("nodeDeallocationOption") or "requeue").lower()
        state = self.state
        with state.lock:
            pool = state.pool(pool_id).doc
            pool_key = validation.key(pool_id)
            if pool["state"] == PoolState.DELETING:
                raise _pool_being_deleted()
            found = [state.node(pool_id, str(node_id))[1] for node_id in node_ids]
            for node_key in found:
                node = state.nodes[pool_key][node_key].doc
                target = "targetDedicatedNodes" if node["isDedicated"] else "targetLowPriorityNodes"
                current = "currentDedicatedNodes" if node["isDedicated"] else "currentLowPriorityNodes"
                pool[target] = max(0, int(pool[target]) - 1)
                pool[current] = max(0, int(pool[current]) - 1)
                self.remove_node(pool_key, node_key, option)
            pool["allocationStateTransitionTime"] = clock.stamp()
            state.touch(pool)
            state.save_pool(pool_key)
            state.wakeup.notify_all()

    def list_nodes(self, pool_id: str, query: dict[str, str]) -> tuple[list[Doc], str | None]:
        with self.state.lock:
            self.state.pool(pool_id)
            nodes = self.state.nodes.get(validation.key(pool_id), {})
            return listing.page(((n.seq, n.doc) for n in nodes.values()), query, odata.NODE_FILTERS)

    def get_node(self, pool_id: str, node_id: str) -> Doc:
        with self.state.lock:
            self.state.pool(pool_id)
            node = self.state.nodes.get(validation.key(pool_id), {}).get(validation.key(node_id))
            if node is None:
                raise not_found("NodeNotFound", "node")
            return listing.public(node.doc)

    def node_file_root(self, pool_id: str, node_id: str) -> Path:
        with self.state.lock:
            _pool_key, _node_key, node = self.state.node(pool_id, node_id)
            root = environment.node_root(self.state, node.doc)
            root.mkdir(parents=True, exist_ok=True)
            return root

    def pool_node_counts(self) -> list[Doc]:
        with self.state.lock:
            result = []
            for pool_key, pool in self.state.pools.items():
                entry: Doc = {"poolId": pool.doc["id"]}
                for dedicated, name in ((True, "dedicated"), (False, "lowPriority")):
                    counts = dict.fromkeys(NODE_STATE_COUNTS, 0)
                    for node in self.state.nodes.get(pool_key, {}).values():
                        if bool(node.doc["isDedicated"]) == dedicated:
                            counts[str(node.doc["state"])] = counts.get(str(node.doc["state"]), 0) + 1
                            counts["total"] += 1
                    entry[name] = counts
                result.append(entry)
            return result

    # ------------------------------------------------------------------ start task

    def launch_start_task(self, pool_key: str, node_key: str) -> None:
        """Run the pool's start task on a node; with waitForSuccess the node takes no tasks until it succeeds."""
        state = self.state
        pool = state.pools[pool_key].doc
        node = state.nodes[pool_key][node_key]
        start_task = dict(pool["startTask"])
        wait_for_success = start_task.get("waitForSuccess", True) is not False
        moment = clock.stamp()
        node.doc["state"] = NodeState.WAITING_FOR_START_TASK if wait_for_success else NodeState.IDLE
        node.doc["stateTransitionTime"] = moment
        node.doc["startTask"] = copy.deepcopy(start_task)
        node.doc["startTaskInfo"] = {"state": "running", "startTime": moment, "retryCount": 0}
        attempt = environment.start_task_attempt(state, pool, node.doc)
        key = f"{state.account_name}/{pool['id']}/{node.doc['id']}/start/{node.seq}"
        runner.with_container(attempt, start_task.get("containerSettings"), key)
        state.save_node(pool_key, node_key)
        retries = int(start_task.get("maxTaskRetryCount") or 0)
        state.executor.submit(self._run_start_task, pool_key, node_key, node.seq, attempt, retries)

    def _run_start_task(
        self, pool_key: str, node_key: str, node_seq: int, attempt: runner.Attempt, retries: int
    ) -> None:
        """Worker thread: run the start task (with its retries) and record startTaskInfo on the node."""
        state = self.state
        retry = 0
        while True:
            exit_code: int | None = None
            failure: runner.Failure | None = None
            try:
                runner.prepare(attempt)
                process = runner.launch(attempt)
                with state.lock:
                    state.start_task_pids[(pool_key, node_key)] = process.pid
                exit_code, _ = runner.wait(process, None)
                if exit_code != 0:
                    failure = runner.exit_code_failure()
            except runner.Failure as problem:
                failure = problem
            except Exception as problem:  # a worker thread's boundary: the node must not stay waiting forever
                logger.exception("start task on node %s of pool %s crashed in the emulator", node_key, pool_key)
                failure = runner.Failure(
                    "servererror",
                    "Unknown",
                    "An unknown error has occurred.",
                    {"Message": runner.redact_queries(str(problem))[:500]},
                )
            with state.lock:
                state.start_task_pids.pop((pool_key, node_key), None)
                node = state.nodes.get(pool_key, {}).get(node_key)
                if node is None or node.seq != node_seq or state.stopping:
                    return
                info = node.doc["startTaskInfo"]
                if failure is not None and exit_code not in (None, 0) and retry < retries:
                    retry += 1
                    info["retryCount"] = retry
                    info["lastRetryTime"] = clock.stamp()
                    continue
                moment = clock.stamp()
                info.update(
                    {"state": "completed", "endTime": moment, "result": "success" if failure is None else "failure"}
                )
                if exit_code is not None:
                    info["exitCode"] = exit_code
                if failure is not None:
                    info["failureInfo"] = failure.info()
                if node.doc["state"] == NodeState.WAITING_FOR_START_TASK:
                    node.doc["state"] = NodeState.IDLE if failure is None else NodeState.START_TASK_FAILED
                    node.doc["stateTransitionTime"] = moment
                state.save_node(pool_key, node_key)
                state.wakeup.notify_all()
                return

    # ------------------------------------------------------------------ containers

    def _announce_containers(self, pool: Doc) -> None:
        """A container pool says in the log whether its tasks can run here; its images are prefetched only if so."""
        config = (pool.get("virtualMachineConfiguration") or {}).get("containerConfiguration")
        if not config:
            return
        images = [str(image) for image in config.get("containerImageNames") or []]
        runtime = containers.RUNTIME.name()
        if runtime is None:
            logger.warning(
                "pool %s has a containerConfiguration (%s) but %s: its container tasks will fail with "
                "ContainerInvalidSettings; images not prefetched: %s",
                pool["id"],
                config.get("type"),
                containers.RUNTIME.why_not(),
                ", ".join(images) or "none",
            )
            return
        logger.info("pool %s runs its container tasks with %s", pool["id"], runtime)
        if config.get("containerRegistries"):
            logger.info("pool %s: registry credentials are not used; %s pulls with its own logins", pool["id"], runtime)
        if images:
            containers.prefetch(runtime, images, str(pool["id"]))
