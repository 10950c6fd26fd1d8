"""Request bodies at the HTTP level, over raw sockets: malformed framing, the size limit, keep-alive, and the
stats endpoints' authentication. The SDK never sends these, which is why they need a socket of their own."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from http.client import HTTPResponse
from typing import Any
from urllib.parse import urlsplit

import pytest

from local.batch.auth import signed_headers
from local.batch.wire import ERROR_METADATA
from local.stack import Emulator

API_VERSION = "2025-06-01"
JOBS = f"/jobs?api-version={API_VERSION}"
# The emulator's default --max-body-bytes.
LIMIT = 1024 * 1024


def connect(emulator: Emulator, timeout: float = 10.0) -> socket.socket:
    address = urlsplit(emulator.url)
    return socket.create_connection((address.hostname or "127.0.0.1", address.port or 80), timeout=timeout)


def head(emulator: Emulator, method: str, target: str, headers: dict[str, str]) -> bytes:
    """A signed request's head, with `headers` (sent as given, e.g. a malformed Content-Length)."""
    headers = {"Content-Type": "application/json", **headers}
    signed = signed_headers(method, target, emulator.account_name, emulator.account_key, headers)
    address = urlsplit(emulator.url).netloc
    lines = [f"{method} {target} HTTP/1.1", f"Host: {address}"]
    lines += [f"{name}: {value}" for name, value in signed.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def answer(sock: socket.socket, method: str = "POST") -> tuple[HTTPResponse, Any]:
    response = HTTPResponse(sock, method=method)
    response.begin()
    raw = response.read()
    return response, json.loads(raw) if raw else None


def assert_batch_error(body: Any, code: str) -> None:
    assert body["code"] == code
    assert body["message"]["lang"] == "en-US" and body["message"]["value"]
    assert body["odata.metadata"].endswith(ERROR_METADATA)


def job_body(job_id: str) -> bytes:
    return json.dumps({"id": job_id, "poolInfo": {"poolId": "p"}}).encode()


@pytest.mark.parametrize("value", ["abc", "-5", "1e3", "12, 13"])
def test_a_malformed_content_length_is_400_invalid_header_value(emulator: Emulator, value: str) -> None:
    with connect(emulator) as sock:
        sock.sendall(head(emulator, "POST", JOBS, {"Content-Length": value}))
        response, body = answer(sock)
    assert response.status == 400
    assert_batch_error(body, "InvalidHeaderValue")
    assert {"key": "HeaderName", "value": "Content-Length"} in body["values"]
    assert response.getheader("Connection") == "close"


@pytest.mark.parametrize("size_line", [b"zz", b"", b"-1", b"1x"])
def test_a_malformed_chunk_size_is_400_invalid_request_body(emulator: Emulator, size_line: bytes) -> None:
    with connect(emulator) as sock:
        chunks = size_line + b"\r\n{}\r\n0\r\n\r\n"
        sock.sendall(head(emulator, "POST", JOBS, {"Transfer-Encoding": "chunked"}) + chunks)
        response, body = answer(sock)
    assert response.status == 400
    assert_batch_error(body, "InvalidRequestBody")


def test_a_chunk_declared_past_the_limit_is_refused_before_it_is_sent(emulator: Emulator) -> None:
    """Only the chunk's size line is sent: an emulator that waited for the chunk would time out here."""
    with connect(emulator, timeout=10) as sock:
        sock.sendall(head(emulator, "POST", JOBS, {"Transfer-Encoding": "chunked"}) + b"7fffffff\r\n")
        started = time.monotonic()
        response, body = answer(sock)
    assert response.status == 413
    assert_batch_error(body, "RequestBodyTooLarge")
    assert {"key": "MaxLimit", "value": str(LIMIT)} in body["values"]
    assert time.monotonic() - started < 5


def test_chunks_that_add_up_past_the_limit_are_refused(emulator: Emulator) -> None:
    half = LIMIT // 2 + 1
    chunk = f"{half:x}\r\n".encode() + b"x" * half + b"\r\n"
    with connect(emulator) as sock:
        sock.sendall(head(emulator, "POST", JOBS, {"Transfer-Encoding": "chunked"}) + chunk)
        sock.sendall(f"{half:x}\r\n".encode())  # the second chunk's size alone takes the body past the limit
        response, body = answer(sock)
    assert response.status == 413
    assert_batch_error(body, "RequestBodyTooLarge")


def test_a_content_length_far_past_the_limit_is_refused_without_waiting_for_the_body(emulator: Emulator) -> None:
    with connect(emulator) as sock:
        sock.sendall(head(emulator, "POST", JOBS, {"Content-Length": str(1 << 40)}))
        response, body = answer(sock)
    assert response.status == 413
    assert_batch_error(body, "RequestBodyTooLarge")
    assert response.getheader("Connection") == "close"


def test_a_too_large_body_that_is_sent_gets_413_and_the_connection_stays_usable(emulator: Emulator) -> None:
    too_large = b" " * (LIMIT + 1)
    with connect(emulator) as sock:
        sock.sendall(head(emulator, "POST", JOBS, {"Content-Length": str(len(too_large))}) + too_large)
        response, body = answer(sock)
        assert response.status == 413
        assert_batch_error(body, "RequestBodyTooLarge")
        assert response.getheader("Connection") != "close"
        sock.sendall(head(emulator, "GET", "/jobs/no-such-job?api-version=" + API_VERSION, {}))
        second, error = answer(sock, "GET")
    assert second.status == 404
    assert_batch_error(error, "JobNotFound")


def test_a_chunked_body_with_an_extension_creates_the_job_and_keeps_the_connection(emulator: Emulator) -> None:
    payload = job_body("chunked-ext-job")
    chunks = (
        b"".join(f"{len(part):x};name=value\r\n".encode() + part + b"\r\n" for part in (payload[:10], payload[10:]))
        + b"0\r\n\r\n"
    )
    with connect(emulator) as sock:
        sock.sendall(head(emulator, "POST", JOBS, {"Transfer-Encoding": "chunked"}) + chunks)
        created, _ = answer(sock)
        sock.sendall(head(emulator, "GET", f"/jobs/chunked-ext-job?api-version={API_VERSION}", {}))
        got, job = answer(sock, "GET")
    assert created.status == 201
    assert got.status == 200 and job["poolInfo"] == {"poolId": "p"}


def test_a_body_cut_short_is_400_not_a_dropped_connection(emulator: Emulator) -> None:
    with connect(emulator) as sock:
        sock.sendall(head(emulator, "POST", JOBS, {"Transfer-Encoding": "chunked"}) + b"10\r\nonly8byt")
        sock.shutdown(socket.SHUT_WR)
        response, body = answer(sock)
    assert response.status == 400
    assert_batch_error(body, "InvalidRequestBody")


def _stats(emulator: Emulator) -> dict[str, Any]:
    with urllib.request.urlopen(f"{emulator.url}/_emulator/stats", timeout=10) as response:
        stats: dict[str, Any] = json.load(response)
        return stats


def test_resetting_the_stats_needs_the_account_key(emulator: Emulator) -> None:
    with pytest.raises(urllib.error.HTTPError):  # counted, though refused
        urllib.request.urlopen(f"{emulator.url}/jobs/x?api-version={API_VERSION}", timeout=10)
    assert _stats(emulator)["total"] >= 1
    unsigned = urllib.request.Request(f"{emulator.url}/_emulator/stats/reset", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(unsigned, timeout=10)
    assert refused.value.code == 401
    assert_batch_error(json.loads(refused.value.read()), "AuthenticationFailed")
    assert _stats(emulator)["total"] >= 1
    emulator.reset_stats()
    stats = _stats(emulator)
    assert (stats["total"], stats["requests"]) == (0, {})
