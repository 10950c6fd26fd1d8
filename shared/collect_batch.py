"""Collect the completions of one queue message: the poll sends many to a message (shared/messages.py).

Each completion is collected on its own. One that is refused (PermanentError: an unknown task, a malformed
entry) is recorded where status shows it, as the trigger boundary records a refused message. One that fails for
any other reason (storage or Batch unreachable, an unexpected error) is sent again in a message of its own, so the
queue's retries and its poison queue apply to it alone; only if that send fails does the whole message fail, and
the queue delivers it again (collect publishes each completion once however often it runs).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from shared.collect import CollectOutcome, collect
from shared.errors import PermanentError, RejectedInput
from shared.gateways import Gateways
from shared.models import CompletionEvent
from shared.redact import redact

logger = logging.getLogger(__name__)
COLLECT_THREADS = 4  # completions of one message collected at once (the host runs several messages at once too)


@dataclass
class MessageReport:
    """What one message's completions came to."""

    collected: list[CollectOutcome] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # why, for each completion refused and recorded
    sent_again: list[str] = field(default_factory=list)  # task ids of completions sent again one to a message


def collect_message(
    gw: Gateways, subject: str, completions: Sequence[CompletionEvent | RejectedInput], threads: int = COLLECT_THREADS
) -> MessageReport:
    """Collect every completion of one message (`subject` names the message in what is recorded), `threads` at a
    time (1: in the calling thread)."""
    report = MessageReport()
    retry: list[CompletionEvent] = []

    def one(item: CompletionEvent | RejectedInput) -> CollectOutcome | PermanentError | CompletionEvent:
        if isinstance(item, RejectedInput):
            return item
        try:
            return collect(gw, item)
        except PermanentError as refusal:
            return refusal
        except Exception:  # sent again alone: its retries and its poison queue are its own
            logger.exception("%s: completion of %s failed; it is sent again in a message of its own", subject,
                             item.task_id)  # fmt: skip
            return item

    if threads <= 1:
        results = [one(item) for item in completions]
    else:
        with ThreadPoolExecutor(min(threads, len(completions) or 1)) as pool:
            results = list(pool.map(one, completions))
    for result in results:
        if isinstance(result, CollectOutcome):
            report.collected.append(result)
        elif isinstance(result, PermanentError):
            logger.warning("%s: %s", subject, result)
            gw.ledger.record_rejection(redact(subject), redact(str(result)))
            report.refused.append(str(result))
        else:
            retry.append(result)
    if retry:
        gw.queue.send(retry, separately=True)  # a failure here fails the message: delivered again, whole
        report.sent_again = [event.task_id for event in retry]
    return report
