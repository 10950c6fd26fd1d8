"""Collect: one completion event from the queue → outputs and manifest published into `results`."""

from __future__ import annotations

import azure.functions as func

from shared.collect import collect as collect_outputs
from shared.errors import RejectedInput
from shared.messages import decode_completion
from shared.settings import STORAGE_CONNECTION
from shared.triggers.boundary import reject, run

bp = func.Blueprint()


@bp.function_name("collect")
@bp.queue_trigger(arg_name="message", queue_name="completions", connection=STORAGE_CONNECTION)
def collect(message: func.QueueMessage) -> None:
    body = message.get_body().decode("utf-8", errors="replace")
    try:
        event = decode_completion(body)
    except RejectedInput as rejection:
        reject(f"completions message {message.id}", rejection)
        return
    run(f"completion of {event.task_id}", lambda gw: collect_outputs(gw, event))
