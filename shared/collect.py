"""Collect use case: publish a finished task's outputs into `results` by server-side copy, manifest last."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from shared import ids
from shared.errors import RejectedInput, TransientError
from shared.gateways import Gateways
from shared.models import CompletionEvent, InputRecord, InputState, TaskResult
from shared.pipelines import OUTPUT_DIR

logger = logging.getLogger(__name__)
MANIFEST = "_manifest.json"
LOGS = "_logs/"
STDERR_TAIL_BYTES = 4096


@dataclass(frozen=True)
class CollectOutcome:
    task_id: str
    action: str  # "published" or "already-published"
    status: str = ""
    manifest: str = ""


def collect(gw: Gateways, event: CompletionEvent) -> CollectOutcome:
    """Publish one completed task's outputs and its manifest; a repeat publishes nothing twice."""
    record = gw.ledger.get_input(event.task_id)
    if record is None:
        raise RejectedInput(f"completion for unknown task {event.task_id} (job {event.job_id})")
    if record.job_id != event.job_id:
        raise RejectedInput(f"completion names job {event.job_id} but task {event.task_id} is in {record.job_id}")
    result_prefix = ids.result_prefix(record.name)
    manifest_name = result_prefix + MANIFEST
    if record.state is InputState.COLLECTED:
        return CollectOutcome(record.task_id, "already-published", record.outcome, manifest_name)
    existing = gw.blobs.read_json(gw.settings.results_container, manifest_name)
    if existing is not None and existing.get("task_id") == record.task_id:
        _mark_collected(gw, record, str(existing.get("status", "")))
        return CollectOutcome(record.task_id, "already-published", str(existing.get("status")), manifest_name)
    task = event.task if event.task is not None and event.task.completed else None
    task = task or gw.batch.get_task(event.job_id, event.task_id)
    if task is None:
        raise RejectedInput(f"Batch has no task {event.task_id} in job {event.job_id}")
    if not task.completed:
        raise TransientError(f"task {event.task_id} is {task.state}, not completed yet")
    outputs, logs = _publish_outputs(gw, record, result_prefix)
    missing = _missing_outputs(gw, record, result_prefix, outputs)
    manifest = _manifest(gw, record, task, outputs, logs, missing)
    gw.blobs.write_json(gw.settings.results_container, manifest_name, manifest)
    _mark_collected(gw, record, str(manifest["status"]))
    # Everything is published: the task's staging container has served its purpose.
    gw.blobs.delete_container(ids.staging_container(gw.settings.staging_prefix, record.task_id))
    logger.info(
        "published %s: %s", record.name, manifest["status"], extra={"job_id": record.job_id, "task_id": record.task_id}
    )
    return CollectOutcome(record.task_id, "published", str(manifest["status"]), manifest_name)


def _publish_outputs(gw: Gateways, record: InputRecord, result_prefix: str) -> tuple[list[str], dict[str, str]]:
    settings = gw.settings
    staging = ids.staging_container(settings.staging_prefix, record.task_id)
    outputs: list[str] = []
    logs: dict[str, str] = {}
    for blob in gw.blobs.list_blobs(staging):
        relative = blob.name
        if relative.startswith("out/"):
            target = result_prefix + relative[len("out/") :]
            outputs.append(target)
        elif relative.startswith("logs/"):
            target = result_prefix + LOGS + relative[len("logs/") :]
            logs[relative[len("logs/") :]] = target
        else:
            continue
        gw.blobs.copy(staging, blob.name, settings.results_container, target)
    return sorted(outputs), logs


def _missing_outputs(gw: Gateways, record: InputRecord, result_prefix: str, outputs: list[str]) -> list[str]:
    """Declared outputs (patterns without wildcards) that the task did not produce.

    Batch itself does not fail a task whose output pattern matched nothing, so batchdrop checks.
    """
    pipeline = gw.pipelines.by_name(record.pipeline)
    declared = [p for p in pipeline.outputs if not any(c in p for c in "*?[")] if pipeline else []
    return [name for name in declared if result_prefix + name not in outputs]


def _manifest(
    gw: Gateways,
    record: InputRecord,
    task: TaskResult,
    outputs: list[str],
    logs: dict[str, str],
    missing: list[str],
) -> dict[str, object]:
    stderr = logs.get("stderr.txt")
    stderr_tail = ""
    status, failure = task.outcome.value, task.failure
    if status == "succeeded" and missing:
        status = "failed"
        failure = {
            "category": "batchdrop",
            "code": "MissingOutput",
            "message": f"the task exited {task.exit_code} but did not write the declared output(s) "
            + ", ".join(f"{OUTPUT_DIR}/{name}" for name in missing),
            "details": {"missing": missing},
        }
    if status == "failed" and stderr:
        stderr_tail = gw.blobs.read_tail(gw.settings.results_container, stderr, STDERR_TAIL_BYTES)
    return {
        "input": record.name,
        "input_container": record.container,
        "input_etag": record.etag,
        "pipeline": record.pipeline,
        "job_id": record.job_id,
        "task_id": record.task_id,
        "status": status,
        "exit_code": task.exit_code,
        "failure": failure,
        "outputs": outputs,
        "stdout": logs.get("stdout.txt"),
        "stderr": stderr,
        "stderr_tail": stderr_tail,
        "started_at": task.started_at.isoformat() if task.started_at else None,
        "finished_at": task.finished_at.isoformat() if task.finished_at else None,
        "retries": task.retries,
        "published_at": gw.clock().isoformat(),
    }


def _mark_collected(gw: Gateways, record: InputRecord, status: str) -> None:
    record.state = InputState.COLLECTED
    record.outcome = status
    gw.ledger.save_input(record)
