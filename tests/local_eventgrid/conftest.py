"""Fixtures for the local Event Grid: the suite's Azurite, a webhook receiver on 127.0.0.1 that records every
delivery and answers as a test tells it, and a local Event Grid process with a test's own subscriptions file."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient

from local.stack import Azurite, EventGrid, start_eventgrid


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    events: list[dict[str, Any]]


@dataclass
class Receiver:
    """What the webhook got, and how it answers: `validation` is "echo" (the right code), "wrong" or an HTTP
    status; `fail` maps a path to how many Notification deliveries it answers 500 before accepting."""

    url: str = ""
    validation: str | int = "echo"
    fail: dict[str, int] = field(default_factory=dict)
    always: dict[str, int] = field(default_factory=dict)
    deliveries: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Notifications wait for this before they are answered (a test holds deliveries while events pile up).
    gate: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.gate.set()

    def notifications(self, path: str | None = None) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if d.headers.get("aeg-event-type") == "Notification"
                    and (path is None or d.path == path)]

    def events(self, path: str | None = None) -> list[dict[str, Any]]:
        return [event for delivery in self.notifications(path) for event in delivery.events]

    def validations(self) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if d.headers.get("aeg-event-type") == "SubscriptionValidation"]

    def answer(self, delivery: Delivery) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.deliveries.append(delivery)
            if delivery.headers.get("aeg-event-type") == "SubscriptionValidation":
                if self.validation == "echo":
                    return 200, {"validationResponse": delivery.events[0]["data"]["validationCode"]}
                if self.validation == "wrong":
                    return 200, {"validationResponse": "not-the-code"}
                return int(self.validation), {"error": "refused"}
            if delivery.path in self.always:
                return self.always[delivery.path], {"error": "always failing"}
            if self.fail.get(delivery.path, 0) > 0:
                self.fail[delivery.path] -= 1
                return 500, {"error": "failing as told"}
            return 200, {}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {name.lower(): value for name, value in self.headers.items()}
            if headers.get("aeg-event-type") == "Notification":
                state.gate.wait(60)
            status, document = state.answer(Delivery(self.path, headers, json.loads(body)))
            payload = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    yield state
    server.shutdown()
    server.server_close()


def subscription(name: str, endpoint: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "endpoint": endpoint, "included_event_types": ["Microsoft.Storage.BlobCreated"],
            "max_events_per_batch": 1, "max_delivery_attempts": 30, "event_ttl_minutes": 1440, **fields}


StartGrid = Callable[..., EventGrid]


@pytest.fixture
def start_grid(azurite: Azurite, receiver: Receiver, tmp_path: Path) -> Iterator[StartGrid]:
    """Start a local Event Grid on the shared Azurite delivering to the receiver; stopped by pid after the test."""
    started: list[EventGrid] = []

    def start(subscriptions: list[dict[str, Any]], extra_args: tuple[str, ...] = ("--retry-schedule", "0.2"),
              workdir: Path | None = None, app_url: str | None = None) -> EventGrid:
        workdir = workdir or tmp_path
        path = workdir / f"subscriptions-{uuid.uuid4().hex[:6]}.json"
        path.write_text(json.dumps({"subscriptions": subscriptions}))
        grid = start_eventgrid(workdir, azurite, app_url or receiver.url, path, extra_args=extra_args)
        started.append(grid)
        return grid

    yield start
    for grid in started:
        grid.stop()


def container_through(grid: EventGrid, name: str) -> ContainerClient:
    """A new container whose client goes through the grid's proxy."""
    service = BlobServiceClient.from_connection_string(grid.connection_string)
    return service.create_container(name)


def active(grid: EventGrid) -> dict[str, dict[str, Any]]:
    document = grid.subscriptions()
    entries = document["subscriptions"]
    assert isinstance(entries, list)
    return {entry["name"]: entry for entry in entries}
