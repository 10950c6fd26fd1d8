"""Status use case: pipelines, jobs and counts from the ledger and Batch task counts (never a task listing)."""

from __future__ import annotations

from collections import Counter

from shared.gateways import Gateways
from shared.models import InputState, JobState

COUNT_KEYS = ("queued", "running", "succeeded", "failed", "collected", "rejected", "skipped")


def status(gw: Gateways) -> dict[str, object]:
    """The status document served by GET api/status."""
    records = gw.ledger.inputs()
    collected_by_job = Counter(r.job_id for r in records if r.state is InputState.COLLECTED)
    per_state = Counter(r.state for r in records)
    rejected_by_pipeline = Counter(r.pipeline for r in records if r.state is InputState.REJECTED)
    totals = dict.fromkeys(COUNT_KEYS, 0)
    totals["collected"] = per_state[InputState.COLLECTED]
    totals["rejected"] = per_state[InputState.REJECTED]
    totals["skipped"] = per_state[InputState.SKIPPED]
    jobs: list[dict[str, object]] = []
    for job in gw.ledger.jobs(active_only=False):
        counts = dict.fromkeys(COUNT_KEYS, 0)
        counts["collected"] = collected_by_job[job.job_id]
        if job.state is JobState.ACTIVE:
            batch_counts = gw.batch.task_counts(job.job_id)
            if batch_counts is not None:
                counts.update(
                    queued=batch_counts.active,
                    running=batch_counts.running,
                    succeeded=batch_counts.succeeded,
                    failed=batch_counts.failed,
                )
        else:
            outcomes = Counter(r.outcome for r in records if r.job_id == job.job_id and r.state is InputState.COLLECTED)
            counts.update(succeeded=outcomes["succeeded"], failed=outcomes["failed"])
        for key in ("queued", "running", "succeeded", "failed"):
            totals[key] += counts[key]
        jobs.append({"job_id": job.job_id, "pipeline": job.pipeline, "state": job.state.value, "counts": counts})
    return {
        "pipelines": [
            {"name": p.name, "prefix": p.match.prefix, "glob": p.match.glob, "rejected": rejected_by_pipeline[p.name]}
            for p in gw.pipelines.pipelines
        ],
        "totals": totals,
        "jobs": jobs,
        "rejected": gw.ledger.rejections(),
        "poison": {f"{gw.settings.completions_queue}-poison": gw.queue.poison_count()},
    }
