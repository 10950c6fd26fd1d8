"""A small HTTP proxy in front of Azurite's blob service that sees every successful blob write.

Every request is forwarded unchanged (method, path, query, headers, body) and its answer returned unchanged, so
SharedKey and SAS signatures still verify. After a successful Put Blob (block blob), Put Block List or a Copy
Blob that completed at once, `observe` gets the write with the ETag Azurite answered, before the answer goes back
to the client: by the time an upload returns, its event is in the journal.
"""

from __future__ import annotations

import http.client
import json
import logging
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .events import BlobWrite

logger = logging.getLogger(__name__)

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "transfer-encoding", "upgrade", "content-length", "host"})
ADMIN_PREFIX = "/_eventgrid/"
_PIECE = 64 * 1024
# Blob properties for writes whose answer does not carry them (Put Block List, Copy Blob): (account, container,
# name) -> (content type, content length).
PropertiesReader = Callable[[str, str, str], tuple[str, int]]
Observer = Callable[[BlobWrite], None]
AdminHandler = Callable[[str, str], tuple[int, Any]]


class _Upstream(threading.local):
    connection: http.client.HTTPConnection | None = None


class ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], azurite_host: str, azurite_port: int, observe: Observer,
                 properties: PropertiesReader, admin: AdminHandler) -> None:
        super().__init__(address, ProxyHandler)
        self.azurite = (azurite_host, azurite_port)
        self.observe = observe
        self.properties = properties
        self.admin = admin
        self.upstream = _Upstream()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-answer (a killed dev host or task) is one line, not a traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            logger.info("Client %s went away: %s", client_address, error)
            return
        logger.exception("Proxying a request from %s failed", client_address)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def connection(self, fresh: bool = False) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection to Azurite, and whether it was used before (and so may have gone stale)."""
        if fresh or self.upstream.connection is None:
            if self.upstream.connection is not None:
                self.upstream.connection.close()
            self.upstream.connection = http.client.HTTPConnection(*self.azurite, timeout=300)
            return self.upstream.connection, False
        return self.upstream.connection, True


class ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ProxyServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._forward()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = do_MERGE = do_GET

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            pieces: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(pieces)
                pieces.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self) -> None:
        if self.path.startswith(ADMIN_PREFIX):
            self._admin()
            return
        body = self._read_body()
        response = self._exchange(body)
        if response is None:
            self._answer(502, {"error": "Azurite does not answer"})
            return
        no_body = self.command == "HEAD" or response.status in (204, 304) or response.status < 200
        declared = response.getheader("Content-Length")
        payload: bytes | None = None
        if not no_body and declared is None:
            payload = response.read()  # chunked from Azurite: pass it on with a length
        write = self._write_seen(response, len(body))
        if write is not None:
            try:
                self.server.observe(write)
            except Exception:
                logger.exception("Recording the event for %s/%s failed", write.container, write.name)
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
        if payload is not None:
            self.send_header("Content-Length", str(len(payload)))
        elif declared is not None:
            self.send_header("Content-Length", declared)
        self.end_headers()
        if payload is not None:
            self.wfile.write(payload)
        elif not no_body:
            while piece := response.read(_PIECE):
                self.wfile.write(piece)
        else:
            response.read()

    def _exchange(self, body: bytes) -> http.client.HTTPResponse | None:
        """Send the request to Azurite; once more on a fresh connection if a reused one had gone stale."""
        fresh = False
        for _ in range(2):
            connection, reused = self.server.connection(fresh)
            try:
                connection.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    if name.lower() not in HOP_BY_HOP or name.lower() == "host":
                        connection.putheader(name, value)
                if body or self.command in ("PUT", "POST", "PATCH", "MERGE") or "Content-Length" in self.headers:
                    connection.putheader("Content-Length", str(len(body)))
                connection.endheaders(body or None)
                return connection.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as error:
                connection.close()
                self.server.upstream.connection = None
                if not reused:
                    logger.warning("Azurite dropped the connection: %s", error)
                    return None
                fresh = True
            except OSError as error:
                connection.close()
                self.server.upstream.connection = None
                logger.warning("Azurite does not answer: %s", error)
                return None
        return None

    def _write_seen(self, response: http.client.HTTPResponse, body_length: int) -> BlobWrite | None:
        """The blob write this exchange made, if it created a committed block blob."""
        if self.command != "PUT" or not 200 <= response.status < 300:
            return None
        parts = urlsplit(self.path)
        segments = parts.path.lstrip("/").split("/", 2)
        if len(segments) < 3 or not segments[2] or segments[1].startswith("$"):
            return None
        account, container, name = segments[0], unquote(segments[1]), unquote(segments[2])
        comp = parse_qs(parts.query).get("comp", [""])[0].lower()
        copy_source = self.headers.get("x-ms-copy-source")
        if comp == "blocklist":
            api = "PutBlockList"
        elif comp == "" and copy_source:
            if (response.getheader("x-ms-copy-status") or "").lower() != "success":
                return None  # a pending copy raises its event when it completes; not seen here
            api = "CopyBlob"
        elif comp == "" and (self.headers.get("x-ms-blob-type") or "").lower() == "blockblob":
            api = "PutBlob"
        else:
            return None
        etag = response.getheader("ETag") or ""
        if api == "PutBlob":
            content_type = (self.headers.get("x-ms-blob-content-type")
                            or self.headers.get("Content-Type") or "application/octet-stream")
            length = body_length
        else:
            try:
                content_type, length = self.server.properties(account, container, name)
            except Exception as error:
                logger.warning("Reading %s/%s after %s failed (%s); event sent without its length",
                               container, name, api, error)
                content_type, length = "application/octet-stream", 0
        return BlobWrite(
            account=account, container=container, name=name, api=api, etag=etag, content_type=content_type,
            content_length=length, client_request_id=self.headers.get("x-ms-client-request-id") or "",
            request_id=response.getheader("x-ms-request-id") or "",
        )  # fmt: skip

    def _admin(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        status, document = self.server.admin(self.command, self.path[len(ADMIN_PREFIX):])
        self._answer(status, document)

    def _answer(self, status: int, document: Any) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
