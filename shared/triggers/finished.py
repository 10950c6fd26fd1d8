"""Completion events: a staging container's stderr log created (Event Grid), and the delayed re-checks."""

from __future__ import annotations

import logging

import azure.functions as func

from shared.errors import RejectedInput
from shared.finished import recheck, task_finished
from shared.messages import decode_check
from shared.settings import STORAGE_CONNECTION
from shared.triggers.boundary import reject, run, run_blob_created

bp = func.Blueprint()
logger = logging.getLogger("batchdrop.finished")


@bp.function_name("task_finished")
@bp.event_grid_trigger(arg_name="event")
def task_finished_event(event: func.EventGridEvent) -> None:
    """BlobCreated for `<staging prefix>-…/logs/stderr.txt`: the task's completion message, or a delayed re-check.
    Other event types are ignored; events for another account or an unknown container are refused and recorded."""
    run_blob_created(event, task_finished)


@bp.function_name("recheck_task")
@bp.queue_trigger(arg_name="message", queue_name="completion-checks", connection=STORAGE_CONNECTION)
def recheck_task(message: func.QueueMessage) -> None:
    body = message.get_body().decode("utf-8", errors="replace")
    try:
        check = decode_check(body)
    except RejectedInput as rejection:
        reject(f"completion-checks message {message.id}", rejection)
        return
    run(f"completion check {check.attempt} of {check.task_id}", lambda gw: recheck(gw, check))
