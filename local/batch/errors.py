"""Batch's error responses: an exception carrying the status, code, message and detail values."""

from __future__ import annotations

from typing import Any


class BatchApiError(Exception):
    """An error the emulator answers with, in Batch's own JSON shape."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        values: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.values = values or {}
        self.headers = headers or {}

    def body(self, metadata_url: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "odata.metadata": metadata_url,
            "code": self.code,
            "message": {"lang": "en-US", "value": self.message},
        }
        if self.values:
            body["values"] = [{"key": key, "value": value} for key, value in self.values.items()]
        return body


def not_found(code: str, what: str) -> BatchApiError:
    return BatchApiError(404, code, f"The specified {what} does not exist.")


def conflict(code: str, message: str) -> BatchApiError:
    return BatchApiError(409, code, message)


def missing_property(name: str) -> BatchApiError:
    return BatchApiError(
        400,
        "MissingRequiredProperty",
        "A required property was not specified in the request body.",
        {"PropertyName": name},
    )


def invalid_property(name: str, value: object, reason: str) -> BatchApiError:
    return BatchApiError(
        400,
        "InvalidPropertyValue",
        "The value provided for one of the properties in the request body is invalid.",
        {"PropertyName": name, "PropertyValue": str(value), "Reason": reason},
    )


def invalid_query(name: str, value: str, reason: str) -> BatchApiError:
    return BatchApiError(
        400,
        "InvalidQueryParameterValue",
        "Value for one of the query parameters specified in the request URI is invalid.",
        {"QueryParameterName": name, "QueryParameterValue": value, "Reason": reason},
    )


def error_dict(code: str, message: str, values: dict[str, str] | None = None) -> dict[str, Any]:
    """The BatchError shape used inside bodies (e.g. per-task results of addtaskcollection)."""
    error: dict[str, Any] = {"code": code, "message": {"lang": "en-US", "value": message}}
    if values:
        error["values"] = [{"key": key, "value": value} for key, value in values.items()]
    return error
