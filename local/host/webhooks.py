"""Event Grid webhooks at the paths the Functions host serves them, with the validation handshake.

`POST /runtime/webhooks/EventGrid?functionName=<name>` delivers to an Event Grid trigger;
`POST /runtime/webhooks/blobs?functionName=Host.Functions.<name>` to a blob trigger with
source=EventGrid. Header `aeg-event-type` is `SubscriptionValidation` (answered with the
validation code) or `Notification`; anything else is a 400.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from azure.core.exceptions import AzureError
from azure.functions import EventGridEvent

from .bindings import BlobTrigger, EventGridTrigger, FunctionSpec
from .invocation import InvocationFailed, Invoker

logger = logging.getLogger(__name__)

EVENT_GRID_PATH = "/runtime/webhooks/eventgrid"
BLOBS_PATH = "/runtime/webhooks/blobs"
_BLOB_SUBJECT = re.compile(r"^/blobServices/default/containers/([^/]+)/blobs/(.+)$", re.DOTALL)


@dataclass(frozen=True)
class WebResponse:
    status: int
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


def json_response(status: int, document: Any) -> WebResponse:
    return WebResponse(status, json.dumps(document).encode("utf-8"))


def error_response(status: int, message: str) -> WebResponse:
    return json_response(status, {"error": message})


class BadEvents(ValueError):
    """A request body that is not a list of Event Grid (or CloudEvents) events."""


def parse_events(body: bytes) -> list[dict[str, Any]]:
    """The events of a delivery: an array, or one CloudEvents object."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise BadEvents(f"the body is not JSON: {error}") from None
    events = document if isinstance(document, list) else [document]
    if not events:
        raise BadEvents("the body is an empty array; expected at least one event")
    for index, event in enumerate(events):
        if not isinstance(event, dict):
            raise BadEvents(f"event {index} is not a JSON object")
        if not isinstance(event.get("id"), str):
            raise BadEvents(f"event {index} has no string 'id'")
        if not isinstance(event.get("eventType", event.get("type")), str):
            raise BadEvents(f"event {index} has no string 'eventType'")
    return events


def _event_time(event: dict[str, Any], index: int) -> dt.datetime | None:
    text = event.get("eventTime", event.get("time"))
    if text is None:
        return None
    try:
        return dt.datetime.fromisoformat(str(text))
    except ValueError:
        raise BadEvents(f"event {index}: eventTime {text!r} is not an ISO 8601 time") from None


def to_event_grid_event(event: dict[str, Any], index: int = 0) -> EventGridEvent:
    """The binding value of an Event Grid trigger (Event Grid schema or CloudEvents)."""
    return EventGridEvent(
        id=event["id"],
        data=event.get("data"),  # type: ignore[arg-type]
        topic=str(event.get("topic", event.get("source", ""))),
        subject=str(event.get("subject", "")),
        event_type=str(event.get("eventType", event.get("type"))),
        event_time=_event_time(event, index),
        data_version=str(event.get("dataVersion", event.get("dataversion", ""))),
    )


# The blobs (container, name) of one delivery, pushed together; each one's storage error, else None.
BlobPush = Callable[[FunctionSpec, list[tuple[str, str]]], list[AzureError | None]]


class Webhooks:
    """Serves both webhook paths for the app's Event Grid and EventGrid-sourced blob functions."""

    def __init__(self, functions: list[FunctionSpec], invoker: Invoker, blob_push: BlobPush,
                 key: str | None) -> None:
        self.event_grid = {spec.name.lower(): spec for spec in functions
                           if isinstance(spec.trigger, EventGridTrigger)}
        self.blobs: dict[str, FunctionSpec] = {}
        for spec in functions:
            if isinstance(spec.trigger, BlobTrigger) and spec.trigger.event_grid:
                self.blobs[spec.full_name.lower()] = spec
                self.blobs[spec.name.lower()] = spec
        self.invoker = invoker
        self.blob_push = blob_push
        self.key = key

    def handles(self, path: str) -> bool:
        return path.rstrip("/").lower() in (EVENT_GRID_PATH, BLOBS_PATH)

    def handle(self, method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str],
               body: bytes) -> WebResponse:
        """`headers` keys are lowercase."""
        origin = headers.get("webhook-request-origin")
        if method == "OPTIONS" and origin:
            # CloudEvents abuse-protection handshake.
            return WebResponse(200, headers={"WebHook-Allowed-Origin": origin, "WebHook-Allowed-Rate": "*"})
        if method != "POST":
            return error_response(405, "webhooks accept POST only")
        if self.key is not None:
            code = query.get("code") or headers.get("x-functions-key") or ""
            if not hmac.compare_digest(code.encode(), self.key.encode()):
                return error_response(401, "missing or wrong 'code' (the webhook key)")
        function_name = query.get("functionName") or query.get("functionname")
        if not function_name:
            return error_response(400, "the query parameter 'functionName' is required")
        blob_webhook = path.rstrip("/").lower() == BLOBS_PATH
        spec = (self.blobs if blob_webhook else self.event_grid).get(function_name.lower())
        if spec is None:
            kind = "blob trigger with source=EventGrid" if blob_webhook else "Event Grid trigger"
            return error_response(404, f"no {kind} function named '{function_name}'")
        event_type = headers.get("aeg-event-type", "")
        try:
            events = parse_events(body)
            if event_type.lower() == "subscriptionvalidation":
                return _validation_response(events)
            if event_type.lower() != "notification":
                return error_response(400, f"header aeg-event-type must be SubscriptionValidation or "
                                           f"Notification, got {event_type!r}")
            if blob_webhook:
                return self._push_blobs(spec, events)
            return self._deliver(spec, events)
        except BadEvents as error:
            return error_response(400, str(error))

    def _deliver(self, spec: FunctionSpec, events: list[dict[str, Any]]) -> WebResponse:
        values = [to_event_grid_event(event, index) for index, event in enumerate(events)]
        failures = 0
        for value in values:
            try:
                self.invoker.invoke(spec, value, reason=f"EventGrid trigger fired for event {value.id}")
            except InvocationFailed:
                failures += 1
        if failures:
            # Event Grid retries the delivery; the function must be idempotent.
            return error_response(500, f"{failures} of {len(values)} event(s) failed in '{spec.name}'")
        return WebResponse(202)

    def _push_blobs(self, spec: FunctionSpec, events: list[dict[str, Any]]) -> WebResponse:
        blobs: list[tuple[str, str]] = []
        for index, event in enumerate(events):
            if event.get("eventType", event.get("type")) != "Microsoft.Storage.BlobCreated":
                continue
            subject = _BLOB_SUBJECT.match(str(event.get("subject", "")))
            if not subject:
                raise BadEvents(f"event {index}: subject {event.get('subject')!r} is not "
                                "/blobServices/default/containers/<container>/blobs/<name>")
            blobs.append((subject.group(1), subject.group(2)))
        failed = [(blob, error) for blob, error in zip(blobs, self.blob_push(spec, blobs), strict=True) if error]
        for (container, name), error in failed:
            logger.warning("%s: could not dispatch %s/%s: %s", spec.name, container, name, error)
        if failed:
            # Event Grid delivers the whole batch again; the blobs already dispatched have their receipts.
            return error_response(500, f"storage error while dispatching {len(failed)} of {len(blobs)} blob(s)")
        return WebResponse(202)


def _validation_response(events: list[dict[str, Any]]) -> WebResponse:
    data = events[0].get("data")
    code = data.get("validationCode") if isinstance(data, dict) else None
    if not isinstance(code, str):
        raise BadEvents("the validation event has no data.validationCode")
    return json_response(200, {"validationResponse": code})
