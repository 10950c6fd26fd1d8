"""The queue messages: one JSON object per finished task (completions), per delayed re-check (completion checks)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from shared.errors import RejectedInput
from shared.models import CompletionCheck, CompletionEvent, TaskResult


def encode_completion(event: CompletionEvent) -> str:
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
    return json.dumps(document)


def decode_completion(body: str) -> CompletionEvent:
    """A completions-queue message body, or RejectedInput naming what is wrong with it."""
    try:
        document = json.loads(body)
    except json.JSONDecodeError as error:
        raise RejectedInput(f"completion message is not JSON: {error}") from None
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
