"""A pipeline's container, packages, environment, slots and start task reach Batch; pool drift shows in status."""

from __future__ import annotations

import copy
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from shared.batch_pools import pool_options
from shared.errors import ConfigError
from shared.models import TaskContainer
from shared.pipelines import PipelineSet
from shared.status import status
from shared.submit import submit, sweep
from tests.unit.fakes import PIPELINE, make_world

WORKLOAD: dict[str, Any] = {
    **PIPELINE,
    "command": "python3 {package:stats}/stats.py {input} {output_dir}",
    "container": {"image": "python:3.12-slim", "run_options": "--rm"},
    "application_packages": [{"id": "stats", "version": "2.0"}],
    "environment": {"THREADS": "2"},
    "required_slots": 2,
    "pool": {
        **PIPELINE["pool"],  # type: ignore[dict-item]
        "start_task": {"command": "/bin/sh -c 'true'", "resource_files": ["setup/install.sh"]},
    },
}


def test_the_task_carries_the_pipelines_container_packages_environment_and_slots(tmp_path: Path) -> None:
    world = make_world(tmp_path, [WORKLOAD])
    outcome = submit(world.gw, world.blobs.put("input", "a.csv"))
    task = world.batch.jobs[outcome.job_id].tasks[outcome.task_id].spec
    assert task.container == TaskContainer("python:3.12-slim", "--rm", "taskWorkingDirectory")
    assert task.packages == (("stats", "2.0"),)
    assert task.required_slots == 2
    assert dict(task.environment) == {"BATCHDROP_INPUT": "input/a.csv", "BATCHDROP_OUTPUT_DIR": "out", "THREADS": "2"}
    assert task.command_line.startswith('/bin/sh -c \'python3 "$AZ_BATCH_APP_PACKAGE_stats_2_0"/stats.py ')


def test_the_pool_gets_its_containers_and_the_start_tasks_files_by_sas(tmp_path: Path) -> None:
    world = make_world(tmp_path, [WORKLOAD])
    submit(world.gw, world.blobs.put("input", "a.csv"))
    plan = world.batch.pools["pool-1"]
    assert [c.image for c in plan.containers] == ["python:3.12-slim"]
    (start_file,) = world.batch.pool_files["pool-1"]
    assert start_file.file_path == "app/setup/install.sh"
    # readable for as long as a SAS may last: a node may join (autoscale) long after the pool was created
    expiry = world.clock() + timedelta(hours=world.gw.settings.sas_max_hours)
    assert start_file.url == f"mem://apps/setup/install.sh?sp=r&se={expiry.isoformat()}&sig=SECRET"


def test_the_pool_is_checked_once_per_new_job_and_not_per_input(tmp_path: Path) -> None:
    world = make_world(tmp_path, [WORKLOAD])
    for index in range(5):
        world.blobs.put("input", f"{index}.csv")
    sweep(world.gw)
    submit(world.gw, world.blobs.put("input", "late.csv"))
    assert world.batch.requests["Pool_Add"] == 1  # one job, one pool request, as before


def test_status_shows_each_active_pools_drift_and_nodes(tmp_path: Path) -> None:
    world = make_world(tmp_path, [WORKLOAD])
    submit(world.gw, world.blobs.put("input", "a.csv"))
    assert status(world.gw)["pools"] == [{"pool_id": "pool-1", "exists": True, "drift": [], "nodes": {"idle": 1}}]
    changed = copy.deepcopy(WORKLOAD)
    changed["pool"]["vm_size"] = "standard_d8s_v3"
    world.gw.pipelines = PipelineSet.model_validate({"pipelines": [changed]})
    (pool,) = status(world.gw)["pools"]  # type: ignore[misc]
    assert [item["field"] for item in pool["drift"]] == ["vm_size"]


def test_a_registry_password_comes_from_its_app_setting_and_a_missing_one_is_named(tmp_path: Path) -> None:
    registry = {"server": "r.azurecr.io", "username": "puller", "password_setting": "REG_PASSWORD"}
    container = {"image": "r.azurecr.io/tool:1", "registry": registry}
    pipelines = PipelineSet.model_validate({"pipelines": [{**PIPELINE, "container": container}]})
    plan = pipelines.pool_plan("pool-1")
    settings = {"REG_PASSWORD": "from-the-setting"}
    options = pool_options(plan, (), lambda name: settings[name]).as_dict()
    registry = options["virtualMachineConfiguration"]["containerConfiguration"]["containerRegistries"][0]
    assert registry == {"registryServer": "r.azurecr.io", "username": "puller", "password": "from-the-setting"}

    from shared.batch import AzureBatch

    batch = AzureBatch(client=None, app_setting=lambda name: None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"app setting REG_PASSWORD .* is not set"):
        batch.ensure_pool(plan)
