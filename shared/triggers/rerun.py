"""HTTP re-run API: POST a re-run request (JSON), get what happened to each input."""

from __future__ import annotations

import json

import azure.functions as func

from shared.errors import RejectedInput
from shared.rerun import parse_request
from shared.rerun import rerun as rerun_inputs
from shared.triggers.boundary import reject, run

bp = func.Blueprint()


def _answer(document: dict[str, object], status_code: int) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(document), mimetype="application/json", status_code=status_code)


@bp.function_name("rerun")
@bp.route(route="rerun", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def rerun(req: func.HttpRequest) -> func.HttpResponse:
    try:
        request = parse_request(json.loads(req.get_body() or b"null"))
    except ValueError:
        error = RejectedInput("the re-run request body is not JSON")
        reject("re-run request", error)
        return _answer({"error": str(error)}, 400)
    except RejectedInput as error:
        reject("re-run request", error)
        return _answer({"error": str(error)}, 400)
    report = run(f"re-run request {request.request_id}", lambda gw: rerun_inputs(gw, request))
    if report is None:  # refused as a whole (an unknown pipeline), recorded with the rejections
        return _answer({"error": "the re-run request was refused; `batchdrop status` shows why"}, 400)
    return _answer(report.as_dict(), 200)
