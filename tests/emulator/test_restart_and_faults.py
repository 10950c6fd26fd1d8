"""State survives the emulator's restart (running tasks are requeued); injected faults and latency."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
from azure.batch import models as m

from local.stack import Emulator, start_emulator
from tests.emulator.conftest import VM, client_for, wait_for_task
from tests.waiting import wait_until


def _gone(pid: int) -> bool:
    """The process no longer exists (or is a zombie waiting for its parent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


@pytest.fixture
def private_dir(workdir: Path, request: pytest.FixtureRequest) -> Path:
    return workdir / request.node.name


def test_state_survives_a_crash_and_running_tasks_are_requeued(private_dir: Path) -> None:
    first = start_emulator(private_dir)
    try:
        client = client_for(first)
        client.create_pool(m.BatchPoolCreateOptions(id="p", **VM, target_dedicated_nodes=1, task_slots_per_node=2))
        client.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
        client.create_task("j", m.BatchTaskCreateOptions(id="done", command_line="true"))
        wait_for_task(client, "j", "done")
        client.create_task(
            "j", m.BatchTaskCreateOptions(id="interrupted", command_line="/bin/sh -c 'echo $$ >> ../pids; sleep 2'")
        )
        running = wait_until(lambda: (t := client.get_task("j", "interrupted")).state == m.BatchTaskState.RUNNING and t)
        assert running.node_info is not None
        pids_file = (
            private_dir
            / "batch"
            / "nodes"
            / running.node_info.node_id
            / "workitems"
            / "j"
            / "job-1"
            / "interrupted"
            / "pids"
        )
        wait_until(lambda: pids_file.exists() and pids_file.read_text().strip())
        orphan = int(pids_file.read_text().split()[0])
    finally:
        first.kill()  # SIGKILL: no chance to clean up, like a crashed host
    with (private_dir / "batch" / "state.jsonl").open("a") as journal:
        journal.write('{"op": "put", "kind": "task", "key": "j/torn", "doc": {"id": "to')  # a write cut short
    second = start_emulator(private_dir)
    try:
        client = client_for(second)
        assert client.get_pool("p").current_dedicated_nodes == 1
        assert client.get_task("j", "done").execution_info.exit_code == 0  # type: ignore[union-attr]
        done = wait_for_task(client, "j", "interrupted", timeout=20)
        info = done.execution_info
        assert info is not None and info.requeue_count == 1 and info.last_requeue_time is not None
        assert info.exit_code == 0 and info.retry_count == 0
        assert _gone(orphan)
        assert len(pids_file.read_text().split()) == 2  # it ran again from the start
        counts = client.get_job_task_counts("j").task_counts
        assert counts.completed == 2 and counts.succeeded == 2
    finally:
        second.stop()


def test_sigterm_stops_cleanly_and_kills_task_process_trees(private_dir: Path) -> None:
    server = start_emulator(private_dir)
    client = client_for(server)
    client.create_pool(m.BatchPoolCreateOptions(id="p", **VM, target_dedicated_nodes=1))
    client.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
    client.create_task(
        "j", m.BatchTaskCreateOptions(id="t", command_line="/bin/sh -c 'sleep 60 & echo $! > kid; wait'")
    )
    task = wait_until(lambda: (t := client.get_task("j", "t")).state == m.BatchTaskState.RUNNING and t)
    assert task.node_info is not None
    kid_file = private_dir / "batch" / "nodes" / task.node_info.node_id / "workitems/j/job-1/t/wd/kid"
    wait_until(lambda: kid_file.exists() and kid_file.read_text().strip())
    kid = int(kid_file.read_text())
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 5
    assert server.process.returncode == 0
    wait_until(lambda: _gone(kid), timeout=5)


def _stats(server: Emulator) -> dict[str, object]:
    with urllib.request.urlopen(f"{server.url}/_emulator/stats", timeout=10) as response:
        return dict(json.load(response))


def test_injected_faults_are_retried_by_the_sdk_and_counted(private_dir: Path) -> None:
    # 500 and 503 are retried by azure-core for every method; 429 is not retried for POST (see docs/emulator.md).
    server = start_emulator(private_dir, ["--fault-rate", "0.3", "--fault-statuses", "500,503", "--fault-seed", "7"])
    statuses: list[int] = []
    try:
        client = client_for(
            server,
            retry_backoff_factor=0.01,
            retry_total=20,
            retry_status=20,
            raw_response_hook=lambda response: statuses.append(response.http_response.status_code),
        )
        client.create_pool(m.BatchPoolCreateOptions(id="p", **VM, target_dedicated_nodes=1))
        client.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
        client.create_tasks("j", [m.BatchTaskCreateOptions(id=f"t{i}", command_line="true") for i in range(5)])
        for index in range(5):
            assert wait_for_task(client, "j", f"t{index}").execution_info.exit_code == 0  # type: ignore[union-attr]
        stats = _stats(server)
        requests = stats["requests"]
        assert isinstance(requests, dict)
        assert stats["total"] == sum(requests.values()) == len(statuses)
        assert 500 in statuses and 503 in statuses  # faults happened, yet every operation above succeeded
    finally:
        server.stop()


def test_faults_answer_with_batch_error_bodies_and_retry_after(private_dir: Path) -> None:
    server = start_emulator(private_dir, ["--fault-rate", "1", "--fault-statuses", "429"])
    try:
        client = client_for(server, retry_total=0)
        with pytest.raises(Exception) as raised:
            client.get_job("j")
        response = getattr(raised.value, "response", None)
        assert response is not None and response.status_code == 429
        assert response.headers["Retry-After"] == "1"
        assert response.json()["code"] == "TooManyRequests"
    finally:
        server.stop()


def test_latency_is_added_to_every_request(private_dir: Path) -> None:
    server = start_emulator(private_dir, ["--latency-ms", "300"])
    try:
        client = client_for(server)
        started = time.monotonic()
        with pytest.raises(Exception):  # noqa: B017 - only the timing matters here
            client.get_job("missing")
        assert time.monotonic() - started >= 0.3
    finally:
        server.stop()


def test_command_line_contract_ready_line_loopback_and_sigterm(private_dir: Path) -> None:
    import signal
    import subprocess
    import sys

    from local.stack import PROJECT_ROOT

    argv = [sys.executable, "-m", "local.batch", "--host", "127.0.0.1", "--port", "0", "--state-dir", str(private_dir)]
    process = subprocess.Popen(argv, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    assert line.startswith("READY http://127.0.0.1:") and line.endswith("\n")
    port = int(line.strip().rsplit(":", 1)[1])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_emulator/stats", timeout=10) as response:
        stats = json.load(response)
    assert (stats["total"], stats["requests"]) == (0, {})
    assert set(stats["progress"]) == {"dispatch_passes", "ticks"}
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
    assert process.stdout.read() == b""  # exactly one line on stdout
    refused = subprocess.run(
        [*argv[:4], "0.0.0.0", *argv[5:]], cwd=PROJECT_ROOT, capture_output=True, timeout=30, check=False
    )
    assert refused.returncode != 0 and b"loopback" in refused.stderr


def test_fault_after_processing_reports_failure_for_work_that_was_done(private_dir: Path) -> None:
    from azure.core.exceptions import HttpResponseError, ResourceExistsError

    server = start_emulator(private_dir, ["--fault-after-rate", "1", "--fault-statuses", "503"])
    try:
        client = client_for(server, retry_total=0)
        with pytest.raises(HttpResponseError) as lost:
            client.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
        assert lost.value.status_code == 503
        assert client.get_job("j").id == "j"  # it was created all the same
        with pytest.raises(ResourceExistsError) as again:
            client.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
        assert again.value.error is not None and again.value.error.code == "JobExists"
    finally:
        server.stop()


def test_task_start_delay_keeps_tasks_preparing(private_dir: Path) -> None:
    server = start_emulator(private_dir, ["--task-start-delay-ms", "600"])
    try:
        client = client_for(server)
        client.create_pool(m.BatchPoolCreateOptions(id="p", **VM, target_dedicated_nodes=1))
        client.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
        client.create_task("j", m.BatchTaskCreateOptions(id="t", command_line="true"))
        wait_until(lambda: client.get_task("j", "t").state == m.BatchTaskState.PREPARING)
        info = wait_for_task(client, "j", "t").execution_info
        assert info is not None and info.end_time is not None and info.start_time is not None
        assert (info.end_time - info.start_time).total_seconds() >= 0.6
    finally:
        server.stop()
