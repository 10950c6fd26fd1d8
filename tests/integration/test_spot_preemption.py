"""A pipeline on Spot nodes only, its node pre-empted mid-task: the task is requeued by Batch (the emulator),
runs again on the replacement node, and the input still gets exactly one task and one manifest."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from azure.batch import BatchClient
from azure.batch import models as m
from azure.core.credentials import AzureNamedKeyCredential

from local.stack import Azurite, Emulator
from shared.gateways import build_gateways
from shared.submit import sweep
from tests.integration.pipeline_world import make_pipeline_world
from tests.waiting import NotYet, wait_until

pytestmark = pytest.mark.integration

# Slow enough to be caught running; it writes its output only at the end, so a pre-empted run leaves nothing.
SLOW_APP = """\
import os, sys, time
source, out = sys.argv[1], sys.argv[2]
time.sleep(1.5)
os.makedirs(out, exist_ok=True)
open(os.path.join(out, "node.txt"), "w").write(os.environ["AZ_BATCH_NODE_ID"])
"""


def test_a_task_on_a_preempted_spot_node_completes_once_with_one_manifest(
    tmp_path: Path, azurite: Azurite, emulator: Emulator, namespace: str
) -> None:
    world = make_pipeline_world(tmp_path, azurite, emulator, namespace)
    pool_id = f"spot-{namespace}"
    pipelines = {
        "pipelines": [
            {
                "name": f"slow-{namespace}",
                "command": "python3 {app_dir}/slow/app.py {input} {output_dir}",
                "app_files": ["slow/app.py"],
                "outputs": ["**/*"],
                "pool": {"id": pool_id, "dedicated_nodes": 0, "low_priority_nodes": 1, "task_slots_per_node": 1},
                "max_retries": 0,
                "max_wall_clock_seconds": 120,
            }
        ]
    }
    Path(world.gw.settings.pipelines_file).write_text(json.dumps(pipelines))
    world = replace(world, gw=build_gateways(world.gw.settings))
    world.container("apps").upload_blob("slow/app.py", SLOW_APP.encode())
    batch = BatchClient(emulator.url, AzureNamedKeyCredential(emulator.account_name, emulator.account_key))

    world.drop("spot.txt", b"run me on a Spot node\n")
    assert sweep(world.gw).submitted == 1

    def busy_node() -> str | NotYet:
        nodes = list(batch.list_nodes(pool_id)) if batch.pool_exists(pool_id) else []
        running = [n for n in nodes if n.state == m.BatchNodeState.RUNNING and n.running_tasks_count]
        return str(running[0].id) if running else NotYet([(n.id, n.state) for n in nodes])

    preempted = wait_until(busy_node, what="the Spot node to run the task")
    assert emulator.preempt(pool_id, preempted)["state"] == "preempted"

    manifest = world.run_until_manifests(["spot.txt"])["spot.txt"]
    assert manifest["status"] == "succeeded", manifest
    assert manifest["exit_code"] == 0 and manifest["retries"] == 0
    ran_on = world.container("results").download_blob("spot.txt/node.txt").readall().decode()
    assert ran_on != preempted  # the rerun, on the node that replaced the preempted one

    jobs = [job for job in batch.list_jobs() if (job.pool_info and job.pool_info.pool_id) == pool_id]
    assert len(jobs) == 1
    tasks = list(batch.list_tasks(str(jobs[0].id)))
    assert len(tasks) == 1
    info = tasks[0].execution_info
    assert info is not None and info.requeue_count == 1 and info.retry_count == 0
    manifests = [b.name for b in world.container("results").list_blobs() if b.name.endswith("_manifest.json")]
    assert manifests == ["spot.txt/_manifest.json"]
