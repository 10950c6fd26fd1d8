"""A pipeline with `scale: auto`: batchdrop's generated formula takes its pool from 0 nodes to a few under a
backlog and back to 0 when idle, on an emulator that evaluates formulas every half second (time compressed)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from azure.batch import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from local.stack import Azurite, Emulator, start_emulator
from shared.gateways import build_gateways
from shared.submit import sweep
from tests.integration.pipeline_world import make_pipeline_world
from tests.waiting import NotYet, wait_until

pytestmark = pytest.mark.integration
MAX_NODES = 3
SLOTS = 2
INPUTS = 10
# Long enough that the backlog is still there when the formula is evaluated (every 0.5 s here).
SLOW_APP = """\
import os, sys, time
time.sleep(1.0)
os.makedirs(sys.argv[2], exist_ok=True)
open(os.path.join(sys.argv[2], "node.txt"), "w").write(os.environ["AZ_BATCH_NODE_ID"])
"""


@pytest.fixture(scope="module")
def fast_autoscale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    server = start_emulator(tmp_path_factory.mktemp("autoscale-pipeline"), ["--autoscale-interval-seconds", "0.5"])
    yield server
    server.stop()


def test_a_pipeline_pool_scales_from_zero_under_a_backlog_and_back_to_zero(
    tmp_path: Path, azurite: Azurite, fast_autoscale: Emulator, namespace: str
) -> None:
    world = make_pipeline_world(tmp_path, azurite, fast_autoscale, namespace)
    pool_id = f"auto-{namespace}"
    auto = {"min_nodes": 0, "max_nodes": MAX_NODES, "spot": False, "idle_minutes": 5}
    pipelines = {
        "pipelines": [
            {
                "name": f"auto-{namespace}",
                "command": "python3 {app_dir}/slow/app.py {input} {output_dir}",
                "app_files": ["slow/app.py"],
                "outputs": ["**/*"],
                "pool": {"id": pool_id, "task_slots_per_node": SLOTS, "scale": {"auto": auto}},
                "max_retries": 0,
                "max_wall_clock_seconds": 120,
            }
        ]
    }
    Path(world.gw.settings.pipelines_file).write_text(json.dumps(pipelines))
    world = replace(world, gw=build_gateways(world.gw.settings))
    world.container("apps").upload_blob("slow/app.py", SLOW_APP.encode())
    credential = AzureNamedKeyCredential(fast_autoscale.account_name, fast_autoscale.account_key)
    batch = BatchClient(fast_autoscale.url, credential)

    names = [f"in-{n}.txt" for n in range(INPUTS)]
    for name in names:
        world.drop(name, name.encode())
    assert sweep(world.gw).submitted == INPUTS
    pool = batch.get_pool(pool_id)
    # Created with autoscale (its first evaluation, with no task pending yet, targets 0 nodes). Whether the next
    # evaluation has already added nodes by now depends on the machine's load, so only the scale-up is waited for.
    assert pool.enable_auto_scale is True

    peak = 0

    def scaled_up() -> int | NotYet:
        nonlocal peak
        current = batch.get_pool(pool_id).current_dedicated_nodes or 0
        peak = max(peak, current)
        return current if current >= 2 else NotYet(current)

    wait_until(scaled_up, 60, what="the formula to add nodes for the backlog")
    manifests = world.run_until_manifests(names, timeout=120)
    assert all(manifest["status"] == "succeeded" for manifest in manifests.values())

    def back_to_zero() -> bool | NotYet:
        pool = batch.get_pool(pool_id)
        return True if (pool.current_dedicated_nodes, pool.target_dedicated_nodes) == (0, 0) else NotYet(
            (pool.current_dedicated_nodes, pool.target_dedicated_nodes, pool.auto_scale_run)
        )

    wait_until(back_to_zero, 60, what="the pool to go back to 0 nodes once idle")
    assert 2 <= peak <= MAX_NODES
    run = batch.get_pool(pool_id).auto_scale_run
    assert run is not None and run.error is None, run
