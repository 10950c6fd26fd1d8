"""Event Grid BlobCreated events: which blob they name, which version of it, and whether it is in batchdrop's own
storage account."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote, urlparse

from shared import ids
from shared.errors import ConfigError, RejectedInput
from shared.gateways import Gateways
from shared.models import BlobRef
from shared.settings import STORAGE_CONNECTION, Settings
from shared.storage import parse_connection_string
from shared.submit import SubmitOutcome, check_input_container, find_input, submit

BLOB_CREATED = "Microsoft.Storage.BlobCreated"
# What `UseDevelopmentStorage=true` stands for (the SDKs expand it to Azurite's well-known account).
DEVELOPMENT_ACCOUNT = "devstoreaccount1"
# A storage account's resource id, as Event Grid puts it in `topic` (or CloudEvents `source`).
_TOPIC_ACCOUNT = re.compile(r"/storageAccounts/([^/]+)", re.IGNORECASE)
# Azure Storage etags are about 20 characters: a much longer data.eTag is not one, and goes to no ledger row.
MAX_ETAG = 128
# An event time later than the app's clock by more than this is not a time storage wrote a blob at: the job window
# it would pick may not have begun (a job that stays open till then), so the blob's own properties are read instead.
MAX_CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class BlobCreated:
    """A BlobCreated event reduced to what batchdrop acts on."""

    event_id: str
    container: str
    name: str
    accounts: frozenset[str]  # the storage accounts its topic and data.url name, lower case
    etag: str | None = None  # data.eTag: the version of the blob the event is about (None: absent or malformed)
    event_time: datetime | None = None  # when the blob was written (eventTime, CloudEvents `time`), in UTC
    size: int = 0  # data.contentLength


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


def parse_blob_created(
    event_id: str, data: object, subject: object, topic: object, event_time: object = None
) -> BlobCreated:
    """The blob a BlobCreated event names (data.url, with the subject as fallback), the accounts it names, and the
    version it is about (data.eTag, `event_time`, data.contentLength); a malformed version field counts as absent."""
    url = data.get("url") if isinstance(data, dict) else None
    url = url if isinstance(url, str) and url else None
    accounts = {account_of_topic(topic), account_of_url(url) if url else None}
    named = frozenset(account for account in accounts if account)
    blob = _blob_of_url(url) if url else None
    blob = blob or _blob_of_subject(subject)
    if blob is None:
        raise RejectedInput(f"Event Grid event {event_id}: neither data.url nor subject names a blob")
    container, name = blob
    return BlobCreated(event_id, container, name, named, _etag_of(data), _time_of(event_time), _size_of(data))


def _blob_of_url(url: str) -> tuple[str, str] | None:
    parsed = urlparse(url)
    segments = unquote(parsed.path).lstrip("/").split("/")
    if _path_style((parsed.hostname or "").lower()):
        segments = segments[1:]
    if len(segments) >= 2 and segments[0] and "/".join(segments[1:]):
        return segments[0], "/".join(segments[1:])
    return None


def _blob_of_subject(subject: object) -> tuple[str, str] | None:
    marker = "/containers/"
    if isinstance(subject, str) and marker in subject and "/blobs/" in subject:
        container, _, name = subject.split(marker, 1)[1].partition("/blobs/")
        if container and name:
            return container, name
    return None


def _etag_of(data: object) -> str | None:
    """data.eTag, bare (Azure sends `0x8D…`, the local Event Grid `"0x8D…"` as Azurite answers); None if not one."""
    etag = data.get("eTag") if isinstance(data, dict) else None
    if not isinstance(etag, str) or len(etag) > MAX_ETAG:
        return None
    return ids.normalise_etag(etag) or None


def _time_of(value: object) -> datetime | None:
    """An event time in UTC: a datetime (the Functions worker parses eventTime, naive when it had no offset) or an
    ISO 8601 string (a bulk delivery's document); None when absent or not a time. Event Grid's times are UTC."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _size_of(data: object) -> int:
    size = data.get("contentLength") if isinstance(data, dict) else None
    return size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else 0


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


def input_blob(gw: Gateways, created: BlobCreated) -> BlobRef:
    """The input a BlobCreated event names, as the event describes it when it carries the blob's etag and time (no
    storage request), else as it is now in storage (find_input: one Get Blob Properties).

    Trusting the event means a blob deleted before its claim (or named by a forged event) is not refused here:
    its task fails downloading the input, and collect publishes that failure (docs/internals.md).
    """
    if created.etag is None or created.event_time is None or created.event_time > gw.clock() + MAX_CLOCK_SKEW:
        return find_input(gw, created.container, created.name)
    check_input_container(gw, created.container, created.name)
    return BlobRef(created.container, created.name, created.etag, created.event_time, created.size)


def submit_event(gw: Gateways, created: BlobCreated) -> SubmitOutcome:
    """Submit the blob a BlobCreated event names, if the event is about batchdrop's own storage account."""
    check_account(created, storage_account(gw.settings))
    return submit(gw, input_blob(gw, created))
