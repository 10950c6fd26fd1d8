"""Completion events: a task's stderr log landing in its staging container becomes its completion message at once.

Every task uploads `logs/stderr.txt` into its own staging container at taskCompletion, whatever its exit code.
Event Grid's BlobCreated for that blob names only the container; the ledger's staging index turns it into the
input, one Batch GET confirms the task is completed, and the poll's own completion message goes on the queue
(collect stays one code path). Batch can say `completed` later than the upload lands: then a delayed re-check
goes on the completion-checks queue, a bounded number of times, and after that the poll (the safety net for
tasks that never upload a log) has it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

from shared.errors import RejectedInput
from shared.events import BlobCreated, check_account, storage_account
from shared.gateways import Gateways
from shared.models import CompletionCheck, InputRecord
from shared.poll import completion_event
from shared.ports import FINAL_STATES

logger = logging.getLogger(__name__)
# The blob whose creation says a task has finished (batchdrop's task spec uploads it at taskCompletion).
STDERR_LOG = "logs/stderr.txt"


class FinishedAction(StrEnum):
    ENQUEUED = "enqueued"  # Batch says completed: the completion message is on the queue
    RECHECK = "recheck"  # Batch does not say completed yet: a delayed re-check is queued
    ALREADY_FINAL = "already-final"  # the input is collected (or otherwise final): no Batch request
    LEFT_TO_POLL = "left-to-poll"  # the re-checks are spent: the poll collects it when Batch catches up
    IGNORED = "ignored"  # another blob of a staging container: not the signal


@dataclass(frozen=True)
class FinishedOutcome:
    """What one completion event or re-check did."""

    staging: str
    action: FinishedAction
    task_id: str = ""
    job_id: str = ""
    attempt: int = 0  # 0 for the event itself, n for the n-th re-check
    delay_seconds: int = 0  # for RECHECK: when the next look is due


def task_finished(gw: Gateways, created: BlobCreated) -> FinishedOutcome:
    """A BlobCreated event for a staging container's stderr log: enqueue the task's completion, or a re-check.

    Refused (RejectedInput, recorded by the trigger) when the event is about another storage account, a container
    that is not a staging container, or a staging container no input of this ledger was given.
    """
    check_account(created, storage_account(gw.settings))
    where = f"{created.container}/{created.name}"
    prefix = gw.settings.staging_prefix + "-"
    if not created.container.startswith(prefix):
        raise RejectedInput(
            f"Event Grid event {created.event_id}: {where!r} is not in a staging container "
            f"(their names begin with {prefix!r}); refused"
        )
    if created.name != STDERR_LOG:
        logger.info("ignored Event Grid event %s for %s: only %s says a task finished", created.event_id, where,
                    STDERR_LOG)  # fmt: skip
        return FinishedOutcome(created.container, FinishedAction.IGNORED)
    record = gw.ledger.input_for_staging(created.container)
    if record is None:
        raise RejectedInput(
            f"Event Grid event {created.event_id}: {where!r}: no input in the ledger has staging container "
            f"{created.container!r}; refused"
        )
    return _look(gw, record, attempt=0)


def recheck(gw: Gateways, check: CompletionCheck) -> FinishedOutcome:
    """A delayed re-check from the completion-checks queue: look at the task again."""
    record = gw.ledger.input_for_staging(check.staging)
    if record is None or record.task_id != check.task_id:
        raise RejectedInput(
            f"completion check names task {check.task_id} with staging container {check.staging!r}, "
            "which the ledger does not know"
        )
    return _look(gw, record, check.attempt)


def recheck_delay(gw: Gateways, attempt: int) -> int:
    """Seconds before re-check number `attempt` (1, 2, …): the first delay, doubled each time, capped."""
    settings = gw.settings
    return int(min(settings.completion_recheck_seconds * 2 ** (attempt - 1), settings.completion_recheck_max_seconds))


def _look(gw: Gateways, record: InputRecord, attempt: int) -> FinishedOutcome:
    """One ledger row already read; at most one Batch request; a completion message or a re-check."""
    ids = {"job_id": record.job_id, "task_id": record.task_id}
    if record.state in FINAL_STATES:
        return FinishedOutcome(record.staging, FinishedAction.ALREADY_FINAL, record.task_id, record.job_id, attempt)
    task = gw.batch.get_task(record.job_id, record.task_id)
    if task is None:
        raise RejectedInput(f"completion event for task {record.task_id}: Batch has no such task in {record.job_id}")
    if task.completed:
        gw.queue.send([completion_event(record.job_id, record.task_id, task)])
        logger.info("task completed (completion event, re-check %d)", attempt, extra=ids)
        return FinishedOutcome(record.staging, FinishedAction.ENQUEUED, record.task_id, record.job_id, attempt)
    if attempt >= gw.settings.completion_rechecks:
        logger.warning(
            "task %s is still %s after %d re-checks: left to the poll", record.task_id, task.state, attempt, extra=ids
        )
        return FinishedOutcome(record.staging, FinishedAction.LEFT_TO_POLL, record.task_id, record.job_id, attempt)
    delay = recheck_delay(gw, attempt + 1)
    gw.queue.schedule_check(CompletionCheck(record.task_id, record.staging, attempt + 1), delay)
    logger.info("task %s is %s: re-check %d in %d s", record.task_id, task.state, attempt + 1, delay, extra=ids)
    return FinishedOutcome(record.staging, FinishedAction.RECHECK, record.task_id, record.job_id, attempt, delay)
