"""The emulated Batch account: pools, nodes, jobs and tasks, their state machines and the scheduler.

One lock guards all state. HTTP handlers call the public methods; a dispatcher thread assigns active
tasks to free node slots and a bounded worker pool runs them (see runner.py), so at most
`sum(nodes x taskSlotsPerNode)` task processes run at once and no thread is spawned per task.
"""

from __future__ import annotations

import contextlib
import copy
import heapq
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from local.batch import clock, odata, runner, validation
from local.batch.errors import BatchApiError, conflict, error_dict, invalid_property, missing_property, not_found
from local.batch.journal import Journal

logger = logging.getLogger(__name__)

Doc = dict[str, Any]

DEFAULT_RETENTION = "P7D"
MAX_WORKERS = 1024  # threads start on demand; at most one per busy node slot
TASK_ENDED_BY_USER = "Task Was Ended by User Request"


@dataclass
class Run:
    """A task attempt that holds a node slot."""

    attempt: int
    pool_key: str
    node_key: str
    slots: int
    stop_reason: str | None = None  # "terminate", "requeue", "delete"
    process_pid: int | None = None


@dataclass
class Counts:
    active: int = 0
    running: int = 0
    completed: int = 0
    succeeded: int = 0
    failed: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "active": self.active,
            "running": self.running,
            "completed": self.completed,
            "succeeded": self.succeeded,
            "failed": self.failed,
        }


@dataclass
class JobCounts:
    tasks: Counts = field(default_factory=Counts)
    slots: Counts = field(default_factory=Counts)


def _bucket(task: Doc) -> str:
    state = str(task["state"])
    return "running" if state in ("preparing", "running") else state


def _succeeded(task: Doc) -> bool:
    return (task.get("executionInfo") or {}).get("result") == "success"


def _auto_user(task: Doc) -> Doc:
    """The task's autoUser specification; empty when it runs as a named user."""
    return dict((task.get("userIdentity") or {}).get("autoUser") or {})


def _remove_trees(paths: list[Path]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def public(doc: Doc) -> Doc:
    """The REST representation: internal fields (leading underscore) removed, deep-copied."""
    return {name: copy.deepcopy(value) for name, value in doc.items() if not name.startswith("_")}


class BatchService:
    """State and behaviour of one emulated Batch account."""

    def __init__(
        self,
        state_dir: Path,
        account_name: str,
        *,
        packages_dir: Path | None = None,
        auto_storage_connection_string: str | None = None,
        job_quota: int | None = None,
        persist: bool = True,
        task_start_delay_ms: float = 0.0,
    ) -> None:
        self.state_dir = state_dir
        self.account_name = account_name
        self.account_url = ""
        self.packages_dir = packages_dir or state_dir / "packages"
        self.auto_storage = auto_storage_connection_string
        self.job_quota = job_quota
        self.task_start_delay = task_start_delay_ms / 1000.0
        self.lock = threading.RLock()
        self.wakeup = threading.Condition(self.lock)
        self.journal = Journal(state_dir / "state.jsonl" if persist else None)
        self.pools: dict[str, Doc] = {}
        self.nodes: dict[str, dict[str, Doc]] = {}
        self.jobs: dict[str, Doc] = {}
        self.tasks: dict[str, dict[str, Doc]] = {}
        self.counts: dict[str, JobCounts] = {}
        self.ready: dict[str, deque[str]] = {}
        self.waiting: dict[str, set[str]] = {}  # active tasks whose dependencies are not met yet
        self.runs: dict[tuple[str, str], Run] = {}
        self.start_task_pids: dict[tuple[str, str], int] = {}
        self._prep_locks: dict[tuple[str, str], threading.Lock] = {}
        self.retention: list[tuple[datetime, str, str, int]] = []
        self._seq = 0
        self._stopping = False
        self._executor = ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="batch-node")
        self._dispatcher = threading.Thread(target=self._dispatch_loop, name="batch-dispatcher", daemon=True)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self.lock:
            self._recover(self.journal.load())
            self.journal.open(self._snapshot())
        self._dispatcher.start()

    def stop(self) -> None:
        """Kill every running task's process tree and stop scheduling (state stays as it is)."""
        with self.lock:
            self._stopping = True
            pids = [run.process_pid for run in self.runs.values() if run.process_pid]
            pids += list(self.start_task_pids.values())
            self.wakeup.notify_all()
        for pid in pids:
            runner.kill_tree(pid)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.journal.close()

    def _snapshot(self) -> dict[tuple[str, str], Doc]:
        documents: dict[tuple[str, str], Doc] = {}
        for pool_key, pool in self.pools.items():
            documents[("pool", pool_key)] = pool
        for pool_key, nodes in self.nodes.items():
            for node_key, node in nodes.items():
                documents[("node", f"{pool_key}/{node_key}")] = node
        for job_key, job in self.jobs.items():
            documents[("job", job_key)] = job
        for job_key, tasks in self.tasks.items():
            for task_key, task in tasks.items():
                documents[("task", f"{job_key}/{task_key}")] = task
        return documents

    def _recover(self, documents: dict[tuple[str, str], Doc]) -> None:
        """Rebuild from the journal; attempts that were running when the emulator died are requeued."""
        ordered = sorted(documents.items(), key=lambda item: int(item[1].get("_seq", 0)))
        for (kind, composite), doc in ordered:
            # ETags come from the same counter: never hand out one a document already had.
            etag = str(doc.get("eTag") or "")
            etag_number = int(etag[5:], 16) if etag.startswith("0x8DE") and len(etag) > 5 else 0
            self._seq = max(self._seq, int(doc.get("_seq", 0)), etag_number)
            if kind == "pool":
                self.pools[composite] = doc
                self.nodes.setdefault(composite, {})
            elif kind == "node":
                pool_key, node_key = composite.split("/", 1)
                self.nodes.setdefault(pool_key, {})[node_key] = doc
            elif kind == "job":
                self.jobs[composite] = doc
                self.tasks.setdefault(composite, {})
                self.counts.setdefault(composite, JobCounts())
                self.ready.setdefault(composite, deque())
        for (kind, composite), doc in ordered:
            if kind != "task":
                continue
            job_key, task_key = composite.split("/", 1)
            if job_key not in self.jobs:
                continue
            self.tasks[job_key][task_key] = doc
            if doc["state"] in ("preparing", "running"):
                pid = doc.pop("_pid", None)
                if isinstance(pid, int):
                    self._kill_stale(pid, doc)
                info = doc.setdefault("executionInfo", {})
                info["requeueCount"] = int(info.get("requeueCount", 0)) + 1
                info["lastRequeueTime"] = clock.stamp()
                self._set_state(job_key, doc, "active", count=False)
            self._count(job_key, doc, +1)
            if doc["state"] == "active":
                self.ready[job_key].append(task_key)
            elif doc["state"] == "completed":
                self._schedule_retention(job_key, task_key, doc)
        for pool_key, nodes in self.nodes.items():
            for node in nodes.values():
                node["runningTasksCount"] = 0
                node["runningTaskSlotsCount"] = 0
                if node["state"] == "running":
                    node["state"] = "idle"
                    node["stateTransitionTime"] = clock.stamp()
            if pool_key not in self.pools:
                continue
            for node_key, node in nodes.items():
                if (node.get("startTaskInfo") or {}).get("state") == "running":
                    self._launch_start_task(pool_key, node_key)

    def _kill_stale(self, pid: int, task: Doc) -> None:
        """Kill a task process group left by a previous emulator process, if it is still that task's."""
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            return
        node_info = task.get("nodeInfo") or {}
        if task["id"] in cwd and str(node_info.get("nodeId", "")) in cwd:
            runner.kill_tree(pid)

    # ------------------------------------------------------------------ helpers

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _etag(self) -> str:
        return f"0x8DE{self._next_seq():013X}"

    def _touch(self, doc: Doc, moment: str | None = None) -> None:
        doc["eTag"] = self._etag()
        doc["lastModified"] = moment or clock.stamp()

    def _save_pool(self, pool_key: str) -> None:
        self.journal.put("pool", pool_key, self.pools[pool_key])

    def _save_node(self, pool_key: str, node_key: str) -> None:
        self.journal.put("node", f"{pool_key}/{node_key}", self.nodes[pool_key][node_key])

    def _save_job(self, job_key: str) -> None:
        self.journal.put("job", job_key, self.jobs[job_key])

    def _save_task(self, job_key: str, task_key: str) -> None:
        self.journal.put("task", f"{job_key}/{task_key}", self.tasks[job_key][task_key])

    def _set_state(self, job_key: str, task: Doc, state: str, *, count: bool = True) -> str:
        moment = clock.stamp()
        if count:
            self._count(job_key, task, -1)
        task["previousState"] = task["state"]
        task["previousStateTransitionTime"] = task["stateTransitionTime"]
        task["state"] = state
        task["stateTransitionTime"] = moment
        self._touch(task, moment)
        if count:
            self._count(job_key, task, +1)
        return moment

    def _count(self, job_key: str, task: Doc, delta: int) -> None:
        counts = self.counts.setdefault(job_key, JobCounts())
        slots = int(task.get("requiredSlots") or 1)
        bucket = _bucket(task)
        for target, amount in ((counts.tasks, delta), (counts.slots, delta * slots)):
            setattr(target, bucket, getattr(target, bucket) + amount)
            if bucket == "completed":
                if _succeeded(task):
                    target.succeeded += amount
                else:
                    target.failed += amount

    def _url(self, *parts: str) -> str:
        return self.account_url + "/" + "/".join(parts)

    def _pool(self, pool_id: str) -> Doc:
        pool = self.pools.get(validation.key(pool_id))
        if pool is None:
            raise not_found("PoolNotFound", "pool")
        return pool

    def _job(self, job_id: str) -> Doc:
        job = self.jobs.get(validation.key(job_id))
        if job is None:
            raise not_found("JobNotFound", "job")
        return job

    def _task(self, job_id: str, task_id: str) -> tuple[str, str, Doc]:
        job_key = validation.key(job_id)
        self._job(job_id)
        task = self.tasks[job_key].get(validation.key(task_id))
        if task is None:
            raise not_found("TaskNotFound", "task")
        return job_key, validation.key(task_id), task

    @staticmethod
    def _check_etag(doc: Doc, if_match: str | None, if_none_match: str | None) -> None:
        def bare(tag: str) -> str:
            # The SDK quotes ETags in conditional headers; Batch's own ETags are bare.
            return tag.strip().removeprefix("W/").strip('"')

        current = str(doc.get("eTag", ""))
        unmet = BatchApiError(
            412, "ConditionNotMet", "The condition specified using HTTP conditional header(s) is not met."
        )
        if if_match and if_match.strip() != "*" and bare(if_match) != current:
            raise unmet
        if if_none_match and (if_none_match.strip() == "*" or bare(if_none_match) == current):
            raise unmet

    # ------------------------------------------------------------------ listing

    @staticmethod
    def page(
        docs: Iterable[Doc], query: Mapping[str, str], filters: odata.FilterSpec, *, selectable: bool = True
    ) -> tuple[list[Doc], str | None]:
        """One page of a list: items after the skip token (a sequence number) that match the filter."""
        predicate = odata.parse_filter(query.get("$filter"), filters)
        fields = odata.parse_select(query.get("$select")) if selectable else None
        limit = odata.max_results(query.get("maxresults"))
        skip_token = query.get("$skiptoken")
        after = 0
        if skip_token:
            try:
                after = int(skip_token)
            except ValueError:
                raise BatchApiError(
                    400,
                    "InvalidQueryParameterValue",
                    "The $skiptoken is not valid.",
                    {"QueryParameterName": "$skiptoken", "QueryParameterValue": skip_token},
                ) from None
        items: list[Doc] = []
        next_token: str | None = None
        last_seq = after
        for doc in docs:
            seq = int(doc.get("_seq", 0))
            if seq <= after:
                continue
            # Filters only read documented (public) properties, so test before copying.
            if not predicate(doc):
                continue
            if len(items) == limit:
                next_token = str(last_seq)
                break
            items.append(copy.deepcopy(odata.project(doc, fields)) if fields is not None else public(doc))
            last_seq = seq
        return items, next_token

    # ------------------------------------------------------------------ pools

    def create_pool(self, body: Doc) -> Doc:
        pool_id = validation.check_id(body.get("id"))
        validation.check_pool_spec(body)
        self._check_packages(body.get("applicationPackageReferences"))
        with self.lock:
            if validation.key(pool_id) in self.pools:
                raise conflict("PoolExists", "The specified pool already exists.")
            return self._add_pool(body)

    def _add_pool(self, body: Doc) -> Doc:
        pool_id = str(body["id"])
        moment = clock.stamp()
        pool: Doc = {
            "id": pool_id,
            "url": self._url("pools", pool_id),
            "creationTime": moment,
            "state": "active",
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
            "_seq": self._next_seq(),
        }
        for name in (
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
        ):
            if body.get(name) is not None:
                pool[name] = copy.deepcopy(body[name])
        if pool["enableAutoScale"]:
            # Autoscale formulas are not evaluated: the pool gets one dedicated node so work runs.
            pool["targetDedicatedNodes"] = max(1, pool["targetDedicatedNodes"])
        self._touch(pool, moment)
        pool_key = validation.key(pool_id)
        self.pools[pool_key] = pool
        self.nodes[pool_key] = {}
        self._resize_nodes(pool_key)
        self._save_pool(pool_key)
        self.wakeup.notify_all()
        return pool

    def _node_id(self, pool: Doc, index: int, dedicated: bool) -> str:
        digest = uuid.uuid5(uuid.NAMESPACE_URL, self.account_name + "/" + str(pool["id"])).hex[:10]
        return f"tvmps_{digest}{index:04d}_{'d' if dedicated else 'p'}"

    def _resize_nodes(self, pool_key: str) -> None:
        """Make the pool's nodes match its targets now (allocation is instantaneous here)."""
        pool = self.pools[pool_key]
        nodes = self.nodes.setdefault(pool_key, {})
        for dedicated, target_name, current_name in (
            (True, "targetDedicatedNodes", "currentDedicatedNodes"),
            (False, "targetLowPriorityNodes", "currentLowPriorityNodes"),
        ):
            mine = [key for key, node in nodes.items() if bool(node["isDedicated"]) == dedicated]
            target = int(pool[target_name])
            index = 0
            while len(mine) < target:
                node_id = self._node_id(pool, index, dedicated)
                index += 1
                if validation.key(node_id) in nodes:
                    continue
                nodes[validation.key(node_id)] = self._new_node(pool, node_id, dedicated)
                mine.append(validation.key(node_id))
                self._save_node(pool_key, validation.key(node_id))
                if pool.get("startTask"):
                    self._launch_start_task(pool_key, validation.key(node_id))
            if len(mine) > target:
                # Remove idle nodes first; tasks on removed busy nodes are requeued (the default option).
                mine.sort(key=lambda key: (nodes[key]["runningTasksCount"] > 0, key), reverse=False)
                for node_key in mine[target:]:
                    self._remove_node(pool_key, node_key)
            pool[current_name] = target
        pool["allocationState"] = "steady"
        pool["allocationStateTransitionTime"] = clock.stamp()

    def _new_node(self, pool: Doc, node_id: str, dedicated: bool) -> Doc:
        moment = clock.stamp()
        return {
            "id": node_id,
            "url": self._url("pools", str(pool["id"]), "nodes", node_id),
            "state": "idle",
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
            "_seq": self._next_seq(),
        }

    def _launch_start_task(self, pool_key: str, node_key: str) -> None:
        """Run the pool's start task on a new node; with waitForSuccess the node takes no tasks until it succeeds."""
        pool = self.pools[pool_key]
        node = self.nodes[pool_key][node_key]
        start_task = dict(pool["startTask"])
        wait_for_success = start_task.get("waitForSuccess", True) is not False
        moment = clock.stamp()
        node["state"] = "waitingforstarttask" if wait_for_success else "idle"
        node["stateTransitionTime"] = moment
        node["startTask"] = copy.deepcopy(start_task)
        node["startTaskInfo"] = {"state": "running", "startTime": moment, "retryCount": 0}
        node_root = self.state_dir / "nodes" / str(node["id"])
        startup = node_root / "startup"
        env = self._base_environment(pool, node, node_root)
        env.update({"AZ_BATCH_TASK_DIR": str(startup), "AZ_BATCH_TASK_WORKING_DIR": str(startup / "wd")})
        for setting in start_task.get("environmentSettings") or []:
            env[str(setting["name"])] = str(setting.get("value") or "")
        attempt = runner.Attempt(
            job_id="",
            task_id="",
            pool_id=str(pool["id"]),
            node_id=str(node["id"]),
            node_root=node_root,
            command_line=str(start_task.get("commandLine") or ""),
            environment=env,
            resource_files=copy.deepcopy(list(start_task.get("resourceFiles") or [])),
            output_files=[],
            wall_clock_seconds=None,
            auto_storage_connection_string=self.auto_storage,
            task_dir_override=startup,
        )
        self._save_node(pool_key, node_key)
        retries = int(start_task.get("maxTaskRetryCount") or 0)
        self._executor.submit(self._run_start_task, pool_key, node_key, node["_seq"], attempt, retries)

    def _run_start_task(
        self, pool_key: str, node_key: str, node_seq: int, attempt: runner.Attempt, retries: int
    ) -> None:
        """Worker thread: run the start task (with its retries) and record startTaskInfo on the node."""
        retry = 0
        while True:
            exit_code: int | None = None
            failure: runner.Failure | None = None
            try:
                runner.prepare(attempt)
                process = runner.launch(attempt)
                with self.lock:
                    self.start_task_pids[(pool_key, node_key)] = process.pid
                exit_code, _ = runner.wait(process, None)
                if exit_code != 0:
                    failure = runner.exit_code_failure()
            except runner.Failure as problem:
                failure = problem
            except Exception as problem:  # a worker thread's boundary: the node must not stay waiting forever
                logger.exception("start task on node %s of pool %s crashed in the emulator", node_key, pool_key)
                failure = runner.Failure(
                    "servererror", "Unknown", "An unknown error has occurred.", {"Message": str(problem)[:500]}
                )
            with self.lock:
                self.start_task_pids.pop((pool_key, node_key), None)
                node = self.nodes.get(pool_key, {}).get(node_key)
                if node is None or node["_seq"] != node_seq or self._stopping:
                    return
                info = node["startTaskInfo"]
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
                if node["state"] == "waitingforstarttask":
                    node["state"] = "idle" if failure is None else "starttaskfailed"
                    node["stateTransitionTime"] = moment
                self._save_node(pool_key, node_key)
                self.wakeup.notify_all()
                return

    def _remove_node(self, pool_key: str, node_key: str, option: str = "requeue") -> None:
        self._stop_node_tasks(pool_key, node_key, option)
        self.nodes[pool_key].pop(node_key, None)
        self.journal.delete("node", f"{pool_key}/{node_key}")

    def _stop_node_tasks(self, pool_key: str, node_key: str, option: str) -> None:
        """requeue / terminate the node's running tasks (taskcompletion and retaineddata let them finish)."""
        if option not in ("requeue", "terminate"):
            return
        for (job_key, task_key), run in list(self.runs.items()):
            if run.pool_key == pool_key and run.node_key == node_key:
                self._stop_run(job_key, task_key, option)

    def _node(self, pool_id: str, node_id: str) -> tuple[str, str, Doc]:
        self._pool(pool_id)
        pool_key, node_key = validation.key(pool_id), validation.key(node_id)
        node = self.nodes.get(pool_key, {}).get(node_key)
        if node is None:
            raise not_found("NodeNotFound", "node")
        return pool_key, node_key, node

    def reboot_node(self, pool_id: str, node_id: str, option: str | None) -> None:
        with self.lock:
            pool_key, node_key, node = self._node(pool_id, node_id)
            if node["state"] not in ("idle", "running", "starttaskfailed"):
                raise conflict("OperationNotValidOnNode", "The specified operation is not valid on the node.")
            node["state"] = "rebooting"
            node["stateTransitionTime"] = clock.stamp()
            self._stop_node_tasks(pool_key, node_key, (option or "requeue").lower())
            self._save_node(pool_key, node_key)
            self.wakeup.notify_all()

    def _finish_reboots(self) -> None:
        """A rebooting node comes back once its tasks are gone: new boot time, start task again."""
        busy = {(run.pool_key, run.node_key) for run in self.runs.values()}
        for pool_key, nodes in self.nodes.items():
            pool = self.pools.get(pool_key)
            for node_key, node in nodes.items():
                if node["state"] != "rebooting" or (pool_key, node_key) in busy or pool is None:
                    continue
                moment = clock.stamp()
                node["lastBootTime"] = moment
                node["state"] = "idle"
                node["stateTransitionTime"] = moment
                self._save_node(pool_key, node_key)
                if pool.get("startTask"):
                    self._launch_start_task(pool_key, node_key)

    def set_node_scheduling(self, pool_id: str, node_id: str, enabled: bool, option: str | None = None) -> None:
        with self.lock:
            pool_key, node_key, node = self._node(pool_id, node_id)
            wanted = "enabled" if enabled else "disabled"
            if node["schedulingState"] == wanted:
                raise conflict(
                    "NodeAlreadyInTargetSchedulingState",
                    "The specified node is already in the target scheduling state.",
                )
            node["schedulingState"] = wanted
            if not enabled:
                self._stop_node_tasks(pool_key, node_key, (option or "requeue").lower())
            self._save_node(pool_key, node_key)
            self.wakeup.notify_all()

    def remove_nodes(self, pool_id: str, body: Doc) -> None:
        node_ids = body.get("nodeList")
        if not isinstance(node_ids, list) or not node_ids or len(node_ids) > 100:
            raise invalid_property("nodeList", node_ids, "must list 1 to 100 node ids")
        option = str(body.get("nodeDeallocationOption") or "requeue").lower()
        with self.lock:
            pool = self._pool(pool_id)
            pool_key = validation.key(pool_id)
            if pool["state"] == "deleting":
                raise conflict(
                    "PoolBeingDeleted", "The specified pool has been marked for deletion and is being reclaimed."
                )
            found = [self._node(pool_id, str(node_id))[1] for node_id in node_ids]
            for node_key in found:
                node = self.nodes[pool_key][node_key]
                target = "targetDedicatedNodes" if node["isDedicated"] else "targetLowPriorityNodes"
                current = "currentDedicatedNodes" if node["isDedicated"] else "currentLowPriorityNodes"
                pool[target] = max(0, int(pool[target]) - 1)
                pool[current] = max(0, int(pool[current]) - 1)
                self._remove_node(pool_key, node_key, option)
            pool["allocationStateTransitionTime"] = clock.stamp()
            self._touch(pool)
            self._save_pool(pool_key)
            self.wakeup.notify_all()

    def get_pool(self, pool_id: str) -> Doc:
        with self.lock:
            return public(self._pool(pool_id))

    def pool_exists(self, pool_id: str) -> bool:
        with self.lock:
            return validation.key(pool_id) in self.pools

    def list_pools(self, query: dict[str, str]) -> tuple[list[Doc], str | None]:
        with self.lock:
            return self.page(self.pools.values(), query, odata.POOL_FILTERS)

    def delete_pool(self, pool_id: str) -> None:
        with self.lock:
            pool = self._pool(pool_id)
            pool_key = validation.key(pool_id)
            if pool["state"] != "deleting":
                pool["state"] = "deleting"
                pool["stateTransitionTime"] = clock.stamp()
                self._touch(pool)
                self._save_pool(pool_key)
            for node_key in list(self.nodes.get(pool_key, {})):
                self._remove_node(pool_key, node_key)
            self.wakeup.notify_all()

    def resize_pool(self, pool_id: str, body: Doc) -> None:
        validation.check_int(body.get("targetDedicatedNodes"), "targetDedicatedNodes", 0)
        validation.check_int(body.get("targetLowPriorityNodes"), "targetLowPriorityNodes", 0)
        with self.lock:
            pool = self._pool(pool_id)
            if pool["state"] == "deleting":
                raise conflict(
                    "PoolBeingDeleted", "The specified pool has been marked for deletion and is being reclaimed."
                )
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
            self._resize_nodes(pool_key)
            self._touch(pool)
            self._save_pool(pool_key)
            self.wakeup.notify_all()

    def stop_pool_resize(self, pool_id: str) -> None:
        with self.lock:
            self._pool(pool_id)

    def update_pool(self, pool_id: str, body: Doc, replace: bool) -> None:
        validation.check_metadata(body.get("metadata"))
        with self.lock:
            pool = self._pool(pool_id)
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
            self._touch(pool)
            self._save_pool(validation.key(pool_id))
            self.wakeup.notify_all()

    def list_nodes(self, pool_id: str, query: dict[str, str]) -> tuple[list[Doc], str | None]:
        with self.lock:
            self._pool(pool_id)
            nodes = self.nodes.get(validation.key(pool_id), {})
            return self.page(nodes.values(), query, odata.NODE_FILTERS)

    def get_node(self, pool_id: str, node_id: str) -> Doc:
        with self.lock:
            self._pool(pool_id)
            node = self.nodes.get(validation.key(pool_id), {}).get(validation.key(node_id))
            if node is None:
                raise not_found("NodeNotFound", "node")
            return public(node)

    def pool_node_counts(self) -> list[Doc]:
        with self.lock:
            result = []
            for pool_key, pool in self.pools.items():
                entry: Doc = {"poolId": pool["id"]}
                for dedicated, name in ((True, "dedicated"), (False, "lowPriority")):
                    counts = dict.fromkeys(
                        (
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
                        ),
                        0,
                    )
                    for node in self.nodes.get(pool_key, {}).values():
                        if bool(node["isDedicated"]) == dedicated:
                            counts[str(node["state"])] = counts.get(str(node["state"]), 0) + 1
                            counts["total"] += 1
                    entry[name] = counts
                result.append(entry)
            return result

    def _check_packages(self, references: Any) -> None:
        if not references:
            return
        missing = [ref for ref in references if self._package_dir(ref) is None]
        if missing:
            raise BatchApiError(
                409,
                "InvalidApplicationPackageReferences",
                "One or more of the specified application package references are invalid.",
                {
                    str(ref.get("applicationId")): f"{ref.get('version') or 'default'} not found under "
                    f"{self.packages_dir}"
                    for ref in missing
                },
            )

    def _package_dir(self, reference: Doc) -> Path | None:
        application = str(reference.get("applicationId") or "")
        if not application or "/" in application or ".." in application:
            return None
        version = reference.get("version")
        base = self.packages_dir / application
        if version:
            candidate = base / str(version)
            return candidate if candidate.is_dir() else None
        if (base / "default").is_dir():
            return base / "default"
        versions = sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
        return versions[-1] if len(versions) == 1 else None

    # ------------------------------------------------------------------ jobs

    def _active_jobs(self) -> int:
        return sum(1 for job in self.jobs.values() if job["state"] not in ("completed", "deleting"))

    def create_job(self, body: Doc) -> Doc:
        job_id = validation.check_id(body.get("id"))
        pool_info = body.get("poolInfo")
        if not isinstance(pool_info, dict) or not (pool_info.get("poolId") or pool_info.get("autoPoolSpecification")):
            raise BatchApiError(
                400,
                "MissingRequiredProperty",
                "A required property was not specified in the request body.",
                {"PropertyName": "poolInfo"},
            )
        constraints = body.get("constraints") or {}
        validation.check_duration(constraints.get("maxWallClockTime"), "constraints.maxWallClockTime")
        validation.check_int(constraints.get("maxTaskRetryCount"), "constraints.maxTaskRetryCount", -1)
        validation.check_int(body.get("maxParallelTasks"), "maxParallelTasks", -1)
        validation.check_int(body.get("priority"), "priority", -1000)
        validation.check_metadata(body.get("metadata"))
        validation.check_environment(body.get("commonEnvironmentSettings"), "commonEnvironmentSettings")
        for name, allowed in (
            ("onAllTasksComplete", ("noaction", "terminatejob")),
            ("onTaskFailure", ("noaction", "performexitoptionsjobaction")),
        ):
            value = body.get(name)
            if value is not None and str(value).lower() not in allowed:
                raise invalid_property(name, value, f"must be one of {', '.join(allowed)}")
        if body.get("jobManagerTask") is not None:
            # Refused rather than ignored: a job relying on it would behave differently on Azure.
            raise BatchApiError(
                400,
                "UnsupportedProperty",
                "The Batch emulator does not run jobManagerTask; see docs/emulator.md.",
                {"PropertyName": "jobManagerTask"},
            )
        self._check_job_side_tasks(body)
        with self.lock:
            job_key = validation.key(job_id)
            if job_key in self.jobs:
                raise conflict("JobExists", "The specified job already exists.")
            if self.job_quota is not None and self._active_jobs() >= self.job_quota:
                raise conflict(
                    "ActiveJobAndScheduleQuotaReached",
                    "The active job and job schedule quota for this account has been reached.",
                )
            moment = clock.stamp()
            job: Doc = {
                "id": job_id,
                "url": self._url("jobs", job_id),
                "creationTime": moment,
                "state": "active",
                "stateTransitionTime": moment,
                "priority": int(body.get("priority") or 0),
                "maxParallelTasks": -1 if body.get("maxParallelTasks") is None else int(body["maxParallelTasks"]),
                "allowTaskPreemption": bool(body.get("allowTaskPreemption") or False),
                "usesTaskDependencies": bool(body.get("usesTaskDependencies") or False),
                "constraints": {
                    "maxWallClockTime": constraints.get("maxWallClockTime") or clock.UNLIMITED,
                    "maxTaskRetryCount": int(constraints.get("maxTaskRetryCount") or 0),
                },
                "poolInfo": copy.deepcopy(pool_info),
                "onAllTasksComplete": str(body.get("onAllTasksComplete") or "noaction").lower(),
                "onTaskFailure": str(body.get("onTaskFailure") or "noaction").lower(),
                "executionInfo": {"startTime": moment},
                "_seq": self._next_seq(),
            }
            for name in (
                "displayName",
                "metadata",
                "commonEnvironmentSettings",
                "networkConfiguration",
                "jobPreparationTask",
                "jobReleaseTask",
            ):
                if body.get(name) is not None:
                    job[name] = copy.deepcopy(body[name])
            if pool_info.get("poolId"):
                job["executionInfo"]["poolId"] = pool_info["poolId"]
            else:
                spec = pool_info["autoPoolSpecification"]
                pool_spec = dict(spec.get("pool") or {})
                pool_id = (
                    f"{spec.get('autoPoolIdPrefix') or ''}{'_' if spec.get('autoPoolIdPrefix') else ''}"
                    f"{str(uuid.uuid4()).upper()}"
                )
                pool_spec["id"] = pool_id[:64]
                validation.check_pool_spec(pool_spec, "poolInfo.autoPoolSpecification.pool.")
                self._add_pool(pool_spec)
                job["executionInfo"]["poolId"] = pool_spec["id"]
            self._touch(job, moment)
            self.jobs[job_key] = job
            self.tasks[job_key] = {}
            self.counts[job_key] = JobCounts()
            self.ready[job_key] = deque()
            self._save_job(job_key)
            self.wakeup.notify_all()
            return public(job)

    @staticmethod
    def _check_job_side_tasks(body: Doc) -> None:
        prep, release = body.get("jobPreparationTask"), body.get("jobReleaseTask")
        if release is not None and prep is None:
            raise invalid_property(
                "jobReleaseTask", "specified", "a job release task can only be specified with a job preparation task"
            )
        for name, spec in (("jobPreparationTask", prep), ("jobReleaseTask", release)):
            if spec is None:
                continue
            if not spec.get("commandLine"):
                raise missing_property(f"{name}.commandLine")
            validation.check_resource_files(spec.get("resourceFiles"), f"{name}.resourceFiles")
            validation.check_environment(spec.get("environmentSettings"), f"{name}.environmentSettings")
            constraints = spec.get("constraints") or {}
            validation.check_duration(constraints.get("maxWallClockTime"), f"{name}.constraints.maxWallClockTime")
            validation.check_duration(spec.get("maxWallClockTime"), f"{name}.maxWallClockTime")
            validation.check_int(constraints.get("maxTaskRetryCount"), f"{name}.constraints.maxTaskRetryCount", -1)
            if spec.get("id") is not None:
                validation.check_id(spec.get("id"), f"{name}.id")

    def get_job(self, job_id: str) -> Doc:
        with self.lock:
            return public(self._job(job_id))

    def list_jobs(self, query: dict[str, str]) -> tuple[list[Doc], str | None]:
        with self.lock:
            return self.page(self.jobs.values(), query, odata.JOB_FILTERS)

    def update_job(self, job_id: str, body: Doc, replace: bool, if_match: str | None = None) -> None:
        constraints = body.get("constraints")
        if constraints is not None:
            validation.check_duration(constraints.get("maxWallClockTime"), "constraints.maxWallClockTime")
            validation.check_int(constraints.get("maxTaskRetryCount"), "constraints.maxTaskRetryCount", -1)
        validation.check_metadata(body.get("metadata"))
        value = body.get("onAllTasksComplete")
        if value is not None and str(value).lower() not in ("noaction", "terminatejob"):
            raise invalid_property("onAllTasksComplete", value, "must be noaction or terminatejob")
        if replace and not body.get("poolInfo"):
            raise missing_property("poolInfo")  # an update (PUT) replaces the job's properties: poolInfo included
        with self.lock:
            job = self._job(job_id)
            self._check_etag(job, if_match, None)
            self._require_job_mutable(job)
            if "poolInfo" in body and body["poolInfo"] is not None:
                if job["state"] != "disabled" and body["poolInfo"] != job["poolInfo"]:
                    raise conflict(
                        "OperationInvalidForCurrentState",
                        "The pool of a job can only be changed while the job is disabled.",
                    )
                job["poolInfo"] = copy.deepcopy(body["poolInfo"])
                if body["poolInfo"].get("poolId"):
                    job["executionInfo"]["poolId"] = body["poolInfo"]["poolId"]
            if replace:
                job["priority"] = int(body.get("priority") or 0)
                job["maxParallelTasks"] = (
                    int(body["maxParallelTasks"]) if body.get("maxParallelTasks") is not None else -1
                )
                job["allowTaskPreemption"] = bool(body.get("allowTaskPreemption") or False)
                merged = constraints or {}
                job["constraints"] = {
                    "maxWallClockTime": merged.get("maxWallClockTime") or clock.UNLIMITED,
                    "maxTaskRetryCount": int(merged.get("maxTaskRetryCount") or 0),
                }
                job["onAllTasksComplete"] = str(body.get("onAllTasksComplete") or "noaction").lower()
                if body.get("metadata") is not None:
                    job["metadata"] = copy.deepcopy(body["metadata"])
                else:
                    job.pop("metadata", None)
            else:
                for name in ("priority", "maxParallelTasks", "allowTaskPreemption"):
                    if body.get(name) is not None:
                        job[name] = body[name]
                if constraints is not None:
                    for name in ("maxWallClockTime", "maxTaskRetryCount"):
                        if constraints.get(name) is not None:
                            job["constraints"][name] = constraints[name]
                if body.get("onAllTasksComplete") is not None:
                    job["onAllTasksComplete"] = str(body["onAllTasksComplete"]).lower()
                if body.get("metadata") is not None:
                    job["metadata"] = copy.deepcopy(body["metadata"])
            self._touch(job)
            self._save_job(validation.key(job_id))
            self.wakeup.notify_all()

    @staticmethod
    def _require_job_mutable(job: Doc) -> None:
        state = job["state"]
        if state == "completed":
            raise conflict("JobCompleted", "The specified job is already in a completed state.")
        if state == "deleting":
            raise conflict(
                "JobBeingDeleted", "The specified job has been marked for deletion and is being garbage collected."
            )
        if state == "terminating":
            raise conflict("JobBeingTerminated", "The specified job is being terminated.")

    def terminate_job(self, job_id: str, reason: str | None, if_match: str | None = None) -> None:
        with self.lock:
            job = self._job(job_id)
            self._check_etag(job, if_match, None)
            self._require_job_mutable(job)
            self._terminate_job(validation.key(job_id), reason or "UserTerminate")

    def _terminate_job(self, job_key: str, reason: str) -> None:
        job = self.jobs[job_key]
        if job["state"] in ("terminating", "completed", "deleting"):
            return
        self._set_job_state(job_key, "terminating")
        job["executionInfo"]["terminateReason"] = reason
        # Batch: active tasks stay active (and are never scheduled); running ones are terminated.
        for (run_job, task_key), _run in list(self.runs.items()):
            if run_job == job_key:
                self._stop_run(job_key, task_key, "terminate")
        self._save_job(job_key)
        self.wakeup.notify_all()

    def _set_job_state(self, job_key: str, state: str) -> None:
        job = self.jobs[job_key]
        moment = clock.stamp()
        job["previousState"] = job["state"]
        job["previousStateTransitionTime"] = job["stateTransitionTime"]
        job["state"] = state
        job["stateTransitionTime"] = moment
        self._touch(job, moment)

    def delete_job(self, job_id: str, if_match: str | None = None) -> None:
        with self.lock:
            job = self._job(job_id)
            self._check_etag(job, if_match, None)
            job_key = validation.key(job_id)
            if job["state"] == "deleting":
                return
            self._set_job_state(job_key, "deleting")
            for (run_job, task_key), _run in list(self.runs.items()):
                if run_job == job_key:
                    self._stop_run(job_key, task_key, "delete")
            self._save_job(job_key)
            self.wakeup.notify_all()

    def disable_job(self, job_id: str, option: str | None) -> None:
        with self.lock:
            job = self._job(job_id)
            self._require_job_mutable(job)
            if job["state"] != "active":
                raise conflict("JobNotActive", "The specified job is not in active state.")
            self._disable_job(validation.key(job_id), (option or "requeue").lower())

    def _disable_job(self, job_key: str, option: str) -> None:
        self._set_job_state(job_key, "disabled")
        if option in ("requeue", "terminate"):
            for (run_job, task_key), _run in list(self.runs.items()):
                if run_job == job_key:
                    self._stop_run(job_key, task_key, "requeue" if option == "requeue" else "terminate")
        self._save_job(job_key)
        self.wakeup.notify_all()

    def enable_job(self, job_id: str) -> None:
        with self.lock:
            job = self._job(job_id)
            self._require_job_mutable(job)
            if job["state"] != "disabled":
                raise conflict("JobNotDisabled", "The specified job is not in disabled state.")
            self._set_job_state(validation.key(job_id), "active")
            self._save_job(validation.key(job_id))
            self.wakeup.notify_all()

    def preparation_and_release_status(self, job_id: str, query: Mapping[str, str]) -> tuple[list[Doc], str | None]:
        with self.lock:
            job = self._job(job_id)
            if not job.get("jobPreparationTask"):
                raise conflict(
                    "JobPreparationTaskNotSpecified", "The specified job does not have job preparation task."
                )
            entries = []
            for index, (node_id, record) in enumerate(sorted((job.get("_prep") or {}).items()), 1):
                entry: Doc = {
                    "poolId": record.get("poolId"),
                    "nodeId": node_id,
                    "nodeUrl": record.get("nodeUrl"),
                    "jobPreparationTaskExecutionInfo": copy.deepcopy(record.get("preparation")),
                    "_seq": index,
                }
                if record.get("release"):
                    entry["jobReleaseTaskExecutionInfo"] = copy.deepcopy(record["release"])
                entries.append(entry)
            return self.page(entries, query, odata.PREP_RELEASE_FILTERS)

    def task_counts(self, job_id: str) -> Doc:
        with self.lock:
            self._job(job_id)
            counts = self.counts[validation.key(job_id)]
            return {"taskCounts": counts.tasks.as_dict(), "taskSlotCounts": counts.slots.as_dict()}

    # ------------------------------------------------------------------ tasks

    def _validate_task(self, job: Doc, body: Any) -> str:
        if not isinstance(body, dict):
            raise BatchApiError(400, "InvalidRequestBody", "The specified Request Body is not syntactically valid.")
        task_id = validation.check_id(body.get("id"))
        if not body.get("commandLine"):
            raise BatchApiError(
                400,
                "MissingRequiredProperty",
                "A required property was not specified in the request body.",
                {"PropertyName": "commandLine"},
            )
        validation.check_resource_files(body.get("resourceFiles"))
        validation.check_output_files(body.get("outputFiles"))
        validation.check_environment(body.get("environmentSettings"), "environmentSettings")
        constraints = body.get("constraints") or {}
        validation.check_duration(constraints.get("maxWallClockTime"), "constraints.maxWallClockTime")
        validation.check_duration(constraints.get("retentionTime"), "constraints.retentionTime")
        validation.check_int(constraints.get("maxTaskRetryCount"), "constraints.maxTaskRetryCount", -1)
        validation.check_int(body.get("requiredSlots"), "requiredSlots", 1)
        validation.user_identity(body.get("userIdentity"))
        self._check_exit_conditions(job, body.get("exitConditions"))
        depends = body.get("dependsOn") or {}
        if len("".join(str(task_id) for task_id in depends.get("taskIds") or [])) > 64000:
            raise BatchApiError(
                400,
                "TaskDependencyListTooLong",
                "The task depends on too many task ids; the combined length of the ids is limited to 64000 "
                "characters. Consider task id ranges instead.",
            )
        if body.get("dependsOn") and not job.get("usesTaskDependencies"):
            raise BatchApiError(
                400,
                "TaskDependenciesNotSpecifiedOnJob",
                "The specified job does not have usesTaskDependencies set, so tasks cannot depend on other tasks.",
            )
        if body.get("multiInstanceSettings"):
            raise BatchApiError(
                400,
                "UnsupportedProperty",
                "The emulator does not run multi-instance tasks.",
                {"PropertyName": "multiInstanceSettings"},
            )
        self._check_packages(body.get("applicationPackageReferences"))
        return task_id

    @staticmethod
    def _check_exit_conditions(job: Doc, conditions: Any) -> None:
        """Batch refuses exit options that the job's settings would never use."""
        if not conditions:
            return
        options: list[tuple[str, Any]] = []
        for name in ("preProcessingError", "fileUploadError", "default"):
            if conditions.get(name) is not None:
                options.append((f"exitConditions.{name}", conditions[name]))
        for index, mapping in enumerate(conditions.get("exitCodes") or []):
            if not isinstance(mapping, dict) or not isinstance(mapping.get("code"), int):
                raise invalid_property(f"exitConditions.exitCodes[{index}].code", mapping, "must be an integer")
            options.append((f"exitConditions.exitCodes[{index}].exitOptions", mapping.get("exitOptions")))
        for index, mapping in enumerate(conditions.get("exitCodeRanges") or []):
            start, end = (mapping.get("start"), mapping.get("end")) if isinstance(mapping, dict) else (None, None)
            if not isinstance(start, int) or not isinstance(end, int) or start > end:
                raise invalid_property(
                    f"exitConditions.exitCodeRanges[{index}]", mapping, "needs integers start <= end"
                )
            options.append((f"exitConditions.exitCodeRanges[{index}].exitOptions", mapping.get("exitOptions")))
        for where, exit_options in options:
            if not isinstance(exit_options, dict):
                continue
            if exit_options.get("jobAction") is not None and job["onTaskFailure"] == "noaction":
                raise invalid_property(
                    f"{where}.jobAction",
                    exit_options["jobAction"],
                    "jobAction requires the job's onTaskFailure to be performexitoptionsjobaction",
                )
            if exit_options.get("dependencyAction") is not None and not job.get("usesTaskDependencies"):
                raise invalid_property(
                    f"{where}.dependencyAction",
                    exit_options["dependencyAction"],
                    "dependencyAction requires the job's usesTaskDependencies to be true",
                )

    def _check_job_accepts_tasks(self, job: Doc) -> None:
        state = job["state"]
        if state == "completed":
            raise conflict("JobCompleted", "The specified job is already in a completed state.")
        if state == "terminating":
            raise conflict("JobBeingTerminated", "The specified job is being terminated.")
        if state == "deleting":
            raise conflict(
                "JobBeingDeleted", "The specified job has been marked for deletion and is being garbage collected."
            )

    def _add_task(self, job_key: str, body: Doc) -> Doc:
        job = self.jobs[job_key]
        task_id = str(body["id"])
        moment = clock.stamp()
        constraints = body.get("constraints") or {}
        retry = constraints.get("maxTaskRetryCount")
        task: Doc = {
            "id": task_id,
            "url": self._url("jobs", str(job["id"]), "tasks", task_id),
            "creationTime": moment,
            "state": "active",
            "stateTransitionTime": moment,
            "commandLine": body["commandLine"],
            "constraints": {
                "maxWallClockTime": constraints.get("maxWallClockTime") or clock.UNLIMITED,
                "retentionTime": constraints.get("retentionTime") or DEFAULT_RETENTION,
                "maxTaskRetryCount": int(retry if retry is not None else job["constraints"]["maxTaskRetryCount"]),
            },
            "requiredSlots": int(body.get("requiredSlots") or 1),
            "userIdentity": validation.user_identity(body.get("userIdentity")),
            "executionInfo": {"retryCount": 0, "requeueCount": 0},
            "_seq": self._next_seq(),
        }
        for name in (
            "displayName",
            "exitConditions",
            "resourceFiles",
            "outputFiles",
            "environmentSettings",
            "affinityInfo",
            "containerSettings",
            "dependsOn",
            "applicationPackageReferences",
        ):
            if body.get(name) is not None:
                task[name] = copy.deepcopy(body[name])
        self._touch(task, moment)
        task_key = validation.key(task_id)
        self.tasks[job_key][task_key] = task
        self._count(job_key, task, +1)
        self.ready[job_key].append(task_key)
        self._save_task(job_key, task_key)
        return task

    def create_task(self, job_id: str, body: Doc) -> Doc:
        with self.lock:
            job = self._job(job_id)
            self._check_job_accepts_tasks(job)
            task_id = self._validate_task(job, body)
            job_key = validation.key(job_id)
            if validation.key(task_id) in self.tasks[job_key]:
                raise conflict("TaskExists", "The specified task already exists.")
            task = self._add_task(job_key, body)
            self.wakeup.notify_all()
            return public(task)

    def create_task_collection(self, job_id: str, body: Any) -> list[Doc]:
        values = body.get("value") if isinstance(body, dict) else None
        if not isinstance(values, list):
            raise BatchApiError(
                400,
                "InvalidRequestBody",
                "The specified Request Body is not syntactically valid.",
                {"Reason": "the body must be an object with a 'value' array"},
            )
        if len(values) > 100:
            raise BatchApiError(
                400,
                "InvalidPropertyValue",
                "A task collection can hold at most 100 tasks.",
                {
                    "PropertyName": "value",
                    "PropertyValue": str(len(values)),
                    "Reason": "The maximum number of tasks in a collection is 100.",
                },
            )
        results: list[Doc] = []
        with self.lock:
            job = self._job(job_id)
            self._check_job_accepts_tasks(job)
            job_key = validation.key(job_id)
            seen: set[str] = set()
            for item in values:
                task_id = str(item.get("id")) if isinstance(item, dict) else ""
                try:
                    self._validate_task(job, item)
                    task_key = validation.key(task_id)
                    if task_key in self.tasks[job_key] or task_key in seen:
                        raise conflict("TaskExists", "The specified task already exists.")
                    task = self._add_task(job_key, item)
                    seen.add(task_key)
                    results.append(
                        {
                            "status": "success",
                            "taskId": task["id"],
                            "eTag": task["eTag"],
                            "lastModified": task["lastModified"],
                            "location": task["url"],
                        }
                    )
                except BatchApiError as problem:
                    results.append(
                        {
                            "status": "clienterror" if problem.status < 500 else "servererror",
                            "taskId": task_id,
                            "error": error_dict(problem.code, problem.message, problem.values),
                        }
                    )
            self.wakeup.notify_all()
        return results

    def get_task(self, job_id: str, task_id: str) -> Doc:
        with self.lock:
            return public(self._task(job_id, task_id)[2])

    def list_tasks(self, job_id: str, query: dict[str, str]) -> tuple[list[Doc], str | None]:
        with self.lock:
            self._job(job_id)
            return self.page(self.tasks[validation.key(job_id)].values(), query, odata.TASK_FILTERS)

    def update_task(self, job_id: str, task_id: str, body: Doc, if_match: str | None = None) -> None:
        constraints = body.get("constraints") or {}
        validation.check_duration(constraints.get("maxWallClockTime"), "constraints.maxWallClockTime")
        validation.check_duration(constraints.get("retentionTime"), "constraints.retentionTime")
        validation.check_int(constraints.get("maxTaskRetryCount"), "constraints.maxTaskRetryCount", -1)
        with self.lock:
            job_key, task_key, task = self._task(job_id, task_id)
            self._check_etag(task, if_match, None)
            if task["state"] == "completed":
                raise conflict("TaskCompleted", "The specified task is already in a completed state.")
            for name in ("maxWallClockTime", "retentionTime", "maxTaskRetryCount"):
                if constraints.get(name) is not None:
                    task["constraints"][name] = constraints[name]
            self._touch(task)
            self._save_task(job_key, task_key)

    def terminate_task(self, job_id: str, task_id: str, if_match: str | None = None) -> None:
        with self.lock:
            job_key, task_key, task = self._task(job_id, task_id)
            self._check_etag(task, if_match, None)
            if task["state"] == "completed":
                raise conflict("TaskCompleted", "The specified task is already in a completed state.")
            if task["state"] == "active":
                self._complete_without_running(
                    job_key, task_key, task, runner.Failure("usererror", "TaskEnded", TASK_ENDED_BY_USER)
                )
            else:
                self._stop_run(job_key, task_key, "terminate")
            self.wakeup.notify_all()

    def reactivate_task(self, job_id: str, task_id: str, if_match: str | None = None) -> None:
        with self.lock:
            job_key, task_key, task = self._task(job_id, task_id)
            self._check_etag(task, if_match, None)
            self._check_job_accepts_tasks(self.jobs[job_key])
            if task["state"] != "completed":
                raise conflict(
                    "TaskNotCompleted",
                    "The specified task is not in a completed state, and the "
                    "requested operation can be performed only on completed tasks.",
                )
            if _succeeded(task):
                raise conflict(
                    "TaskSucceeded",
                    "The specified task has already completed successfully, and the "
                    "requested operation cannot be performed on successful tasks.",
                )
            self._count(job_key, task, -1)
            info = task["executionInfo"]
            task["executionInfo"] = {"retryCount": 0, "requeueCount": int(info.get("requeueCount", 0))}
            if info.get("lastRequeueTime"):
                task["executionInfo"]["lastRequeueTime"] = info["lastRequeueTime"]
            self._set_state(job_key, task, "active", count=False)
            self._count(job_key, task, +1)
            self.ready[job_key].append(task_key)
            self._save_task(job_key, task_key)
            self.wakeup.notify_all()

    def delete_task(self, job_id: str, task_id: str, if_match: str | None = None) -> None:
        with self.lock:
            job_key, task_key, task = self._task(job_id, task_id)
            self._check_etag(task, if_match, None)
            if (job_key, task_key) in self.runs:
                self._stop_run(job_key, task_key, "delete")
            self._forget_task(job_key, task_key)

    def _forget_task(self, job_key: str, task_key: str) -> None:
        task = self.tasks[job_key].pop(task_key, None)
        if task is None:
            return
        self._count(job_key, task, -1)
        self.journal.delete("task", f"{job_key}/{task_key}")
        task_dir = self._task_dir(job_key, task)
        if task_dir is not None and (job_key, task_key) not in self.runs:
            shutil.rmtree(task_dir, ignore_errors=True)

    # ------------------------------------------------------------------ task files

    def _task_dir(self, job_key: str, task: Doc) -> Path | None:
        node_info = task.get("nodeInfo")
        if not node_info:
            return None
        job = self.jobs.get(job_key)
        job_id = str(job["id"]) if job else job_key
        return self.state_dir / "nodes" / str(node_info["nodeId"]) / "workitems" / job_id / "job-1" / str(task["id"])

    def node_file_root(self, pool_id: str, node_id: str) -> Path:
        with self.lock:
            _pool_key, _node_key, node = self._node(pool_id, node_id)
            root = self.state_dir / "nodes" / str(node["id"])
            root.mkdir(parents=True, exist_ok=True)
            return root

    def task_file_root(self, job_id: str, task_id: str) -> Path:
        with self.lock:
            job_key, _task_key, task = self._task(job_id, task_id)
            root = self._task_dir(job_key, task)
            if root is None:
                raise conflict("TaskFilesUnavailable", "The files of the specified task are unavailable.")
            if task.get("_filesCleaned"):
                raise conflict("TaskFilesCleanedup", "The files of the specified task are cleanedup.")
            return root

    # ------------------------------------------------------------------ scheduling

    def _complete_without_running(self, job_key: str, task_key: str, task: Doc, failure: runner.Failure) -> None:
        moment = self._set_state(job_key, task, "completed", count=False)
        self._count(job_key, {**task, "state": "active"}, -1)
        info = task.setdefault("executionInfo", {})
        info["endTime"] = moment
        info["result"] = "failure"
        info["failureInfo"] = failure.info()
        self._count(job_key, task, +1)
        self._save_task(job_key, task_key)
        self._wake_dependents(job_key)

    def _stop_run(self, job_key: str, task_key: str, reason: str) -> None:
        run = self.runs.get((job_key, task_key))
        if run is None:
            return
        if run.stop_reason is None or reason == "delete":
            run.stop_reason = reason
        if run.process_pid:
            runner.kill_tree(run.process_pid)

    def _job_pool_key(self, job: Doc) -> str:
        return validation.key(
            str((job.get("executionInfo") or {}).get("poolId") or job["poolInfo"].get("poolId") or "")
        )

    def _pick_node(
        self, pool_key: str, pool: Doc, slots: int, job: Doc | None = None, affinity: str | None = None
    ) -> str | None:
        per_node = int(pool["taskSlotsPerNode"])
        blocked: set[str] = set()
        if job is not None and job.get("jobPreparationTask"):
            # Batch does not schedule a job's tasks on a node where its preparation task failed.
            blocked = {
                validation.key(node_id)
                for node_id, record in (job.get("_prep") or {}).items()
                if (record.get("preparation") or {}).get("result") == "failure"
                and (job["jobPreparationTask"].get("waitForSuccess", True) is not False)
            }
        pack = str((pool.get("taskSchedulingPolicy") or {}).get("nodeFillType") or "spread").lower() == "pack"
        best: str | None = None
        best_free = -1 if not pack else per_node + 1
        for node_key, node in self.nodes.get(pool_key, {}).items():
            if node["schedulingState"] != "enabled" or node["state"] not in ("idle", "running"):
                continue
            if node_key in blocked:
                continue
            free = per_node - int(node["runningTaskSlotsCount"])
            if free < slots:
                continue
            if affinity and node["affinityId"] == affinity:
                return node_key  # affinityInfo is a locality hint: honoured when that node has room
            if (not pack and free > best_free) or (pack and free < best_free):
                best, best_free = node_key, free
        return best

    def _dispatch(self) -> int:
        started = 0
        jobs = sorted(self.jobs.items(), key=lambda item: (-int(item[1]["priority"]), int(item[1]["_seq"])))
        for job_key, job in jobs:
            if job["state"] != "active":
                continue
            queue = self.ready.get(job_key)
            if not queue:
                continue
            pool_key = self._job_pool_key(job)
            pool = self.pools.get(pool_key)
            if pool is None or pool["state"] != "active":
                continue
            limit = int(job.get("maxParallelTasks", -1))
            while queue:
                if limit != -1 and self.counts[job_key].tasks.running >= limit:
                    break
                task_key = queue[0]
                task = self.tasks[job_key].get(task_key)
                if task is None or task["state"] != "active" or (job_key, task_key) in self.runs:
                    queue.popleft()
                    continue
                if task.get("dependsOn") and not self._dependencies_met(job_key, task):
                    queue.popleft()
                    self.waiting.setdefault(job_key, set()).add(task_key)
                    continue
                slots = int(task.get("requiredSlots") or 1)
                if slots > int(pool["taskSlotsPerNode"]):
                    queue.popleft()
                    self._complete_without_running(
                        job_key,
                        task_key,
                        task,
                        runner.Failure(
                            "usererror",
                            "TaskSchedulingConstraintFailed",
                            "Task cannot be scheduled on the pool associated with the job",
                            {
                                "Message": f"requiredSlots {slots} exceeds the pool's taskSlotsPerNode "
                                f"{pool['taskSlotsPerNode']}"
                            },
                        ),
                    )
                    continue
                affinity = str((task.get("affinityInfo") or {}).get("affinityId") or "") or None
                node_key = self._pick_node(pool_key, pool, slots, job, affinity)
                if node_key is None:
                    break
                queue.popleft()
                self._start(job_key, task_key, pool_key, node_key)
                started += 1
        return started

    def _dependencies_met(self, job_key: str, task: Doc) -> bool:
        depends = task.get("dependsOn") or {}
        wanted = [str(task_id) for task_id in depends.get("taskIds") or []]
        for id_range in depends.get("taskIdRanges") or []:
            wanted.extend(str(number) for number in range(int(id_range["start"]), int(id_range["end"]) + 1))
        tasks = self.tasks[job_key]
        for task_id in wanted:
            dependency = tasks.get(validation.key(task_id))
            if dependency is None or dependency["state"] != "completed":
                return False
            if self._dependency_action(dependency) != "satisfy":
                return False
        return True

    @staticmethod
    def _dependency_action(task: Doc) -> str:
        """What a completed task means for tasks that depend on it (Batch: success satisfies, failure blocks)."""
        info = task.get("executionInfo") or {}
        if info.get("result") == "success":
            return "satisfy"
        conditions = task.get("exitConditions") or {}
        exit_code = info.get("exitCode")
        options: Doc | None = None
        if exit_code is not None:
            options = next(
                (c.get("exitOptions") for c in conditions.get("exitCodes") or [] if int(c.get("code", 0)) == exit_code),
                None,
            )
            if options is None:
                options = next(
                    (
                        c.get("exitOptions")
                        for c in conditions.get("exitCodeRanges") or []
                        if int(c.get("start", 0)) <= exit_code <= int(c.get("end", 0))
                    ),
                    None,
                )
        else:
            code = str((info.get("failureInfo") or {}).get("code", ""))
            options = conditions.get("fileUploadError" if code.startswith("FileUpload") else "preProcessingError")
        if options is None:
            options = conditions.get("default")
        return str((options or {}).get("dependencyAction") or "block").lower()

    def _wake_dependents(self, job_key: str) -> None:
        waiting = self.waiting.pop(job_key, None)
        if waiting:
            tasks = self.tasks.get(job_key, {})
            ordered = sorted(waiting, key=lambda key: int(tasks[key]["_seq"]) if key in tasks else 0)
            self.ready[job_key].extend(ordered)
            self.wakeup.notify_all()

    def _start(self, job_key: str, task_key: str, pool_key: str, node_key: str) -> None:
        job = self.jobs[job_key]
        task = self.tasks[job_key][task_key]
        pool = self.pools[pool_key]
        node = self.nodes[pool_key][node_key]
        slots = int(task.get("requiredSlots") or 1)
        moment = self._set_state(job_key, task, "preparing")
        info = task["executionInfo"]
        info["startTime"] = moment
        for name in ("endTime", "exitCode", "result", "failureInfo"):
            info.pop(name, None)
        if int(info.get("retryCount", 0)) > 0:
            info["lastRetryTime"] = moment
        task_root = f"workitems/{job['id']}/job-1/{task['id']}"
        task["nodeInfo"] = {
            "affinityId": node["affinityId"],
            "nodeUrl": node["url"],
            "poolId": pool["id"],
            "nodeId": node["id"],
            "taskRootDirectory": task_root,
            "taskRootDirectoryUrl": f"{node['url']}/files/{task_root}",
        }
        task.pop("_filesCleaned", None)
        attempt_number = int(task.get("_attempt", 0)) + 1
        task["_attempt"] = attempt_number
        node["runningTasksCount"] += 1
        node["runningTaskSlotsCount"] += slots
        node["totalTasksRun"] += 1
        if node["state"] != "running":
            node["state"] = "running"
            node["stateTransitionTime"] = moment
        self.runs[(job_key, task_key)] = Run(attempt_number, pool_key, node_key, slots)
        attempt = self._attempt(job, task, pool, node)
        self._save_task(job_key, task_key)
        self._executor.submit(self._execute, job_key, task_key, attempt_number, attempt)

    def _base_environment(self, pool: Doc, node: Doc, node_root: Path) -> dict[str, str]:
        """What any process on a Linux Batch node sees, before task-specific variables."""
        env: dict[str, str] = {}
        for name in ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR"):
            if os.environ.get(name):
                env[name] = os.environ[name]
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env.update(
            {
                "HOME": str(node_root / "home"),
                "USER": "_azbatch",
                "AZ_BATCH_ACCOUNT_NAME": self.account_name,
                "AZ_BATCH_ACCOUNT_URL": self.account_url,
                "AZ_BATCH_POOL_ID": str(pool["id"]),
                "AZ_BATCH_NODE_ID": str(node["id"]),
                "AZ_BATCH_NODE_IS_DEDICATED": "true" if node["isDedicated"] else "false",
                "AZ_BATCH_NODE_ROOT_DIR": str(node_root),
                "AZ_BATCH_NODE_SHARED_DIR": str(node_root / "shared"),
                "AZ_BATCH_NODE_STARTUP_DIR": str(node_root / "startup"),
                "AZ_BATCH_NODE_STARTUP_WORKING_DIR": str(node_root / "startup" / "wd"),
                "AZ_BATCH_NODE_MOUNTS_DIR": str(node_root / "fsmounts"),
                "AZ_BATCH_TASK_USER": "_azbatch",
                "AZ_BATCH_TASK_USER_IDENTITY": "PoolNonAdmin",
                "AZ_BATCH_RESERVED_EPHEMERAL_DISK_SPACE_BYTES": "1000000000",
            }
        )
        return env

    def _attempt(self, job: Doc, task: Doc, pool: Doc, node: Doc) -> runner.Attempt:
        node_root = self.state_dir / "nodes" / str(node["id"])
        task_dir = node_root / "workitems" / str(job["id"]) / "job-1" / str(task["id"])
        env = self._base_environment(pool, node, node_root)
        env.update(
            {
                "AZ_BATCH_JOB_ID": str(job["id"]),
                "AZ_BATCH_TASK_ID": str(task["id"]),
                "AZ_BATCH_TASK_DIR": str(task_dir),
                "AZ_BATCH_TASK_WORKING_DIR": str(task_dir / "wd"),
                "AZ_BATCH_TASK_RETRY_COUNT": str(task["executionInfo"].get("retryCount", 0)),
            }
        )
        env.update(self._identity_environment(task))
        if job.get("jobPreparationTask"):
            prep_dir = task_dir.parent / str(job["jobPreparationTask"].get("id") or "jobpreparation")
            env["AZ_BATCH_JOB_PREP_DIR"] = str(prep_dir)
            env["AZ_BATCH_JOB_PREP_WORKING_DIR"] = str(prep_dir / "wd")
        references = list(pool.get("applicationPackageReferences") or []) + list(
            task.get("applicationPackageReferences") or []
        )
        for reference in references:
            package = self._package_dir(reference)
            if package is None:
                continue
            application = str(reference["applicationId"])
            version = str(reference.get("version") or "")
            installed = node_root / "applications" / f"{application}#{version or package.name}"
            if not installed.exists():
                installed.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileExistsError):
                    installed.symlink_to(package.resolve(), target_is_directory=True)
            suffix = re.sub(r"[^A-Za-z0-9_]", "_", application)
            if version:
                suffix += "_" + re.sub(r"[^A-Za-z0-9_]", "_", version)
            env[f"AZ_BATCH_APP_PACKAGE_{suffix}"] = str(installed)
        for setting in list(job.get("commonEnvironmentSettings") or []) + list(task.get("environmentSettings") or []):
            env[str(setting["name"])] = str(setting.get("value") or "")
        wall_clock = clock.duration_seconds(str(task["constraints"]["maxWallClockTime"]))
        return runner.Attempt(
            job_id=str(job["id"]),
            task_id=str(task["id"]),
            pool_id=str(pool["id"]),
            node_id=str(node["id"]),
            node_root=node_root,
            command_line=str(task["commandLine"]),
            environment=env,
            resource_files=copy.deepcopy(list(task.get("resourceFiles") or [])),
            output_files=copy.deepcopy(list(task.get("outputFiles") or [])),
            wall_clock_seconds=None if wall_clock >= clock.UNLIMITED_SECONDS else wall_clock,
            auto_storage_connection_string=self.auto_storage,
            private_task_dir=_auto_user(task).get("scope") == "task",
        )

    @staticmethod
    def _identity_environment(task: Doc) -> dict[str, str]:
        """What the task is told about its user; the process itself always runs as the emulator's OS user."""
        username = (task.get("userIdentity") or {}).get("username")
        if username:
            return {"AZ_BATCH_TASK_USER": str(username), "AZ_BATCH_TASK_USER_IDENTITY": str(username)}
        auto_user = _auto_user(task)
        scope = "Task" if auto_user.get("scope") == "task" else "Pool"
        level = "Admin" if auto_user.get("elevationLevel") == "admin" else "NonAdmin"
        return {"AZ_BATCH_TASK_USER_IDENTITY": scope + level}

    def _current_run(self, job_key: str, task_key: str, attempt_number: int) -> Run | None:
        run = self.runs.get((job_key, task_key))
        return run if run is not None and run.attempt == attempt_number else None

    def _execute(self, job_key: str, task_key: str, attempt_number: int, attempt: runner.Attempt) -> None:
        """One attempt on a worker thread: prepare, run, upload, record. Never raises."""
        try:
            self._execute_attempt(job_key, task_key, attempt_number, attempt)
        except Exception as problem:  # the boundary of a worker thread: record, never lose the slot
            logger.exception(
                "task %s/%s attempt %d crashed in the emulator", attempt.job_id, attempt.task_id, attempt_number
            )
            with self.lock:
                self._finish(
                    job_key,
                    task_key,
                    attempt_number,
                    None,
                    runner.Failure(
                        "servererror",
                        "Unknown",
                        "An unknown scheduling error has occurred.",
                        {"Message": str(problem)[:500]},
                    ),
                    launched=False,
                )

    def _execute_attempt(self, job_key: str, task_key: str, attempt_number: int, attempt: runner.Attempt) -> None:
        started = time.monotonic()
        if self.task_start_delay > 0:
            time.sleep(self.task_start_delay)  # a node agent is not instantaneous; the task stays preparing
        if not self._ensure_job_preparation(job_key, task_key, attempt_number, attempt):
            return
        try:
            runner.prepare(attempt)
        except runner.Failure as prepare_failure:
            with self.lock:
                self._finish(job_key, task_key, attempt_number, None, prepare_failure, launched=False)
            return
        with self.lock:
            run = self._current_run(job_key, task_key, attempt_number)
            if run is None or run.stop_reason is not None or self._stopping:
                self._finish(job_key, task_key, attempt_number, None, None, launched=False)
                return
        # Spawning takes milliseconds: do it outside the lock, then register it (or kill it if the
        # task was terminated, deleted or requeued meanwhile).
        try:
            process = runner.launch(attempt)
        except runner.Failure as launch_failure:
            with self.lock:
                self._finish(job_key, task_key, attempt_number, None, launch_failure, launched=False)
            return
        with self.lock:
            run = self._current_run(job_key, task_key, attempt_number)
            if run is None or run.stop_reason is not None or self._stopping:
                runner.kill_tree(process.pid)
                process.wait()
                self._finish(job_key, task_key, attempt_number, None, None, launched=False)
                return
            run.process_pid = process.pid
            task = self.tasks[job_key][task_key]
            self._set_state(job_key, task, "running")
            task["_pid"] = process.pid
            self._save_task(job_key, task_key)
        remaining = None
        if attempt.wall_clock_seconds is not None:
            remaining = max(0.0, attempt.wall_clock_seconds - (time.monotonic() - started))
        exit_code, timed_out = runner.wait(process, remaining)
        with self.lock:
            run = self._current_run(job_key, task_key, attempt_number)
            if run is None:
                return
            run.process_pid = None
            reason = run.stop_reason
            if reason in ("requeue", "delete") or self._stopping:
                self._finish(job_key, task_key, attempt_number, exit_code, None, launched=True)
                return
            task = self.tasks[job_key][task_key]
            retries = int(task["constraints"]["maxTaskRetryCount"])
            retry_count = int(task["executionInfo"].get("retryCount", 0))
            if exit_code != 0 and not timed_out and reason is None and (retries == -1 or retry_count < retries):
                self._retry(job_key, task_key, attempt_number, exit_code)
                return
        failure: runner.Failure | None = None
        if reason == "terminate":
            failure = runner.Failure("usererror", "TaskEnded", TASK_ENDED_BY_USER)
        elif timed_out:
            failure = runner.Failure(
                "usererror",
                "TaskEnded",
                "The task exceeded its maximum wall clock time and was ended.",
                {"Message": f"maxWallClockTime {task['constraints']['maxWallClockTime']} was exceeded"},
            )
        elif exit_code != 0:
            failure = runner.exit_code_failure()
        upload_failed = False
        try:
            runner.upload_outputs(attempt, succeeded=failure is None)
        except runner.Failure as upload_failure:
            upload_failed = True
            if failure is None:
                failure = upload_failure
            else:
                failure.details.setdefault("FileUploadError", upload_failure.details.get("Message", ""))
        with self.lock:
            self._finish(
                job_key, task_key, attempt_number, exit_code, failure, launched=True, upload_failed=upload_failed
            )

    def _side_task_attempt(self, job: Doc, pool: Doc, node: Doc, kind: str) -> tuple[runner.Attempt, int]:
        """The job preparation ("jobpreparation") or release ("jobrelease") task as an attempt on a node."""
        spec = job["jobPreparationTask" if kind == "preparation" else "jobReleaseTask"]
        task_id = str(spec.get("id") or ("jobpreparation" if kind == "preparation" else "jobrelease"))
        node_root = self.state_dir / "nodes" / str(node["id"])
        task_dir = node_root / "workitems" / str(job["id"]) / "job-1" / task_id
        env = self._base_environment(pool, node, node_root)
        env.update(
            {
                "AZ_BATCH_JOB_ID": str(job["id"]),
                "AZ_BATCH_TASK_ID": task_id,
                "AZ_BATCH_TASK_DIR": str(task_dir),
                "AZ_BATCH_TASK_WORKING_DIR": str(task_dir / "wd"),
                "AZ_BATCH_JOB_PREP_DIR": str(task_dir if kind == "preparation" else task_dir.parent / "jobpreparation"),
                "AZ_BATCH_JOB_PREP_WORKING_DIR": str(
                    (task_dir if kind == "preparation" else task_dir.parent / "jobpreparation") / "wd"
                ),
            }
        )
        for setting in list(job.get("commonEnvironmentSettings") or []) + list(spec.get("environmentSettings") or []):
            env[str(setting["name"])] = str(setting.get("value") or "")
        constraints = spec.get("constraints") or {}
        limit = constraints.get("maxWallClockTime") or spec.get("maxWallClockTime")
        if kind == "release":
            limit = limit or "PT15M"  # Batch's default for release tasks
        seconds = clock.duration_seconds(str(limit)) if limit else None
        attempt = runner.Attempt(
            job_id=str(job["id"]),
            task_id=task_id,
            pool_id=str(pool["id"]),
            node_id=str(node["id"]),
            node_root=node_root,
            command_line=str(spec["commandLine"]),
            environment=env,
            resource_files=copy.deepcopy(list(spec.get("resourceFiles") or [])),
            output_files=[],
            wall_clock_seconds=seconds,
            auto_storage_connection_string=self.auto_storage,
        )
        return attempt, int(constraints.get("maxTaskRetryCount") or 0) if kind == "preparation" else 0

    @staticmethod
    def _run_side_task(attempt: runner.Attempt, retries: int) -> Doc:
        """Run a start-like task to completion (with retries); its executionInfo as Batch reports it."""
        info: Doc = {"state": "running", "startTime": clock.stamp(), "retryCount": 0,
                     "taskRootDirectory": str(attempt.task_dir)}  # fmt: skip
        while True:
            exit_code: int | None = None
            failure: runner.Failure | None = None
            timed_out = False
            try:
                runner.prepare(attempt)
                process = runner.launch(attempt)
                exit_code, timed_out = runner.wait(process, attempt.wall_clock_seconds)
                if timed_out:
                    failure = runner.Failure("usererror", "TaskEnded", "The task exceeded its maximum wall clock time.")
                elif exit_code != 0:
                    failure = runner.exit_code_failure()
            except runner.Failure as problem:
                failure = problem
            if failure is not None and exit_code not in (None, 0) and not timed_out and info["retryCount"] < retries:
                info["retryCount"] += 1
                info["lastRetryTime"] = clock.stamp()
                continue
            info.update({"state": "completed", "endTime": clock.stamp(),
                         "result": "success" if failure is None else "failure"})  # fmt: skip
            if exit_code is not None:
                info["exitCode"] = exit_code
            if failure is not None:
                info["failureInfo"] = failure.info()
            return info

    def _ensure_job_preparation(
        self, job_key: str, task_key: str, attempt_number: int, attempt: runner.Attempt
    ) -> bool:
        """Run the job's preparation task on this node once; False if the task must not run here."""
        with self.lock:
            job = self.jobs.get(job_key)
            if job is None or not job.get("jobPreparationTask"):
                return True
            run = self._current_run(job_key, task_key, attempt_number)
            if run is None:
                return False
            pool = self.pools[run.pool_key]
            node = self.nodes[run.pool_key].get(run.node_key)
            if node is None:
                return True  # the node went away; the run will be requeued
            lock = self._prep_locks.setdefault((job_key, run.node_key), threading.Lock())
        wait_for_success = job["jobPreparationTask"].get("waitForSuccess", True) is not False
        with lock:  # two tasks starting together on one node run the preparation once
            with self.lock:
                record: Doc = (job.get("_prep") or {}).get(str(node["id"])) or {}
                done = (record.get("preparation") or {}).get("state") == "completed"
                if not done:
                    side, retries = self._side_task_attempt(job, pool, node, "preparation")
                    job.setdefault("_prep", {})[str(node["id"])] = {
                        "poolId": pool["id"],
                        "nodeUrl": node["url"],
                        "preparation": {"state": "running", "startTime": clock.stamp()},
                    }
                    self._save_job(job_key)
            if not done:
                info = self._run_side_task(side, retries)
                with self.lock:
                    if job_key in self.jobs:
                        job["_prep"][str(node["id"])]["preparation"] = info
                        self._save_job(job_key)
                record = {"preparation": info}
        succeeded = (record.get("preparation") or {}).get("result") == "success"
        if succeeded or not wait_for_success:
            return True
        with self.lock:
            # Batch: "the triggering task will revert to the active state and will not be run" (on this node).
            run = self._current_run(job_key, task_key, attempt_number)
            task = self.tasks.get(job_key, {}).get(task_key)
            if run is not None and task is not None:
                self._release(job_key, task_key)
                task.pop("_pid", None)
                self._set_state(job_key, task, "active")
                self.ready[job_key].append(task_key)
                self._save_task(job_key, task_key)
        return False

    def _start_job_release(self, job_key: str) -> bool:
        """Start the release task on every node that ran the preparation; True while any is running."""
        job = self.jobs[job_key]
        if not job.get("jobReleaseTask"):
            return False
        pending = False
        for node_id, record in (job.get("_prep") or {}).items():
            release = record.get("release")
            if release is not None:
                pending = pending or release.get("state") == "running"
                continue
            pool_key = validation.key(str(record.get("poolId") or ""))
            node = self.nodes.get(pool_key, {}).get(validation.key(node_id))
            if node is None or pool_key not in self.pools:
                continue
            side, _retries = self._side_task_attempt(job, self.pools[pool_key], node, "release")
            record["release"] = {"state": "running", "startTime": clock.stamp()}
            pending = True
            self._executor.submit(self._run_release, job_key, node_id, side)
        self._save_job(job_key)
        return pending

    def _run_release(self, job_key: str, node_id: str, side: runner.Attempt) -> None:
        info = self._run_side_task(side, 0)
        with self.lock:
            job = self.jobs.get(job_key)
            if job is not None and node_id in (job.get("_prep") or {}):
                job["_prep"][node_id]["release"] = info
                self._save_job(job_key)
            self.wakeup.notify_all()

    def _release(self, job_key: str, task_key: str) -> Run | None:
        run = self.runs.pop((job_key, task_key), None)
        if run is None:
            return None
        node = self.nodes.get(run.pool_key, {}).get(run.node_key)
        if node is not None:
            node["runningTasksCount"] = max(0, int(node["runningTasksCount"]) - 1)
            node["runningTaskSlotsCount"] = max(0, int(node["runningTaskSlotsCount"]) - run.slots)
            if node["runningTasksCount"] == 0 and node["state"] == "running":
                node["state"] = "idle"
                node["stateTransitionTime"] = clock.stamp()
        self.wakeup.notify_all()
        return run

    def _retry(self, job_key: str, task_key: str, attempt_number: int, exit_code: int) -> None:
        task = self.tasks[job_key][task_key]
        self._release(job_key, task_key)
        info = task["executionInfo"]
        info["retryCount"] = int(info.get("retryCount", 0)) + 1
        info["exitCode"] = exit_code
        task.pop("_pid", None)
        self._set_state(job_key, task, "active")
        self.ready[job_key].appendleft(task_key)
        self._save_task(job_key, task_key)

    def _finish(
        self,
        job_key: str,
        task_key: str,
        attempt_number: int,
        exit_code: int | None,
        failure: runner.Failure | None,
        *,
        launched: bool,
        upload_failed: bool = False,
    ) -> None:
        run = self._current_run(job_key, task_key, attempt_number)
        if run is None:
            return
        self._release(job_key, task_key)
        task = self.tasks.get(job_key, {}).get(task_key)
        if task is None:
            return
        task.pop("_pid", None)
        reason = run.stop_reason
        if reason == "delete" or task is None:
            self._forget_task(job_key, task_key)
            return
        if reason == "requeue" or (self._stopping and reason is None):
            if self._stopping:
                return  # the journal keeps it running; the next start requeues it
            info = task["executionInfo"]
            info["requeueCount"] = int(info.get("requeueCount", 0)) + 1
            info["lastRequeueTime"] = clock.stamp()
            self._set_state(job_key, task, "active")
            self.ready[job_key].appendleft(task_key)
            self._save_task(job_key, task_key)
            return
        if reason == "terminate" and failure is None:
            failure = runner.Failure("usererror", "TaskEnded", TASK_ENDED_BY_USER)
        node_key = run.node_key
        self._count(job_key, task, -1)
        moment = clock.stamp()
        task["previousState"] = task["state"]
        task["previousStateTransitionTime"] = task["stateTransitionTime"]
        task["state"] = "completed"
        task["stateTransitionTime"] = moment
        self._touch(task, moment)
        info = task["executionInfo"]
        info["endTime"] = moment
        if launched and exit_code is not None:
            info["exitCode"] = exit_code
        else:
            info.pop("exitCode", None)
        info["result"] = "success" if failure is None else "failure"
        if failure is not None:
            info["failureInfo"] = failure.info()
        else:
            info.pop("failureInfo", None)
        self._count(job_key, task, +1)
        node = self.nodes.get(run.pool_key, {}).get(node_key)
        if node is not None and failure is None:
            node["totalTasksSucceeded"] += 1
        self._save_task(job_key, task_key)
        self._schedule_retention(job_key, task_key, task)
        self._wake_dependents(job_key)
        if reason is None:
            self._apply_exit_conditions(job_key, task, failure, launched, upload_failed)

    def _apply_exit_conditions(
        self, job_key: str, task: Doc, failure: runner.Failure | None, launched: bool, upload_failed: bool
    ) -> None:
        job = self.jobs[job_key]
        if job["onTaskFailure"] != "performexitoptionsjobaction" or job["state"] != "active":
            return
        conditions = task.get("exitConditions") or {}
        exit_code = (task.get("executionInfo") or {}).get("exitCode")
        options: Doc | None = None
        if launched and exit_code is not None:
            for mapping in conditions.get("exitCodes") or []:
                if int(mapping.get("code", 0)) == exit_code:
                    options = mapping.get("exitOptions") or {}
                    break
            if options is None:
                for mapping in conditions.get("exitCodeRanges") or []:
                    if int(mapping.get("start", 0)) <= exit_code <= int(mapping.get("end", 0)):
                        options = mapping.get("exitOptions") or {}
                        break
        if options is None and not launched and failure is not None:
            options = conditions.get("preProcessingError")
        if options is None and upload_failed:
            options = conditions.get("fileUploadError")
        if options is None and failure is not None:
            options = conditions.get("default")
        if options is None and failure is None:
            return
        action = str((options or {}).get("jobAction") or ("terminate" if failure is not None else "none")).lower()
        if action == "terminate":
            self._terminate_job(job_key, "TaskFailed")
        elif action == "disable":
            self._disable_job(job_key, "requeue")

    def _schedule_retention(self, job_key: str, task_key: str, task: Doc) -> None:
        info = task.get("executionInfo") or {}
        if not info.get("endTime") or task.get("_filesCleaned"):
            return
        try:
            seconds = clock.duration_seconds(str(task["constraints"].get("retentionTime") or DEFAULT_RETENTION))
            expiry = clock.parse(str(info["endTime"])) + timedelta(seconds=min(seconds, 10 * 365 * 86400))
        except (ValueError, OverflowError):
            return
        heapq.heappush(self.retention, (expiry, job_key, task_key, int(task.get("_attempt", 0))))

    def _tick(self) -> float:
        """Timers and housekeeping; returns how long the dispatcher may sleep."""
        moment = clock.now()
        sleep = 0.5
        while self.retention and self.retention[0][0] <= moment:
            _expiry, job_key, task_key, attempt = heapq.heappop(self.retention)
            task = self.tasks.get(job_key, {}).get(task_key)
            if task is None or task["state"] != "completed" or int(task.get("_attempt", 0)) != attempt:
                continue
            task_dir = self._task_dir(job_key, task)
            if task_dir is not None:
                shutil.rmtree(task_dir, ignore_errors=True)
            task["_filesCleaned"] = True
            self._save_task(job_key, task_key)
        if self.retention:
            sleep = min(sleep, max(0.0, (self.retention[0][0] - moment).total_seconds()))
        for job_key, job in list(self.jobs.items()):
            state = job["state"]
            if state == "active":
                limit = clock.duration_seconds(str(job["constraints"]["maxWallClockTime"]))
                if limit < clock.UNLIMITED_SECONDS:
                    deadline = clock.parse(str(job["creationTime"])) + timedelta(seconds=limit)
                    if deadline <= moment:
                        self._terminate_job(job_key, "MaxWallClockTimeExpiry")
                        continue
                    sleep = min(sleep, (deadline - moment).total_seconds())
                counts = self.counts[job_key].tasks
                if job["onAllTasksComplete"] == "terminatejob" and counts.active == 0 and counts.running == 0:
                    self._terminate_job(job_key, "AllTasksComplete")
            elif state == "terminating":
                if not any(run_job == job_key for run_job, _ in self.runs) and not self._start_job_release(job_key):
                    self._set_job_state(job_key, "completed")
                    job["executionInfo"]["endTime"] = job["stateTransitionTime"]
                    self._save_job(job_key)
                    self._release_auto_pool(job)
            elif (
                state == "deleting"
                and not any(run_job == job_key for run_job, _ in self.runs)
                and not self._start_job_release(job_key)
            ):
                self._remove_job(job_key)
        self._finish_reboots()
        live = sum(len(tasks) for tasks in self.tasks.values()) + len(self.jobs) + len(self.pools)
        if self.journal.writes_since_compaction > 20 * live + 10_000:
            # Superseded lines only cost disk and start-up time; rewrite the snapshot now and then.
            self.journal.open(self._snapshot())
        for pool_key, pool in list(self.pools.items()):
            if pool["state"] == "deleting" and not any(run.pool_key == pool_key for run in self.runs.values()):
                self.pools.pop(pool_key, None)
                self.nodes.pop(pool_key, None)
                self.journal.delete("pool", pool_key)
        return max(0.0, sleep)

    def _release_auto_pool(self, job: Doc) -> None:
        spec = (job.get("poolInfo") or {}).get("autoPoolSpecification")
        if not spec or spec.get("keepAlive") or str(spec.get("poolLifetimeOption") or "job").lower() != "job":
            return
        pool_key = self._job_pool_key(job)
        if pool_key in self.pools:
            self.pools[pool_key]["state"] = "deleting"
            for node_key in list(self.nodes.get(pool_key, {})):
                self._remove_node(pool_key, node_key)

    def _remove_job(self, job_key: str) -> None:
        job = self.jobs.pop(job_key)
        tasks = self.tasks.pop(job_key, {})
        self.counts.pop(job_key, None)
        self.ready.pop(job_key, None)
        self.waiting.pop(job_key, None)
        for task_key in tasks:
            self.journal.delete("task", f"{job_key}/{task_key}")
        self.journal.delete("job", job_key)
        self._release_auto_pool(job)
        nodes_dir = self.state_dir / "nodes"
        if nodes_dir.is_dir():
            doomed = [node_dir / "workitems" / str(job["id"]) for node_dir in nodes_dir.iterdir()]
            # Removing a job's files can take a while: not under the lock.
            self._executor.submit(_remove_trees, doomed)

    def _dispatch_loop(self) -> None:
        with self.wakeup:
            while not self._stopping:
                try:
                    sleep = self._tick()
                    if self._dispatch() == 0:
                        self.wakeup.wait(timeout=sleep if sleep > 0 else 0.01)
                except Exception:  # the dispatcher must outlive a bug in one decision; log it loudly
                    logger.exception("dispatcher iteration failed")
                    self.wakeup.wait(timeout=0.5)
