"""Re-runs through the real SDKs: Azurite for storage and the ledger, the emulator for Batch."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from azure.batch import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from local.stack import Azurite, Emulator
from shared.rerun import RerunAction, RerunRequest, rerun
from shared.status import status
from shared.submit import sweep
from tests.integration.pipeline_world import PipelineWorld, make_pipeline_world
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

FIXED_APP = b"""\
import os, sys
source, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
open(os.path.join(out, "report.json"), "w").write('{"fixed": true}')
print("fixed app ran")
"""


@pytest.fixture
def world(tmp_path: Path, azurite: Azurite, emulator: Emulator, namespace: str) -> PipelineWorld:
    return make_pipeline_world(tmp_path, azurite, emulator, namespace)


def batch_client(emulator: Emulator) -> BatchClient:
    return BatchClient(emulator.url, AzureNamedKeyCredential(emulator.account_name, emulator.account_key))


def pipeline_name(world: PipelineWorld) -> str:
    return world.gw.pipelines.pipelines[0].name


def task_ids(world: PipelineWorld) -> list[str]:
    client = batch_client(world.emulator)
    return [
        str(task.id) for job in world.gw.ledger.jobs(active_only=False) for task in client.list_tasks(job.job_id)
    ]


def test_a_failed_input_fixed_by_an_app_change_and_rerun_succeeds_as_run_2(world: PipelineWorld) -> None:
    world.drop("bad.txt", b"#fail please\n")
    sweep(world.gw)
    failed = world.run_until_manifests(["bad.txt"])["bad.txt"]
    assert (failed["status"], failed["run"]) == ("failed", 1)
    world.container("apps").upload_blob("echo/app.py", FIXED_APP, overwrite=True)

    report = rerun(world.gw, RerunRequest("fix-1", failed=True, pipeline=pipeline_name(world)))
    assert [(o.name, o.action, o.run) for o in report.outcomes] == [("bad.txt", RerunAction.SUBMITTED, 2)]

    def run_2() -> dict[str, object] | None:
        world.drain_completions()
        manifest = world.manifest("bad.txt")
        return manifest if manifest is not None and manifest.get("run") == 2 else None

    fixed = wait_until(run_2, 90, interval=0.3, what="the re-run's manifest")
    assert (fixed["status"], fixed["task_id"]) == ("succeeded", report.outcomes[0].task_id), fixed
    results = world.container("results")
    assert json.loads(results.download_blob("bad.txt/report.json").readall()) == {"fixed": True}
    kept = json.loads(results.download_blob("bad.txt/_history/1/_manifest.json").readall())
    assert (kept["status"], kept["run"], kept["task_id"]) == ("failed", 1, failed["task_id"])
    assert b"refusing bad.txt" in results.download_blob(str(kept["stderr"])).readall()
    assert str(kept["stderr"]).startswith("bad.txt/_history/1/")
    totals = status(world.gw)["totals"]
    assert isinstance(totals, dict)
    assert (totals["collected"], totals["succeeded"], totals["failed"]) == (1, 1, 0), totals


def test_a_duplicated_rerun_request_makes_one_task(world: PipelineWorld) -> None:
    world.drop("a.txt", b"hello\n")
    sweep(world.gw)
    world.run_until_manifests(["a.txt"])
    request = RerunRequest("dup-1", names=("a.txt",))
    with ThreadPoolExecutor(3) as pool:  # the same request delivered three times, two of them at once
        reports = list(pool.map(lambda _: rerun(world.gw, request), range(2)))
    reports.append(rerun(world.gw, request))
    actions = sorted(o.action.value for report in reports for o in report.outcomes)
    assert actions.count("submitted") >= 1 and "refused" not in actions, actions
    reruns = [task for task in task_ids(world) if "-r-" in task]
    assert reruns == [reports[0].outcomes[0].task_id], reruns


def test_refusals_are_recorded_with_their_reason(world: PipelineWorld) -> None:
    world.drop("slow.txt", b"x")
    sweep(world.gw)  # queued or running: refused without force
    world.drop("never.txt", b"x")  # no task yet
    report = rerun(world.gw, RerunRequest("ref-1", names=("gone.txt", "never.txt", "slow.txt")))
    reasons = {o.name: o.reason for o in report.outcomes}
    assert reasons["gone.txt"] == "the input no longer exists"
    assert reasons["never.txt"].startswith("this version of the input was never submitted")
    recorded = [row["reason"] for row in world.gw.ledger.rejections()]
    assert "re-run refused: the input no longer exists" in recorded
    if reasons["slow.txt"]:  # it may have finished already: then it is re-run, which is right too
        assert "already queued or running" in reasons["slow.txt"]


def test_a_bulk_rerun_of_250_inputs_makes_3_add_collection_requests(
    tmp_path: Path, azurite: Azurite, emulator: Emulator, namespace: str
) -> None:
    # A pool with no nodes: the first runs stay queued, so the bulk re-run needs force and terminates each one
    # (running 250 tasks first would only make the test slow; the completed case is covered above).
    world = make_pipeline_world(tmp_path, azurite, emulator, namespace)
    pipelines = json.loads(Path(world.gw.settings.pipelines_file).read_text())
    pipelines["pipelines"][0]["pool"]["dedicated_nodes"] = 0
    idle = tmp_path / "idle-pipelines.json"
    idle.write_text(json.dumps(pipelines))
    world = make_pipeline_world(tmp_path, azurite, emulator, namespace + "i", BATCHDROP_PIPELINES_FILE=str(idle))
    names = [f"bulk/{i:03d}.txt" for i in range(250)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda name: world.drop(name, b"x"), names))
    assert sweep(world.gw).submitted == 250
    request = RerunRequest("bulk-1", every=True, pipeline=pipeline_name(world))
    refused = rerun(world.gw, request)
    assert refused.count(RerunAction.REFUSED) == 250  # all queued: refused without force
    before = emulator.stats()["requests"]
    assert isinstance(before, dict)
    report = rerun(world.gw, RerunRequest("bulk-2", every=True, pipeline=pipeline_name(world), force=True))
    after = emulator.stats()["requests"]
    assert isinstance(after, dict)
    assert report.count(RerunAction.SUBMITTED) == 250
    assert after.get("Task_AddCollection", 0) - before.get("Task_AddCollection", 0) == 3
    assert after.get("Task_Add", 0) == before.get("Task_Add", 0)
    assert after.get("Task_Terminate", 0) - before.get("Task_Terminate", 0) == 250
    assert len([task for task in task_ids(world) if "-r-" in task]) == 250
