"""Event Grid webhooks, in process: the handshake, deliveries reaching the function, and refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import AzureError

from local.host.bindings import FunctionSpec, read_functions
from local.host.invocation import Invoker
from local.host.settings import AppSettings
from local.host.storage import StorageAccounts
from local.host.webhooks import Webhooks, WebResponse
from tests.host import sample_app
from tests.host.conftest import read_records

EVENT_GRID = "/runtime/webhooks/EventGrid"
BLOBS = "/runtime/webhooks/blobs"


def blob_created(name: str) -> dict[str, Any]:
    return {
        "id": f"id-{name}",
        "eventType": "Microsoft.Storage.BlobCreated",
        "subject": f"/blobServices/default/containers/drop/blobs/{name}",
        "eventTime": "2026-11-24T10:00:00.1234567Z",
        "dataVersion": "",
        "topic": "/subscriptions/x",
        "data": {"api": "PutBlob", "url": f"http://127.0.0.1/devstoreaccount1/drop/{name}"},
    }


class Pushed:
    """Stands in for the blob dispatcher: remembers which blobs it was given."""

    def __init__(self) -> None:
        self.blobs: list[tuple[str, str, str]] = []

    def __call__(self, spec: FunctionSpec, blobs: list[tuple[str, str]]) -> list[AzureError | None]:
        self.blobs.extend((spec.name, container, name) for container, name in blobs)
        return [None] * len(blobs)


@pytest.fixture
def record_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SAMPLE_RECORD_DIR", str(tmp_path))
    return tmp_path


def webhooks(key: str | None = None, pushed: Pushed | None = None) -> Webhooks:
    settings = AppSettings(
        {
            "SAMPLE_CONTAINER": "drop",
            "SAMPLE_QUEUE": "work",
            "SAMPLE_SCHEDULE": "0 0 * * * *",
            "SampleStorage": "UseDevelopmentStorage=true",
        }
    )
    functions = read_functions(sample_app.build_app(), settings)
    return Webhooks(functions, Invoker(StorageAccounts(settings), "base64"), pushed or Pushed(), key)


def post(
    hooks: Webhooks, path: str, body: Any, event_type: str | None = "Notification", query: dict[str, str] | None = None
) -> WebResponse:
    headers = {"aeg-event-type": event_type} if event_type else {}
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return hooks.handle("POST", path, query if query is not None else {"functionName": "on_event"}, headers, raw)


def test_subscription_validation_returns_the_code(record_dir: Path) -> None:
    validation = [
        {
            "id": "v1",
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "subject": "",
            "data": {"validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"},
            "eventTime": "2026-11-24T10:00:00Z",
            "dataVersion": "2",
            "topic": "t",
        }
    ]
    response = post(webhooks(), EVENT_GRID, validation, "SubscriptionValidation")
    assert response.status == 200
    assert json.loads(response.body) == {"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}
    blob_response = post(
        webhooks(), BLOBS, validation, "SubscriptionValidation", {"functionName": "Host.Functions.on_pushed_blob"}
    )
    assert json.loads(blob_response.body) == {"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}
    assert read_records(record_dir, "on_event") == []


def test_notification_invokes_the_function_once_per_event(record_dir: Path) -> None:
    events = [blob_created("a.txt"), {**blob_created("b.txt"), "id": "second"}]
    response = post(webhooks(), EVENT_GRID, events)
    assert response.status == 202
    records = read_records(record_dir, "on_event")
    assert [record["id"] for record in records] == ["id-a.txt", "second"]
    assert records[0]["event_type"] == "Microsoft.Storage.BlobCreated"
    assert records[0]["subject"] == "/blobServices/default/containers/drop/blobs/a.txt"
    assert records[0]["topic"] == "/subscriptions/x"
    assert records[0]["data"]["api"] == "PutBlob"
    assert records[0]["event_time"].startswith("2026-11-24 10:00:00.123456")


def test_cloud_events_are_accepted(record_dir: Path) -> None:
    cloud_event = {
        "specversion": "1.0",
        "id": "ce-1",
        "type": "Microsoft.Storage.BlobCreated",
        "source": "/subscriptions/x/storage",
        "subject": "s",
        "time": "2026-11-24T10:00:00Z",
        "data": {"url": "u"},
    }
    assert post(webhooks(), EVENT_GRID, cloud_event).status == 202
    [record] = read_records(record_dir, "on_event")
    assert (record["id"], record["event_type"], record["topic"]) == (
        "ce-1",
        "Microsoft.Storage.BlobCreated",
        "/subscriptions/x/storage",
    )


def test_a_failing_function_is_a_500_so_event_grid_retries(record_dir: Path) -> None:
    events = [blob_created("ok.txt"), {**blob_created("bad.txt"), "data": {"fail": True}}]
    response = post(webhooks(), EVENT_GRID, events)
    assert response.status == 500
    assert "1 of 2 event(s) failed" in json.loads(response.body)["error"]


@pytest.mark.parametrize(
    ("body", "event_type", "status", "message"),
    [
        (b"{not json", "Notification", 400, "the body is not JSON"),
        ([], "Notification", 400, "empty array"),
        ([1, 2], "Notification", 400, "event 0 is not a JSON object"),
        ([{"eventType": "x"}], "Notification", 400, "event 0 has no string 'id'"),
        ([{"id": "1", "eventType": "x", "eventTime": "yesterday"}], "Notification", 400, "not an ISO 8601 time"),
        ([{"id": "1", "eventType": "x", "data": {}}], "SubscriptionValidation", 400, "no data.validationCode"),
        ([blob_created("a")], None, 400, "aeg-event-type must be"),
        ([blob_created("a")], "Unsubscribe", 400, "aeg-event-type must be"),
    ],
)
def test_malformed_deliveries_are_a_400_that_says_why(
    record_dir: Path, body: Any, event_type: str | None, status: int, message: str
) -> None:
    response = post(webhooks(), EVENT_GRID, body, event_type)
    assert response.status == status
    assert message in json.loads(response.body)["error"]
    assert read_records(record_dir, "on_event") == []


def test_the_webhook_key_is_required_when_set(record_dir: Path) -> None:
    hooks = webhooks(key="s3cret")
    events = [blob_created("a.txt")]
    assert post(hooks, EVENT_GRID, events, query={"functionName": "on_event"}).status == 401
    assert post(hooks, EVENT_GRID, events, query={"functionName": "on_event", "code": "wrong"}).status == 401
    assert read_records(record_dir, "on_event") == []
    assert post(hooks, EVENT_GRID, events, query={"functionName": "on_event", "code": "s3cret"}).status == 202
    assert len(read_records(record_dir, "on_event")) == 1


def test_unknown_functions_are_a_404(record_dir: Path) -> None:
    hooks = webhooks()
    assert post(hooks, EVENT_GRID, [blob_created("a")], query={"functionName": "nope"}).status == 404
    assert post(hooks, EVENT_GRID, [blob_created("a")], query={}).status == 400
    # The blob webhook serves blob triggers only; the Event Grid one, Event Grid triggers only.
    assert post(hooks, BLOBS, [blob_created("a")], query={"functionName": "Host.Functions.on_event"}).status == 404
    assert post(hooks, EVENT_GRID, [blob_created("a")], query={"functionName": "on_pushed_blob"}).status == 404


def test_blob_webhook_dispatches_created_blobs_only(record_dir: Path) -> None:
    pushed = Pushed()
    hooks = webhooks(pushed=pushed)
    deleted = {**blob_created("gone.txt"), "eventType": "Microsoft.Storage.BlobDeleted"}
    response = post(
        hooks, BLOBS, [blob_created("dir/a b.txt"), deleted], query={"functionName": "Host.Functions.on_pushed_blob"}
    )
    assert response.status == 202
    assert pushed.blobs == [("on_pushed_blob", "drop", "dir/a b.txt")]
    bad_subject = {**blob_created("x"), "subject": "/containers/drop/x"}
    response = post(hooks, BLOBS, [bad_subject], query={"functionName": "Host.Functions.on_pushed_blob"})
    assert response.status == 400
    assert "is not /blobServices/default/containers" in json.loads(response.body)["error"]
