"""Dead letters as Event Grid writes them: JSON blobs in a storage container.

"Set dead-letter location and retry policy" (https://learn.microsoft.com/azure/event-grid/manage-event-delivery):
the blob names hold the subscription's name in upper case and the non-zero-padded UTC date and hour,
`<container>/<TOPIC>/<SUBSCRIPTION>/<yyyy>/<m>/<d>/<h>/<guid>.json`; each blob holds a JSON array of events,
each with deadLetterReason, deliveryAttempts, lastDeliveryOutcome, lastHttpStatusCode, publishTime and
lastDeliveryAttemptTime added ("Event Grid message delivery and retry",
https://learn.microsoft.com/azure/event-grid/delivery-and-retry). Locally the topic segment is the storage
account's name, upper case.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

DEAD_LETTER_CONTAINER = "eventgrid-deadletter"


class BlobWriter(Protocol):
    def __call__(self, container: str, name: str, body: bytes) -> None:
        """Write one blob (creating the container if needed); raises on a storage error."""


def dead_letter_name(topic_name: str, subscription: str, at: datetime) -> str:
    at = at.astimezone(UTC)
    return (f"{topic_name.upper()}/{subscription.upper()}/{at.year}/{at.month}/{at.day}/{at.hour}/"
            f"{uuid.uuid4()}.json")


def dead_lettered(event: dict[str, Any], reason: str, attempts: int, outcome: str, status: int,
                  published: datetime, last_attempt: datetime | None) -> dict[str, Any]:
    """The event with the fields Event Grid adds when it dead-letters one."""
    return {
        **event,
        "deadLetterReason": reason,
        "deliveryAttempts": attempts,
        "lastDeliveryOutcome": outcome,
        "lastHttpStatusCode": status,
        "publishTime": published.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "lastDeliveryAttemptTime": (last_attempt.astimezone(UTC).isoformat().replace("+00:00", "Z")
                                    if last_attempt else ""),
    }


def write_dead_letters(writer: BlobWriter, topic_name: str, subscription: str,
                       events: Sequence[dict[str, Any]]) -> str:
    """One blob holding `events` (already dead_lettered); its name."""
    name = dead_letter_name(topic_name, subscription, datetime.now(UTC))
    writer(DEAD_LETTER_CONTAINER, name, json.dumps(list(events), indent=1).encode("utf-8"))
    return name
