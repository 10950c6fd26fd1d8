"""The emulator's HTTP server: SharedKey auth, the request-body policy, stats and faults around the route table."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from werkzeug.datastructures import EnvironHeaders

from local.batch import auth
from local.batch.backend import spot
from local.batch.errors import BatchApiError
from local.batch.faults import Faults, fault_error
from local.batch.routes import Api
from local.batch.service import BatchService
from local.batch.wire import Request, Response, error_response
from local.httpserver import RAW_TARGET_KEY, BodyError, LoopbackServer, PlainResponse, RequestBody, base_url

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = ["MAX_BODY_BYTES", "EmulatorServer", "Faults"]

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
STATS_PATH = "/_emulator/stats"
STATS_RESET_PATH = "/_emulator/stats/reset"
# POST, SharedKey-signed: pre-empt a Spot node (fault injection; see docs/emulator.md "Spot pre-emption")
PREEMPT_PATH = re.compile(r"^/_emulator/pools/(?P<pool>[^/]+)/nodes/(?P<node>[^/]+)/preempt$")


class EmulatorServer(LoopbackServer):
    """The Batch emulator on `address`: every request is signed with the account's key (SharedKey)."""

    def __init__(
        self,
        address: tuple[str, int],
        service: BatchService,
        account_name: str,
        account_key: str,
        faults: Faults | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        auth_failure_status: int = 401,
    ) -> None:
        self.auth_failure_status = auth_failure_status
        self.service = service
        self.api = Api(service)
        self.account_name = account_name
        self.account_key = account_key
        self.faults = faults or Faults()
        self.stats_lock = threading.Lock()
        self.stats: Counter[str] = Counter()
        self.total = 0
        super().__init__(address[0], address[1], self._wsgi, max_body_bytes, "BatchEmulator/1.0")

    def count(self, operation: str) -> None:
        with self.stats_lock:
            self.total += 1
            self.stats[operation] += 1

    def stats_body(self) -> dict[str, Any]:
        """Requests by operation since the last reset, and the backend's progress counters, which only grow
        (tests wait for the dispatcher to have passed before asserting that something did not happen)."""
        with self.stats_lock:
            return {"total": self.total, "requests": dict(self.stats), "progress": self.service.progress()}

    def reset_stats(self) -> None:
        with self.stats_lock:
            self.total = 0
            self.stats.clear()

    def _wsgi(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        method = str(environ["REQUEST_METHOD"]).upper()
        raw_target = str(environ[RAW_TARGET_KEY])
        headers = dict(EnvironHeaders(environ).items())
        response = self._respond(method, raw_target, headers, environ)
        logger.debug(
            "%s %s -> %d in %.1f ms", method, raw_target, response.status, (time.perf_counter() - started) * 1000
        )
        return _to_wsgi(response, environ)(environ, start_response)

    def _respond(
        self, method: str, raw_target: str, headers: dict[str, str], environ: WSGIEnvironment
    ) -> Response:
        split = urlsplit(raw_target)
        path = split.path.rstrip("/") or "/"
        query = {name: values[0] for name, values in parse_qs(split.query, keep_blank_values=True).items()}
        root = base_url(environ)
        body: bytes | None = None
        too_large: BodyError | None = None
        try:
            body = RequestBody.of(environ).read()
        except BodyError as problem:
            if problem.status != 413:  # the request's framing is broken: nothing else about it can be trusted
                return error_response(BatchApiError(problem.status, problem.code, problem.message, problem.values),
                                      root)
            too_large = problem
        if path.startswith("/_emulator/"):
            return self._emulator_endpoint(method, raw_target, headers, path, root, body or b"")
        matched = self.api.match(method, path)
        operation = matched[0] if matched else "Unknown"
        self.count(operation)
        if self.faults.latency_ms > 0:
            time.sleep(self.faults.latency_ms / 1000.0)
        try:
            self._authenticate(method, raw_target, headers)
            if too_large is not None:
                raise BatchApiError(too_large.status, too_large.code, too_large.message, too_large.values)
            if matched is None:
                raise BatchApiError(
                    501,
                    "NotImplemented",
                    f"The Batch emulator does not implement {method} "
                    f"{path}. See docs/emulator.md for the supported operations.",
                    {"Method": method, "Path": path},
                )
            if "api-version" not in query:
                raise BatchApiError(
                    400,
                    "MissingRequiredQueryParameter",
                    "A query parameter that's mandatory for this request is not specified.",
                    {"QueryParameterName": "api-version"},
                )
            status = self.faults.pick()
            if status is not None:
                raise fault_error(status)
            request = Request(method, path, query, headers, body or b"", matched[2], root)
            response = matched[1](self.api, request)
            lost = self.faults.pick(self.faults.after_rate) if method not in ("GET", "HEAD") else None
            if lost is not None:
                logger.info(
                    "%s %s (%s) was processed; answering %d instead (--fault-after-rate)", method, path, operation, lost
                )
                raise fault_error(lost)
            return response
        except BatchApiError as error:
            return error_response(error, root)
        except Exception as crash:  # the request boundary: answer 500 with the reason, never drop the connection
            logger.exception("%s %s (%s) failed inside the emulator", method, path, operation)
            internal = BatchApiError(
                500, "InternalError", f"The emulator failed handling {operation}: {type(crash).__name__}: {crash}"
            )
            return error_response(internal, root)

    def _authenticate(self, method: str, raw_target: str, headers: dict[str, str]) -> None:
        problem = auth.verify(method, raw_target, headers, self.account_name, self.account_key)
        if problem is not None:
            raise BatchApiError(
                self.auth_failure_status,
                "AuthenticationFailed",
                "Server failed to authenticate the request. Make "
                "sure the value of Authorization header is formed correctly including the "
                "signature.",
                {"AuthenticationErrorDetail": problem},
            )

    def _emulator_endpoint(
        self, method: str, raw_target: str, headers: dict[str, str], path: str, root: str, body: bytes
    ) -> Response:
        # Reading the counters is harmless and stays open (a curl away); changing anything needs the key.
        if method == "GET" and path == STATS_PATH:
            return Response(200, self.stats_body())
        preempt = PREEMPT_PATH.match(path)
        if method != "POST" or (path != STATS_RESET_PATH and preempt is None):
            unknown = BatchApiError(501, "NotImplemented", f"Unknown emulator endpoint {method} {path}")
            return error_response(unknown, root)
        try:
            self._authenticate(method, raw_target, headers)
            if preempt is not None:
                return Response(200, self._preempt(unquote(preempt["pool"]), unquote(preempt["node"]), body))
        except BatchApiError as error:
            return error_response(error, root)
        self.reset_stats()
        return Response(200, self.stats_body())

    def _preempt(self, pool_id: str, node_id: str, body: bytes) -> dict[str, Any]:
        """Fault injection: Azure reclaims a Spot node (body: optional {"replaceAfterSeconds": n})."""
        try:
            options = json.loads(body) if body.strip() else {}
        except ValueError:
            options = None
        delay = options.get("replaceAfterSeconds", 0) if isinstance(options, dict) else None
        if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
            raise BatchApiError(
                400,
                "InvalidRequestBody",
                "The body must be empty or a JSON object with a non-negative number replaceAfterSeconds.",
            )
        return spot.preempt_node(self.service.pools, pool_id, node_id, float(delay))


def _to_wsgi(response: Response, environ: WSGIEnvironment) -> PlainResponse:
    headers = dict(response.headers)
    payload: bytes
    if isinstance(response.body, bytes):
        payload = response.body
        headers.setdefault("Content-Type", "application/octet-stream")
    elif response.body is None:
        payload = b""
    else:
        payload = json.dumps(response.body).encode("utf-8")
        headers["Content-Type"] = "application/json;odata=minimalmetadata"
    headers["request-id"] = str(uuid.uuid4())
    client_request_id = environ.get("HTTP_CLIENT_REQUEST_ID")
    if client_request_id:
        headers["client-request-id"] = client_request_id
    headers["DataServiceVersion"] = "3.0"
    wsgi = PlainResponse(payload, response.status)
    for name, value in headers.items():
        wsgi.headers[name] = value
    return wsgi
