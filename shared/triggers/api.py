"""HTTP status API."""

from __future__ import annotations

import json

import azure.functions as func

from shared.status import status as pipeline_status
from shared.triggers.boundary import run

bp = func.Blueprint()


@bp.function_name("status")
@bp.route(route="status", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def status(req: func.HttpRequest) -> func.HttpResponse:
    document = run("status", pipeline_status)
    return func.HttpResponse(json.dumps(document, default=str), mimetype="application/json", status_code=200)
