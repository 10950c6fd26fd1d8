"""Batch's wire format: a parsed request, a response, and the OData shapes of elements, pages and creations."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from local.batch import clock, odata, validation
from local.batch.errors import BatchApiError
from local.batch.service import Doc

ERROR_METADATA = "$metadata#Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element"


@dataclass
class Response:
    status: int
    body: Any = None  # dict -> JSON, bytes -> raw
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    params: dict[str, str]
    base_url: str

    def json(self) -> Any:
        if not self.body:
            return {}
        try:
            return json.loads(self.body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BatchApiError(
                400, "InvalidRequestBody", "The specified Request Body is not syntactically valid."
            ) from None

    def object(self) -> dict[str, Any]:
        """The body as a JSON object with properties of the right JSON types (else 400)."""
        return validation.require_object(self.json() if self.body else {})

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lowered:
                return value
        return None


def entity_headers(doc: Doc) -> dict[str, str]:
    headers: dict[str, str] = {}
    if doc.get("eTag"):
        headers["ETag"] = str(doc["eTag"])
    if doc.get("lastModified"):
        headers["Last-Modified"] = clock.rfc1123(clock.parse(str(doc["lastModified"])))
    return headers


def created(doc: Doc) -> Response:
    headers = entity_headers(doc)
    headers["Location"] = str(doc["url"])
    headers["DataServiceId"] = str(doc["url"])
    return Response(201, None, headers)


def element(request: Request, entity_set: str, doc: Doc) -> Response:
    headers = entity_headers(doc)
    selected = odata.project(doc, odata.parse_select(request.query.get("$select")))
    body = {"odata.metadata": f"{request.base_url}/$metadata#{entity_set}/@Element", **selected}
    return Response(200, body, headers)


def page(request: Request, entity_set: str, result: tuple[list[Doc], str | None]) -> Response:
    items, next_token = result
    body: dict[str, Any] = {"odata.metadata": f"{request.base_url}/$metadata#{entity_set}", "value": items}
    if next_token is not None:
        query = {name: value for name, value in request.query.items() if name not in ("$skiptoken", "api-version")}
        query = {"api-version": request.query.get("api-version", ""), **query, "$skiptoken": next_token}
        body["odata.nextLink"] = f"{request.base_url}{request.path}?" + urlencode(query, quote_via=quote)
    return Response(200, body)


def error_response(error: BatchApiError, base_url: str) -> Response:
    """Batch's JSON error body for `error`, with its status and headers."""
    return Response(error.status, error.body(f"{base_url}/{ERROR_METADATA}"), dict(error.headers))
