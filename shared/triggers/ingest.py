"""Ingest: a new blob in `input` (blob trigger with source=EventGrid, or an Event Grid event) is submitted."""

from __future__ import annotations

import logging

import azure.functions as func
import azurefunctions.extensions.bindings.blob as blob_types

from shared.events import submit_event
from shared.settings import STORAGE_CONNECTION
from shared.submit import submit_blob
from shared.triggers.boundary import run, run_blob_created

bp = func.Blueprint()
logger = logging.getLogger("batchdrop.ingest")


@bp.function_name("ingest")
@bp.blob_trigger(
    arg_name="client", path="input/{name}", connection=STORAGE_CONNECTION, source=func.BlobSource.EVENT_GRID
)
def ingest(client: blob_types.BlobClient) -> None:
    """Blob trigger bound to an SDK BlobClient: the worker passes a client, never the blob's content,
    so a 1 GiB input costs this function no memory (an InputStream would carry every byte over gRPC)."""
    container, name = client.container_name, client.blob_name
    run(f"{container}/{name}", lambda gw: submit_blob(gw, container, name))


@bp.function_name("ingest_event")
@bp.event_grid_trigger(arg_name="event")
def ingest_event(event: func.EventGridEvent) -> None:
    """Event Grid trigger: BlobCreated events for our account's input container are submitted; others are
    ignored (other types) or refused and recorded (no blob named, another storage account)."""
    run_blob_created(event, submit_event)
