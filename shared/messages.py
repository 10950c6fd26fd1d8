"""The queue messages: finished tasks (completions: one, or many in one message), delayed re-checks (checks)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from shared.errors import RejectedInput
from shared.models import CompletionCheck, CompletionEvent, TaskResult

# A message holds at most this many completions and this many bytes (a queue message's limit is 64 KiB).
COMPLETIONS_PER_MESSAGE = 32
MESSAGE_BYTES = 48 * 1024


def encode_completion(event: CompletionEvent) -> str:
    return json.dumps(_completion_document(event))


def encode_completions(events: Sequence[CompletionEvent]) -> list[str]:
    """The message bodies that carry `events`: a lone completion as its own object (what task_finished sends),
    several as `{"completions": [...]}` of at most COMPLETIONS_PER_MESSAGE and MESSAGE_BYTES each."""
    bodies: list[str] = []
    batch: list[str] = []  # each completion serialised once
    size = 0
    for event in events:
        encoded = encode_completion(event)
        if batch and (len(batch) == COMPLETIONS_PER_MESSAGE or size + len(encoded) + 2 > MESSAGE_BYTES):
            bodies.append(_batch_body(batch))
            batch, size = [], 0
        batch.append(encoded)
        size += len(encoded) + 2
    if batch:
        bodies.append(_batch_body(batch))
    return bodies


def _batch_body(batch: list[str]) -> str:
    """The same text json.dumps makes of a lone completion, or of {"completions": [...]}."""
    return batch[0] if len(batch) == 1 else '{"completions": [' + ", ".join(batch) + "]}"


def decode_completions(body: str) -> list[CompletionEvent | RejectedInput]:
    """The completions a message carries, each decoded or the reason it is not (a malformed one does not keep the
    others of its message from being collected); RejectedInput when the body itself is not a message."""
    try:
        document = json.loads(body)
    except json.JSONDecodeError as error:
        raise RejectedInput(f"completion message is not JSON: {error}") from None
    if isinstance(document, dict) and "completions" in document:
        batch = document["completions"]
        if not isinstance(batch, list) or not batch:
            raise RejectedInput("completion message field completions must be a non-empty list")
        return [_decoded(item) for item in batch]
    return [_completion(document)]


def _decoded(document: object) -> CompletionEvent | RejectedInput:
    try:
        return _completion(document)
    except RejectedInput as rejection:
        return rejection


def _completion_document(event: CompletionEvent) -> dict[str, Any]:
    document: dict[str, Any] = {"job_id": event.job_id, "task_id": event.task_id}
    if event.task is not None:
        task = event.task
        document["task"] = {
            "state": task.state,
            "exit_code": task.exit_code,
            "result": task.result,
            "failure": task.failure,
            "started_at": task.started_at.isoformat() if task.started_at else None,
            "finished_at": task.finished_at.isoformat() if task.finished_at else None,
            "retries": task.retries,
        }
    return document


def decode_completion(body: str) -> CompletionEvent:
    """A completions-queue message body of one completion, or RejectedInput naming what is wrong with it."""
    try:
        document = json.loads(body)
    except json.JSONDecodeError as error:
        raise RejectedInput(f"completion message is not JSON: {error}") from None
    return _completion(document)


def _completion(document: object) -> CompletionEvent:
    if not isinstance(document, dict):
        raise RejectedInput("completion message must be a JSON object with job_id and task_id")
    job_id, task_id = document.get("job_id"), document.get("task_id")
    if not isinstance(job_id, str) or not job_id or not isinstance(task_id, str) or not task_id:
        raise RejectedInput("completion message needs string fields job_id and task_id")
    task = document.get("task")
    return CompletionEvent(job_id, task_id, _task(task_id, task) if task is not None else None)


def _task(task_id: str, task: object) -> TaskResult:
    if not isinstance(task, dict):
        raise RejectedInput("completion message field task must be an object")
    try:
        exit_code = task.get("exit_code")
        failure = task.get("failure")
        return TaskResult(
            task_id=task_id,
            state=str(task["state"]),
            exit_code=int(exit_code) if exit_code is not None else None,
            result=str(task["result"]) if task.get("result") is not None else None,
            failure=failure if isinstance(failure, dict) else None,
            started_at=_moment(task.get("started_at")),
            finished_at=_moment(task.get("finished_at")),
            retries=int(task.get("retries") or 0),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise RejectedInput(f"completion message field task is malformed: {error!r}") from None


def _moment(value: object) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


def encode_check(check: CompletionCheck) -> str:
    return json.dumps({"task_id": check.task_id, "staging": check.staging, "attempt": check.attempt})


def decode_check(body: str) -> CompletionCheck:
    """A completion-checks message body, or RejectedInput naming what is wrong with it."""
    try:
        document = json.loads(body)
    except json.JSONDecodeError as error:
        raise RejectedInput(f"completion check message is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise RejectedInput("completion check message must be a JSON object with task_id, staging and attempt")
    task_id, staging, attempt = document.get("task_id"), document.get("staging"), document.get("attempt")
    if not isinstance(task_id, str) or not task_id or not isinstance(staging, str) or not staging:
        raise RejectedInput("completion check message needs string fields task_id and staging")
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
        raise RejectedInput("completion check message needs an integer attempt of at least 1")
    return CompletionCheck(task_id, staging, attempt)
