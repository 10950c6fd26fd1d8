"""The emulator's backend from inside: the lock and the disk, the journal, records, progress counters.

The tests drive an in-process BatchService: its public methods are what the HTTP server calls.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local.batch.journal import Entry, Journal
from local.batch.service import BatchService
from local.stack import Emulator
from tests.waiting import wait_until

POOL: dict[str, Any] = {
    "id": "p",
    "vmSize": "standard_d2s_v3",
    "virtualMachineConfiguration": {
        "imageReference": {"publisher": "canonical", "offer": "ubuntu-24_04-lts", "sku": "server"},
        "nodeAgentSKUId": "batch.node.ubuntu 24.04",
    },
    "targetDedicatedNodes": 1,
    "taskSlotsPerNode": 2,
}


def _start(state_dir: Path, **options: Any) -> BatchService:
    service = BatchService(state_dir, "devaccount", **options)
    service.account_url = "http://127.0.0.1:1"
    service.start()
    return service


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "batch"


@pytest.fixture
def service(state_dir: Path) -> Iterator[BatchService]:
    running = _start(state_dir)
    yield running
    running.stop()


def _completed(service: BatchService, job_id: str, task_id: str) -> dict[str, Any]:
    return wait_until(lambda: (task := service.get_task(job_id, task_id))["state"] == "completed" and task)


# ---------------------------------------------------------------------- bug 6: disk work off the lock


def test_removing_a_task_directory_does_not_hold_up_other_calls(state_dir: Path) -> None:
    removal_started, release = threading.Event(), threading.Event()
    removed: list[Path] = []

    def slow_remover(path: Path) -> None:  # a large tree on a slow disk, as long as the test wants
        removal_started.set()
        release.wait(timeout=60)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)

    service = _start(state_dir, remove_tree=slow_remover)
    try:
        service.create_pool(POOL)
        service.create_job({"id": "j", "poolInfo": {"poolId": "p"}})
        service.create_task("j", {"id": "t", "commandLine": "/bin/sh -c 'echo hello > out.txt'"})
        _completed(service, "j", "t")
        task_dir = service.task_file_root("j", "t")
        assert (task_dir / "wd" / "out.txt").exists()
        deleter = threading.Thread(target=service.delete_task, args=("j", "t"), daemon=True)
        deleter.start()
        assert removal_started.wait(timeout=30), "the task's directory was never removed"
        answers: list[object] = []
        reader = threading.Thread(
            target=lambda: answers.extend([service.get_job("j"), service.list_tasks("j", {})]), daemon=True
        )
        reader.start()
        reader.join(timeout=20)
        assert answers, "get_job and list_tasks waited for the directory removal"
        assert answers[1] == ([], None)
        assert not task_dir.exists()  # the path is free for a new task of the same id at once
    finally:
        release.set()
        service.stop()
    wait_until(lambda: removed)
    assert not any(path.exists() for path in removed)


class _PausedJournal(Journal):
    """A journal whose compaction stops after writing its snapshot until the test lets it go on."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.snapshot_written, self.go_on = threading.Event(), threading.Event()

    def _write_snapshot(self, temporary: Path, lines: list[str]) -> None:
        super()._write_snapshot(temporary, lines)
        self.snapshot_written.set()
        self.go_on.wait(timeout=30)


def test_a_compaction_keeps_the_writes_made_while_it_runs(tmp_path: Path) -> None:
    path = tmp_path / "state.jsonl"
    journal = _PausedJournal(path)
    journal.open(
        {("job", "kept"): Entry({"id": "kept"}, {"seq": 1}), ("job", "gone"): Entry({"id": "gone"}, {"seq": 2})}
    )
    for version in range(5):  # superseded lines: what compaction drops
        journal.put("job", "kept", {"id": "kept", "version": version}, {"seq": 1})
    compaction = threading.Thread(target=journal.compact)
    compaction.start()
    assert journal.snapshot_written.wait(timeout=10)
    journal.put("job", "new", {"id": "new"}, {"seq": 3})  # after the snapshot, before the swap
    journal.delete("job", "gone")
    journal.put("job", "kept", {"id": "kept", "version": 99}, {"seq": 1})
    journal.go_on.set()
    compaction.join(timeout=10)
    journal.put("job", "last", {"id": "last"}, {"seq": 4})
    journal.close()
    entries = Journal(path).load()
    assert {key: entry.doc for key, entry in entries.items()} == {
        ("job", "kept"): {"id": "kept", "version": 99},
        ("job", "new"): {"id": "new"},
        ("job", "last"): {"id": "last"},
    }
    assert len(path.read_text().splitlines()) == 2 + 3 + 1  # the snapshot, the lines during it, one after


# ---------------------------------------------------------------------- records beside the REST documents


def _journal_lines(state_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (state_dir / "state.jsonl").read_text().splitlines() if line.strip()]


def test_bookkeeping_stays_out_of_rest_documents_and_survives_a_restart(state_dir: Path) -> None:
    first = _start(state_dir)
    try:
        first.create_pool(POOL)
        first.create_job({"id": "j", "poolInfo": {"poolId": "p"}})
        for index in range(3):
            first.create_task("j", {"id": f"t{index}", "commandLine": "true"})
        for index in range(3):
            _completed(first, "j", f"t{index}")
        before = [first.list_tasks("j", {"maxresults": "1"})]
        while before[-1][1]:
            before.append(first.list_tasks("j", {"maxresults": "1", "$skiptoken": str(before[-1][1])}))
    finally:
        first.stop()
    for line in _journal_lines(state_dir):
        if line["op"] == "put":
            assert not [name for name in line["doc"] if name.startswith("_")], line
            assert line["meta"]["seq"] > 0
    second = _start(state_dir)
    try:
        task = second.get_task("j", "t1")
        assert task["state"] == "completed" and json.loads(json.dumps(task))["state"] == "completed"
        documents = [second.get_pool("p"), second.get_job("j"), task, *second.list_nodes("p", {})[0]]
        assert all(not name.startswith("_") for doc in documents for name in doc)
        after = [second.list_tasks("j", {"maxresults": "1"})]
        while after[-1][1]:
            after.append(second.list_tasks("j", {"maxresults": "1", "$skiptoken": str(after[-1][1])}))
        assert after == before  # the same order and the same skip tokens
        second.create_task("j", {"id": "t3", "commandLine": "true"})
        assert second.get_task("j", "t3")["eTag"] not in {doc["eTag"] for page, _ in before for doc in page}
        assert (second.task_file_root("j", "t1") / "stdout.txt").exists()
    finally:
        second.stop()


def test_a_journal_from_before_records_is_read(state_dir: Path) -> None:
    state_dir.mkdir(parents=True)
    running_task = {
        **_TASK_DOC, "id": "b", "state": "running", "eTag": "0x8DE0000000000000A",
        "_seq": 6, "_pid": 999999999, "_attempt": 1,
    }  # fmt: skip
    lines = [
        {"kind": "pool", "key": "p", "doc": {**_POOL_DOC, "_seq": 1}},
        {"kind": "node", "key": "p/n", "doc": {**_NODE_DOC, "_seq": 3}},
        {"kind": "job", "key": "j", "doc": {**_JOB_DOC, "_seq": 2, "_prep": {}}},
        {"kind": "task", "key": "j/a", "doc": {**running_task, "id": "a", "state": "active", "_seq": 5}},
        {"kind": "task", "key": "j/b", "doc": running_task},
    ]
    (state_dir / "state.jsonl").write_text("".join(json.dumps({"op": "put", **line}) + "\n" for line in lines))
    service = _start(state_dir)
    try:
        tasks, _token = service.list_tasks("j", {})
        assert [task["id"] for task in tasks] == ["a", "b"]
        assert all(not name.startswith("_") for task in tasks for name in task)
        requeued = _completed(service, "j", "b")  # requeued: its recorded pid cannot be identified, so not signalled
        assert requeued["executionInfo"]["requeueCount"] == 1
    finally:
        service.stop()


_POOL_DOC: dict[str, Any] = {
    "id": "p", "url": "http://127.0.0.1:1/pools/p", "state": "active", "vmSize": "standard_d2s_v3",
    "taskSlotsPerNode": 1, "targetDedicatedNodes": 1, "targetLowPriorityNodes": 0, "currentDedicatedNodes": 0,
    "currentLowPriorityNodes": 0, "enableAutoScale": False, "taskSchedulingPolicy": {"nodeFillType": "spread"},
    "eTag": "0x8DE00000000000001",
}  # fmt: skip
_NODE_DOC: dict[str, Any] = {
    "id": "n", "url": "http://127.0.0.1:1/pools/p/nodes/n", "state": "running", "schedulingState": "enabled",
    "stateTransitionTime": "2026-01-01T00:00:00.0000000Z", "affinityId": "TVM:n", "vmSize": "standard_d2s_v3",
    "totalTasksRun": 1, "runningTasksCount": 1, "runningTaskSlotsCount": 1, "totalTasksSucceeded": 0,
    "isDedicated": True, "eTag": "0x8DE00000000000003",
}  # fmt: skip
_TASK_DOC: dict[str, Any] = {
    "stateTransitionTime": "2026-01-01T00:00:00.0000000Z", "commandLine": "true", "requiredSlots": 1,
    "constraints": {"maxWallClockTime": "P10675199DT2H48M5.4775807S", "retentionTime": "P7D", "maxTaskRetryCount": 0},
    "executionInfo": {"retryCount": 0, "requeueCount": 0},
}  # fmt: skip
_JOB_DOC: dict[str, Any] = {
    "id": "j", "url": "http://127.0.0.1:1/jobs/j", "state": "active", "priority": 0, "maxParallelTasks": -1,
    "creationTime": "2026-01-01T00:00:00.0000000Z", "stateTransitionTime": "2026-01-01T00:00:00.0000000Z",
    "constraints": {"maxWallClockTime": "P10675199DT2H48M5.4775807S", "maxTaskRetryCount": 0},
    "poolInfo": {"poolId": "p"}, "onAllTasksComplete": "noaction", "onTaskFailure": "noaction",
    "executionInfo": {"poolId": "p"}, "eTag": "0x8DE00000000000002",
}  # fmt: skip


# ---------------------------------------------------------------------- progress counters


def test_progress_counts_dispatcher_passes_and_ticks(service: BatchService) -> None:
    start = service.progress()
    assert set(start) >= {"dispatch_passes", "ticks"}
    later = wait_until(lambda: (now := service.progress())["dispatch_passes"] >= start["dispatch_passes"] + 2 and now)
    assert later["ticks"] >= start["ticks"] + 2
    service.create_pool(POOL)
    service.create_job({"id": "j", "poolInfo": {"poolId": "p"}})
    service.create_task("j", {"id": "t", "commandLine": "true"})
    _completed(service, "j", "t")
    assert service.progress()["dispatch_passes"] > later["dispatch_passes"]


def test_progress_is_served_with_the_stats_and_survives_a_reset(emulator: Emulator) -> None:
    before = emulator.progress()
    emulator.reset_stats()
    after = wait_until(lambda: (now := emulator.progress())["dispatch_passes"] >= before["dispatch_passes"] + 2 and now)
    assert after["ticks"] >= before["ticks"]
