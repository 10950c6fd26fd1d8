"""The HTTP listener: Werkzeug's threaded server on a loopback address, handing each request to the host.

Bodies follow the policy the Batch emulator has too (local/httpserver.py): `Content-Length` or chunked,
refused with 413 as soon as the declared size passes the limit, 400 when malformed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

from werkzeug.datastructures import EnvironHeaders

from local.httpserver import RAW_TARGET_KEY, BodyError, LoopbackServer, PlainResponse, RequestBody, base_url

from .webhooks import WebResponse, error_response

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

logger = logging.getLogger(__name__)

# The Functions host's limit on an HTTP request (FUNCTIONS_REQUEST_BODY_SIZE_LIMIT, 100 MB by default).
MAX_BODY_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class WebRequest:
    method: str
    url: str
    path: str  # percent-encoded, without the query string
    query: dict[str, str]
    headers: dict[str, str]  # lowercase names
    body: bytes


Dispatch = Callable[[WebRequest], WebResponse]


class HostServer(LoopbackServer):
    def __init__(self, host: str, port: int, dispatch: Dispatch, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.dispatch = dispatch
        super().__init__(host, port, self._wsgi, max_body_bytes, "batchdrop-devhost/1.0")

    def _wsgi(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        method = str(environ["REQUEST_METHOD"]).upper()
        response = self._respond(method, environ)
        wsgi = PlainResponse(response.body, response.status)
        for name, value in response.headers.items():
            wsgi.headers[name] = value
        if "content-type" not in {name.lower() for name in response.headers} and response.body:
            wsgi.headers["Content-Type"] = response.content_type
        return wsgi(environ, start_response)

    def _respond(self, method: str, environ: WSGIEnvironment) -> WebResponse:
        try:
            body = RequestBody.of(environ).read()
        except BodyError as problem:
            return error_response(problem.status, f"{problem.code}: {problem.message} ({_details(problem)})")
        raw_target = str(environ[RAW_TARGET_KEY])
        parts = urlsplit(raw_target)
        query: dict[str, str] = {}
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            query.setdefault(name, value)
        request = WebRequest(
            method=method, url=f"{base_url(environ)}{raw_target}", path=parts.path or "/", query=query,
            headers={name.lower(): value for name, value in EnvironHeaders(environ).items()}, body=body)
        try:
            return self.dispatch(request)
        except Exception:
            logger.exception("%s %s failed", request.method, request.path)
            return error_response(500, "internal error in the dev host")


def _details(problem: BodyError) -> str:
    return ", ".join(f"{name} {value}" for name, value in problem.values.items())
