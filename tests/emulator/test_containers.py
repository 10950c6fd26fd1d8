"""Container pools and tasks through the real SDK: what the emulator refuses (the REST spec's rules), how a container
task fails where there is no runtime, and the runtime's command line where there is one.

The runtime here is a test double of the `docker` CLI (a script on the emulator's PATH that records its argv and
env file, then runs the command as the container would: in the --workdir, with the env file's variables). It stands
in for the CLI tool, not for anything of Azure's; the emulator under test is the real one, through the real SDK.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.batch import BatchClient
from azure.batch import models as m
from azure.core.exceptions import HttpResponseError

from local.stack import Emulator, start_emulator
from tests.emulator.conftest import VM, client_for, unique, wait_for_task
from tests.waiting import NotYet, wait_until

IMAGE = "mcr.microsoft.com/azurelinux/base/python:3.12"
CONTAINER_VM: dict[str, Any] = {
    "vm_size": VM["vm_size"],
    "virtual_machine_configuration": m.VirtualMachineConfiguration(
        image_reference=m.BatchVmImageReference(
            publisher="microsoft-dsvm", offer="ubuntu-hpc", sku="2204", version="latest"
        ),
        node_agent_sku_id="batch.node.ubuntu 22.04",
        container_configuration=m.BatchContainerConfiguration(
            type=m.ContainerType.DOCKER_COMPATIBLE, container_image_names=[IMAGE]
        ),
    ),
}

FAKE_DOCKER = """\
#!{python}
import json, os, subprocess, sys
log = os.environ["FAKE_RUNTIME_LOG"]
args = sys.argv[1:]
record = {{"argv": sys.argv}}
if args[:1] == ["run"]:
    options, index = {{}}, 1
    env = {{}}
    while index < len(args) and args[index].startswith("-"):
        name = args[index]
        if name in ("--rm", "--init", "--read-only"):
            index += 1
            continue
        options.setdefault(name, []).append(args[index + 1])
        index += 2
    for path in options.get("--env-file", []):
        for line in open(path):
            key, _, value = line.rstrip("\\n").partition("=")
            env[key] = value
    record["env_file"] = env
    with open(log, "a") as sink:
        sink.write(json.dumps(record) + "\\n")
    image, command = args[index], args[index + 1:]
    env["PATH"] = os.environ["PATH"]
    sys.exit(subprocess.call(command, cwd=(options.get("--workdir") or ["/"])[0], env=env))
with open(log, "a") as sink:
    sink.write(json.dumps(record) + "\\n")
"""


def _records(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture(scope="module")
def fake_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Emulator, Path]]:
    """An emulator whose PATH starts with a fake `docker` (its `info` answers 0, so `auto` picks it)."""
    workdir = tmp_path_factory.mktemp("containers")
    bin_dir = workdir / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "docker"
    fake.write_text(FAKE_DOCKER.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    log = workdir / "runtime.jsonl"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "FAKE_RUNTIME_LOG": str(log)}
    emulator = start_emulator(workdir, ["--container-runtime", "auto"], env=env)
    try:
        yield emulator, log
    finally:
        emulator.stop()


@pytest.fixture(scope="module")
def no_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    emulator = start_emulator(tmp_path_factory.mktemp("noruntime"), ["--container-runtime", "none"])
    try:
        yield emulator
    finally:
        emulator.stop()


def _container_job(batch: BatchClient, prefix: str) -> tuple[str, str]:
    pool_id = unique(prefix)
    batch.create_pool(m.BatchPoolCreateOptions(id=pool_id, **CONTAINER_VM, target_dedicated_nodes=1))
    job_id = unique(prefix)
    batch.create_job(m.BatchJobCreateOptions(id=job_id, pool_info=m.BatchPoolInfo(pool_id=pool_id)))
    return pool_id, job_id


def _refused(call: Any) -> tuple[str | None, dict[str, str]]:
    with pytest.raises(HttpResponseError) as raised:
        call()
    assert raised.value.status_code == 400
    error = raised.value.error
    assert error is not None
    return error.code, {str(d.code): str(d.message) for d in error.details or []}


# ---------------------------------------------------------------------- what Batch refuses


def test_pool_container_configuration_is_checked(batch: BatchClient) -> None:
    def pool_with(config: dict[str, Any]) -> Any:
        vm = {
            "imageReference": {"publisher": "microsoft-dsvm", "offer": "ubuntu-hpc", "sku": "2204"},
            "nodeAgentSKUId": "batch.node.ubuntu 22.04",
            "containerConfiguration": config,
        }
        body = {"id": unique("cpool"), "vmSize": "standard_d2s_v3", "virtualMachineConfiguration": vm,
                "targetDedicatedNodes": 0}  # fmt: skip
        return lambda: batch.create_pool(body)  # type: ignore[arg-type]

    code, values = _refused(pool_with({"containerImageNames": [IMAGE]}))
    assert (code, values["PropertyName"]) == (
        "MissingRequiredProperty",
        "virtualMachineConfiguration.containerConfiguration.type",
    )
    code, values = _refused(pool_with({"type": "lxc"}))
    assert (code, values["PropertyName"]) == (
        "InvalidPropertyValue",
        "virtualMachineConfiguration.containerConfiguration.type",
    )
    code, values = _refused(pool_with({"type": "dockerCompatible", "containerImageNames": [""]}))
    assert values["PropertyName"].endswith("containerImageNames")
    code, values = _refused(
        pool_with({"type": "dockerCompatible", "containerRegistries": [{"username": "u", "registryServer": "r.io"}]})
    )
    assert (
        values["PropertyName"] == "virtualMachineConfiguration.containerConfiguration.containerRegistries[0].password"
    )


def test_task_container_settings_are_checked(batch: BatchClient) -> None:
    pool_id, job_id = _container_job(batch, "csettings")

    def task_with(settings: dict[str, Any]) -> Any:
        body = {"id": unique("t"), "commandLine": "true", "containerSettings": settings}
        return lambda: batch.create_task(job_id, body)  # type: ignore[arg-type]

    assert _refused(task_with({"containerRunOptions": "--rm"}))[1]["PropertyName"] == "containerSettings.imageName"
    values = _refused(task_with({"imageName": IMAGE, "workingDirectory": "hostDefault"}))[1]
    assert values["PropertyName"] == "containerSettings.workingDirectory"
    values = _refused(task_with({"imageName": IMAGE, "containerHostBatchBindMounts": [{"source": "Root"}]}))[1]
    assert values["PropertyName"] == "containerSettings.containerHostBatchBindMounts[0].source"
    password = "s3cret-not-echoed"
    values = _refused(task_with({"imageName": IMAGE, "registry": {"password": password}}))[1]
    assert values["PropertyName"] == "containerSettings.registry.username" and password not in json.dumps(values)
    batch.begin_delete_pool(pool_id, polling_interval=0).result()  # type: ignore[arg-type]


def test_a_container_task_is_refused_on_a_pool_without_containers(
    batch: BatchClient, pool_id: str, job_id: str
) -> None:
    settings = m.BatchTaskContainerSettings(image_name=IMAGE)
    code, values = _refused(
        lambda: batch.create_task(
            job_id, m.BatchTaskCreateOptions(id="c", command_line="true", container_settings=settings)
        )
    )
    assert (code, values["PropertyName"]) == ("InvalidPropertyValue", "containerSettings")
    assert "containerConfiguration" in values["Reason"]


def test_a_task_without_container_settings_fails_on_a_container_pool(batch: BatchClient) -> None:
    pool_id, job_id = _container_job(batch, "cnosettings")
    batch.create_task(job_id, m.BatchTaskCreateOptions(id="plain", command_line="true"))
    info = wait_for_task(batch, job_id, "plain").execution_info
    assert info is not None and info.result == m.BatchTaskExecutionResult.FAILURE and info.exit_code is None
    assert info.failure_info is not None and info.failure_info.code == "ContainerTaskSettingsNotFound"
    batch.begin_delete_pool(pool_id, polling_interval=0).result()  # type: ignore[arg-type]


# ---------------------------------------------------------------------- no runtime


def test_without_a_runtime_a_container_task_fails_clearly_and_never_runs_on_the_host(no_runtime: Emulator) -> None:
    batch = client_for(no_runtime)
    pool_id, job_id = _container_job(batch, "cnone")
    # On the host this would succeed and leave a file behind; in the image it never ran.
    settings = m.BatchTaskContainerSettings(image_name=IMAGE)
    batch.create_task(
        job_id, m.BatchTaskCreateOptions(id="t", command_line="touch ran-on-the-host", container_settings=settings)
    )
    done = wait_for_task(batch, job_id, "t")
    info = done.execution_info
    assert info is not None and info.result == m.BatchTaskExecutionResult.FAILURE and info.exit_code is None
    failure = info.failure_info
    assert failure is not None and (failure.category, failure.code) == (
        m.BatchErrorSourceCategory.USER_ERROR,
        "ContainerInvalidSettings",
    )
    detail = " ".join(str(d.value) for d in failure.details or [])
    assert "--container-runtime none" in detail and IMAGE in detail and "not run" in detail
    files = [f.name for f in batch.list_task_files(job_id, "t", recursive=True)]  # type: ignore[call-overload]
    assert not any("ran-on-the-host" in str(name) for name in files)
    log = no_runtime.log_path.read_text()
    assert f"pool {pool_id} has a containerConfiguration" in log and "images not prefetched" in log
    batch.begin_delete_pool(pool_id, polling_interval=0).result()  # type: ignore[arg-type]


# ---------------------------------------------------------------------- with a runtime (the fake CLI)


def test_a_container_task_runs_in_the_runtime_with_the_node_root_mounted(fake_runtime: tuple[Emulator, Path]) -> None:
    emulator, log = fake_runtime
    batch = client_for(emulator)
    pool_id, job_id = _container_job(batch, "crun")
    wait_until(lambda: any(r["argv"][1:] == ["pull", IMAGE] for r in _records(log)), what="the image prefetch")
    settings = m.BatchTaskContainerSettings(image_name=IMAGE, container_run_options="--cpus 1 -e MODE=fast --init")
    secret = "value-that-must-not-be-in-argv"
    batch.create_task(
        job_id,
        m.BatchTaskCreateOptions(
            id="t",
            command_line="python3 -c \"import os; open('out.txt','w').write(os.environ['GREETING'])\"",
            container_settings=settings,
            environment_settings=[m.EnvironmentSetting(name="GREETING", value=secret)],
        ),
    )
    done = wait_for_task(batch, job_id, "t")
    assert done.execution_info is not None and done.execution_info.exit_code == 0, done.execution_info
    run = next(r for r in _records(log) if r["argv"][1] == "run")
    argv, env = run["argv"], run["env_file"]
    root, task_wd = env["AZ_BATCH_NODE_ROOT_DIR"], env["AZ_BATCH_TASK_WORKING_DIR"]
    assert argv[argv.index("--volume") + 1] == f"{root}:{root}"  # the node root, at the same path, as on Batch
    assert argv[argv.index("--workdir") + 1] == task_wd  # workingDirectory taskWorkingDirectory (the default)
    image_at = argv.index(IMAGE)
    assert argv[image_at - 5 : image_at] == ["--cpus", "1", "-e", "MODE=fast", "--init"]
    assert argv[image_at + 1 :] == ["python3", "-c", "import os; open('out.txt','w').write(os.environ['GREETING'])"]
    assert env["GREETING"] == secret and secret not in " ".join(argv)
    assert env["AZ_BATCH_TASK_ID"] == "t" and "PATH" not in env  # the image keeps its own PATH
    assert not Path(argv[argv.index("--env-file") + 1]).exists()  # removed when the task ended
    written = batch.download_task_file(job_id, "t", "wd/out.txt")
    assert b"".join(written) == secret.encode()
    batch.begin_delete_pool(pool_id, polling_interval=0).result()  # type: ignore[arg-type]


def test_bind_mounts_working_directory_and_refused_run_options(fake_runtime: tuple[Emulator, Path]) -> None:
    emulator, log = fake_runtime
    batch = client_for(emulator)
    pool_id, job_id = _container_job(batch, "cmounts")
    mounts = [m.ContainerHostBatchBindMountEntry(source=m.ContainerHostDataPath.TASK, is_read_only=True)]
    settings = m.BatchTaskContainerSettings(
        image_name=IMAGE,
        working_directory=m.ContainerWorkingDirectory.CONTAINER_IMAGE_DEFAULT,
        container_host_batch_bind_mounts=mounts,
    )
    batch.create_task(job_id, m.BatchTaskCreateOptions(id="m", command_line="true", container_settings=settings))
    assert wait_for_task(batch, job_id, "m").execution_info.exit_code == 0  # type: ignore[union-attr]
    run = next(r for r in _records(log) if r["argv"][1] == "run" and r["env_file"].get("AZ_BATCH_TASK_ID") == "m")
    argv = run["argv"]
    volumes = [argv[i + 1] for i, word in enumerate(argv) if word == "--volume"]
    task_dir = run["env_file"]["AZ_BATCH_TASK_DIR"]
    assert volumes == [f"{task_dir}:{task_dir}:ro"] and "--workdir" not in argv

    hostile = m.BatchTaskContainerSettings(image_name=IMAGE, container_run_options="--privileged -v /:/host")
    batch.create_task(job_id, m.BatchTaskCreateOptions(id="h", command_line="true", container_settings=hostile))
    info = wait_for_task(batch, job_id, "h").execution_info
    assert info is not None and info.failure_info is not None and info.failure_info.code == "ContainerInvalidSettings"
    assert "--privileged" in " ".join(str(d.value) for d in info.failure_info.details or [])
    ran = [r for r in _records(log) if r["argv"][1] == "run" and r["env_file"].get("AZ_BATCH_TASK_ID") == "h"]
    assert ran == []
    batch.begin_delete_pool(pool_id, polling_interval=0).result()  # type: ignore[arg-type]


def test_terminating_a_container_task_removes_its_container(fake_runtime: tuple[Emulator, Path]) -> None:
    emulator, log = fake_runtime
    batch = client_for(emulator)
    pool_id, job_id = _container_job(batch, "ckill")
    settings = m.BatchTaskContainerSettings(image_name=IMAGE)
    batch.create_task(job_id, m.BatchTaskCreateOptions(id="k", command_line="sleep 30", container_settings=settings))

    def started() -> dict[str, Any] | NotYet:
        runs = [r for r in _records(log) if r["argv"][1] == "run" and r["env_file"].get("AZ_BATCH_JOB_ID") == job_id]
        return runs[0] if runs else NotYet(len(_records(log)))

    name = wait_until(started, what="the container to start")["argv"]
    container = name[name.index("--name") + 1]
    wait_until(lambda: batch.get_task(job_id, "k").state == m.BatchTaskState.RUNNING)
    batch.terminate_task(job_id, "k")
    wait_until(
        lambda: any(r["argv"][1:] == ["rm", "--force", container] for r in _records(log)),
        what=f"docker rm --force {container}",
    )
    batch.begin_delete_pool(pool_id, polling_interval=0).result()  # type: ignore[arg-type]


# ---------------------------------------------------------------------- the runtime probe and the options check


def test_auto_needs_an_engine_that_answers_not_just_a_client_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from local.batch.containers import Runtime

    client = tmp_path / "docker"
    client.write_text(
        "#!/bin/sh\necho 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock.' >&2\nexit 1\n"
    )
    client.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))  # no podman here either
    runtime = Runtime()
    assert runtime.name() is None
    why = runtime.why_not()
    assert "`docker info` exited 1" in why and "Cannot connect to the Docker daemon" in why
    assert "podman is not on PATH" in why
    runtime.configure("podman")
    assert runtime.name() is None and runtime.why_not().endswith("podman is not on PATH")


@pytest.mark.parametrize(
    "options",
    ["--privileged", "-v /:/host", "--volume=/etc:/etc", "--mount type=bind,src=/,dst=/h", "--device /dev/sda",
     "--cap-add SYS_ADMIN", "--pid host", "--env-file /etc/shadow", "--network container:other", "ubuntu", "--cpus"],
)  # fmt: skip
def test_run_options_that_reach_outside_the_task_are_refused(options: str) -> None:
    from local.batch.containers import ContainerError, check_run_options

    with pytest.raises(ContainerError):
        check_run_options(options)


def test_run_options_that_stay_inside_are_passed_on_as_split() -> None:
    from local.batch.containers import check_run_options

    given = "--cpus 2 --memory=1g -m1g -e 'A=b c' --network none --init --user 1000:1000 --gpus all"
    assert check_run_options(given) == [
        "--cpus", "2", "--memory=1g", "-m1g", "-e", "A=b c", "--network", "none", "--init", "--user", "1000:1000",
        "--gpus", "all",
    ]  # fmt: skip
