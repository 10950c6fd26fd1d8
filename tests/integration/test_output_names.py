"""Output names a task chooses, against Azurite and the emulator: nothing lands outside its input's folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import ContainerClient

from local.stack import Azurite, Emulator
from shared import ids
from shared.submit import SubmitOutcome, submit_blob
from tests.integration.pipeline_world import PipelineWorld, make_pipeline_world

pytestmark = pytest.mark.integration


@pytest.fixture
def world(tmp_path: Path, azurite: Azurite, emulator: Emulator, namespace: str) -> PipelineWorld:
    return make_pipeline_world(tmp_path, azurite, emulator, namespace)


def task_writer(world: PipelineWorld, submitted: SubmitOutcome) -> ContainerClient:
    """What the task holds: a create/write SAS for its own staging container, nothing else."""
    staging = ids.staging_container(world.gw.settings.staging_prefix, submitted.task_id)
    return ContainerClient.from_container_url(world.gw.blobs.write_url(staging, 600))


def send_dots_encoded(request: Any) -> None:
    """Put '%2E%2E' on the wire where the SDK wrote '%252E%252E': storage decodes it after URL normalisation."""
    request.http_request.url = request.http_request.url.replace("%252E", "%2E")


def test_an_output_named_with_dot_segments_lands_nowhere_and_fails_the_manifest(world: PipelineWorld) -> None:
    world.drop("victim.txt", b"victim\n")
    submit_blob(world.gw, world.names["input"], "victim.txt")
    victim = world.run_until_manifests(["victim.txt"])["victim.txt"]
    victim_results = {blob.name: blob.etag for blob in world.container("results").list_blobs()}
    world.drop("a.txt", b"hello\n")
    submitted = submit_blob(world.gw, world.names["input"], "a.txt")
    writer = task_writer(world, submitted)
    writer.upload_blob(
        "out/%2E%2E/victim.txt/_manifest.json", b'{"status": "forged"}', raw_request_hook=send_dots_encoded
    )
    writer.upload_blob("out/sub/%2E%2E/%2E%2E/%2E%2E/top.txt", b"up", raw_request_hook=send_dots_encoded)
    staged = {blob.name for blob in world.blob_service.get_container_client(writer.container_name).list_blobs()}
    assert {"out/../victim.txt/_manifest.json", "out/sub/../../../top.txt"} <= staged  # stored as the task wrote

    manifest = world.run_until_manifests(["a.txt"])["a.txt"]

    assert manifest["status"] == "failed" and manifest["task_id"] == submitted.task_id
    failure = manifest["failure"]
    assert isinstance(failure, dict) and failure["code"] == "UnsafeOutputName"
    assert "out/../victim.txt/_manifest.json" in failure["message"] and "'..'" in failure["message"]
    assert sorted(manifest["refused_outputs"]) == ["out/../victim.txt/_manifest.json", "out/sub/../../../top.txt"]  # type: ignore[call-overload]
    assert manifest["outputs"] == ["a.txt/nested/upper.txt", "a.txt/report.json"]  # the real outputs
    results = {blob.name: blob.etag for blob in world.container("results").list_blobs()}
    assert {name: etag for name, etag in results.items() if not name.startswith("a.txt/")} == victim_results
    assert world.manifest("victim.txt") == victim
    assert sorted(name for name in results if name.startswith("a.txt/")) == [
        "a.txt/_logs/stderr.txt",
        "a.txt/_logs/stdout.txt",
        "a.txt/_manifest.json",
        "a.txt/nested/upper.txt",
        "a.txt/report.json",
    ]


def test_a_task_cannot_publish_its_own_manifest(world: PipelineWorld) -> None:
    world.drop("a.txt", b"hello\n")
    submitted = submit_blob(world.gw, world.names["input"], "a.txt")
    forged = {"task_id": submitted.task_id, "input": "a.txt", "status": "succeeded", "outputs": ["a.txt/forged"]}
    task_writer(world, submitted).upload_blob("out/_manifest.json", json.dumps(forged).encode())

    manifest = world.run_until_manifests(["a.txt"])["a.txt"]

    assert manifest["status"] == "failed"
    assert manifest["outputs"] == ["a.txt/nested/upper.txt", "a.txt/report.json"]
    assert list(manifest["refused_outputs"]) == ["out/_manifest.json"]  # type: ignore[call-overload]
    assert "'_manifest.json' is the name of batchdrop's manifests" in str(manifest["failure"])
