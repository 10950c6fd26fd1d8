"""Request bodies at the dev host, over raw sockets: chunked bodies reach the function, and the size limit is
checked as the body arrives (the same policy as the Batch emulator's)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.client import HTTPResponse
from urllib.parse import urlsplit

import pytest

from local.host.server import MAX_BODY_BYTES, HostServer, WebRequest
from local.host.webhooks import WebResponse, json_response
from tests.host.conftest import SampleHost

SMALL_LIMIT = 1000


def connect(url: str) -> socket.socket:
    address = urlsplit(url)
    return socket.create_connection((address.hostname or "127.0.0.1", address.port or 80), timeout=10)


def send(sock: socket.socket, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> None:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"] + [f"{name}: {value}" for name, value in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)


def answer(sock: socket.socket) -> tuple[HTTPResponse, bytes]:
    response = HTTPResponse(sock, method="POST")
    response.begin()
    return response, response.read()


def chunked(*parts: bytes) -> bytes:
    return b"".join(f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in parts) + b"0\r\n\r\n"


@pytest.fixture
def echo_server() -> Iterator[HostServer]:
    """A host server with a small limit whose dispatch answers with the body it was given."""

    def dispatch(request: WebRequest) -> WebResponse:
        return json_response(200, {"length": len(request.body), "body": request.body.decode("latin-1")})

    server = HostServer("127.0.0.1", 0, dispatch, max_body_bytes=SMALL_LIMIT)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_a_chunked_body_within_the_limit_is_read_and_the_connection_kept(echo_server: HostServer) -> None:
    with connect(echo_server.url) as sock:
        send(sock, "POST", "/any", {"Transfer-Encoding": "chunked"}, chunked(b"hello ", b"world"))
        first, body = answer(sock)
        send(sock, "POST", "/any", {"Content-Length": "3"}, b"abc")
        second, again = answer(sock)
    assert first.status == 200 and json.loads(body) == {"length": 11, "body": "hello world"}
    assert second.status == 200 and json.loads(again)["body"] == "abc"


def test_chunks_past_the_limit_are_413_before_the_chunk_is_sent(echo_server: HostServer) -> None:
    with connect(echo_server.url) as sock:
        send(sock, "POST", "/any", {"Transfer-Encoding": "chunked"}, f"{SMALL_LIMIT + 1:x}\r\n".encode())
        response, body = answer(sock)
    assert response.status == 413
    assert "RequestBodyTooLarge" in json.loads(body)["error"]


def test_a_sent_body_past_the_limit_is_413_and_the_connection_stays_usable(echo_server: HostServer) -> None:
    with connect(echo_server.url) as sock:
        send(sock, "POST", "/any", {"Content-Length": str(SMALL_LIMIT + 1)}, b"x" * (SMALL_LIMIT + 1))
        refused, _ = answer(sock)
        send(sock, "POST", "/any", {"Content-Length": "2"}, b"ok")
        accepted, body = answer(sock)
    assert refused.status == 413
    assert accepted.status == 200 and json.loads(body)["body"] == "ok"


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"Content-Length": "ten"}, b""),
        ({"Transfer-Encoding": "chunked"}, b"xyz\r\nabc\r\n0\r\n\r\n"),
    ],
)
def test_malformed_framing_is_400(echo_server: HostServer, headers: dict[str, str], body: bytes) -> None:
    with connect(echo_server.url) as sock:
        send(sock, "POST", "/any", headers, body)
        response, _ = answer(sock)
    assert response.status == 400
    assert response.getheader("Connection") == "close"


def test_the_running_host_passes_a_chunked_body_to_the_function(sample_host: SampleHost) -> None:
    with connect(sample_host.url) as sock:
        send(sock, "POST", "/api/items/7/x", {"Transfer-Encoding": "chunked"}, chunked(b"pay", b"load"))
        response, body = answer(sock)
    assert response.status == 201
    assert json.loads(body)["body"] == "payload"


def test_the_running_host_refuses_a_body_past_its_limit_without_waiting_for_it(sample_host: SampleHost) -> None:
    with connect(sample_host.url) as sock:
        send(sock, "POST", "/api/items/7/x", {"Content-Length": str(MAX_BODY_BYTES * 4)})
        started = time.monotonic()
        response, _ = answer(sock)
    assert response.status == 413
    assert time.monotonic() - started < 5
