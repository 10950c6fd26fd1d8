"""The HTTP listener: a threading server on 127.0.0.1 that hands each request to the host."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from .webhooks import WebResponse, error_response

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WebRequest:
    method: str
    url: str
    path: str  # percent-encoded, without the query string
    query: dict[str, str]
    headers: dict[str, str]  # lowercase names
    body: bytes


Dispatch = Callable[[WebRequest], WebResponse]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HostServer

    def _serve(self) -> None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self._send(error_response(411, "send a Content-Length; chunked bodies are not supported"))
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self._send(error_response(400, "Content-Length is not a number"))
            return
        body = self.rfile.read(length)
        parts = urlsplit(self.path)
        query: dict[str, str] = {}
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            query.setdefault(name, value)
        host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
        request = WebRequest(
            method=self.command.upper(), url=f"http://{host}{self.path}", path=parts.path or "/",
            query=query, headers={name.lower(): value for name, value in self.headers.items()}, body=body)
        try:
            response = self.server.dispatch(request)
        except Exception:
            logger.exception("%s %s failed", request.method, request.path)
            response = error_response(500, "internal error in the dev host")
        self._send(response, head=request.method == "HEAD")

    def _send(self, response: WebResponse, head: bool = False) -> None:
        self.send_response(response.status)
        names = {name.lower() for name in response.headers}
        for name, value in response.headers.items():
            self.send_header(name, value)
        if "content-type" not in names and response.body:
            self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if not head:
            self.wfile.write(response.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _serve

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("%s " + format, self.address_string(), *args)


class HostServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, host: str, port: int, dispatch: Dispatch) -> None:
        self.dispatch = dispatch
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = f"[{host!s}]" if self.address_family == socket.AF_INET6 else str(host)
        return f"http://{shown}:{port}"
