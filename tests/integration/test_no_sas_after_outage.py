"""Storage goes away while a node downloads a task's input: the failure is told, the SAS is not.

Every manifest, ledger row and log line is scanned for a signature afterwards. This test runs its own Azurite,
because it stops it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.batch import BatchClient
from azure.batch import models as batch_models
from azure.core.credentials import AzureNamedKeyCredential
from azure.data.tables import TableServiceClient

from local.stack import Azurite, Emulator, free_port, start_azurite
from shared import collect as collect_module
from shared.submit import submit_blob
from tests.integration.pipeline_world import make_pipeline_world
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def own_azurite(tmp_path: Path) -> Iterator[tuple[Azurite, Path]]:
    workdir = tmp_path / "own-azurite"
    server = start_azurite(workdir, ports=(free_port(), free_port(), free_port()))
    yield server, workdir
    server.stop(timeout=3)


def test_a_download_during_a_storage_outage_leaves_no_signature_anywhere(
    tmp_path: Path,
    own_azurite: tuple[Azurite, Path],
    emulator: Emulator,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    azurite, workdir = own_azurite
    world = make_pipeline_world(tmp_path, azurite, emulator, namespace)
    batch = BatchClient(emulator.url, AzureNamedKeyCredential(emulator.account_name, emulator.account_key))
    pipeline = world.gw.pipelines.pipelines[0]
    # The app's own gateway creates the pool: it has then checked it, and does not resize it to the file's spec
    world.gw.batch.ensure_pool(pipeline.pool.model_copy(update={"dedicated_nodes": 0}))  # the task waits
    world.drop("a.txt", b"hello")
    submitted = submit_blob(world.gw, world.names["input"], "a.txt")

    azurite.stop(timeout=10)  # storage is gone before any node downloads the input
    batch.begin_resize_pool(
        pipeline.pool.id, batch_models.BatchPoolResizeOptions(target_dedicated_nodes=1), polling_interval=1
    ).result()
    wait_until(
        lambda: batch.get_task(submitted.job_id, submitted.task_id).state == batch_models.BatchTaskState.COMPLETED,
        120,
        what="the task to fail its download",
    )
    task = batch.get_task(submitted.job_id, submitted.task_id)
    assert task.execution_info is not None and task.execution_info.failure_info is not None
    failure_info = task.execution_info.failure_info
    assert (failure_info.category, failure_info.code) == ("servererror", "BlobDownloadMiscError")

    restarted = start_azurite(workdir, ports=(azurite.blob_port, azurite.queue_port, azurite.table_port))
    try:
        monkeypatch.setattr(collect_module, "MAX_REACTIVATIONS", 0)  # publish the failure instead of a rerun
        with caplog.at_level(logging.DEBUG):
            manifest = world.run_until_manifests(["a.txt"])["a.txt"]
        assert manifest["status"] == "failed"
        assert isinstance(manifest["failure"], dict) and manifest["failure"]["code"] == "BlobDownloadMiscError"

        tables = TableServiceClient.from_connection_string(restarted.connection_string)
        ledger_rows = list(tables.get_table_client(world.names["table"]).list_entities())
        assert ledger_rows
        everything = {
            "manifest": json.dumps(manifest),
            "ledger": json.dumps(ledger_rows, default=str),
            # the task's own definition holds its resource files' SAS URLs by design; what it reports must not
            "batch failure info": json.dumps(failure_info.as_dict(), default=str),
            "logs": caplog.text,
            "emulator log": emulator.log_path.read_text(errors="replace"),
        }
        leaked = [where for where, text in everything.items() if "sig=" in text.replace("sig=REDACTED", "")]
        assert leaked == []
    finally:
        restarted.stop(timeout=3)
