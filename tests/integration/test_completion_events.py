"""Completion events on Azurite and the Batch emulator: a staging container's stderr log → the result, at once.

Through the dev host (function_app.py unchanged, events posted to its Event Grid webhook, the poll never due):
the event alone publishes the result, with one Batch request; repeated and foreign events cost none. Through
the use cases over real gateways: the re-check path under the emulator's completion lag, and the poll still
collecting a task that uploaded no log.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from azure.batch import BatchClient
from azure.batch import models as m
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient

from local.stack import Azurite, Emulator, Service, app_settings, start_emulator, start_host
from shared import ids
from shared.collect import collect
from shared.events import BlobCreated
from shared.finished import FinishedAction, recheck, task_finished
from shared.ledger import TableLedger
from shared.messages import decode_check, decode_completion
from shared.models import InputState
from shared.submit import submit_blob
from tests.eventgrid import AZURITE_ACCOUNT, blob_created, post_events
from tests.integration.pipeline_world import APP, echo_pipelines, make_pipeline_world
from tests.waiting import wait_until

pytestmark = pytest.mark.integration
NEVER = "0 0 0 1 1 *"  # NCRONTAB: midnight on 1 January; no test runs then
LAG_SECONDS = 3


def batch_requests(emulator: Emulator) -> dict[str, int]:
    requests = emulator.stats()["requests"]
    assert isinstance(requests, dict)
    return {str(key): int(value) for key, value in requests.items()}


def total_requests(emulator: Emulator) -> int:
    return sum(batch_requests(emulator).values())


def wait_for_blob(service: BlobServiceClient, container: str, name: str, timeout: float = 90) -> None:
    blob = service.get_blob_client(container, name)

    def exists() -> bool:
        try:
            return bool(blob.get_blob_properties())
        except ResourceNotFoundError:
            return False

    wait_until(exists, timeout, interval=0.2, what=f"{container}/{name}")


# ---------------------------------------------------------------------- through the dev host, no poll


@dataclass
class HostWorld:
    host: Service
    azurite: Azurite
    emulator: Emulator
    service: BlobServiceClient
    names: dict[str, str]
    settings: dict[str, str]

    def staging(self, name: str) -> str:
        task_id = ids.task_id(self.names["input"], name, self.etag(name))
        return ids.staging_container(self.names["staging"], task_id)

    def etag(self, name: str) -> str:
        return str(self.service.get_blob_client(self.names["input"], name).get_blob_properties().etag)

    def event(self, container: str, name: str, event_id: str, account: str = AZURITE_ACCOUNT) -> dict[str, Any]:
        return blob_created(self.azurite.blob_endpoint, container, name, event_id, account)

    def post(self, events: list[dict[str, Any]], function: str = "task_finished") -> int:
        return post_events(self.host.url, events, function, timeout=60)

    def manifest(self, name: str) -> dict[str, Any] | None:
        blob = self.service.get_blob_client(self.names["results"], f"{ids.result_prefix(name)}_manifest.json")
        try:
            document: dict[str, Any] = json.loads(blob.download_blob().readall())
        except ResourceNotFoundError:
            return None
        return document

    def ledger(self) -> TableLedger:
        from azure.data.tables import TableClient

        return TableLedger(TableClient.from_connection_string(self.azurite.connection_string, self.names["table"]))


@pytest.fixture(scope="module")
def host_world(tmp_path_factory: pytest.TempPathFactory, azurite: Azurite, emulator: Emulator) -> Iterator[HostWorld]:
    """function_app.py under the dev host with the poll and the sweep never due. Its containers, staging prefix
    and table are its own; the queues are the app's fixed `completions` and `completion-checks`."""
    import uuid

    namespace = uuid.uuid4().hex[:8]
    workdir = tmp_path_factory.mktemp("completion-events")
    names = {
        "input": f"in-{namespace}",
        "apps": f"apps-{namespace}",
        "staging": f"fe{namespace}",
        "results": f"results-{namespace}",
        "table": f"finished{namespace}",
    }
    pipelines = echo_pipelines(namespace)
    pipelines_file = workdir / "pipelines.json"
    pipelines_file.write_text(json.dumps(pipelines))
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    for role in ("input", "apps", "results"):
        service.create_container(names[role])
    service.get_blob_client(names["apps"], "echo/app.py").upload_blob(APP.encode())
    settings = app_settings(azurite, emulator, {
        "BATCHDROP_PIPELINES_FILE": str(pipelines_file),
        "BATCHDROP_INPUT_CONTAINER": names["input"],
        "BATCHDROP_APPS_CONTAINER": names["apps"],
        "BATCHDROP_STAGING_PREFIX": names["staging"],
        "BATCHDROP_RESULTS_CONTAINER": names["results"],
        "BATCHDROP_LEDGER_TABLE": names["table"],
        "BATCHDROP_POLL_SCHEDULE": NEVER,
        "BATCHDROP_SWEEP_SCHEDULE": NEVER,
    })  # fmt: skip
    host = start_host(workdir, "function_app:app", settings)
    try:
        yield HostWorld(host, azurite, emulator, service, names, settings)
    finally:
        host.stop()


def test_a_completion_event_publishes_the_result_with_no_poll_running(host_world: HostWorld) -> None:
    world = host_world
    world.service.get_blob_client(world.names["input"], "a.txt").upload_blob(b"hello completion events\n")
    assert world.post([world.event(world.names["input"], "a.txt", "evt-in-a")], "ingest_event") == 202
    staging = world.staging("a.txt")
    wait_for_blob(world.service, staging, "logs/stderr.txt")
    record = world.ledger().input_for_staging(staging)
    assert record is not None and record.name == "a.txt"
    batch = BatchClient(world.emulator.url, AzureNamedKeyCredential(world.emulator.account_name,
                                                                    world.emulator.account_key))  # fmt: skip
    wait_until(lambda: batch.get_task(record.job_id, record.task_id).state == m.BatchTaskState.COMPLETED)
    before = batch_requests(world.emulator)

    assert world.post([world.event(staging, "logs/stderr.txt", "evt-done-a")]) == 202
    manifest = wait_until(lambda: world.manifest("a.txt"), 60, interval=0.2, what="the manifest of a.txt")
    assert manifest["status"] == "succeeded" and manifest["task_id"] == record.task_id
    after = batch_requests(world.emulator)
    spent = {operation: after[operation] - before.get(operation, 0) for operation in after}
    assert {operation: n for operation, n in spent.items() if n} == {"Task_Get": 1}
    # Nothing else could have published it: the poll never ran.
    with urllib.request.urlopen(f"{world.host.url}/admin/host/progress", timeout=10) as response:
        assert json.load(response)["timer_ticks"]["poll"] == 0


def test_repeated_and_foreign_events_cost_no_batch_request_and_foreign_ones_are_recorded(
    host_world: HostWorld,
) -> None:
    world = host_world
    world.service.get_blob_client(world.names["input"], "b.txt").upload_blob(b"b\n")
    assert world.post([world.event(world.names["input"], "b.txt", "evt-in-b")], "ingest_event") == 202
    staging = world.staging("b.txt")
    wait_for_blob(world.service, staging, "logs/stderr.txt")
    assert world.post([world.event(staging, "logs/stderr.txt", "evt-done-b")]) == 202
    wait_until(lambda: world.manifest("b.txt"), 60, interval=0.2, what="the manifest of b.txt")
    wait_until(lambda: (r := world.ledger().input_for_staging(staging)) is not None and r.state is InputState.COLLECTED)

    unknown = ids.staging_container(world.names["staging"], "never-submitted")
    deleted = dict(world.event(staging, "logs/stderr.txt", "evt-deleted"), eventType="Microsoft.Storage.BlobDeleted")
    before = total_requests(world.emulator)
    events = [
        world.event(staging, "logs/stderr.txt", "evt-done-b"),  # Event Grid's at-least-once: the same event again
        world.event(staging, "logs/stderr.txt", "evt-done-b-again"),
        world.event(staging, "logs/stderr.txt", "evt-elsewhere", account="otheraccount"),
        world.event(world.names["results"], "b.txt/logs/stderr.txt", "evt-results"),
        world.event(unknown, "logs/stderr.txt", "evt-unknown"),
        deleted,
    ]
    assert world.post(events) == 202
    assert total_requests(world.emulator) == before
    reasons = {row["input"]: row["reason"] for row in world.ledger().rejections()}
    assert "storage account 'otheraccount'" in reasons["event evt-elsewhere"]
    assert "is not in a staging container" in reasons["event evt-results"]
    assert "no input in the ledger has staging container" in reasons["event evt-unknown"]
    assert not {"event evt-done-b", "event evt-done-b-again", "event evt-deleted"} & set(reasons)


# ---------------------------------------------------------------------- through the use cases, real gateways


@pytest.fixture
def lagging_emulator(tmp_path: Path) -> Iterator[Emulator]:
    server = start_emulator(tmp_path, ["--completion-lag-seconds", str(LAG_SECONDS)])
    try:
        yield server
    finally:
        server.stop()


def stderr_created(staging: str) -> BlobCreated:
    return BlobCreated("evt-1", staging, "logs/stderr.txt", frozenset({AZURITE_ACCOUNT}))


def test_an_event_before_batch_says_completed_is_rechecked_later_then_collected(
    tmp_path: Path, azurite: Azurite, lagging_emulator: Emulator, namespace: str
) -> None:
    checks_queue = f"checks-{namespace}"
    world = make_pipeline_world(
        tmp_path, azurite, lagging_emulator, namespace,
        BATCHDROP_COMPLETION_CHECKS_QUEUE=checks_queue, BATCHDROP_COMPLETION_RECHECK_SECONDS=1,
        BATCHDROP_COMPLETION_RECHECK_MAX_SECONDS=2, BATCHDROP_COMPLETION_RECHECKS=20,
    )  # fmt: skip
    world.drop("a.txt", b"lagging\n")
    outcome = submit_blob(world.gw, world.names["input"], "a.txt")
    staging = ids.staging_container(world.names["staging"], outcome.task_id)
    wait_for_blob(world.blob_service, staging, "logs/stderr.txt")

    first = task_finished(world.gw, stderr_created(staging))
    # The log is in storage, Batch still says running (the emulator's completion lag): a delayed re-check.
    assert first.action is FinishedAction.RECHECK and first.delay_seconds == 1
    checks = QueueClient.from_connection_string(world.connection_string, checks_queue)
    completions = QueueClient.from_connection_string(world.connection_string, world.names["queue"])
    assert list(completions.peek_messages(max_messages=32)) == []
    actions = [first.action]

    def recheck_due() -> bool:
        for message in checks.receive_messages(messages_per_page=1, visibility_timeout=30):
            actions.append(recheck(world.gw, decode_check(message.content)).action)
            checks.delete_message(message)
        return actions[-1] is FinishedAction.ENQUEUED

    wait_until(recheck_due, 60, interval=0.2, what="a re-check to find the task completed")
    assert set(actions[1:-1]) <= {FinishedAction.RECHECK}
    assert batch_requests(lagging_emulator)["Task_Get"] == len(actions)  # one Batch read per look
    [message] = completions.receive_messages(messages_per_page=32)
    result = collect(world.gw, decode_completion(message.content))
    assert result.status == "succeeded"
    manifest = world.manifest("a.txt")
    assert manifest is not None and manifest["task_id"] == outcome.task_id


def test_a_task_that_uploads_no_log_is_still_collected_by_the_poll(
    tmp_path: Path, azurite: Azurite, emulator: Emulator, namespace: str
) -> None:
    world = make_pipeline_world(tmp_path, azurite, emulator, namespace)
    world.container("apps").delete_blob("echo/app.py")  # the node cannot download it: the task never runs
    world.drop("a.txt", b"no app\n")
    outcome = submit_blob(world.gw, world.names["input"], "a.txt")
    manifest = world.run_until_manifests(["a.txt"])["a.txt"]
    assert manifest["status"] == "failed" and manifest["task_id"] == outcome.task_id
    staging = ids.staging_container(world.names["staging"], outcome.task_id)
    uploaded = [blob.name for blob in world.blob_service.get_container_client(staging).list_blobs()]
    assert "logs/stderr.txt" not in uploaded  # no completion event could have come

