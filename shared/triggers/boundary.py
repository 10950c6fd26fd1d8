"""What every trigger does with the outcome of a use case: log once, record or re-raise."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from shared.errors import ConfigError, PermanentError, TransientError
from shared.gateways import Gateways, gateways

logger = logging.getLogger("batchdrop.triggers")
T = TypeVar("T")


def reject(subject: str, error: PermanentError) -> None:
    """Record something refused before any use case could run (a malformed event or message)."""
    logger.warning("%s: %s", subject, error)
    gateways().ledger.record_rejection(subject, str(error))


def run(subject: str, use_case: Callable[[Gateways], T]) -> T | None:
    """Run a use case: permanent failures are recorded (status API) and not retried; the rest re-raise."""
    gw = gateways()
    try:
        return use_case(gw)
    except PermanentError as error:
        logger.warning("%s: %s", subject, error)
        gw.ledger.record_rejection(subject, str(error))
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
