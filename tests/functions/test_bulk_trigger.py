"""The bulk Event Grid endpoint `ingest_events` called with real azure.functions requests, over the fakes; and
both Event Grid paths (bulk and `ingest_event`) taking the blob's version from the event."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.functions import meta
from azure.functions.eventgrid import EventGridEventInConverter

from shared import ids
from shared.triggers import boundary, bulk, ingest
from tests.functions.test_blueprints import user_function
from tests.unit.fakes import World, make_world
from tests.unit.test_bulk_ingest import as_uploaded, event


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    world = make_world(tmp_path)
    monkeypatch.setattr(boundary, "gateways", lambda: world.gw)
    return world


def call(body: Any, event_type: str = "Notification", method: str = "POST",
         headers: dict[str, str] | None = None) -> func.HttpResponse:  # fmt: skip
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = func.HttpRequest(method=method, url="http://127.0.0.1/api/events/input", body=data,
                               headers={"aeg-event-type": event_type, **(headers or {})})  # fmt: skip
    response: func.HttpResponse = user_function(bulk.bp, "ingest_events")(request)
    return response


def test_the_route_is_events_input_post_with_a_function_key() -> None:
    (builder,) = bulk.bp._function_builders
    (binding,) = [b for b in builder.build().get_bindings() if b.type == "httpTrigger"]
    assert binding.route == "events/input" and "POST" in [str(method.value) for method in binding.methods]
    assert binding.auth_level == func.AuthLevel.FUNCTION


def test_validation_handshake_answers_the_code(world: World) -> None:
    validation = [{"id": "v1", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
                   "data": {"validationCode": "code-123"}}]  # fmt: skip
    response = call(validation, "SubscriptionValidation")
    assert response.status_code == 200
    assert json.loads(response.get_body()) == {"validationResponse": "code-123"}
    assert world.batch.all_tasks() == []


def test_cloud_events_abuse_protection_allows_the_asking_origin(world: World) -> None:
    response = call(b"", method="OPTIONS", headers={"WebHook-Request-Origin": "eventgrid.azure.net"})
    assert response.status_code == 200
    assert response.headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"


def test_a_batch_is_submitted_and_answered_200_with_what_it_came_to(world: World) -> None:
    for name in ("a.txt", "b.txt"):
        world.blobs.put("input", name)
    response = call([event("a.txt"), event("b.txt"), event("a.txt", "evt-again")])
    assert response.status_code == 200
    report = json.loads(response.get_body())
    assert (report["submitted"], report["repeated"]) == (2, 1)
    assert world.batch.requests["Task_AddCollection"] == 1


def test_a_body_that_is_no_event_array_is_a_400_naming_it_and_recorded(world: World) -> None:
    response = call({"hello": "world"})
    assert response.status_code == 400
    assert "expected an array of events" in json.loads(response.get_body())["error"]
    (rejection,) = world.ledger.rejections()
    assert rejection["input"] == "Event Grid delivery to events/input"
    assert "expected an array of events" in rejection["reason"]


def test_a_batch_outage_is_a_503_so_event_grid_delivers_again(world: World) -> None:
    world.blobs.put("input", "a.txt")
    world.batch.unavailable_status = 503
    response = call([event("a.txt")])
    assert response.status_code == 503
    assert world.ledger.rejections() == []


def trigger_event(document: dict[str, Any]) -> func.EventGridEvent:
    """What the Functions worker hands `ingest_event` for an Event Grid schema event (its own converter)."""
    datum = meta.Datum(json.dumps(document), "json")
    converted: func.EventGridEvent = EventGridEventInConverter.decode(datum, trigger_metadata=None)
    return converted


@pytest.mark.parametrize("path", ["ingest_event", "ingest_events"])
def test_both_event_paths_take_the_version_from_the_event_not_from_storage(world: World, path: str) -> None:
    blob = world.blobs.put("input", "a.txt")
    window = world.gw.settings.job_window_minutes
    earlier = world.clock() - timedelta(minutes=2 * window)
    document = as_uploaded(world, "a.txt")
    document["eventTime"] = earlier.isoformat().replace("+00:00", "Z")
    if path == "ingest_event":
        user_function(ingest.bp, "ingest_event")(trigger_event(document))
    else:
        assert call([document]).status_code == 200
    assert world.blobs.property_reads == 0
    task = ids.task_id("input", "a.txt", blob.etag)
    assert world.batch.all_tasks() == [(ids.job_id("report", earlier, window), task)]


def test_the_single_event_trigger_without_an_etag_reads_the_blob_and_records_a_missing_one(world: World) -> None:
    user_function(ingest.bp, "ingest_event")(trigger_event(event("ghost.txt")))
    assert world.blobs.property_reads == 1
    assert "input/ghost.txt: no such blob" in world.ledger.rejections()[0]["reason"]
    assert world.batch.all_tasks() == []
