"""The local stack as `batchdrop up` starts it, with the local Event Grid in the path: uploads and the tasks' own
log uploads raise events (taken by task_finished), and events the dev host
could not take within the retry budget are dead-lettered and shown by `/api/status` and `batchdrop status`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import BlobServiceClient

from local import stack as local_stack
from local.cli.lifecycle import HOST_APP, start_local_stack
from local.cli.state import DEFAULT_PIPELINES
from local.cli.status import fetch_status, fetch_subscriptions, render_events
from tests.waiting import NotYet, wait_until

pytestmark = pytest.mark.e2e
INPUT_HOOK = "/runtime/webhooks/blobs?functionName=Host.Functions.ingest"


def _subscriptions(path: Path) -> Path:
    file = path / "subscriptions.json"
    staging = "/blobServices/default/containers/{BATCHDROP_STAGING_PREFIX}-"
    file.write_text(json.dumps({"subscriptions": [
        {"name": "batchdrop-input", "endpoint": INPUT_HOOK, "max_events_per_batch": 100,
         "subject_begins_with": "/blobServices/default/containers/{BATCHDROP_INPUT_CONTAINER}/blobs/",
         "max_delivery_attempts": 2},
        # The task-finished filter, delivered where this branch can take it (the blob webhook ignores, with a
        # 202, events for other containers than its trigger's): proves the tasks' SAS uploads raise events.
        {"name": "staging-logs", "endpoint": INPUT_HOOK, "subject_begins_with": staging,
         "subject_ends_with": "/logs/stderr.txt"},
        {"name": "batchdrop-task-finished", "endpoint": "/runtime/webhooks/EventGrid?functionName=task_finished",
         "subject_begins_with": staging, "subject_ends_with": "/logs/stderr.txt"},
    ]}))  # fmt: skip
    return file


def _by_name(grid: local_stack.EventGrid) -> dict[str, dict[str, Any]]:
    entries = fetch_subscriptions(grid.url) or []
    return {str(entry["name"]): entry for entry in entries}


def test_the_stack_runs_on_events_and_shows_dead_letters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(local_stack.SUBSCRIPTIONS_SETTING, str(_subscriptions(tmp_path)))
    running, info = start_local_stack(tmp_path / "stack", DEFAULT_PIPELINES, preferred_ports=False)
    try:
        grid = running.eventgrid
        assert grid is not None and info.processes["eventgrid"].pid == grid.pid
        inputs = BlobServiceClient.from_connection_string(info.storage_connection_string).get_container_client("input")
        inputs.upload_blob("hello.txt", b"hello events\n")
        results = BlobServiceClient.from_connection_string(info.storage_connection_string).get_container_client(
            "results")
        wait_until(lambda: results.get_blob_client("hello.txt/_manifest.json").exists(), 120, interval=0.5,
                   what="the manifest of hello.txt")
        state = wait_until(lambda: (s := _by_name(grid))["staging-logs"]["delivered"] >= 1 and s, 30,
                           what="the task's stderr upload as an event")
        assert state["batchdrop-input"]["delivered"] == 1
        # task_finished exists in the app: its subscription validated and took the task's stderr event.
        assert state["batchdrop-task-finished"]["provisioningState"] == "Succeeded"
        assert state["batchdrop-task-finished"]["delivered"] >= 1

        # The dev host is gone for longer than the retry budget (2 attempts): the upload's event is dead-lettered.
        assert running.host is not None
        host_port = int(running.host.url.rsplit(":", 1)[1])
        running.host.kill()
        inputs.upload_blob("while-down.txt", b"nobody listens\n")
        wait_until(lambda: _by_name(grid)["batchdrop-input"]["dead_lettered"] == 1, 30, what="a dead letter")

        settings = local_stack.app_settings(running.azurite, running.emulator,
                                            {"BATCHDROP_PIPELINES_FILE": str(DEFAULT_PIPELINES)}, grid)
        running.host = local_stack.start_host(tmp_path / "stack", HOST_APP, settings, port=host_port)

        def dead_letters() -> dict[str, Any] | NotYet:
            section = fetch_status(info.host_url)["event_dead_letters"]
            return section if section["blobs"] == 1 else NotYet(section)

        section = wait_until(dead_letters, 30, what="the dead letter in /api/status")
        assert section["by_subscription"] == {"BATCHDROP-INPUT": 1}
        text = "\n".join(render_events(fetch_status(info.host_url), fetch_subscriptions(grid.url)))
        assert "event dead letters: 1 blob(s) (BATCHDROP-INPUT 1) in container eventgrid-deadletter" in text
        assert "event subscription batchdrop-task-finished: Succeeded" in text
    finally:
        running.stop()
