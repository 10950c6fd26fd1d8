"""What every trigger does with the outcome of a use case: log once, record or re-raise."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import azure.functions as func

from shared.errors import ConfigError, PermanentError, RejectedInput, TransientError
from shared.events import BLOB_CREATED, BlobCreated, parse_blob_created
from shared.gateways import Gateways, gateways
from shared.redact import install_log_redaction, redact

logger = logging.getLogger("batchdrop.triggers")
T = TypeVar("T")
# Every trigger imports this module: from here on no log record of the app's process carries a SAS signature.
install_log_redaction()


def reject(subject: str, error: PermanentError) -> None:
    """Record something refused before any use case could run (a malformed event or message)."""
    logger.warning("%s: %s", subject, error)
    gateways().ledger.record_rejection(redact(subject), redact(str(error)))


def run(subject: str, use_case: Callable[[Gateways], T]) -> T | None:
    """Run a use case: permanent failures are recorded (status API) and not retried; the rest re-raise."""
    gw = gateways()
    try:
        return use_case(gw)
    except PermanentError as error:
        logger.warning("%s: %s", subject, error)
        gw.ledger.record_rejection(redact(subject), redact(str(error)))
        return None
    except TransientError as error:
        logger.warning("%s: will retry: %s", subject, error)
        raise
    except ConfigError:
        logger.exception("%s: configuration error", subject)
        raise
    except Exception:
        logger.exception("%s: unexpected failure", subject)
        raise


def run_blob_created(event: func.EventGridEvent, use_case: Callable[[Gateways, BlobCreated], T]) -> T | None:
    """An Event Grid trigger's event: BlobCreated goes to `use_case`; other types are ignored; an event naming no
    blob, or another storage account, is refused and recorded."""
    if event.event_type != BLOB_CREATED:
        logger.info("ignored Event Grid event %s of type %s", event.id, event.event_type)
        return None
    subject = f"event {event.id}"
    try:
        created = parse_blob_created(event.id, event.get_json(), event.subject, event.topic, event.event_time)
    except RejectedInput as rejection:
        reject(subject, rejection)
        return None
    return run(subject, lambda gw: use_case(gw, created))
