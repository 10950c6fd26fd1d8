"""Bulk ingest: Event Grid delivers BlobCreated events for `input` in batches to an HTTP endpoint (function key),
and each batch goes to Batch as one add-collection per job per 100 new inputs."""

from __future__ import annotations

import json
import logging

import azure.functions as func

from shared.bulk_ingest import BadDelivery, ingest_delivery, parse_delivery, validation_code
from shared.errors import TransientError
from shared.triggers.boundary import reject, run

bp = func.Blueprint()
logger = logging.getLogger("batchdrop.ingest_events")
DELIVERY = "Event Grid delivery to events/input"


def _json(status: int, document: object) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(document), mimetype="application/json", status_code=status)


@bp.function_name("ingest_events")
@bp.route(route="events/input", methods=["POST", "OPTIONS"], auth_level=func.AuthLevel.FUNCTION)
def ingest_events(req: func.HttpRequest) -> func.HttpResponse:
    """200 once every event is submitted, ignored or refused and recorded; 400 for a body that is no event array;
    503 on a storage or Batch outage, so Event Grid delivers the whole batch again."""
    origin = req.headers.get("webhook-request-origin")
    if req.method == "OPTIONS":  # CloudEvents abuse protection: allow the origin that asks
        if not origin:
            return _json(400, {"error": "an OPTIONS request needs the WebHook-Request-Origin header"})
        return func.HttpResponse(status_code=200, headers={"WebHook-Allowed-Origin": origin,
                                                           "WebHook-Allowed-Rate": "*"})  # fmt: skip
    try:
        events = parse_delivery(req.get_body())
        code = validation_code(events)
    except BadDelivery as error:
        reject(DELIVERY, error)
        return _json(400, {"error": str(error)})
    if code is not None:
        logger.info("Event Grid subscription validation answered")
        return _json(200, {"validationResponse": code})
    try:
        report = run(DELIVERY, lambda gw: ingest_delivery(gw, events))
    except TransientError as error:
        return _json(503, {"error": f"try again: {error}"})
    if report is None:  # a permanent failure (Batch refused tasks by name): recorded, and retrying cannot help
        return _json(200, {"error": "refused; the reason is recorded (GET /api/status, rejected)"})
    return _json(200, report.as_dict())
