"""Rebuilding the state from the journal at start: attempts that were running when the emulator died are requeued."""

from __future__ import annotations

from collections import deque
from typing import Any

from local.batch import clock
from local.batch.backend import processes
from local.batch.backend.pools import Pools
from local.batch.backend.records import (
    Doc,
    JobCounts,
    JobRecord,
    NodeRecord,
    NodeState,
    PoolRecord,
    Stored,
    TaskRecord,
    TaskState,
)
from local.batch.backend.state import State
from local.batch.journal import Entry, Key

# Journals written before records existed kept the bookkeeping inside the document under these names.
_LEGACY_FIELDS = {"_seq": "seq", "_attempt": "attempt", "_filesCleaned": "files_cleaned", "_prep": "prep"}


def _split(entry: Entry) -> tuple[Doc, Doc, int | None]:
    """The REST document, its record as JSON, and a bare pid a legacy line recorded for a running task."""
    if entry.meta is not None:
        return entry.doc, entry.meta, None
    doc = {name: value for name, value in entry.doc.items() if not name.startswith("_")}
    meta = {new: entry.doc[old] for old, new in _LEGACY_FIELDS.items() if old in entry.doc}
    pid = entry.doc.get("_pid")
    return doc, meta, pid if isinstance(pid, int) else None


def _etag_number(doc: Doc) -> int:
    etag = str(doc.get("eTag") or "")
    return int(etag[5:], 16) if etag.startswith("0x8DE") and len(etag) > 5 else 0


def recover(state: State, pools: Pools, entries: dict[Key, Entry]) -> dict[Key, Entry]:
    """Load `entries` into an empty state; returns the recovered entities for the journal's fresh snapshot."""
    loaded: list[tuple[str, str, Doc, Doc, int | None]] = []
    for (kind, composite), entry in entries.items():
        doc, meta, legacy_pid = _split(entry)
        loaded.append((kind, composite, doc, meta, legacy_pid))
    loaded.sort(key=lambda item: int(item[3].get("seq", 0)))
    for kind, composite, doc, meta, _pid in loaded:
        # ETags come from the same counter: never hand out one a document already had.
        state.seq = max(state.seq, int(meta.get("seq", 0)), _etag_number(doc))
        if kind == "pool":
            state.pools[composite] = Stored(doc, PoolRecord.from_json(meta))
            state.nodes.setdefault(composite, {})
        elif kind == "node":
            pool_key, node_key = composite.split("/", 1)
            state.nodes.setdefault(pool_key, {})[node_key] = Stored(doc, NodeRecord.from_json(meta))
        elif kind == "job":
            state.jobs[composite] = Stored(doc, JobRecord.from_json(meta))
            state.tasks.setdefault(composite, {})
            state.counts.setdefault(composite, JobCounts())
            state.ready.setdefault(composite, deque())
    for kind, composite, doc, meta, legacy_pid in loaded:
        if kind != "task":
            continue
        job_key, task_key = composite.split("/", 1)
        if job_key not in state.jobs:
            continue
        task = Stored(doc, TaskRecord.from_json(meta))
        state.tasks[job_key][task_key] = task
        if doc["state"] in (TaskState.PREPARING, TaskState.RUNNING):
            _kill_stale(task.record, legacy_pid, f"task {doc.get('id')} of job {job_key}")
            task.record.process = None
            info = doc.setdefault("executionInfo", {})
            info["requeueCount"] = int(info.get("requeueCount", 0)) + 1
            info["lastRequeueTime"] = clock.stamp()
            state.set_task_state(job_key, doc, TaskState.ACTIVE, count=False)
        state.count(job_key, doc, +1)
        if doc["state"] == TaskState.ACTIVE:
            state.ready[job_key].append(task_key)
        elif doc["state"] == TaskState.COMPLETED:
            state.schedule_retention(job_key, task_key, task)
    for pool_key, nodes in state.nodes.items():
        for node in nodes.values():
            node.doc["runningTasksCount"] = 0
            node.doc["runningTaskSlotsCount"] = 0
            if node.doc["state"] == NodeState.RUNNING:
                node.doc["state"] = NodeState.IDLE
                node.doc["stateTransitionTime"] = clock.stamp()
        if pool_key not in state.pools:
            continue
        for node_key, node in nodes.items():
            if (node.doc.get("startTaskInfo") or {}).get("state") == "running":
                pools.launch_start_task(pool_key, node_key)
    return snapshot(state)


def _kill_stale(record: TaskRecord, legacy_pid: int | None, what: str) -> None:
    """Kill a task process group left by a previous emulator process, if it is still that task's."""
    if record.process is not None:
        processes.kill_if_ours(record.process, record.process.pid, what)
    elif legacy_pid is not None:
        processes.kill_if_ours(None, legacy_pid, what)


def snapshot(state: State) -> dict[Key, Entry]:
    """Every stored entity as the journal writes it."""
    entries: dict[Key, Entry] = {}

    def add(kind: str, key: str, stored: Stored[Any]) -> None:
        entries[(kind, key)] = Entry(stored.doc, stored.record.to_json())

    for pool_key, pool in state.pools.items():
        add("pool", pool_key, pool)
    for pool_key, nodes in state.nodes.items():
        for node_key, node in nodes.items():
            add("node", f"{pool_key}/{node_key}", node)
    for job_key, job in state.jobs.items():
        add("job", job_key, job)
    for job_key, tasks in state.tasks.items():
        for task_key, task in tasks.items():
            add("task", f"{job_key}/{task_key}", task)
    return entries
