"""Collect: a completions-queue message (one completion, or the poll's many) → outputs and manifests published."""

from __future__ import annotations

import azure.functions as func

from shared.collect import collect as collect_outputs
from shared.collect_batch import collect_message
from shared.errors import RejectedInput
from shared.messages import decode_completions
from shared.models import CompletionEvent
from shared.settings import STORAGE_CONNECTION
from shared.triggers.boundary import reject, run

bp = func.Blueprint()


@bp.function_name("collect")
@bp.queue_trigger(arg_name="message", queue_name="completions", connection=STORAGE_CONNECTION)
def collect(message: func.QueueMessage) -> None:
    body = message.get_body().decode("utf-8", errors="replace")
    subject = f"completions message {message.id}"
    try:
        completions = decode_completions(body)
    except RejectedInput as rejection:
        reject(subject, rejection)
        return
    if len(completions) == 1:  # a message of its own: its failures are retried, then poisoned, as the message's
        [only] = completions
        if isinstance(only, RejectedInput):
            reject(subject, only)
            return
        event: CompletionEvent = only
        run(f"completion of {event.task_id}", lambda gw: collect_outputs(gw, event))
        return
    run(subject, lambda gw: collect_message(gw, subject, completions))
