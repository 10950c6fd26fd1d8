"""Event Grid BlobCreated events: which blob they name."""

from __future__ import annotations

import ipaddress
from urllib.parse import unquote, urlparse

from shared.errors import RejectedInput


def _path_style(host: str) -> bool:
    """Emulators (an IP or localhost host) put the account name as the first path segment."""
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def blob_of_event(event_id: str, data: object, subject: str | None) -> tuple[str, str]:
    """Container and blob name from a BlobCreated event's data.url, with the subject as fallback."""
    url = data.get("url") if isinstance(data, dict) else None
    if isinstance(url, str) and url:
        parsed = urlparse(url)
        segments = unquote(parsed.path).lstrip("/").split("/")
        if _path_style(parsed.hostname or ""):
            segments = segments[1:]
        if len(segments) >= 2 and segments[0] and "/".join(segments[1:]):
            return segments[0], "/".join(segments[1:])
    marker = "/containers/"
    if subject and marker in subject and "/blobs/" in subject:
        container, _, name = subject.split(marker, 1)[1].partition("/blobs/")
        if container and name:
            return container, name
    raise RejectedInput(f"Event Grid event {event_id}: neither data.url nor subject names a blob")
