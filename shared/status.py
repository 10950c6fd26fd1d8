"""Status use case: pipelines, jobs and counts from the ledger and Batch task counts (never a task listing)."""

from __future__ import annotations

from collections import Counter

from shared.gateways import Gateways
from shared.models import InputState, JobState

COUNT_KEYS = ("queued", "running", "succeeded", "failed", "collected", "rejected", "skipped")
BATCH_KEYS = ("queued", "running", "succeeded", "failed")


def _zero() -> dict[str, int]:
    return dict.fromkeys(COUNT_KEYS, 0)


def status(gw: Gateways) -> dict[str, object]:
    """The status document served by GET api/status: per pipeline, per job, and totals."""
    records = gw.ledger.inputs()
    collected = Counter((r.job_id, r.outcome) for r in records if r.state is InputState.COLLECTED)
    refused = Counter((r.pipeline, r.state) for r in records if r.state in (InputState.REJECTED, InputState.SKIPPED))
    per_pipeline = {p.name: _zero() for p in gw.pipelines.pipelines}
    totals = _zero()
    jobs: list[dict[str, object]] = []
    for job in gw.ledger.jobs(active_only=False):
        counts = _zero()
        counts["collected"] = sum(n for (job_id, _), n in collected.items() if job_id == job.job_id)
        batch_counts = gw.batch.task_counts(job.job_id) if job.state is JobState.ACTIVE else None
        if batch_counts is not None:
            counts.update(queued=batch_counts.active, running=batch_counts.running,
                          succeeded=batch_counts.succeeded, failed=batch_counts.failed)  # fmt: skip
        else:  # a closed job: Batch may have forgotten it, the ledger has not
            counts.update(succeeded=collected[(job.job_id, "succeeded")], failed=collected[(job.job_id, "failed")])
        jobs.append({"job_id": job.job_id, "pipeline": job.pipeline, "state": job.state.value, "counts": counts})
        pipeline_counts = per_pipeline.setdefault(job.pipeline, _zero())
        for key in (*BATCH_KEYS, "collected"):
            pipeline_counts[key] += counts[key]
    for (pipeline, state), count in refused.items():
        key = "rejected" if state is InputState.REJECTED else "skipped"
        totals[key] += count
        if pipeline in per_pipeline:
            per_pipeline[pipeline][key] += count
    for counts in per_pipeline.values():
        for key in (*BATCH_KEYS, "collected"):
            totals[key] += counts[key]
    match = {p.name: p.match for p in gw.pipelines.pipelines}
    return {
        "pipelines": [
            {
                "name": name,
                "prefix": match[name].prefix if name in match else None,
                "glob": match[name].glob if name in match else None,
                "counts": counts,
            }
            for name, counts in per_pipeline.items()
        ],
        "totals": totals,
        "jobs": jobs,
        "rejected": gw.ledger.rejections(),
        "poison": {f"{gw.settings.completions_queue}-poison": gw.queue.poison_count()},
    }
