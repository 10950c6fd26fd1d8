"""ResourceFiles in, OutputFiles out (Azurite), and the task file API."""

from __future__ import annotations

import pytest
from azure.batch import BatchClient
from azure.batch import models as m
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

from tests.emulator.conftest import Containers, wait_for_task
from tests.waiting import wait_until

PY = "python3"


def output(
    pattern: str, container_url: str, path: str | None = None, condition: str = "taskcompletion"
) -> m.OutputFile:
    return m.OutputFile(
        file_pattern=pattern,
        destination=m.OutputFileDestination(
            container=m.OutputFileBlobContainerDestination(container_url=container_url, path=path)
        ),
        upload_options=m.OutputFileUploadConfiguration(upload_condition=condition),
    )


def test_resource_files_download_by_url_and_by_container_prefix(
    batch: BatchClient, job_id: str, containers: Containers
) -> None:
    source = containers.create("in")
    containers.upload(source, "data/input file.txt", b"hello world\n")
    containers.upload(source, "app/run.sh", b"#!/bin/sh\necho ran $1\n")
    containers.upload(source, "app/lib/helper.txt", b"help\n")
    containers.upload(source, "other/skip.txt", b"no\n")
    resources = [
        m.ResourceFile(http_url=containers.sas_url(source, blob="data/input%20file.txt"), file_path="in/input.txt"),
        m.ResourceFile(
            storage_container_url=containers.sas_url(source), blob_prefix="app/", file_path="tools", file_mode="0755"
        ),
    ]
    command = "/bin/sh -c 'tools/app/run.sh ok && cat in/input.txt tools/app/lib/helper.txt && ls -R tools'"
    batch.create_task(job_id, m.BatchTaskCreateOptions(id="rf", command_line=command, resource_files=resources))
    done = wait_for_task(batch, job_id, "rf")
    stdout = b"".join(batch.download_task_file(job_id, "rf", "stdout.txt")).decode()
    assert done.execution_info is not None and done.execution_info.exit_code == 0, stdout
    assert stdout.startswith("ran ok\nhello world\nhelp\n")
    assert "skip.txt" not in stdout
    props = batch.get_task_file_properties(job_id, "rf", "wd/tools/app/run.sh")
    assert props.file_mode == "0755"


def test_resource_file_download_failure_is_a_pre_processing_error(
    batch: BatchClient, job_id: str, containers: Containers
) -> None:
    source = containers.create("in")
    resources = [m.ResourceFile(http_url=containers.sas_url(source, blob="missing.txt"), file_path="x.txt")]
    batch.create_task(job_id, m.BatchTaskCreateOptions(id="missing", command_line="true", resource_files=resources))
    info = wait_for_task(batch, job_id, "missing").execution_info
    assert info is not None and info.result == m.BatchTaskExecutionResult.FAILURE
    assert info.exit_code is None  # the command never ran
    assert info.failure_info is not None and info.failure_info.code == "BlobNotFound"
    assert info.failure_info.category == m.BatchErrorSourceCategory.USER_ERROR
    assert all("sig=" not in (d.value or "") for d in info.failure_info.details or [])


def test_output_files_follow_patterns_paths_and_conditions(
    batch: BatchClient, job_id: str, containers: Containers
) -> None:
    target = containers.create("out")
    url = containers.sas_url(target)
    script = (
        "import os; os.makedirs('out/sub/deeper'); open('out/a.txt','w').write('a');"
        "open('out/sub/b.json','w').write('b'); open('out/sub/deeper/c.txt','w').write('c');"
        "open('report.txt','w').write('r'); print('to stdout')"
    )
    outputs = [
        output("out/**/*", url, "results/t1"),
        output("report.txt", url, "renamed/report-final.txt", "tasksuccess"),
        output("../stdout.txt", url, "logs/t1/stdout.txt"),
        output("../std*.txt", url, "alllogs"),
        output("report.txt", url, "never.txt", "taskfailure"),
    ]
    batch.create_task(
        job_id, m.BatchTaskCreateOptions(id="t1", command_line=f'{PY} -c "{script}"', output_files=outputs)
    )
    done = wait_for_task(batch, job_id, "t1")
    assert done.execution_info is not None and done.execution_info.result == m.BatchTaskExecutionResult.SUCCESS
    assert containers.names(target) == [
        "alllogs/stderr.txt",
        "alllogs/stdout.txt",
        "logs/t1/stdout.txt",
        "renamed/report-final.txt",
        "results/t1/a.txt",
        "results/t1/sub/b.json",
        "results/t1/sub/deeper/c.txt",
    ]
    assert containers.read(target, "results/t1/sub/deeper/c.txt") == b"c"
    assert containers.read(target, "logs/t1/stdout.txt") == b"to stdout\n"


def test_failed_task_uploads_only_failure_and_completion_outputs(
    batch: BatchClient, job_id: str, containers: Containers
) -> None:
    target = containers.create("out")
    url = containers.sas_url(target)
    outputs = [
        output("../stderr.txt", url, "f/stderr.txt", "taskfailure"),
        output("../stdout.txt", url, "f/stdout.txt", "tasksuccess"),
        output("../stdout.txt", url, "f/always.txt", "taskcompletion"),
    ]
    command = "/bin/sh -c 'echo oops >&2; exit 2'"
    batch.create_task(job_id, m.BatchTaskCreateOptions(id="f", command_line=command, output_files=outputs))
    wait_for_task(batch, job_id, "f")
    assert containers.names(target) == ["f/always.txt", "f/stderr.txt"]
    assert containers.read(target, "f/stderr.txt") == b"oops\n"


def test_upload_failure_is_a_file_upload_error(batch: BatchClient, job_id: str, containers: Containers) -> None:
    read_only = containers.create("ro")
    url = containers.sas_url(read_only, write=False)
    outputs = [output("../stdout.txt", url, "x.txt")]
    batch.create_task(job_id, m.BatchTaskCreateOptions(id="up", command_line="echo hi", output_files=outputs))
    info = wait_for_task(batch, job_id, "up").execution_info
    assert info is not None and info.exit_code == 0
    assert info.result == m.BatchTaskExecutionResult.FAILURE
    assert info.failure_info is not None and info.failure_info.code == "FileUploadMiscError"


def test_task_files_list_download_and_properties(batch: BatchClient, job_id: str) -> None:
    script = "import os; os.makedirs('out'); open('out/r.txt','w').write('0123456789')"
    batch.create_task(job_id, m.BatchTaskCreateOptions(id="files", command_line=f'{PY} -c "{script}"'))
    wait_for_task(batch, job_id, "files")
    top = {f.name: f for f in batch.list_task_files(job_id, "files")}
    assert set(top) == {"stdout.txt", "stderr.txt", "wd"} and top["wd"].is_directory
    everything = {f.name: f for f in batch.list_task_files(job_id, "files", recursive=True)}
    assert "wd/out/r.txt" in everything
    assert everything["wd/out/r.txt"].properties.content_length == 10  # type: ignore[union-attr]
    assert b"".join(batch.download_task_file(job_id, "files", "wd/out/r.txt")) == b"0123456789"
    assert b"".join(batch.download_task_file(job_id, "files", "wd/out/r.txt", ocp_range="bytes=2-4")) == b"234"
    props = batch.get_task_file_properties(job_id, "files", "wd/out/r.txt")
    assert props.content_length == 10 and props.is_directory is False
    with pytest.raises(ResourceNotFoundError) as raised:
        b"".join(batch.download_task_file(job_id, "files", "wd/nope.txt"))
    # The SDK streams downloads, so its exception carries no error model: only the status is checked.
    assert raised.value.status_code == 404
    batch.delete_task_file(job_id, "files", "wd/out/r.txt")
    assert "wd/out/r.txt" not in {f.name for f in batch.list_task_files(job_id, "files", recursive=True)}


def test_retention_time_cleans_up_task_files(batch: BatchClient, job_id: str) -> None:
    batch.create_task(
        job_id,
        m.BatchTaskCreateOptions(
            id="short", command_line="true", constraints=m.BatchTaskConstraints(retention_time="PT1S")
        ),
    )
    wait_for_task(batch, job_id, "short")

    def cleaned() -> bool:
        try:
            list(batch.list_task_files(job_id, "short"))
        except ResourceExistsError as error:
            return error.error is not None and error.error.code == "TaskFilesCleanedup"
        return False

    wait_until(cleaned, timeout=10)
    assert batch.get_task(job_id, "short").state == m.BatchTaskState.COMPLETED


def test_application_packages_map_to_the_packages_directory(batch: BatchClient, job_id: str, state_dir: object) -> None:
    from pathlib import Path

    package = Path(str(state_dir)) / "packages" / "reporter" / "1.2"
    package.mkdir(parents=True, exist_ok=True)
    (package / "tool.sh").write_text("#!/bin/sh\necho from package\n")
    (package / "tool.sh").chmod(0o755)
    batch.create_task(
        job_id,
        m.BatchTaskCreateOptions(
            id="app",
            command_line="/bin/sh -c '$AZ_BATCH_APP_PACKAGE_reporter_1_2/tool.sh'",
            application_package_references=[
                m.BatchApplicationPackageReference(application_id="reporter", version="1.2")
            ],
        ),
    )
    done = wait_for_task(batch, job_id, "app")
    assert done.execution_info is not None and done.execution_info.exit_code == 0
    assert b"".join(batch.download_task_file(job_id, "app", "stdout.txt")) == b"from package\n"
    # An unknown package fails the task when it runs: tests/emulator/test_packages.py.


def test_auto_storage_container_name_uses_the_accounts_linked_storage(
    workdir: object, azurite: object, containers: Containers
) -> None:
    from pathlib import Path

    from local.stack import start_emulator
    from tests.emulator.conftest import VM, client_for

    source = containers.create("auto")
    containers.upload(source, "tool/hello.txt", b"linked storage\n")
    server = start_emulator(
        Path(str(workdir)) / "autostorage",
        ["--auto-storage", azurite.connection_string],  # type: ignore[attr-defined]
    )
    try:
        client = client_for(server)
        client.create_pool(m.BatchPoolCreateOptions(id="p", **VM, target_dedicated_nodes=1))
        client.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
        resources = [m.ResourceFile(auto_storage_container_name=source, blob_prefix="tool/")]
        client.create_task(
            "j", m.BatchTaskCreateOptions(id="t", command_line="cat tool/hello.txt", resource_files=resources)
        )
        done = wait_for_task(client, "j", "t")
        assert done.execution_info is not None and done.execution_info.exit_code == 0
        assert b"".join(client.download_task_file("j", "t", "stdout.txt")) == b"linked storage\n"
    finally:
        server.stop()


def test_node_files_list_and_download(batch: BatchClient, job_id: str, pool_id: str) -> None:
    batch.create_task(job_id, m.BatchTaskCreateOptions(id="on-node", command_line="echo from the node"))
    done = wait_for_task(batch, job_id, "on-node")
    assert done.node_info is not None
    node_id = done.node_info.node_id
    prefix = f"workitems/{job_id}/job-1/on-node/"
    names = {
        f.name for f in batch.list_node_files(pool_id, node_id, recursive=True, filter=f"startswith(name,'{prefix}')")
    }
    assert f"{prefix}stdout.txt" in names
    data = b"".join(batch.download_node_file(pool_id, node_id, f"{prefix}stdout.txt"))
    assert data == b"from the node\n"
    assert batch.get_node_file_properties(pool_id, node_id, f"{prefix}stdout.txt").content_length == len(data)
    top = {f.name for f in batch.list_node_files(pool_id, node_id)}
    assert {"shared", "startup", "workitems"} <= top
