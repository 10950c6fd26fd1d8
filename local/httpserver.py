"""The HTTP server under the Batch emulator and the dev host, with the request-body policy they share.

Both run a WSGI application on Werkzeug's threaded server, bound to a loopback address. Werkzeug's own
request handler answers every request with `Connection: close` and then reads whatever the client still
sends, up to gigabytes; the handler here keeps connections alive (the Batch SDK makes thousands of calls
on a few pooled connections) and decides per request whether the connection can carry another one.

The body policy, the same for both servers:
- `Content-Length` must be a decimal number, else 400 InvalidHeaderValue;
- `Transfer-Encoding: chunked` is accepted (Werkzeug's de-chunker); a malformed chunk is 400
  InvalidRequestBody;
- the size limit is checked as the body arrives: a declared `Content-Length` or chunk size that would
  take the body past it is refused (413 RequestBodyTooLarge) before any of it is read.
A body that was refused unread is discarded (not kept) when its declared length is at most
`MAX_DRAIN_BYTES`, so that the client sees the answer and keeps its connection; otherwise the answer
says `Connection: close`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import select
import socket
import time
from collections.abc import Callable
from email.message import Message
from typing import IO, TYPE_CHECKING, Any, Literal, cast

from werkzeug.serving import DechunkedInput, ThreadedWSGIServer, WSGIRequestHandler
from werkzeug.wrappers import Response

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication, WSGIEnvironment

logger = logging.getLogger(__name__)

BODY_KEY = "batchdrop.request_body"
RAW_TARGET_KEY = "batchdrop.raw_target"
# An unread body up to this size is read and dropped so that the connection stays usable.
MAX_DRAIN_BYTES = 64 * 1024 * 1024
# After an answer that closes the connection, how long to swallow what the client still sends: closing a
# socket with unread input makes the kernel reset it, and the client may lose the answer.
LINGER_SECONDS = 2.0
_PIECE = 64 * 1024
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")


class BodyError(Exception):
    """A request body the server will not take, with Batch's error code and message for it."""

    def __init__(self, status: int, code: str, message: str, values: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.values = values or {}


def body_too_large(limit: int) -> BodyError:
    return BodyError(
        413,
        "RequestBodyTooLarge",
        "The request body is too large and exceeds the maximum permissible limit.",
        {"MaxLimit": str(limit)},
    )


def _bad_body(reason: str) -> BodyError:
    return BodyError(400, "InvalidRequestBody", "The specified Request Body is not syntactically valid.",
                     {"Reason": reason})


class _LimitedDechunker(DechunkedInput):
    """Werkzeug's de-chunker, refusing a chunk whose declared size would pass the limit before reading it."""

    def __init__(self, rfile: IO[bytes], limit: int) -> None:
        super().__init__(rfile)
        self.limit = limit
        self.declared = 0

    def read_chunk_len(self) -> int:
        line = self._rfile.readline(1026)
        # A chunk extension (`1a;name=value`) carries nothing the servers use.
        text = line.split(b";", 1)[0].strip(b" \t\r\n").decode("latin-1")
        if not re.fullmatch(r"[0-9A-Fa-f]{1,16}", text):
            raise _bad_body(f"chunk size {text[:40]!r} is not a hexadecimal number")
        size = int(text, 16)
        self.declared += size
        if self.declared > self.limit:
            raise body_too_large(self.limit)
        return size


BodyState = Literal["unread", "read", "refused", "broken"]


class RequestBody:
    """One request's body, read at most once under the server's limit (the application calls `read`)."""

    def __init__(self, rfile: IO[bytes], headers: Message, limit: int, send_continue: Callable[[], None]) -> None:
        self.rfile = rfile
        self.limit = limit
        self.send_continue = send_continue
        self.chunked = "chunked" in (headers.get("Transfer-Encoding") or "").lower()
        self.content_length_header = headers.get("Content-Length")
        self.state: BodyState = "unread"
        self._data: bytes | None = None
        self._error: BodyError | None = None
        self._declared = 0

    @staticmethod
    def of(environ: WSGIEnvironment) -> RequestBody:
        body = environ[BODY_KEY]
        assert isinstance(body, RequestBody)
        return body

    def read(self) -> bytes:
        """The whole body; raises BodyError (the same one on every call) when it is malformed or too large."""
        if self._error is not None:
            raise self._error
        if self._data is None:
            try:
                self._data = self._read()
                self.state = "read"
            except BodyError as error:
                self._error = error
                raise
        return self._data

    def _read(self) -> bytes:
        if self.chunked:
            return self._read_chunked()
        length = self._declared_length()
        if length == 0:
            return b""
        if length > self.limit:
            self._declared = length
            self.state = "refused"
            raise body_too_large(self.limit)
        self.send_continue()
        try:
            data = self.rfile.read(length)
        except OSError as error:  # the client stalled past the timeout, or went away
            self.state = "broken"
            raise _bad_body(f"the body could not be read: {error}") from None
        if len(data) < length:
            self.state = "broken"
            raise _bad_body(f"the body ended after {len(data)} of its {length} declared bytes")
        return data

    def _declared_length(self) -> int:
        text = (self.content_length_header or "0").strip()
        if not _CONTENT_LENGTH.fullmatch(text):
            self.state = "broken"
            raise BodyError(
                400,
                "InvalidHeaderValue",
                "The value for one of the HTTP headers is not in the correct format.",
                {"HeaderName": "Content-Length", "HeaderValue": text[:100]},
            )
        return int(text)

    def _read_chunked(self) -> bytes:
        self.send_continue()
        stream = _LimitedDechunker(self.rfile, self.limit)
        pieces: list[bytes] = []
        try:
            while piece := stream.read(_PIECE):
                pieces.append(piece)
        except BodyError:
            self.state = "broken"
            raise
        except OSError as error:  # Werkzeug's de-chunker reports framing errors (and a cut-off stream) so
            self.state = "broken"
            raise _bad_body(str(error)) from None
        return b"".join(pieces)

    def finish(self) -> bool:
        """Before answering: whether the connection can take another request (an unread body is dropped)."""
        if self.state == "unread":
            try:
                self.read()
            except BodyError:
                pass
        if self.state == "refused" and self._declared <= MAX_DRAIN_BYTES:
            self.send_continue()
            remaining = self._declared
            while remaining > 0:
                try:
                    piece = self.rfile.read(min(remaining, _PIECE))
                except OSError:
                    return False
                if not piece:
                    return False
                remaining -= len(piece)
            return True
        return self.state == "read"


class PlainResponse(Response):
    """A Werkzeug response that adds no Content-Type of its own (an empty answer has none)."""

    default_mimetype = None


class _Handler(WSGIRequestHandler):
    """Werkzeug's request handler, answering with keep-alive when the request body was read to its end."""

    protocol_version = "HTTP/1.1"
    # An idle keep-alive connection holds a thread; close it after a while (clients reconnect).
    timeout = 300
    server: LoopbackServer

    def make_environ(self) -> WSGIEnvironment:
        environ = super().make_environ()
        environ[RAW_TARGET_KEY] = self.path  # as received: SharedKey signs the encoded path and query
        environ["wsgi.input"] = self.rfile
        environ.pop("wsgi.input_terminated", None)
        self._continue_sent = False
        rfile = cast(IO[bytes], self.rfile)
        environ[BODY_KEY] = RequestBody(rfile, self.headers, self.server.max_body_bytes, self._send_continue)
        return environ

    def _send_continue(self) -> None:
        expect = (self.headers.get("Expect") or "").lower().strip(" \t")
        if expect == "100-continue" and not self._continue_sent:
            self._continue_sent = True
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.wfile.flush()

    def run_wsgi(self) -> None:
        environ = self.environ = self.make_environ()
        try:
            response = PlainResponse.from_app(self.server.app, environ, buffered=True)
        except Exception:  # the applications answer their own errors; this is the last line
            logger.exception("%s %s failed", self.command, self.path)
            response = PlainResponse(b"internal error", 500)
        body = RequestBody.of(environ)
        reusable = body.finish()
        payload = response.get_data()
        head = self.command == "HEAD"
        self.send_response(response.status_code)
        for name, value in response.headers.items():
            if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(name, value)
        if response.status_code not in (204, 304):  # which carry no Content-Length (RFC 9110 8.6)
            length = response.headers.get("Content-Length") if head else None
            self.send_header("Content-Length", length or str(len(payload)))
        if not reusable:
            self.send_header("Connection", "close")
        self.end_headers()
        if payload and not head:
            self.wfile.write(payload)
        self.wfile.flush()
        if not reusable:
            self.close_connection = True
            self._linger()

    def _linger(self) -> None:
        """Swallow, for a moment, what the client is still sending, so that it reads the answer first."""
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_SECONDS
            swallowed = 0
            while swallowed < MAX_DRAIN_BYTES and (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select([self.connection], [], [], left)
                if not ready:
                    break
                piece = self.connection.recv(_PIECE)
                if not piece:
                    break
                swallowed += len(piece)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        logger.debug("%s %s %s -> %s", self.address_string(), self.command, self.path, code)

    def log_error(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)


class _BindFailed(Exception):
    """Carries a bind error past Werkzeug, which would print it and exit the process."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class LoopbackServer(ThreadedWSGIServer):
    """A threaded WSGI server on a loopback address; raises OSError when it cannot listen."""

    block_on_close = False

    def __init__(self, host: str, port: int, app: WSGIApplication, max_body_bytes: int,
                 server_version: str) -> None:
        self.max_body_bytes = max_body_bytes
        try:
            super().__init__(host, port, app, handler=_Handler)
        except _BindFailed as failed:
            raise failed.error from None
        self._server_version = server_version

    def server_bind(self) -> None:
        try:
            super().server_bind()
        except OSError as error:
            raise _BindFailed(error) from None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = f"[{host!s}]" if self.address_family == socket.AF_INET6 else str(host)
        return f"http://{shown}:{port}"


def base_url(environ: WSGIEnvironment) -> str:
    """`http://<Host header>`, or the server's own address when the client sent none."""
    host = environ.get("HTTP_HOST") or f"{environ['SERVER_NAME']}:{environ['SERVER_PORT']}"
    return f"http://{host}"
