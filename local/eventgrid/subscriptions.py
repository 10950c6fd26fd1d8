"""The local Event Grid's subscriptions: one JSON file, the same fields the deploy templates set on Azure.

```json
{"subscriptions": [{
  "name": "batchdrop-input",
  "endpoint": "/api/events/input",
  "included_event_types": ["Microsoft.Storage.BlobCreated"],
  "subject_begins_with": "/blobServices/default/containers/{BATCHDROP_INPUT_CONTAINER}/blobs/",
  "subject_ends_with": "",
  "max_events_per_batch": 100,
  "preferred_batch_size_kb": 64,
  "max_delivery_attempts": 30,
  "event_ttl_minutes": 1440
}]}
```

`endpoint` is a path relative to the function app's base URL. `{SETTING}` placeholders in the subject filters
and the endpoint are resolved from the app's settings (BATCHDROP_INPUT_CONTAINER and BATCHDROP_STAGING_PREFIX
have batchdrop's defaults when unset). Event Grid's own limits apply: 1-5000 events per batch, 1-1024 KB,
1-30 delivery attempts, 1-1440 minutes of time to live.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BLOB_CREATED = "Microsoft.Storage.BlobCreated"
# The settings a subscriptions file may name, with the app's defaults (shared/settings.py).
PLACEHOLDER_DEFAULTS = {"BATCHDROP_INPUT_CONTAINER": "input", "BATCHDROP_STAGING_PREFIX": "staging"}
_PLACEHOLDER = re.compile(r"\{([A-Z][A-Z0-9_]*)\}")
_NAME = re.compile(r"^[A-Za-z0-9-]{3,64}$")
FIELDS = {
    "name", "endpoint", "included_event_types", "subject_begins_with", "subject_ends_with",
    "max_events_per_batch", "preferred_batch_size_kb", "max_delivery_attempts", "event_ttl_minutes",
}  # fmt: skip
# name: (Event Grid's default, lowest, highest)
LIMITS = {
    "max_events_per_batch": (1, 1, 5000),
    "preferred_batch_size_kb": (64, 1, 1024),
    "max_delivery_attempts": (30, 1, 30),
    "event_ttl_minutes": (1440, 1, 1440),
}


class SubscriptionError(ValueError):
    """A subscriptions file that cannot be used; the message names the file, the subscription and the field."""


@dataclass(frozen=True)
class Subscription:
    """One event subscription, placeholders resolved."""

    name: str
    endpoint: str
    included_event_types: tuple[str, ...] = (BLOB_CREATED,)
    subject_begins_with: str = ""
    subject_ends_with: str = ""
    max_events_per_batch: int = 1
    preferred_batch_size_kb: int = 64
    max_delivery_attempts: int = 30
    event_ttl_minutes: int = 1440

    def matches(self, event: Mapping[str, Any]) -> bool:
        """Event Grid's filters: the event type is included, the subject begins and ends as required
        (case-insensitive, as Event Grid compares subjects unless told otherwise)."""
        if self.included_event_types and event.get("eventType") not in self.included_event_types:
            return False
        subject = str(event.get("subject", "")).lower()
        return subject.startswith(self.subject_begins_with.lower()) and subject.endswith(
            self.subject_ends_with.lower()
        )

    def url(self, app_url: str) -> str:
        return app_url.rstrip("/") + self.endpoint


def _resolve(text: str, settings: Mapping[str, str], where: str) -> str:
    def value(found: re.Match[str]) -> str:
        name = found.group(1)
        resolved = settings.get(name) or PLACEHOLDER_DEFAULTS.get(name)
        if not resolved:
            raise SubscriptionError(f"{where}: placeholder {{{name}}} names no app setting with a value")
        return resolved

    return _PLACEHOLDER.sub(value, text)


def _integer(raw: Mapping[str, Any], field: str, where: str) -> int:
    default, lowest, highest = LIMITS[field]
    value = raw.get(field, default)
    if not isinstance(value, int) or isinstance(value, bool) or not lowest <= value <= highest:
        raise SubscriptionError(f"{where}: {field} must be an integer from {lowest} to {highest}, got {value!r}")
    return value


def _text(raw: Mapping[str, Any], field: str, where: str, settings: Mapping[str, str]) -> str:
    value = raw.get(field, "")
    if not isinstance(value, str):
        raise SubscriptionError(f"{where}: {field} must be a string, got {value!r}")
    return _resolve(value, settings, f"{where}: {field}")


def parse_subscription(raw: object, settings: Mapping[str, str], where: str) -> Subscription:
    if not isinstance(raw, dict):
        raise SubscriptionError(f"{where}: a subscription must be a JSON object")
    unknown = sorted(set(raw) - FIELDS)
    if unknown:
        raise SubscriptionError(f"{where}: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(FIELDS))})")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise SubscriptionError(f"{where}: name must be 3-64 letters, digits or hyphens, got {name!r}")
    where = f"{where} ({name})"
    endpoint = _text(raw, "endpoint", where, settings)
    if not endpoint.startswith("/"):
        raise SubscriptionError(f"{where}: endpoint must be a path of the function app starting with '/', "
                                f"got {endpoint!r}")
    types = raw.get("included_event_types", [BLOB_CREATED])
    if not isinstance(types, list) or not all(isinstance(t, str) and t for t in types):
        raise SubscriptionError(f"{where}: included_event_types must be a list of event type names")
    return Subscription(
        name=name,
        endpoint=endpoint,
        included_event_types=tuple(types),
        subject_begins_with=_text(raw, "subject_begins_with", where, settings),
        subject_ends_with=_text(raw, "subject_ends_with", where, settings),
        max_events_per_batch=_integer(raw, "max_events_per_batch", where),
        preferred_batch_size_kb=_integer(raw, "preferred_batch_size_kb", where),
        max_delivery_attempts=_integer(raw, "max_delivery_attempts", where),
        event_ttl_minutes=_integer(raw, "event_ttl_minutes", where),
    )


def load_subscriptions(path: Path, settings: Mapping[str, str]) -> list[Subscription]:
    """The subscriptions of `path`, placeholders resolved from `settings`; SubscriptionError naming what is wrong."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SubscriptionError(f"subscriptions file {path} does not exist") from None
    except (OSError, ValueError) as error:
        raise SubscriptionError(f"subscriptions file {path} is unreadable: {error}") from None
    entries = document.get("subscriptions") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise SubscriptionError(f"{path}: expected an object with a list 'subscriptions'")
    found = [parse_subscription(raw, settings, f"{path}: subscription {index}") for index, raw in enumerate(entries)]
    names = [subscription.name.lower() for subscription in found]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise SubscriptionError(f"{path}: subscription names must be unique, repeated: {', '.join(duplicates)}")
    return found
