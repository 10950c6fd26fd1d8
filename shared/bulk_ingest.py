"""Bulk ingestion: a whole Event Grid delivery (up to `maxEventsPerBatch` events) submitted with one Batch
add-collection per job per 100 new inputs, instead of one Task_Add per event.

Event Grid sends a batch with whatever events are ready and never waits to fill it (docs/internals.md, "Bulk
ingestion"), so a single upload still goes out alone and reaches Batch as fast as on the one-event path.
Every step is idempotent, so a delivery that fails transiently is answered with a 5xx and Event Grid delivers
the whole batch again.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from shared.errors import RejectedInput, TransientError
from shared.events import BLOB_CREATED, BlobCreated, check_account, input_blob, parse_blob_created, storage_account
from shared.gateways import Gateways
from shared.models import BlobRef, InputRecord, InputState
from shared.pipelines import PipelineSpec
from shared.redact import redact
from shared.submit import Claimed, SubmitAction, SubmitOutcome, claim_many, submit_claimed

logger = logging.getLogger(__name__)
SUBSCRIPTION_VALIDATION = "Microsoft.EventGrid.SubscriptionValidationEvent"
# Storage round trips per input (the ledger claim; blob properties too for an event without an etag) overlap this
# many at a time.
CLAIM_THREADS = 8
# Pauses (s) before each re-read of rows another submitter holds, before asking Event Grid to deliver again.
CONFIRM_WAITS = (0.2, 0.4, 0.8, 1.6)
_pause = time.sleep


class BadDelivery(RejectedInput):
    """A request body that is not an array of events; the message names what is wrong."""


@dataclass(frozen=True)
class BulkReport:
    """What one delivery came to, counted per event."""

    events: int = 0
    ignored: int = 0  # not BlobCreated (deletions, subscription notices)
    rejected: int = 0  # refused and recorded: malformed, another account or container, no such blob, bad name
    repeated: int = 0  # the same blob named again in this delivery
    duplicate: int = 0  # already submitted (an earlier delivery, the blob trigger or the sweep): no Batch request
    in_progress: int = 0  # another submitter holds a fresh claim on it
    skipped: int = 0  # no pipeline takes it
    submitted: int = 0
    waiting: int = 0  # recorded for a scheduled pipeline, submitted when its schedule fires
    grouped: int = 0  # recorded in its group (shared/groups.py): a group's task is submitted when it completes

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ParsedEvent:
    """One element of a delivery: its id and type, and the rest as it came."""

    event_id: str
    event_type: str
    document: Mapping[str, Any]


def parse_delivery(body: bytes) -> list[ParsedEvent | RejectedInput]:
    """The events of a delivery body (Event Grid schema or CloudEvents), each parsed or the reason it is not.

    A body that is not a JSON array of events raises BadDelivery; one malformed element is refused alone, so the
    rest of the batch still runs (a 400 would make Event Grid drop the whole batch without retrying).
    """
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise BadDelivery(f"the body is not JSON: {error}") from None
    if isinstance(document, dict) and "specversion" in document:
        document = [document]  # one CloudEvent in structured mode
    if not isinstance(document, list):
        raise BadDelivery(f"the body is a JSON {type(document).__name__}; expected an array of events")
    if not document:
        raise BadDelivery("the body is an empty array; expected at least one event")
    parsed: list[ParsedEvent | RejectedInput] = []
    for index, event in enumerate(document):
        if not isinstance(event, dict):
            kind = type(event).__name__
            parsed.append(RejectedInput(f"event {index} of the delivery is a JSON {kind}, not an object"))
            continue
        event_id, event_type = event.get("id"), event.get("eventType", event.get("type"))
        if not isinstance(event_id, str) or not event_id:
            parsed.append(RejectedInput(f"event {index} of the delivery has no string 'id'"))
        elif not isinstance(event_type, str):
            parsed.append(RejectedInput(f"event {event_id}: no string 'eventType' (or CloudEvents 'type')"))
        else:
            parsed.append(ParsedEvent(event_id, event_type, event))
    return parsed


def validation_code(events: Sequence[ParsedEvent | RejectedInput]) -> str | None:
    """The code of a subscription validation event, None when the delivery is not a validation handshake."""
    for event in events:
        if isinstance(event, ParsedEvent) and event.event_type == SUBSCRIPTION_VALIDATION:
            data = event.document.get("data")
            code = data.get("validationCode") if isinstance(data, dict) else None
            if not isinstance(code, str) or not code:
                raise BadDelivery(f"validation event {event.event_id} has no data.validationCode")
            return code
    return None


def ingest_delivery(gw: Gateways, events: Sequence[ParsedEvent | RejectedInput]) -> BulkReport:
    """Submit every input a delivery names: claim each input's row, then one add-collection per job per 100.

    Refusals are recorded where status shows them; a storage or Batch outage raises TransientError (the whole
    delivery is redelivered: claims and task ids make a second pass add nothing twice).
    """
    counts: Counter[str] = Counter(events=len(events))
    created: list[BlobCreated] = []
    seen: set[tuple[str, str, str | None]] = set()
    ours = storage_account(gw.settings)
    for event in events:
        if isinstance(event, RejectedInput):
            _record(gw, "Event Grid delivery", event, counts)
            continue
        if event.event_type != BLOB_CREATED:
            logger.info("ignored Event Grid event %s of type %s", event.event_id, event.event_type)
            counts["ignored"] += 1
            continue
        document = event.document
        try:
            # CloudEvents name the topic `source` and the event time `time`
            topic = document.get("topic", document.get("source"))
            event_time = document.get("eventTime", document.get("time"))
            blob = parse_blob_created(event.event_id, document.get("data"), document.get("subject"), topic, event_time)
            check_account(blob, ours)
        except RejectedInput as rejection:
            _record(gw, f"event {event.event_id}", rejection, counts)
            continue
        # Two uploads of one name in a delivery are two versions, each its own task (as the sweep would list
        # them); an event without an etag is looked up, so it stands for whatever version is there.
        version = (blob.container, blob.name, blob.etag)
        if version in seen:
            counts["repeated"] += 1
            continue
        seen.add(version)
        created.append(blob)
    claimed: list[tuple[InputRecord, PipelineSpec]] = []
    held: list[str] = []  # task ids another submitter has freshly claimed
    for outcome in _claim_events(gw, created):
        if isinstance(outcome, RejectedInput):
            counts["rejected"] += 1
        elif isinstance(outcome, SubmitOutcome) and outcome.action is SubmitAction.IN_PROGRESS:
            held.append(outcome.task_id)
        elif isinstance(outcome, SubmitOutcome):
            counts[_COUNTED[outcome.action]] += 1
        else:
            claimed.append(outcome)
    counts["submitted"] = submit_claimed(gw, claimed)
    still_held = _await_submitters(gw, held)
    counts["duplicate"] += len(held) - len(still_held)
    counts["in_progress"] = len(still_held)
    report = BulkReport(**counts)
    logger.info("Event Grid delivery: %s", report.as_dict())
    if report.in_progress:
        # Another submitter's fresh claim: it may have died (an earlier attempt of this very delivery that failed,
        # say). Asking for the batch again confirms it: submitted by then (no Batch request), or stale and taken over.
        raise TransientError(
            f"{report.in_progress} of {report.events} inputs are claimed by another submitter; deliver again to "
            f"confirm them (this delivery: {report.submitted} submitted, {report.duplicate} already submitted)"
        )
    return report


def _await_submitters(gw: Gateways, task_ids: list[str]) -> list[str]:
    """Of inputs another submitter holds, those it has not submitted after CONFIRM_WAITS: a live one usually
    finishes within a second (a concurrent delivery of the same events), and one read each is cheaper than a
    redelivery of the whole batch."""
    pending = list(task_ids)
    for pause in CONFIRM_WAITS:
        if not pending:
            break
        _pause(pause)
        pending = [task_id for task_id in pending if _still_claimed(gw, task_id)]
    return pending


def _still_claimed(gw: Gateways, task_id: str) -> bool:
    if gw.submitted.job_of(task_id) is not None:  # this process submitted it meanwhile
        return False
    record = gw.ledger.get_input(task_id)
    return record is not None and record.state is InputState.CLAIMED


_COUNTED = {
    SubmitAction.DUPLICATE: "duplicate",
    SubmitAction.IN_PROGRESS: "in_progress",
    SubmitAction.SKIPPED: "skipped",
    SubmitAction.REJECTED: "rejected",
    SubmitAction.CREATED: "submitted",
    SubmitAction.WAITING: "waiting",
    SubmitAction.GROUPED: "grouped",
}


def _claim_events(gw: Gateways, created: Sequence[BlobCreated]) -> list[Claimed | SubmitOutcome | RejectedInput]:
    """Each event's input claimed: the blob as the event describes it (else as storage has it: one Get Blob
    Properties each, CLAIM_THREADS at a time), then the ledger rows in bulk (one request per partition for the rows
    of one partition). A refusal is recorded here; an outage raises."""
    with ThreadPoolExecutor(CLAIM_THREADS) as pool:
        found = list(pool.map(lambda event: _input_of(gw, event), created))
    blobs = [blob for blob in found if isinstance(blob, BlobRef)]
    claimed = iter(claim_many(gw, blobs))
    outcomes: list[Claimed | SubmitOutcome | RejectedInput] = []
    for event, blob in zip(created, found, strict=True):
        outcome = next(claimed) if isinstance(blob, BlobRef) else blob
        if isinstance(outcome, RejectedInput) and isinstance(blob, BlobRef):  # its group refused it
            _record(gw, f"event {event.event_id}", outcome)
        outcomes.append(outcome)
    return outcomes


def _input_of(gw: Gateways, created: BlobCreated) -> BlobRef | RejectedInput:
    try:
        return input_blob(gw, created)
    except RejectedInput as rejection:
        _record(gw, f"event {created.event_id}", rejection)
        return rejection


def _record(gw: Gateways, subject: str, rejection: RejectedInput, counts: Counter[str] | None = None) -> None:
    """A refusal recorded where status shows it (a SAS in what the sender wrote is redacted)."""
    gw.ledger.record_rejection(redact(subject), redact(str(rejection)))
    logger.warning("%s: %s", subject, rejection)
    if counts is not None:
        counts["rejected"] += 1
