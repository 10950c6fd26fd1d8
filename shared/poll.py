"""Poll use case: completions since each job's watermark become queue events; closed jobs end."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.gateways import Gateways
from shared.models import CompletionEvent, InputState, JobRecord, JobState

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PollReport:
    jobs: int
    events: int
    terminated: list[str]
    deleted: list[str]


def poll(gw: Gateways) -> PollReport:
    """One poll: cost grows with active jobs and new completions, never with tasks already collected."""
    now = gw.clock()
    overlap = timedelta(seconds=gw.settings.poll_overlap_seconds)
    events = 0
    terminated: list[str] = []
    deleted: list[str] = []
    active_jobs = 0
    for job in gw.ledger.jobs(active_only=False):
        if job.state is JobState.ACTIVE:
            active_jobs += 1
            events += _poll_job(gw, job, overlap)
            if _close_if_done(gw, job, now):
                terminated.append(job.job_id)
        elif job.state is JobState.TERMINATED and _retention_over(gw, job, now):
            gw.batch.delete_job(job.job_id)
            job.state = JobState.DELETED
            gw.ledger.save_job(job)
            deleted.append(job.job_id)
    return PollReport(active_jobs, events, terminated, deleted)


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
    # Enqueue before moving the watermark: a crash in between re-emits, never loses.
    gw.queue.send(CompletionEvent(job.job_id, task.task_id, task.result) for task in fresh)
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


def _close_if_done(gw: Gateways, job: JobRecord, now: datetime) -> bool:
    """Terminate the job once its window has closed and every input in it is collected."""
    if now < job.window_end + timedelta(minutes=gw.settings.job_close_grace_minutes):
        return False
    pending = [
        record
        for record in gw.ledger.inputs(job_id=job.job_id)
        if record.state in (InputState.CLAIMED, InputState.SUBMITTED)
    ]
    if pending:
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


def _retention_over(gw: Gateways, job: JobRecord, now: datetime) -> bool:
    ended = job.terminated_at or job.window_end
    return now >= ended + timedelta(hours=gw.settings.job_retention_hours)
