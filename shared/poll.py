"""Poll use case: completions since each job's watermark become queue events; closed jobs end."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared import ids, summary
from shared.gateways import Gateways
from shared.models import CompletedTask, CompletionEvent, InputState, JobRecord, JobState, TaskResult
from shared.ports import FINAL_STATES

logger = logging.getLogger(__name__)

# Staging containers deleted per poll for terminated jobs: bounded so one timer run stays short at any job size.
STAGING_DELETES_PER_POLL = 2000
STAGING_DELETE_THREADS = 8
READ_THREADS = 8


@dataclass(frozen=True)
class PollReport:
    jobs: int
    events: int
    terminated: list[str]
    deleted: list[str]
    staging_deleted: int = 0


def completion_event(job_id: str, task_id: str, result: TaskResult | None) -> CompletionEvent:
    """The completions-queue message for a task Batch reports completed: the poll's, and task_finished's."""
    return CompletionEvent(job_id, task_id, result)


def poll(gw: Gateways) -> PollReport:
    """One poll: cost grows with active jobs and new completions, never with tasks already collected."""
    now = gw.clock()
    overlap = timedelta(seconds=gw.settings.poll_overlap_seconds)
    events = 0
    terminated: list[str] = []
    deleted: list[str] = []
    active_jobs = 0
    staging_budget = STAGING_DELETES_PER_POLL
    for job in gw.ledger.jobs(active_only=False):
        if job.state is JobState.ACTIVE:
            active_jobs += 1
            events += _poll_job(gw, job, overlap)
            if _close_if_done(gw, job, now):
                terminated.append(job.job_id)
        if job.state is JobState.TERMINATED and not job.staging_cleared and staging_budget > 0:
            staging_budget -= _clear_staging(gw, job, staging_budget)
        if job.state is JobState.TERMINATED and job.staging_cleared and _retention_over(gw, job, now):
            gw.batch.delete_job(job.job_id)
            gw.ledger.retire_job(job)  # it leaves ledger.jobs(): no later poll or status call reads it
            deleted.append(job.job_id)
    return PollReport(active_jobs, events, terminated, deleted, STAGING_DELETES_PER_POLL - staging_budget)


def _poll_job(gw: Gateways, job: JobRecord, overlap: timedelta) -> int:
    """Emit an event for each task completed since the watermark (less an overlap), once."""
    since = job.watermark - overlap if job.watermark is not None else None
    completed = gw.batch.completed_since(job.job_id, since)
    already = set(job.recent_task_ids)
    # A completion after the watermark is new even for a task id seen before: collect reactivated that
    # task after an infrastructure failure and this is its next run ending.
    fresh = [
        task
        for task in completed
        if task.task_id not in already or (job.watermark is not None and task.completed_at > job.watermark)
    ]
    fresh = [task for task in fresh if task.task_id != summary.SUMMARY_TASK_ID]  # _close_if_done collects it
    if gw.settings.completion_events:
        fresh = _not_collected(gw, fresh)
    # Enqueue before moving the watermark: a crash in between re-emits, never loses.
    gw.queue.send(completion_event(job.job_id, task.task_id, task.result) for task in fresh)
    if completed:
        watermark = max(task.completed_at for task in completed)
        if job.watermark is None or watermark > job.watermark:
            job.watermark = watermark
        assert job.watermark is not None
        horizon = job.watermark - overlap
        job.recent_task_ids = [task.task_id for task in completed if task.completed_at >= horizon]
        gw.ledger.save_job(job)
    for task in fresh:
        logger.info("task completed", extra={"job_id": job.job_id, "task_id": task.task_id})
    return len(fresh)


def _not_collected(gw: Gateways, completed: list[CompletedTask]) -> list[CompletedTask]:
    """Of completed tasks, those whose input is not final yet: with completion events on, task_finished has
    usually had the completion collected before a poll sees it, and a point read costs less than a second message
    (its send, the host's receive and delete, collect's read). A row not found is left to collect to refuse."""

    if not completed:  # most polls of most jobs: no thread pool for nothing
        return completed

    def pending(task: CompletedTask) -> bool:
        record = gw.ledger.get_input(task.task_id)
        return record is None or record.state not in FINAL_STATES

    with ThreadPoolExecutor(READ_THREADS) as pool:
        keep = list(pool.map(pending, completed))
    return [task for task, wanted in zip(completed, keep, strict=True) if wanted]


def _close_if_done(gw: Gateways, job: JobRecord, now: datetime) -> bool:
    """Terminate the job once its window has closed and every input in it is collected (and then its summary)."""
    if now < job.window_end + timedelta(minutes=gw.settings.job_close_grace_minutes):
        return False
    pipeline = gw.pipelines.by_name(job.pipeline)
    wanted = pipeline.summary if pipeline is not None else None
    if wanted is not None and not job.summary:
        summary.close_to_inputs(gw, job)
    # Filtered by state in the query: each poll after the window reads the rows still pending, not the job's all.
    if any(gw.ledger.inputs(state=state, job_id=job.job_id) for state in (InputState.SUBMITTED, InputState.CLAIMED)):
        return False
    if pipeline is not None and wanted is not None and not summary.advance(gw, job, pipeline, wanted):
        return False
    counts = gw.batch.task_counts(job.job_id)
    if counts is not None and counts.active + counts.running > 0:
        return False
    gw.batch.terminate_job(job.job_id)
    job.state = JobState.TERMINATED
    job.terminated_at = now
    gw.ledger.save_job(job)
    logger.info("terminated job %s: window closed, every input collected", job.job_id, extra={"job_id": job.job_id})
    return True


def _clear_staging(gw: Gateways, job: JobRecord, budget: int) -> int:
    """Delete up to `budget` staging containers of a terminated job's tasks; the number deleted.

    Collect leaves each task's staging container in place: deleting one per collection made collection's cost
    grow with the account (Azurite scans every blob to delete a container). Once the job is terminated
    nothing of it will be collected again, so its staging goes in bulk, a bounded number per poll, with a
    cursor in the job's row so a later poll goes on where this one stopped.
    """
    task_ids = sorted(record.task_id for record in gw.ledger.inputs(job_id=job.job_id))
    if job.staging_cleared_through is not None:
        task_ids = [task_id for task_id in task_ids if task_id > job.staging_cleared_through]
    batch = task_ids[:budget]
    containers = [ids.staging_container(gw.settings.staging_prefix, task_id) for task_id in batch]
    with ThreadPoolExecutor(STAGING_DELETE_THREADS) as pool:
        list(pool.map(gw.blobs.delete_container, containers))
    if batch:
        job.staging_cleared_through = batch[-1]
    job.staging_cleared = len(batch) == len(task_ids)
    gw.ledger.save_job(job)
    if job.staging_cleared:
        logger.info("cleared staging of job %s", job.job_id, extra={"job_id": job.job_id})
    return len(batch)


def _retention_over(gw: Gateways, job: JobRecord, now: datetime) -> bool:
    ended = job.terminated_at or job.window_end
    return now >= ended + timedelta(hours=gw.settings.job_retention_hours)
