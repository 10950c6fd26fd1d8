"""After a crash, the emulator kills its own orphaned task processes and nothing else (a pid may be reused).

The emulator runs as a real process and is SIGKILLed the way a crashed host would leave it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from azure.batch import models as m

from local.stack import start_emulator
from tests.emulator.conftest import VM, client_for
from tests.waiting import wait_until


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _journal_lines(state_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (state_dir / "state.jsonl").read_text().splitlines() if line.strip()]


def _recorded_pid(line: dict[str, Any]) -> int:
    process = (line.get("meta") or {}).get("process") or {}
    return int(process.get("pid") or line["doc"].get("_pid"))


def _running_task_then_crash(workdir: Path, command_line: str) -> tuple[dict[str, Any], str]:
    """Run one task until it runs, SIGKILL the emulator; the task's last journal line and its node id."""
    first = start_emulator(workdir)
    try:
        client = client_for(first)
        client.create_pool(m.BatchPoolCreateOptions(id="p", **VM, target_dedicated_nodes=1))
        client.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
        client.create_task("j", m.BatchTaskCreateOptions(id="t", command_line=command_line))
        running = wait_until(lambda: (t := client.get_task("j", "t")).state == m.BatchTaskState.RUNNING and t)
        assert running.node_info is not None and running.node_info.node_id is not None
    finally:
        first.kill()  # no chance to clean up, like a crashed host
    lines = [line for line in _journal_lines(workdir / "batch") if line["kind"] == "task" and line["op"] == "put"]
    return lines[-1], running.node_info.node_id


def test_a_recorded_pid_now_used_by_another_process_is_not_killed_after_a_restart(tmp_path: Path) -> None:
    task_line, node_id = _running_task_then_crash(tmp_path, "sleep 60")
    orphan = _recorded_pid(task_line)
    os.killpg(orphan, signal.SIGKILL)  # our own orphan, ended here so that its pid is free
    wait_until(lambda: not _alive(orphan))
    # Another program now has the pid the journal recorded (the same pid is out of reach, so the journal
    # is pointed at it): started later, in the task's own directory, as a person debugging it might.
    working_dir = tmp_path / "batch" / "nodes" / node_id / "workitems" / "j" / "job-1" / "t" / "wd"
    stranger = subprocess.Popen(["sleep", "60"], cwd=working_dir, start_new_session=True)
    try:
        if "_pid" in task_line["doc"]:
            task_line["doc"]["_pid"] = stranger.pid
        if (task_line.get("meta") or {}).get("process"):
            task_line["meta"]["process"]["pid"] = stranger.pid
        with (tmp_path / "batch" / "state.jsonl").open("a") as journal:
            journal.write(json.dumps(task_line) + "\n")
        second = start_emulator(tmp_path)  # recovery has run when it is ready
        try:
            client = client_for(second)
            wait_until(lambda: client.get_task("j", "t").state == m.BatchTaskState.RUNNING)
            assert stranger.poll() is None, "the emulator killed a process that was not its own"
            assert "not killing pid" in second.log_path.read_text()
        finally:
            second.stop()
    finally:
        stranger.kill()
        stranger.wait()


def test_an_orphaned_task_process_is_killed_after_a_restart(tmp_path: Path) -> None:
    task_line, _node_id = _running_task_then_crash(tmp_path, "sleep 60")
    orphan = _recorded_pid(task_line)
    assert _alive(orphan)
    second = start_emulator(tmp_path)
    try:
        # The requeued attempt sleeps 60 s too: only the restart's kill ends the first one this soon.
        wait_until(lambda: not _alive(orphan), timeout=10)
        info = client_for(second).get_task("j", "t").execution_info
        assert info is not None and info.requeue_count == 1
    finally:
        second.stop()
