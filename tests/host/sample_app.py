"""A FunctionApp with one function of each trigger kind, for the dev host's tests.

Every function appends what it received, as one JSON line, to `<SAMPLE_RECORD_DIR>/<function>.jsonl`;
the tests read those files. Inputs whose name or body starts with "fail" make the function raise.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import azure.functions as func


def record(function: str, **fields: Any) -> None:
    line = json.dumps({"function": function, **fields}, default=str)
    path = Path(os.environ["SAMPLE_RECORD_DIR"]) / f"{function}.jsonl"
    with path.open("a", encoding="utf-8") as file:
        file.write(line + "\n")


def build_app() -> func.FunctionApp:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

    # An ordinary blob trigger: the host scans its container (source=EventGrid ones below are push-only).
    @app.blob_trigger(arg_name="blob", path="%SAMPLE_CONTAINER%/{name}", connection="SampleStorage")
    def on_blob(blob: func.InputStream) -> None:
        assert blob.name is not None
        name = blob.name.split("/", 1)[1]
        # blob_properties and metadata are on the concrete InputStream the host passes, not on the ABC.
        properties = dict(getattr(blob, "blob_properties", None) or {})
        fields: dict[str, Any] = {
            "name": blob.name,
            "uri": blob.uri,
            "length": blob.length,
            "etag": properties.get("ETag"),
            "content_length": properties.get("Content-Length"),
            "last_modified": properties.get("LastModified"),
            "created_on": properties.get("CreatedOn"),
            "metadata": getattr(blob, "metadata", None),
            "stream_type": type(blob).__name__,
        }
        if name.startswith("read-"):
            digest = hashlib.sha256()
            while chunk := blob.read(1024 * 1024):
                digest.update(chunk)
            fields["sha256"] = digest.hexdigest()
        record("on_blob", **fields)
        if name.startswith("fail"):
            raise RuntimeError(f"refusing {blob.name}")

    @app.blob_trigger(
        arg_name="blob", path="%SAMPLE_CONTAINER%/{name}", connection="SampleStorage", source=func.BlobSource.EVENT_GRID
    )
    def on_pushed_blob(blob: func.InputStream) -> None:
        """Push-only, as on Azure: invoked for the blobs Event Grid names, never from a scan."""
        assert blob.name is not None
        record("on_pushed_blob", name=blob.name, length=blob.length)

    @app.event_grid_trigger(arg_name="event")
    def on_event(event: func.EventGridEvent) -> None:
        data = event.get_json()
        record(
            "on_event",
            id=event.id,
            data=data,
            topic=event.topic,
            subject=event.subject,
            event_type=event.event_type,
            event_time=event.event_time,
            data_version=event.data_version,
        )
        if isinstance(data, dict) and data.get("fail"):
            raise RuntimeError(f"event {event.id} asked to fail")

    @app.timer_trigger(arg_name="timer", schedule="%SAMPLE_SCHEDULE%", run_on_startup=True)
    def tick(timer: func.TimerRequest) -> None:
        print("tick!")  # a function that prints must not disturb the host's stdout
        record("tick", past_due=timer.past_due)

    @app.queue_trigger(arg_name="message", queue_name="%SAMPLE_QUEUE%", connection="SampleStorage")
    @app.queue_output(arg_name="reply", queue_name="%SAMPLE_QUEUE%-out", connection="SampleStorage")
    def on_message(message: func.QueueMessage, reply: func.Out[str]) -> None:
        body = message.get_body().decode("utf-8")
        record(
            "on_message",
            id=message.id,
            body=body,
            dequeue_count=message.dequeue_count,
            insertion_time=message.insertion_time,
            pop_receipt=bool(message.pop_receipt),
        )
        if body.startswith("fail"):
            raise RuntimeError(f"refusing message {body!r}")
        if body == "slow":
            time.sleep(float(os.environ.get("SAMPLE_SLOW_SECONDS", "0")))
        reply.set(f"echo:{body}")

    @app.route(route="items/{id:int}/{*rest}", methods=["GET", "POST"])
    def echo(req: func.HttpRequest) -> func.HttpResponse:
        document = {
            "method": req.method,
            "url": req.url,
            "route_params": dict(req.route_params),
            "params": dict(req.params),
            "body": req.get_body().decode("utf-8"),
            "header": req.headers.get("x-sample"),
        }
        return func.HttpResponse(
            json.dumps(document), status_code=201, mimetype="application/json", headers={"X-Echo": "yes"}
        )

    @app.route(route="boom", auth_level=func.AuthLevel.ANONYMOUS)
    def boom(req: func.HttpRequest) -> func.HttpResponse:
        raise RuntimeError("boom")

    return app


app = build_app()
