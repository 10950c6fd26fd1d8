"""--completion-lag-seconds: a finished task stays `running` after its process exited and its files uploaded."""

from __future__ import annotations

from pathlib import Path

import pytest
from azure.batch import models as m
from azure.core.exceptions import ResourceNotFoundError

from local.stack import start_emulator
from tests.emulator.conftest import VM, Containers, client_for, wait_for_task
from tests.emulator.test_files import output
from tests.waiting import wait_until

LAG_SECONDS = 4


@pytest.fixture
def private_dir(workdir: Path, request: pytest.FixtureRequest) -> Path:
    return workdir / request.node.name


def test_completion_lag_keeps_the_task_running_after_its_logs_are_uploaded(
    private_dir: Path, containers: Containers
) -> None:
    target = containers.create("lag")
    url = containers.sas_url(target)
    server = start_emulator(private_dir, ["--completion-lag-seconds", str(LAG_SECONDS)])
    try:
        client = client_for(server)
        client.create_pool(m.BatchPoolCreateOptions(id="p", **VM, target_dedicated_nodes=1))
        client.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
        script = "import sys; sys.stderr.write('done')"
        logs = [output("../stderr.txt", url, "logs/stderr.txt"), output("../stdout.txt", url, "logs/stdout.txt")]
        client.create_task("j", m.BatchTaskCreateOptions(id="t", command_line=f"python3 -c \"{script}\"",
                                                         output_files=logs))  # fmt: skip
        stderr = containers.blobs.get_blob_client(target, "logs/stderr.txt")

        def uploaded() -> bool:
            try:
                return bool(stderr.get_blob_properties())
            except ResourceNotFoundError:
                return False

        wait_until(uploaded, 30, what="the task's stderr upload")
        # The process has exited and its logs are in storage: Batch's API still says running.
        assert client.get_task("j", "t").state == m.BatchTaskState.RUNNING
        task = wait_for_task(client, "j", "t", timeout=30 + LAG_SECONDS)
        info = task.execution_info
        assert info is not None and info.end_time is not None and info.result == m.BatchTaskExecutionResult.SUCCESS
        assert containers.read(target, "logs/stderr.txt") == b"done"
        # Storage stamps whole seconds: the end comes at least the lag (less that rounding) after the upload.
        last_modified = stderr.get_blob_properties().last_modified
        assert (info.end_time - last_modified).total_seconds() >= LAG_SECONDS - 1
    finally:
        server.stop()


def test_completion_lag_must_not_be_negative(private_dir: Path) -> None:
    from local.batch.__main__ import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--state-dir", str(private_dir), "--completion-lag-seconds", "-1"])
