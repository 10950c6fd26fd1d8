"""HTTP-triggered functions: a request in as `func.HttpRequest`, the function's response out."""

from __future__ import annotations

import json
from typing import Any

import azure.functions as func

from .invocation import InvocationFailed, Invoker
from .routes import RouteMatch
from .server import WebRequest
from .webhooks import WebResponse, error_response


def to_http_request(request: WebRequest, route_params: dict[str, str]) -> func.HttpRequest:
    return func.HttpRequest(method=request.method, url=request.url, headers=request.headers,
                            params=request.query, route_params=route_params, body=request.body)


def to_web_response(result: Any) -> WebResponse:
    """What the Functions host sends for a function's return value."""
    if result is None:
        return WebResponse(204)
    if isinstance(result, func.HttpResponse):
        headers = dict(result.headers.items())
        mimetype = result.mimetype or "text/plain"
        charset = result.charset or "utf-8"
        content_type = f"{mimetype}; charset={charset}" if mimetype.startswith("text/") else mimetype
        return WebResponse(result.status_code, result.get_body(), content_type, headers)
    if isinstance(result, str):
        return WebResponse(200, result.encode("utf-8"), "text/plain; charset=utf-8")
    if isinstance(result, bytes | bytearray):
        return WebResponse(200, bytes(result), "application/octet-stream")
    return WebResponse(200, json.dumps(result).encode("utf-8"), "application/json")


def call_http_function(invoker: Invoker, match: RouteMatch, request: WebRequest) -> WebResponse:
    try:
        result = invoker.invoke(match.spec, to_http_request(request, match.route_params),
                                reason=f"This function was programmatically called via the host APIs "
                                       f"({request.method} {request.path})")
    except InvocationFailed:
        return error_response(500, f"function '{match.spec.name}' failed; see the host log")
    try:
        return to_web_response(result)
    except (TypeError, ValueError) as error:
        return error_response(500, f"function '{match.spec.name}' returned {type(result).__name__}: {error}")
