"""Each blueprint's function called with real azure.functions binding objects, over in-memory fakes."""

import json
from datetime import UTC, datetime
from pathlib import Path

import azure.functions as func
import pytest
from azure.functions.queue import QueueMessage
from azure.functions.timer import TimerRequest
from azure.storage.blob import BlobClient

from shared import ids
from shared.triggers import api, boundary, bulk, collector, ingest, rerun, timers
from tests.unit.fakes import World, make_world


def user_function(blueprint: func.Blueprint, name: str):  # type: ignore[no-untyped-def]
    for builder in blueprint._function_builders:
        function = builder.build()
        if function.get_function_name() == name:
            return function.get_user_function()
    raise AssertionError(f"no function {name}")


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    world = make_world(tmp_path)
    monkeypatch.setattr(boundary, "gateways", lambda: world.gw)
    return world


def blob_created(
    name: str, event_type: str = "Microsoft.Storage.BlobCreated", account: str = "devstoreaccount1"
) -> func.EventGridEvent:
    """A BlobCreated event as Event Grid sends it for Azurite's path-style URLs (the world's storage account)."""
    return func.EventGridEvent(
        id="evt-1",
        data={"url": f"http://127.0.0.1:10000/{account}/input/{name}", "api": "PutBlob"},
        topic=f"/subscriptions/x/resourceGroups/y/providers/Microsoft.Storage/storageAccounts/{account}",
        subject=f"/blobServices/default/containers/input/blobs/{name}",
        event_type=event_type,
        event_time=datetime.now(UTC),
        data_version="",
    )


def test_blob_trigger_and_event_grid_share_one_task(world: World) -> None:
    world.blobs.put("input", "dir/a b.txt")
    # What the worker passes for the SDK-typed trigger: a BlobClient (no content), as the extension builds it.
    client = BlobClient.from_blob_url("https://acct.blob.core.windows.net/input/dir/a%20b.txt")
    user_function(ingest.bp, "ingest")(client)
    user_function(ingest.bp, "ingest_event")(blob_created("dir/a%20b.txt"))
    assert len(world.batch.all_tasks()) == 1


def test_other_event_types_are_ignored(world: World) -> None:
    world.blobs.put("input", "a.txt")
    user_function(ingest.bp, "ingest_event")(blob_created("a.txt", "Microsoft.Storage.BlobDeleted"))
    assert world.batch.all_tasks() == []
    assert world.ledger.rejections() == []


def test_forged_event_is_recorded_not_raised(world: World) -> None:
    user_function(ingest.bp, "ingest_event")(blob_created("ghost.txt"))
    assert "no such blob" in world.ledger.rejections()[0]["reason"]


def test_event_from_another_storage_account_is_refused_and_recorded(world: World) -> None:
    world.blobs.put("input", "a.txt")  # a blob of the same name exists in our account: still not ours to run
    user_function(ingest.bp, "ingest_event")(blob_created("a.txt", account="elsewhere"))
    assert world.batch.all_tasks() == []
    (rejection,) = world.ledger.rejections()
    assert rejection["input"] == "event evt-1"
    assert "storage account 'elsewhere', not this app's account 'devstoreaccount1'" in rejection["reason"]


def test_event_without_url_or_subject_is_recorded(world: World) -> None:
    event = func.EventGridEvent(
        id="evt-9", data={}, topic="t", subject="", event_type="Microsoft.Storage.BlobCreated",
        event_time=None, data_version="",
    )  # fmt: skip
    user_function(ingest.bp, "ingest_event")(event)
    assert "neither data.url nor subject" in world.ledger.rejections()[0]["reason"]


def test_sweep_poll_collect_through_their_triggers(world: World) -> None:
    world.blobs.put("input", "a.txt")
    timer = TimerRequest(past_due=False)
    user_function(timers.bp, "sweep")(timer)
    ((job_id, task_id),) = world.batch.all_tasks()
    world.blobs.put(ids.staging_container("staging", task_id), "out/report.json", b"{}")
    world.batch.finish(job_id, task_id)
    user_function(timers.bp, "poll")(timer)
    event = world.queue.drain()[0]
    body = json.dumps({"job_id": event.job_id, "task_id": event.task_id}).encode()
    message = QueueMessage(id="m1", body=body, dequeue_count=1)
    user_function(collector.bp, "collect")(message)
    manifest = json.loads(world.blobs.text("results", "a.txt/_manifest.json"))
    assert manifest["status"] == "succeeded" and manifest["outputs"] == ["a.txt/report.json"]


def test_malformed_queue_message_is_recorded_with_its_reason(world: World) -> None:
    user_function(collector.bp, "collect")(QueueMessage(id="m2", body=b"{nope", dequeue_count=1))
    rejection = world.ledger.rejections()[0]
    assert rejection["input"] == "completions message m2"
    assert "not JSON" in rejection["reason"]


def test_unfinished_task_message_raises_so_the_queue_retries(world: World) -> None:
    world.blobs.put("input", "a.txt")
    user_function(timers.bp, "sweep")(TimerRequest(past_due=False))
    ((job_id, task_id),) = world.batch.all_tasks()
    body = json.dumps({"job_id": job_id, "task_id": task_id}).encode()
    with pytest.raises(Exception, match="not completed"):
        user_function(collector.bp, "collect")(QueueMessage(id="m3", body=body, dequeue_count=1))


def test_status_route_returns_counts_as_json(world: World) -> None:
    world.blobs.put("input", "a.txt")
    user_function(timers.bp, "sweep")(TimerRequest(past_due=False))
    request = func.HttpRequest(method="GET", url="http://127.0.0.1/api/status", body=b"")
    response = user_function(api.bp, "status")(request)
    assert response.status_code == 200
    document = json.loads(response.get_body())
    assert document["totals"]["queued"] == 1
    assert document["pipelines"][0]["name"] == "report"


def test_every_http_route_requires_a_function_key() -> None:
    """On Azure the Functions host enforces the key; anonymous routes would publish the ledger's input names."""
    routes = {}
    for blueprint in (api.bp, bulk.bp, collector.bp, ingest.bp, timers.bp, rerun.bp):
        for builder in blueprint._function_builders:
            function = builder.build()
            for binding in function.get_bindings():
                if binding.type == "httpTrigger":
                    routes[function.get_function_name()] = binding.auth_level
    page = ("status_page", "recent_inputs", "result_link")  # the status page
    assert routes == dict.fromkeys(("status", "rerun", "ingest_events", *page), func.AuthLevel.FUNCTION)


def test_function_app_registers_every_function() -> None:
    import function_app

    functions = {f.get_function_name(): f for f in function_app.app.get_functions()}
    assert set(functions) == {
        "ingest", "ingest_event", "ingest_events", "sweep", "poll", "schedules", "collect", "status", "rerun",
        "status_page", "recent_inputs", "result_link", "task_finished", "recheck_task",
    }  # fmt: skip
    blob_binding = functions["ingest"].get_bindings()[0]
    assert blob_binding.path == "input/{name}" and blob_binding.source == "EventGrid"
    assert functions["collect"].get_bindings()[0].queue_name == "completions"
    assert functions["recheck_task"].get_bindings()[0].queue_name == "completion-checks"
    assert functions["task_finished"].get_bindings()[0].type == "eventGridTrigger"


def test_the_status_page_routes(world: World) -> None:
    page = user_function(api.bp, "status_page")(func.HttpRequest("GET", "http://127.0.0.1/api/page", body=b""))
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert "script-src 'nonce-" in page.headers["Content-Security-Policy"]
    recent = user_function(api.bp, "recent_inputs")
    bad = recent(func.HttpRequest("GET", "http://127.0.0.1/api/recent", body=b"", params={"state": "lost"}))
    assert bad.status_code == 400 and "state must be one of" in json.loads(bad.get_body())["error"]
    world.blobs.put("input", "a.txt")
    user_function(timers.bp, "sweep")(TimerRequest(past_due=False))
    listing = json.loads(recent(func.HttpRequest("GET", "http://127.0.0.1/api/recent", body=b"")).get_body())
    assert [(entry["name"], entry["state"]) for entry in listing["inputs"]] == [("a.txt", "queued")]
    link = user_function(api.bp, "result_link")
    world.blobs.put("results", "a.txt/report.json")
    found = link(func.HttpRequest("GET", "http://127.0.0.1/api/results/a.txt/report.json", body=b"",
                                  route_params={"path": "a.txt/report.json"}))  # fmt: skip
    assert found.status_code == 302 and "a.txt/report.json" in found.headers["Location"]
    missing = link(func.HttpRequest("GET", "http://127.0.0.1/api/results/a.txt/x", body=b"",
                                    route_params={"path": "a.txt/x"}))  # fmt: skip
    assert missing.status_code == 404
