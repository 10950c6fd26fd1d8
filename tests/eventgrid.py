"""Event Grid as the tests deliver it: a BlobCreated event for an Azurite blob, posted to a webhook."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from typing import Any

AZURITE_ACCOUNT = "devstoreaccount1"


def blob_created(blob_endpoint: str, container: str, name: str, event_id: str, account: str = AZURITE_ACCOUNT
                 ) -> dict[str, Any]:  # fmt: skip
    """A BlobCreated event (Event Grid schema) for `container/name`, as if `account` had raised it."""
    endpoint = blob_endpoint.replace(f"/{AZURITE_ACCOUNT}", f"/{account}")
    return {
        "id": event_id,
        "eventType": "Microsoft.Storage.BlobCreated",
        "subject": f"/blobServices/default/containers/{container}/blobs/{name}",
        "eventTime": datetime.now(UTC).isoformat(),
        "dataVersion": "",
        "topic": f"/subscriptions/x/resourceGroups/y/providers/Microsoft.Storage/storageAccounts/{account}",
        "data": {"url": f"{endpoint}/{container}/{urllib.parse.quote(name)}", "api": "PutBlob"},
    }


def post_events(host_url: str, events: list[dict[str, Any]], function: str = "ingest_event",
                timeout: float = 60) -> int:  # fmt: skip
    """Deliver `events` to the Event Grid trigger webhook of `function`; the HTTP status."""
    request = urllib.request.Request(
        f"{host_url}/runtime/webhooks/EventGrid?functionName={function}",
        data=json.dumps(events).encode(),
        headers={"aeg-event-type": "Notification", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
