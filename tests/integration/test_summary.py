"""The summary step on Azurite and the Batch emulator: one task per job once its window closes, listing every
manifest, its result under results/_summaries/<pipeline>/<job id>/."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from azure.batch import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from local.stack import Azurite, Emulator
from shared import summary
from shared.gateways import utc_now
from shared.models import JobState
from shared.pipelines import load_pipelines
from shared.poll import poll
from shared.status import status
from shared.submit import sweep
from tests.integration.pipeline_world import DRAIN_INTERVAL, PipelineWorld, make_pipeline_world
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

# The summary application: counts the job's manifests by status, names each input.
SUMMARY_APP = """\
import json, os, sys
listed = json.load(open(sys.argv[1]))
out = sys.argv[2]
os.makedirs(out, exist_ok=True)
statuses = {}
for manifest in listed["manifests"]:
    statuses[manifest["status"]] = statuses.get(manifest["status"], 0) + 1
json.dump({"job": listed["job_id"], "count": listed["count"], "statuses": statuses,
           "inputs": sorted(m["input"] for m in listed["manifests"])}, open(os.path.join(out, "summary.json"), "w"))
print("summarised", listed["count"])
"""


def summarised_world(tmp_path: Path, azurite: Azurite, emulator: Emulator, namespace: str) -> PipelineWorld:
    """The pipeline world, its pipeline with a summary step, and one-minute job windows without grace."""
    world = make_pipeline_world(
        tmp_path, azurite, emulator, namespace, BATCHDROP_JOB_WINDOW_MINUTES=1, BATCHDROP_JOB_CLOSE_GRACE_MINUTES=0
    )
    path = world.gw.settings.pipelines_file
    document = json.loads(path.read_text())
    document["pipelines"][0]["summary"] = {
        "command": "python3 {app_dir}/summary/app.py {input} {output_dir}",
        "app_files": ["summary/app.py"],
    }
    path.write_text(json.dumps(document))
    world.gw.pipelines = load_pipelines(path)
    world.container("apps").upload_blob("summary/app.py", SUMMARY_APP.encode())
    return world


@pytest.fixture
def world(tmp_path: Path, azurite: Azurite, emulator: Emulator, namespace: str) -> PipelineWorld:
    return summarised_world(tmp_path, azurite, emulator, namespace)


def summary_tasks(emulator: Emulator, job_id: str) -> list[str]:
    client = BatchClient(emulator.url, AzureNamedKeyCredential(emulator.account_name, emulator.account_key))
    return [task.id for task in client.list_tasks(job_id) if task.id == summary.SUMMARY_TASK_ID]


def test_summary_runs_once_after_the_window_closes(world: PipelineWorld, emulator: Emulator) -> None:
    names = ["a.txt", "dir/b.txt", "bad.txt"]
    for name in names[:2]:
        world.drop(name, f"content of {name}\n".encode())
    world.drop("bad.txt", b"#fail\n")
    assert sweep(world.gw).submitted == 3
    manifests = world.run_until_manifests(names)
    job_id = str(manifests["a.txt"]["job_id"])
    assert {str(m["job_id"]) for m in manifests.values()} == {job_id}, "one window, one job"
    assert summary_tasks(emulator, job_id) == []

    # The window has passed (the clock moves on instead of the test waiting a minute); polls run as the timer would,
    # two at a time now and then, as duplicate timer runs would.
    world.gw.clock = lambda: utc_now() + timedelta(minutes=2)
    prefix = summary.result_prefix(world.gw.pipelines.pipelines[0].name, job_id)

    def published() -> bool:
        poll(world.gw)
        poll(world.gw)
        return world.gw.blobs.read_json(world.names["results"], prefix + "_manifest.json") is not None

    wait_until(published, 90, interval=DRAIN_INTERVAL, what="the summary's manifest")
    manifest = world.gw.blobs.read_json(world.names["results"], prefix + "_manifest.json")
    assert manifest is not None
    assert (manifest["status"], manifest["exit_code"], manifest["task_id"]) == ("succeeded", 0, "_summary")
    assert manifest["outputs"] == [prefix + "summary.json"]
    result = json.loads(world.container("results").download_blob(prefix + "summary.json").readall())
    assert result == {"job": job_id, "count": 3, "statuses": {"succeeded": 2, "failed": 1}, "inputs": sorted(names)}
    stdout = world.container("results").download_blob(str(manifest["stdout"])).readall()
    assert stdout.startswith(b"summarised 3")

    assert summary_tasks(emulator, job_id) == ["_summary"]
    job = world.gw.ledger.get_job(job_id)
    assert job is not None and job.state is JobState.TERMINATED and job.summary == "succeeded"
    jobs = status(world.gw)["jobs"]
    assert isinstance(jobs, list)
    shown = next(entry for entry in jobs if entry["job_id"] == job_id)
    assert shown["summary"] == {"state": "succeeded", "manifest": prefix + "_manifest.json"}
    # its staging container went with it; no input's manifest or completion was disturbed
    assert not world.blob_service.get_container_client(summary.staging_container(world.gw, job_id)).exists()
    assert world.manifest("a.txt") == manifests["a.txt"]
