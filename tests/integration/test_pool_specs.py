"""The pipelines file's pool and task settings, sent by AzureBatch through the real SDK, pass the emulator's checks
(which follow the Batch REST spec 2025-06-01), read back as sent, and run where the emulator can run them."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.batch import BatchClient
from azure.batch import models as m
from azure.core.credentials import AzureNamedKeyCredential

from local.stack import Emulator
from shared.batch import AzureBatch
from shared.models import TaskSpec
from shared.pipelines import PipelineSet, PipelineSpec, load_pipelines
from shared.submit import task_container
from tests.conftest import SharedServers
from tests.unit.fakes import PIPELINE
from tests.waiting import wait_until

pytestmark = pytest.mark.integration
PROJECT = Path(__file__).resolve().parents[2]


def client_for(emulator: Emulator) -> BatchClient:
    return BatchClient(emulator.url, AzureNamedKeyCredential(emulator.account_name, emulator.account_key))


def pipeline_set(namespace: str, **changes: Any) -> PipelineSet:
    pool = {"id": f"pool-{namespace}", "task_slots_per_node": 2, **changes.pop("pool", {})}
    return PipelineSet.model_validate({"pipelines": [{**PIPELINE, "name": "spec", "pool": pool, **changes}]})


def task_of(pipeline: PipelineSpec, task_id: str, input_path: str = "input/data.csv") -> TaskSpec:
    """The task submit would build, without storage: no resource or output files."""
    return TaskSpec(
        task_id=task_id,
        command_line=pipeline.command_line(input_path),
        resource_files=(),
        output_files=(),
        max_retries=0,
        max_wall_clock_seconds=120,
        environment=(
            ("BATCHDROP_INPUT", input_path),
            ("BATCHDROP_OUTPUT_DIR", "out"),
            *sorted(pipeline.environment.items()),
        ),
        container=task_container(pipeline),
        packages=tuple((p.id, p.version) for p in pipeline.application_packages),
        required_slots=pipeline.required_slots,
    )


def finished(client: BatchClient, job_id: str, task_id: str) -> m.BatchTask:
    def done() -> m.BatchTask | None:
        task = client.get_task(job_id, task_id)
        return task if task.state == m.BatchTaskState.COMPLETED else None

    task = wait_until(done, 60, what=f"task {task_id} to complete")
    assert isinstance(task, m.BatchTask)
    return task


def test_the_container_sample_creates_a_container_pool_with_autoscale_and_a_start_task(emulator: Emulator) -> None:
    pipelines = load_pipelines(PROJECT / "samples" / "container" / "pipelines.json")
    pipeline = pipelines.pipelines[0]
    plan = pipelines.pool_plan(pipeline.pool.id)
    client = client_for(emulator)
    AzureBatch(client).ensure_pool(plan)
    try:
        pool = client.get_pool(plan.id).as_dict()
        vm = pool["virtualMachineConfiguration"]
        assert vm["imageReference"]["publisher"] == "microsoft-dsvm"
        assert vm["nodeAgentSKUId"] == "batch.node.ubuntu 22.04"
        assert vm["containerConfiguration"]["type"] == "dockerCompatible"
        assert vm["containerConfiguration"]["containerImageNames"] == [pipeline.container.image]  # type: ignore[union-attr]
        registry = vm["containerConfiguration"]["containerRegistries"][0]
        assert registry["registryServer"] == "batchdropdemo.azurecr.io" and "password" not in registry
        assert pool["enableAutoScale"] is True
        assert "$TargetLowPriorityNodes = max(0, min(4, $wanted));" in pool["autoScaleFormula"]
        assert pool["startTask"]["waitForSuccess"] is True
        assert pool["startTask"]["userIdentity"]["autoUser"]["elevationLevel"] == "nonadmin"

        # The task's request: a job on a pool that has no node, so the emulator checks it and never runs it here.
        job_id = f"{plan.id}-job"
        client.create_job(m.BatchJobCreateOptions(id=job_id, pool_info=m.BatchPoolInfo(pool_id=f"{plan.id}-none")))
        AzureBatch(client).add_tasks(job_id, [task_of(pipeline, "container-task")])
        task = client.get_task(job_id, "container-task").as_dict()
        assert task["containerSettings"] == {
            "imageName": "batchdropdemo.azurecr.io/tools/thumbnailer:1.4",
            "containerRunOptions": "--rm --network none",
            "workingDirectory": "taskWorkingDirectory",
        }
        assert {"name": "THUMBNAIL_SIZE", "value": "256"} in task["environmentSettings"]
        assert task["commandLine"] == "python3 app/thumbnail.py input/data.csv out"
    finally:
        client.begin_delete_pool(plan.id, polling_interval=1).result()


def test_a_package_placeholder_resolves_to_the_package_directory_on_the_node(
    emulator: Emulator, shared_servers: SharedServers, namespace: str
) -> None:
    package = shared_servers.emulator_state_dir / "packages" / f"csv-{namespace}" / "1.2"
    package.mkdir(parents=True)
    # The tool checks what the command line gave it: the input and output paths, absolute, in the task's dir.
    (package / "tool.py").write_text(
        "import os, sys\n"
        "wd = os.environ['AZ_BATCH_TASK_WORKING_DIR']\n"
        "ok = sys.argv[1] == wd + '/input/data.csv' and sys.argv[2] == wd + '/out' and sys.argv[3] == 'x y'\n"
        "sys.exit(0 if ok else 3)\n"
    )
    pipelines = pipeline_set(
        namespace,
        command=f'python3 {{package:csv-{namespace}}}/tool.py {{input}} {{output_dir}} "x y"',
        application_packages=[{"id": f"csv-{namespace}", "version": "1.2"}],
        required_slots=2,
        pool={"dedicated_nodes": 1},
    )
    pipeline = pipelines.pipelines[0]
    assert pipeline.command_line("input/data.csv").startswith(
        f'/bin/sh -c \'python3 "$AZ_BATCH_APP_PACKAGE_csv_{namespace}_1_2"/tool.py '
    )
    client = client_for(emulator)
    batch = AzureBatch(client)
    batch.ensure_pool(pipelines.pool_plan(pipeline.pool.id))
    job_id = f"packages-{namespace}"
    batch.ensure_job(job_id, pipeline)
    try:
        batch.add_task(job_id, task_of(pipeline, "uses-package"))
        task = finished(client, job_id, "uses-package")
        sent = task.as_dict()
        assert sent["applicationPackageReferences"] == [{"applicationId": f"csv-{namespace}", "version": "1.2"}]
        assert sent["requiredSlots"] == 2
        assert task.execution_info is not None and task.execution_info.exit_code == 0
    finally:
        client.begin_delete_job(job_id, polling_interval=1).result()
        client.begin_delete_pool(pipeline.pool.id, polling_interval=1).result()


SHARED = "os.environ['AZ_BATCH_NODE_SHARED_DIR']"


def test_a_start_task_runs_before_tasks_and_a_task_uses_what_it_left(emulator: Emulator, namespace: str) -> None:
    pipelines = pipeline_set(
        namespace,
        command=f"python3 -c \"import os, sys; sys.exit(0 if os.path.exists({SHARED} + '/tool') else 4)\"",
        pool={
            "dedicated_nodes": 1,
            "start_task": {
                "command": f"python3 -c \"import os; open({SHARED} + '/' + os.environ['TOOL_NAME'], 'w').close()\"",
                "environment": {"TOOL_NAME": "tool"},
            },
        },
    )
    pipeline = pipelines.pipelines[0]
    client = client_for(emulator)
    batch = AzureBatch(client)
    batch.ensure_pool(pipelines.pool_plan(pipeline.pool.id))
    job_id = f"start-{namespace}"
    batch.ensure_job(job_id, pipeline)
    try:
        start = client.get_pool(pipeline.pool.id).as_dict()["startTask"]
        assert start["environmentSettings"] == [{"name": "TOOL_NAME", "value": "tool"}]
        assert start["waitForSuccess"] is True
        batch.add_task(job_id, task_of(pipeline, "after-start"))
        task = finished(client, job_id, "after-start")
        assert task.execution_info is not None and task.execution_info.exit_code == 0
    finally:
        client.begin_delete_job(job_id, polling_interval=1).result()
        client.begin_delete_pool(pipeline.pool.id, polling_interval=1).result()


def test_a_user_formula_is_sent_with_its_interval(emulator: Emulator, namespace: str) -> None:
    formula = "$TargetDedicatedNodes = min(2, max($PendingTasks.GetSample(1)));"
    pipelines = pipeline_set(
        namespace, pool={"scale": {"auto": {"formula": formula, "evaluation_interval_minutes": 7}}}
    )
    client = client_for(emulator)
    plan = pipelines.pool_plan(f"pool-{namespace}")
    AzureBatch(client).ensure_pool(plan)
    try:
        pool = client.get_pool(plan.id)
        assert pool.enable_auto_scale is True and pool.auto_scale_formula == formula
        assert pool.auto_scale_evaluation_interval == timedelta(minutes=7)
    finally:
        client.begin_delete_pool(plan.id, polling_interval=1).result()


def test_pool_drift_is_updated_in_place_where_batch_allows_and_reported_elsewhere(
    emulator: Emulator, namespace: str
) -> None:
    client = client_for(emulator)
    first = pipeline_set(namespace, pool={"dedicated_nodes": 0, "start_task": {"command": "python3 -c pass"}})
    pool_id = f"pool-{namespace}"
    AzureBatch(client).ensure_pool(first.pool_plan(pool_id))
    try:
        changed = pipeline_set(
            namespace,
            pool={
                "vm_size": "standard_d4s_v3",
                "scale": {"fixed": {"dedicated": 1, "spot": 1}},
                "start_task": {"command": "python3 -c 'print(1)'", "environment": {"MODE": "fast"}},
            },
        )
        batch = AzureBatch(client)  # a new process: it has not checked this pool yet
        batch.ensure_pool(changed.pool_plan(pool_id))
        drift = {item.field: item for item in batch.pool_drift[pool_id]}
        assert set(drift) == {"vm_size", "start_task", "scale"}
        assert drift["vm_size"].action.startswith("Batch sets this when a pool is created")
        assert drift["start_task"].action == drift["scale"].action == "updated in place"

        pool = client.get_pool(pool_id)
        assert pool.start_task is not None and pool.start_task.command_line == "python3 -c 'print(1)'"
        assert pool.target_dedicated_nodes == 1 and pool.target_low_priority_nodes == 1
        assert pool.vm_size == "standard_d2s_v3"  # reported, not changed

        report = batch.pool_reports([changed.pool_plan(pool_id)])[0].as_dict()
        assert [item["field"] for item in report["drift"]] == ["vm_size"]  # type: ignore[index]
        assert "new pool id" in json.dumps(report["drift"])
        nodes = wait_until(
            lambda: dict(batch.pool_reports([changed.pool_plan(pool_id)])[0].nodes) or None,
            30,
            what="the resized pool's nodes to be counted",
        )
        assert sum(nodes.values()) == 2  # one dedicated and one Spot node, by state

        # Checked once per process: a second ensure in the same process reads nothing back.
        batch.pool_drift.clear()
        batch.ensure_pool(first.pool_plan(pool_id))
        assert pool_id not in batch.pool_drift
    finally:
        client.begin_delete_pool(pool_id, polling_interval=1).result()


def test_a_fixed_pool_whose_file_now_says_auto_gets_the_formula(emulator: Emulator, namespace: str) -> None:
    client = client_for(emulator)
    pool_id = f"pool-{namespace}"
    AzureBatch(client).ensure_pool(pipeline_set(namespace, pool={"dedicated_nodes": 0}).pool_plan(pool_id))
    try:
        auto = pipeline_set(namespace, pool={"scale": {"auto": {"min_nodes": 0, "max_nodes": 3}}})
        batch = AzureBatch(client)
        batch.ensure_pool(auto.pool_plan(pool_id))
        assert [(d.field, d.action) for d in batch.pool_drift[pool_id]] == [("scale", "updated in place")]
        pool = client.get_pool(pool_id)
        assert pool.enable_auto_scale is True
        assert pool.auto_scale_formula == auto.pipelines[0].pool.autoscale()[0]  # type: ignore[index]
        assert pool.auto_scale_evaluation_interval == timedelta(minutes=5)
    finally:
        client.begin_delete_pool(pool_id, polling_interval=1).result()
