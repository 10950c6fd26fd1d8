"""Event Grid BlobCreated events: which blob they name, and whether it is in batchdrop's own storage account."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

from shared.errors import ConfigError, RejectedInput
from shared.gateways import Gateways
from shared.settings import STORAGE_CONNECTION, Settings
from shared.storage import parse_connection_string
from shared.submit import SubmitOutcome, submit_blob

BLOB_CREATED = "Microsoft.Storage.BlobCreated"
# What `UseDevelopmentStorage=true` stands for (the SDKs expand it to Azurite's well-known account).
DEVELOPMENT_ACCOUNT = "devstoreaccount1"
# A storage account's resource id, as Event Grid puts it in `topic` (or CloudEvents `source`).
_TOPIC_ACCOUNT = re.compile(r"/storageAccounts/([^/]+)", re.IGNORECASE)


@dataclass(frozen=True)
class BlobCreated:
    """A BlobCreated event reduced to what batchdrop acts on."""

    event_id: str
    container: str
    name: str
    accounts: frozenset[str]  # the storage accounts its topic and data.url name, lower case


def _path_style(host: str) -> bool:
    """Emulators (an IP, localhost or a one-label host such as a container name) put the account in the path."""
    if host == "localhost" or (host and "." not in host):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def account_of_url(url: str) -> str | None:
    """The storage account a blob or service URL names: first path segment on emulators, first host label on Azure."""
    parsed = urlparse(url)
    host = (parsed.hostname or "").lower()
    if not host:
        return None
    account = unquote(parsed.path).lstrip("/").split("/", 1)[0] if _path_style(host) else host.split(".", 1)[0]
    return account.lower() or None


def account_of_topic(topic: object) -> str | None:
    """The storage account of an Event Grid topic (`/subscriptions/…/storageAccounts/<name>`), if it names one."""
    found = _TOPIC_ACCOUNT.search(topic) if isinstance(topic, str) else None
    return found.group(1).lower() if found else None


def storage_account(settings: Settings) -> str:
    """The storage account batchdrop's own clients use: the connection string's, else the blob service URI's."""
    if settings.storage_connection_string:  # the same precedence as build_gateways
        pairs = parse_connection_string(settings.storage_connection_string)
        parts = {key.lower(): value for key, value in pairs.items()}
        if parts.get("accountname"):
            return parts["accountname"].lower()
        from_endpoint = account_of_url(parts.get("blobendpoint", ""))
        if from_endpoint:
            return from_endpoint
        if parts.get("usedevelopmentstorage", "").lower() == "true":
            return DEVELOPMENT_ACCOUNT
        raise ConfigError(f"{STORAGE_CONNECTION}: the connection string has neither AccountName nor BlobEndpoint")
    account = account_of_url(settings.blob_service_uri or "")
    if account is None:
        raise ConfigError(f"{STORAGE_CONNECTION}__blobServiceUri: {settings.blob_service_uri!r} names no account")
    return account


def parse_blob_created(event_id: str, data: object, subject: object, topic: object) -> BlobCreated:
    """The blob a BlobCreated event names (data.url, with the subject as fallback) and the accounts it names."""
    url = data.get("url") if isinstance(data, dict) else None
    url = url if isinstance(url, str) and url else None
    accounts = {account_of_topic(topic), account_of_url(url) if url else None}
    named = frozenset(account for account in accounts if account)
    if url:
        parsed = urlparse(url)
        segments = unquote(parsed.path).lstrip("/").split("/")
        if _path_style((parsed.hostname or "").lower()):
            segments = segments[1:]
        if len(segments) >= 2 and segments[0] and "/".join(segments[1:]):
            return BlobCreated(event_id, segments[0], "/".join(segments[1:]), named)
    marker = "/containers/"
    if isinstance(subject, str) and marker in subject and "/blobs/" in subject:
        container, _, name = subject.split(marker, 1)[1].partition("/blobs/")
        if container and name:
            return BlobCreated(event_id, container, name, named)
    raise RejectedInput(f"Event Grid event {event_id}: neither data.url nor subject names a blob")


def check_account(created: BlobCreated, ours: str) -> None:
    """Refuse an event that names another storage account, or none: its blob is not ours to look up."""
    where = f"{created.container}/{created.name}"
    if not created.accounts:
        raise RejectedInput(
            f"Event Grid event {created.event_id}: {where!r}: neither topic nor data.url names a storage account, "
            f"so it cannot be matched to this app's account {ours!r}"
        )
    foreign = sorted(account for account in created.accounts if account != ours.lower())
    if foreign:
        raise RejectedInput(
            f"Event Grid event {created.event_id}: {where!r} is in storage account {foreign[0]!r}, "
            f"not this app's account {ours!r}; refused"
        )


def submit_event(gw: Gateways, created: BlobCreated) -> SubmitOutcome:
    """Submit the blob a BlobCreated event names, if the event is about batchdrop's own storage account."""
    check_account(created, storage_account(gw.settings))
    return submit_blob(gw, created.container, created.name)
