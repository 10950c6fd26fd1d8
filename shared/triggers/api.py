"""HTTP status API and the status page."""

from __future__ import annotations

import json

import azure.functions as func

from shared.status import status as pipeline_status
from shared.status_page import BadQuery, RecentQuery, page_html, recent_inputs, result_url
from shared.triggers.boundary import run

bp = func.Blueprint()


@bp.function_name("status")
@bp.route(route="status", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def status(req: func.HttpRequest) -> func.HttpResponse:
    document = run("status", pipeline_status)
    return func.HttpResponse(json.dumps(document, default=str), mimetype="application/json", status_code=200)


# The status page (shared/status_page.py): the page, the listing it reads, and its links to results.
NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff"}


@bp.function_name("status_page")
@bp.route(route="page", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def page(req: func.HttpRequest) -> func.HttpResponse:
    document, policy = page_html()
    headers = {**NO_STORE, "Content-Security-Policy": policy, "X-Frame-Options": "DENY"}
    return func.HttpResponse(document, mimetype="text/html", charset="utf-8", status_code=200, headers=headers)


@bp.function_name("recent_inputs")
@bp.route(route="recent", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def recent(req: func.HttpRequest) -> func.HttpResponse:
    try:
        query = RecentQuery.parse(dict(req.params))
    except BadQuery as error:
        return _json({"error": str(error)}, 400)
    return _json(run("recent inputs", lambda gw: recent_inputs(gw, query)), 200)


@bp.function_name("result_link")
@bp.route(route="results/{*path}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def result(req: func.HttpRequest) -> func.HttpResponse:
    path = req.route_params.get("path", "")
    url = run("result link", lambda gw: result_url(gw, path))
    if url is None:
        return _json({"error": "no such result"}, 404)
    # A redirect to a short read-only SAS for this one blob: the SAS reaches the browser's address bar, not a page.
    return func.HttpResponse(status_code=302, headers={**NO_STORE, "Location": url})


def _json(document: object, status_code: int) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(document, default=str), mimetype="application/json", status_code=status_code,
                             headers=NO_STORE)  # fmt: skip
