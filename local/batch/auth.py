"""SharedKey verification, computed exactly as azure-batch's BatchSharedKeyAuthPolicy signs."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import formatdate, parsedate_to_datetime
from urllib.parse import parse_qs, urlsplit

# "The Batch service must receive a request within 15 minutes of when it is created."
MAX_CLOCK_SKEW_SECONDS = 15 * 60

HEADERS_TO_SIGN = (
    "content-encoding",
    "content-language",
    "content-length",
    "content-md5",
    "content-type",
    "date",
    "if-modified-since",
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "range",
)


def string_to_sign(method: str, raw_target: str, headers: Mapping[str, str], account_name: str) -> str:
    """What the client signed, rebuilt from the request as received (raw path, headers, query)."""
    parts = urlsplit(raw_target)
    lowered = {name.lower(): value for name, value in headers.items() if value}
    if method not in ("GET", "HEAD") and "content-length" not in lowered:
        lowered["content-length"] = "0"
    text = method + "\n"
    text += "\n".join(lowered.get(name, "") for name in HEADERS_TO_SIGN) + "\n"
    ocp = sorted((name.lower(), value) for name, value in headers.items() if "ocp-" in name.lower() and value)
    for name, value in ocp:
        text += f"{name}:{value}\n"
    text += f"/{account_name}{parts.path}"
    query = parse_qs(parts.query)
    for name in sorted(query):
        value = query[name][0]
        if value:
            text += f"\n{name}:{value}"
    return text


def sign(key: str, text: str) -> str:
    digest = hmac.new(base64.b64decode(key), text.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def signed_headers(
    method: str, raw_target: str, account_name: str, account_key: str, headers: Mapping[str, str] | None = None
) -> dict[str, str]:
    """`headers` plus ocp-date and a SharedKey Authorization for a request the emulator will accept."""
    signed = {**(headers or {}), "ocp-date": formatdate(usegmt=True)}
    signature = sign(account_key, string_to_sign(method, raw_target, signed, account_name))
    return {**signed, "Authorization": f"SharedKey {account_name}:{signature}"}


def verify(method: str, raw_target: str, headers: Mapping[str, str], account_name: str, account_key: str) -> str | None:
    """None if the request is signed with the account's key, else why not (for the error detail)."""
    authorization = headers.get("Authorization") or headers.get("authorization")
    if not authorization:
        return "The request does not carry an Authorization header."
    scheme, _, credential = authorization.partition(" ")
    if scheme != "SharedKey":
        return f"Authorization scheme {scheme!r} is not supported by the emulator; use SharedKey."
    name, _, signature = credential.partition(":")
    if name != account_name:
        return f"The account name {name!r} does not match the emulator's account."
    expected = sign(account_key, string_to_sign(method, raw_target, headers, account_name))
    if not hmac.compare_digest(expected, signature):
        return "The MAC signature found in the HTTP request is not the same as any computed signature."
    lowered = {name.lower(): value for name, value in headers.items()}
    created = lowered.get("ocp-date") or lowered.get("date")
    if not created:
        return "The request carries neither an ocp-date nor a Date header."
    try:
        moment = parsedate_to_datetime(created)
    except (TypeError, ValueError):
        return f"The request date {created!r} is not an RFC 1123 date."
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    skew = abs((datetime.now(UTC) - moment).total_seconds())
    if skew > MAX_CLOCK_SKEW_SECONDS:
        return f"The request was created {created}, more than 15 minutes from the server's time."
    return None
