"""The whole pipeline through the real SDKs: Azurite for storage, the emulator for Batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from azure.batch import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from local.stack import Azurite, Emulator
from shared.collect import collect
from shared.models import CompletionEvent
from shared.submit import submit_blob, sweep
from tests.integration.pipeline_world import PipelineWorld, make_pipeline_world

pytestmark = pytest.mark.integration


@pytest.fixture
def world(tmp_path: Path, azurite: Azurite, emulator: Emulator, namespace: str) -> PipelineWorld:
    return make_pipeline_world(tmp_path, azurite, emulator, namespace)


def batch_client(emulator: Emulator) -> BatchClient:
    return BatchClient(emulator.url, AzureNamedKeyCredential(emulator.account_name, emulator.account_key))


def test_three_files_become_three_succeeded_manifests(world: PipelineWorld) -> None:
    names = ["a.txt", "dir/b c.txt", "ünï ☃.csv"]
    for name in names:
        world.drop(name, f"content of {name}\n".encode())
    assert sweep(world.gw).submitted == 3
    manifests = world.run_until_manifests(names)
    for name in names:
        manifest = manifests[name]
        assert manifest["status"] == "succeeded", manifest
        assert manifest["exit_code"] == 0
        assert manifest["outputs"] == [f"{name}/nested/upper.txt", f"{name}/report.json"]
        report = world.container("results").download_blob(f"{name}/report.json").readall()
        assert json.loads(report)["bytes"] == len(f"content of {name}\n".encode())
        stdout = world.container("results").download_blob(str(manifest["stdout"])).readall()
        assert stdout.startswith(b"processed")


def test_failing_task_publishes_failed_manifest_with_stderr(world: PipelineWorld) -> None:
    world.drop("bad.txt", b"#fail please\n")
    sweep(world.gw)
    manifest = world.run_until_manifests(["bad.txt"])["bad.txt"]
    assert manifest["status"] == "failed"
    assert manifest["exit_code"] == 3
    assert "it asks to fail" in str(manifest["stderr_tail"])
    stderr = world.container("results").download_blob(str(manifest["stderr"])).readall()
    assert b"refusing bad.txt" in stderr


# Names with "." or ".." segments cannot be created at all (storage normalises the URL); "..x/..y" stands in.
HOSTILE = ["; rm -rf ~", "$(touch pwned)", "`touch pwned2`", 'it\'s "q".txt', "-rf", "..x/..y", "sp ace", "ü ☃"]


def test_hostile_names_are_processed_and_nothing_reaches_a_shell(world: PipelineWorld, tmp_path: Path) -> None:
    for name in HOSTILE:
        world.drop(name, b"payload\n")
    stored = [blob.name for blob in world.container("input").list_blobs()]
    sweep(world.gw)
    manifests = world.run_until_manifests(stored)
    assert {m["status"] for m in manifests.values()} == {"succeeded"}
    assert not list(Path(".").glob("pwned*")) and not list(tmp_path.glob("pwned*"))


def test_event_and_sweep_for_the_same_upload_make_one_task(world: PipelineWorld) -> None:
    world.drop("once.txt", b"1\n")
    first = submit_blob(world.gw, world.names["input"], "once.txt")
    again = submit_blob(world.gw, world.names["input"], "once.txt")
    sweep(world.gw)
    assert again.action == "duplicate"
    tasks = list(batch_client(world.emulator).list_tasks(first.job_id))
    assert [task.id for task in tasks] == [first.task_id]
    world.run_until_manifests(["once.txt"])
    result = collect(world.gw, CompletionEvent(first.job_id, first.task_id))
    assert result.action == "already-published"


def test_sweep_with_nothing_new_makes_no_batch_requests(world: PipelineWorld) -> None:
    world.drop("x.txt", b"x")
    sweep(world.gw)
    world.emulator.reset_stats()
    sweep(world.gw)
    assert world.emulator.stats()["total"] == 0


def test_empty_and_longest_names_are_processed(world: PipelineWorld) -> None:
    longest = "deep/" + "n" * 1019
    assert len(longest) == 1024
    world.drop("empty.bin", b"")
    world.drop(longest, b"long")
    sweep(world.gw)
    manifests = world.run_until_manifests(["empty.bin", longest])
    assert manifests["empty.bin"]["status"] == "succeeded"
    report = world.container("results").download_blob("empty.bin/report.json").readall()
    assert json.loads(report)["bytes"] == 0
    assert manifests[longest]["status"] == "succeeded" and manifests[longest]["input"] == longest
    assert all(str(name).startswith("_long-names/") for name in manifests[longest]["outputs"])  # type: ignore[union-attr]


def test_input_deleted_before_its_task_runs_fails_with_the_reason(world: PipelineWorld) -> None:
    from azure.batch import models as batch_models

    pipeline = world.gw.pipelines.pipelines[0]
    idle_pool = pipeline.pool.model_copy(update={"dedicated_nodes": 0})
    # The app's own gateway creates the pool: it has then checked it, and does not resize it to the file's spec
    world.gw.batch.ensure_pool(idle_pool)  # no node yet: the task waits
    world.drop("vanishing.txt", b"soon gone")
    submit_blob(world.gw, world.names["input"], "vanishing.txt")
    world.container("input").delete_blob("vanishing.txt")
    batch_client(world.emulator).begin_resize_pool(
        pipeline.pool.id, batch_models.BatchPoolResizeOptions(target_dedicated_nodes=1), polling_interval=1
    ).result()
    manifest = world.run_until_manifests(["vanishing.txt"])["vanishing.txt"]
    assert manifest["status"] == "failed"
    failure = manifest["failure"]
    assert isinstance(failure, dict) and failure["category"].lower() == "usererror"
    assert failure["code"] == "BlobNotFound"
    assert failure["details"]["FilePath"] == "input/vanishing.txt"
    assert "sig=" not in json.dumps(manifest)  # the reason is shown, the SAS signature is not
