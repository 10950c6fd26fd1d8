"""Bulk ingestion end to end: Event Grid batches POSTed to `/api/events/input` on the dev host, claimed in Azurite's
table, submitted to the Batch emulator through the real SDK; Batch requests counted by the emulator itself."""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from azure.batch import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from local.stack import Azurite, Emulator, Service, start_host
from shared import ids
from shared.models import InputState
from tests.eventgrid import blob_created
from tests.integration.pipeline_world import PipelineWorld, make_pipeline_world

pytestmark = pytest.mark.integration
TASK_REQUESTS = ("Task_Add", "Task_AddCollection")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, azurite: Azurite, emulator: Emulator) -> PipelineWorld:
    """Pipelines `a/…` and `b/…` on a pool with no node (their tasks wait, so nothing runs and only the requests
    are counted), and `run/…` on a pool with one node, for an input that goes all the way to collected."""
    namespace = uuid.uuid4().hex[:8]
    workdir = tmp_path_factory.mktemp("bulk")
    command = "/bin/sh -c 'mkdir -p out && cp {input} out/copy'"
    idle = {"id": f"idle-{namespace}", "dedicated_nodes": 0}
    pipelines = [
        {"name": f"a-{namespace}", "match": {"prefix": "a/"}, "command": command, "outputs": ["**/*"], "pool": idle},
        {"name": f"b-{namespace}", "match": {"prefix": "b/"}, "command": command, "outputs": ["**/*"], "pool": idle},
        {"name": f"run-{namespace}", "match": {"prefix": "run/"}, "command": command, "outputs": ["**/*"],
         "pool": {"id": f"run-{namespace}", "dedicated_nodes": 1, "task_slots_per_node": 2}},
    ]  # fmt: skip
    pipelines_file = workdir / "bulk-pipelines.json"  # make_pipeline_world writes its own pipelines.json
    pipelines_file.write_text(json.dumps({"pipelines": pipelines}))
    return make_pipeline_world(workdir, azurite, emulator, namespace, BATCHDROP_PIPELINES_FILE=str(pipelines_file))


@pytest.fixture(scope="module")
def host(world: PipelineWorld, tmp_path_factory: pytest.TempPathFactory, azurite: Azurite) -> Iterator[Service]:
    settings = world.gw.settings
    env = {
        "BatchdropStorage": azurite.connection_string,
        "AzureWebJobsStorage": azurite.connection_string,
        "BATCHDROP_BATCH_URL": world.emulator.url,
        "BATCHDROP_BATCH_ACCOUNT_NAME": world.emulator.account_name,
        "BATCHDROP_BATCH_ACCOUNT_KEY": world.emulator.account_key,
        "BATCHDROP_PIPELINES_FILE": str(settings.pipelines_file),
        "BATCHDROP_INPUT_CONTAINER": world.names["input"],
        "BATCHDROP_APPS_CONTAINER": world.names["apps"],
        "BATCHDROP_STAGING_PREFIX": world.names["staging"],
        "BATCHDROP_RESULTS_CONTAINER": world.names["results"],
        "BATCHDROP_COMPLETIONS_QUEUE": world.names["queue"],
        "BATCHDROP_LEDGER_TABLE": world.names["table"],
    }
    service = start_host(tmp_path_factory.mktemp("bulk-host"), "tests.integration.bulk_app:app", env)
    try:
        yield service
    finally:
        service.stop()


def post(host: Service, body: Any, event_type: str = "Notification", method: str = "POST",
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:  # fmt: skip
    """One delivery to the bulk endpoint, as Event Grid makes it: status, JSON body, headers."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"aeg-event-type": event_type, "Content-Type": "application/json", **(headers or {})}
    request = urllib.request.Request(f"{host.url}/api/events/input", data=data if method == "POST" else None,
                                     method=method, headers=headers)  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            text = response.read()
            return response.status, json.loads(text) if text else {}, dict(response.headers.items())
    except urllib.error.HTTPError as error:
        text = error.read()
        return error.code, json.loads(text) if text else {}, dict(error.headers.items())


def events_for(world: PipelineWorld, names: list[str], account: str = "devstoreaccount1") -> list[dict[str, Any]]:
    endpoint = world.gw.settings.storage_connection_string or ""
    blob_endpoint = next(part.split("=", 1)[1] for part in endpoint.split(";") if part.startswith("BlobEndpoint="))
    return [blob_created(blob_endpoint, world.names["input"], name, f"evt-{name}", account) for name in names]


def drop(world: PipelineWorld, names: list[str]) -> None:
    for name in names:
        world.drop(name, f"data of {name}\n".encode())


def task_requests(world: PipelineWorld) -> dict[str, int]:
    requests = world.emulator.stats()["requests"]
    assert isinstance(requests, dict)
    return {operation: int(requests.get(operation, 0)) for operation in TASK_REQUESTS}


def requests_since(world: PipelineWorld, before: dict[str, int]) -> dict[str, int]:
    now = task_requests(world)
    return {operation: now[operation] - before[operation] for operation in TASK_REQUESTS}


def tasks_of(world: PipelineWorld, pipeline_prefix: str) -> list[str]:
    client = BatchClient(world.emulator.url,
                         AzureNamedKeyCredential(world.emulator.account_name, world.emulator.account_key))  # fmt: skip
    namespace = world.names["table"][len("ledger"):]
    jobs = [job.id for job in client.list_jobs(filter=f"startswith(id,'{pipeline_prefix}-{namespace}')")]
    return [task.id for job in jobs for task in client.list_tasks(job, select=["id"])]


def test_the_validation_handshake_answers_the_code(host: Service) -> None:
    validation = [{"id": "v1", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent", "subject": "",
                   "data": {"validationCode": "0b1c2d3e"}, "dataVersion": "1"}]  # fmt: skip
    status, body, _ = post(host, validation, "SubscriptionValidation")
    assert (status, body) == (200, {"validationResponse": "0b1c2d3e"})


def test_the_cloud_events_handshake_allows_the_origin(host: Service) -> None:
    status, _, headers = post(host, b"", method="OPTIONS", headers={"WebHook-Request-Origin": "eventgrid.azure.net"})
    assert status == 200
    assert {key.lower(): value for key, value in headers.items()}["webhook-allowed-origin"] == "eventgrid.azure.net"


def test_a_batch_of_100_events_becomes_one_add_collection(world: PipelineWorld, host: Service) -> None:
    names = [f"a/hundred/{index:03}.txt" for index in range(100)]
    drop(world, names)
    post(host, events_for(world, ["a/hundred/000.txt"]))  # pool and job exist from here on
    tasks_before = len(tasks_of(world, "a"))
    before = task_requests(world)
    status, report, _ = post(host, events_for(world, names))
    assert status == 200, report
    assert report["submitted"] == 99 and report["duplicate"] == 1
    assert requests_since(world, before) == {"Task_Add": 0, "Task_AddCollection": 1}
    assert len(tasks_of(world, "a")) - tasks_before == 99


def test_250_events_for_two_jobs_go_in_per_job_chunks_of_at_most_100(world: PipelineWorld, host: Service) -> None:
    names = [f"a/mixed/{index:03}.txt" for index in range(150)] + [f"b/mixed/{index:03}.txt" for index in range(100)]
    drop(world, names)
    events = events_for(world, names)
    random.Random(11).shuffle(events)  # noqa: S311  (a fixed order to repeat)
    before_b = len(tasks_of(world, "b"))
    before = task_requests(world)
    status, report, _ = post(host, events)
    assert status == 200, report
    assert report["submitted"] == 250
    # 150 of job a: 100 + 50; 100 of job b: 100 (its first request also makes job b, not counted here)
    assert requests_since(world, before) == {"Task_Add": 0, "Task_AddCollection": 3}
    assert len(tasks_of(world, "b")) - before_b == 100


def test_the_same_batch_twice_and_shuffled_makes_no_duplicate_task(world: PipelineWorld, host: Service) -> None:
    names = [f"b/twice/{index:03}.txt" for index in range(60)]
    drop(world, names)
    events = events_for(world, names) * 2
    random.Random(12).shuffle(events)  # noqa: S311
    status, first, _ = post(host, events)
    assert status == 200 and (first["submitted"], first["repeated"]) == (60, 60), first
    before = task_requests(world)
    random.Random(13).shuffle(events)  # noqa: S311
    status, again, _ = post(host, events)
    assert status == 200 and (again["submitted"], again["duplicate"]) == (0, 60), again
    assert requests_since(world, before) == {"Task_Add": 0, "Task_AddCollection": 0}
    tasks = tasks_of(world, "b")
    assert len(tasks) == len(set(tasks))
    rows = [row for row in world.gw.ledger.inputs() if row.name.startswith("b/twice/")]
    assert len(rows) == 60 and {row.state for row in rows} == {InputState.SUBMITTED}


def test_foreign_and_collected_inputs_cost_no_batch_request(world: PipelineWorld, host: Service) -> None:
    drop(world, ["run/done.txt", "a/theirs.txt"])
    status, report, _ = post(host, events_for(world, ["run/done.txt"]))
    assert status == 200 and report["submitted"] == 1
    world.run_until_manifests(["run/done.txt"])
    before = task_requests(world)
    foreign = events_for(world, ["a/theirs.txt"], account="elsewhere")
    missing = events_for(world, ["a/never-uploaded.txt"])  # no eTag: looked up, and refused
    deleted = [{**events_for(world, ["a/gone.txt"])[0], "eventType": "Microsoft.Storage.BlobDeleted"}]
    status, report, _ = post(host, events_for(world, ["run/done.txt"]) * 2 + foreign + missing + deleted)
    assert status == 200, report
    assert (report["duplicate"], report["repeated"], report["rejected"], report["ignored"]) == (1, 1, 2, 1)
    assert requests_since(world, before) == {"Task_Add": 0, "Task_AddCollection": 0}
    reasons = {row["input"]: row["reason"] for row in world.gw.ledger.rejections()}
    assert "storage account 'elsewhere'" in reasons["event evt-a/theirs.txt"]
    assert "no such blob" in reasons["event evt-a/never-uploaded.txt"]


def test_a_body_that_is_no_event_array_is_a_400_naming_the_problem(world: PipelineWorld, host: Service) -> None:
    status, body, _ = post(host, {"id": "e", "eventType": "Microsoft.Storage.BlobCreated"})
    assert status == 400
    assert "expected an array of events" in body["error"]
    reasons = [row["reason"] for row in world.gw.ledger.rejections() if row["input"].startswith("Event Grid delivery")]
    assert any("expected an array of events" in reason for reason in reasons)


def test_a_single_event_reaches_batch_when_its_delivery_returns(world: PipelineWorld, host: Service) -> None:
    drop(world, ["b/alone.txt"])
    before = task_requests(world)
    status, report, _ = post(host, events_for(world, ["b/alone.txt"]))
    assert status == 200 and report["submitted"] == 1
    assert requests_since(world, before) == {"Task_Add": 0, "Task_AddCollection": 1}
    assert any(task.startswith("alone-txt-") for task in tasks_of(world, "b"))


def with_version(event: dict[str, Any], etag: str, written: datetime) -> dict[str, Any]:
    """The event as Event Grid raises it: data.eTag (bare, as Azure sends it) and eventTime."""
    event["data"] = {**event["data"], "eTag": etag.strip('"'), "contentLength": 1}
    return {**event, "eventTime": written.isoformat().replace("+00:00", "Z")}


def test_an_event_with_an_etag_is_trusted_and_a_blob_gone_meanwhile_gets_a_failed_manifest(
    world: PipelineWorld, host: Service
) -> None:
    """The event's eTag and time stand for the blob (no Get Blob Properties): a blob that exists runs as usual,
    under the task the sweep derives from its listing; one that does not is not refused at ingest, its task fails
    downloading the input, and collect publishes that failure."""
    drop(world, ["run/versioned.txt"])
    properties = world.container("input").get_blob_client("run/versioned.txt").get_blob_properties()
    present = with_version(events_for(world, ["run/versioned.txt"])[0], properties.etag, properties.creation_time)
    gone = with_version(events_for(world, ["run/never-uploaded.txt"])[0], "0x8DDEADBEEF00000", datetime.now(UTC))
    status, report, _ = post(host, [present, gone])
    assert status == 200 and (report["submitted"], report["rejected"]) == (2, 0), report
    manifests = world.run_until_manifests(["run/versioned.txt", "run/never-uploaded.txt"])
    ok, failed = manifests["run/versioned.txt"], manifests["run/never-uploaded.txt"]
    assert ok["status"] == "succeeded" and ok["input_etag"] == properties.etag.strip('"')
    # The sweep's task for it: ids.task_id of the listed (quoted) etag; the event's bare one maps to the same.
    assert ok["task_id"] == ids.task_id(world.names["input"], "run/versioned.txt", properties.etag)
    assert failed["status"] == "failed" and failed["input_etag"] == "0x8DDEADBEEF00000"
    failure = failed["failure"]
    assert isinstance(failure, dict) and failure["code"] == "BlobNotFound", failure
