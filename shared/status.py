"""Status use case: pipelines, jobs and counts from the ledger's counters and Batch task counts.

One call reads the live jobs, the ledger's counters (a fixed number of reads) and the newest rejections, and asks
Batch for the task counts of each active job: its cost grows with the active jobs, never with the inputs or
jobs of the past. Deleted jobs are not listed one by one; their counts are summed in `deleted_jobs`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from itertools import islice

from shared import summary
from shared.gateways import Gateways
from shared.groups import missing_members
from shared.ids import MANIFEST_NAME
from shared.models import FinalKey, GroupRecord, GroupState, InputState, JobRecord, JobState
from shared.pipelines import PoolPlan
from shared.schedules import next_run

# Where Event Grid dead-letters the events it could not deliver (the subscriptions' deadLetterDestination).
EVENT_DEAD_LETTER_CONTAINER = "eventgrid-deadletter"
# Status lists at most this many dead-letter blobs: one listing page, whatever piles up there.
EVENT_DEAD_LETTER_CAP = 100
COUNT_KEYS = ("queued", "running", "succeeded", "failed", "collected", "rejected", "skipped")
BATCH_KEYS = ("queued", "running", "succeeded", "failed")
REFUSED = {InputState.REJECTED: "rejected", InputState.SKIPPED: "skipped"}


def _zero() -> dict[str, int]:
    return dict.fromkeys(COUNT_KEYS, 0)


def _count_collected(counts: dict[str, int], key: FinalKey, n: int) -> None:
    """Add `n` inputs collected with `key`'s outcome (other final states are counted elsewhere)."""
    if key.state is InputState.COLLECTED:
        counts["collected"] += n
        if key.outcome in ("succeeded", "failed"):
            counts[key.outcome] += n


def _ledger_counts(final: Counter[FinalKey]) -> dict[str, int]:
    """Counts of a job that Batch no longer answers for: what was collected, by its outcome."""
    counts = _zero()
    for key, n in final.items():
        _count_collected(counts, key, n)
    return counts


def _without_replaced(counts: dict[str, int], final: Counter[FinalKey]) -> None:
    """Take tasks that a re-run replaced out of Batch's counts: each input counts once, under its latest run."""
    for key, n in final.items():
        if key.state is InputState.RERUN and key.outcome in ("succeeded", "failed"):
            counts[key.outcome] = max(0, counts[key.outcome] - n)


def _without_summary(gw: Gateways, job: JobRecord, counts: dict[str, int]) -> None:
    """Take the job's summary task out of Batch's counts, which count inputs: one Batch GET while it runs."""
    if job.summary == summary.SummaryState.RUNNING.value:
        task = gw.batch.get_task(job.job_id, summary.SUMMARY_TASK_ID)
        if task is None:
            return
        bucket = task.outcome.value if task.completed else {"active": "queued"}.get(task.state, "running")
    elif job.summary in summary.FINAL:
        bucket = job.summary
    else:
        return
    counts[bucket] = max(0, counts[bucket] - 1)


def status(gw: Gateways) -> dict[str, object]:
    """The status document served by GET api/status: per pipeline, per live job, and totals."""
    ledger_counts = gw.ledger.counts()
    now = gw.clock()
    per_pipeline = {p.name: _zero() for p in gw.pipelines.pipelines}
    totals = _zero()
    jobs: list[dict[str, object]] = []
    for job in gw.ledger.jobs(active_only=False):
        counts = _ledger_counts(ledger_counts.by_job.get(job.job_id, Counter()))
        batch_counts = gw.batch.task_counts(job.job_id) if job.state is JobState.ACTIVE else None
        if batch_counts is not None:
            counts.update(queued=batch_counts.active, running=batch_counts.running,
                          succeeded=batch_counts.succeeded, failed=batch_counts.failed)  # fmt: skip
            _without_replaced(counts, ledger_counts.by_job.get(job.job_id, Counter()))
            _without_summary(gw, job, counts)
        # else a closed job: Batch may have forgotten it, the ledger has not
        jobs.append({
            "job_id": job.job_id, "pipeline": job.pipeline, "state": job.state.value, "counts": counts,
            "window_end": job.window_end.isoformat(), "window": _window(job, now),
        })  # fmt: skip
        summary_state = summary.state(gw, job)
        if summary_state is not None:
            prefix = summary.result_prefix(job.pipeline, job.job_id)
            jobs[-1]["summary"] = {"state": summary_state, "manifest": prefix + MANIFEST_NAME}
        pipeline_counts = per_pipeline.setdefault(job.pipeline, _zero())
        for name in (*BATCH_KEYS, "collected"):
            pipeline_counts[name] += counts[name]
    deleted = _ledger_counts(ledger_counts.deleted)
    for key, n in ledger_counts.deleted.items():
        if key.state is InputState.COLLECTED:
            _count_collected(per_pipeline.setdefault(key.pipeline, _zero()), key, n)
    # Rejected and skipped inputs have no job: they are counted under the job id "".
    for final in (*ledger_counts.by_job.values(), ledger_counts.deleted):
        for key, n in final.items():
            if key.state in REFUSED:
                totals[REFUSED[key.state]] += n
                if key.pipeline in per_pipeline:
                    per_pipeline[key.pipeline][REFUSED[key.state]] += n
                if final is ledger_counts.deleted:
                    deleted[REFUSED[key.state]] += n
    for counts in per_pipeline.values():
        for name in (*BATCH_KEYS, "collected"):
            totals[name] += counts[name]
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
        "pools": _pools(gw, {str(job["pipeline"]) for job in jobs if job["state"] == JobState.ACTIVE.value}),
        "deleted_jobs": {"count": ledger_counts.deleted_jobs, "counts": deleted},
        "waiting": _waiting(gw, ledger_counts.by_job.values(), now),
        "rejected": gw.ledger.rejections(),
        "poison": {f"{gw.settings.completions_queue}-poison": gw.queue.poison_count()},
        "event_dead_letters": _event_dead_letters(gw),
        "groups": _groups(gw, ledger_counts.by_job.get("", Counter())),
    }


def _missing(gw: Gateways, row: GroupRecord) -> list[str]:
    pipeline = gw.pipelines.by_name(row.pipeline)
    if row.state is GroupState.FAILED or pipeline is None or pipeline.group is None:
        return row.missing
    return missing_members(pipeline.group, row)


GROUPS_LISTED = 50  # groups shown one by one: the open and failed ones first, then those that ran


def _groups(gw: Gateways, unjobbed: Counter[FinalKey]) -> dict[str, object]:
    """Grouped pipelines' groups (shared/groups.py): counts by state, members recorded, and the groups that wait
    or failed with what they miss, and what arrived late or twice. One range read of the ledger's group rows."""
    rows = gw.ledger.groups()
    by_state = Counter(row.state.value for row in rows)
    order = {GroupState.FAILED: 0, GroupState.OPEN: 1, GroupState.SUBMITTED: 2}
    listed = sorted(rows, key=lambda row: (order[row.state], row.pipeline, row.key))[:GROUPS_LISTED]
    return {
        "counts": {state.value: by_state.get(state.value, 0) for state in GroupState},
        "members": sum(n for key, n in unjobbed.items() if key.state is InputState.GROUPED),
        "duplicates": sum(row.duplicates for row in rows),
        "late": sum(len(row.late) for row in rows),
        "groups": [
            {
                "pipeline": row.pipeline, "key": row.key, "state": row.state.value, "members": sorted(row.members),
                "missing": _missing(gw, row), "task_id": row.task_id, "job_id": row.job_id, "runs": row.runs,
                "duplicates": row.duplicates, "late": row.late, "deadline": row.deadline.isoformat(),
            }
            for row in listed
        ],
    }


def _waiting(gw: Gateways, by_job: Iterable[Counter[FinalKey]], now: datetime) -> list[dict[str, object]]:
    """Per scheduled pipeline: its inputs waiting for the schedule (the ledger's counters) and its next run; one
    read of the schedule rows, none when no pipeline is scheduled."""
    scheduled = [(p.name, p.schedule) for p in gw.pipelines.pipelines if p.schedule is not None]
    if not scheduled:
        return []
    waiting: Counter[str] = Counter()
    for counts in by_job:
        for key, n in counts.items():
            if key.state is InputState.WAITING:
                waiting[key.pipeline] += n
    rows = {row.pipeline: row for row in gw.ledger.schedules()}
    found: list[dict[str, object]] = []
    for name, schedule in scheduled:
        row = rows.get(name)
        found.append({
            "pipeline": name, "state": "waiting for schedule", "inputs": waiting[name],
            "schedule": schedule.expression, "next_run": next_run(schedule, row, now).isoformat(),
            "last_fired": row.last_fired.isoformat() if row is not None else None,
        })  # fmt: skip
    return found


def _event_dead_letters(gw: Gateways) -> dict[str, object]:
    """Event Grid's dead-letter blobs (each holds one or more undelivered events), per subscription; at most
    EVENT_DEAD_LETTER_CAP are listed, `capped` says there are more. Blob names are
    `<TOPIC>/<SUBSCRIPTION>/<yyyy>/<m>/<d>/<h>/<guid>.json`."""
    listed = list(islice(gw.blobs.list_blobs(EVENT_DEAD_LETTER_CONTAINER), EVENT_DEAD_LETTER_CAP + 1))
    shown = listed[:EVENT_DEAD_LETTER_CAP]
    per_subscription = Counter(blob.name.split("/")[1] if blob.name.count("/") >= 1 else "" for blob in shown)
    return {
        "container": EVENT_DEAD_LETTER_CONTAINER,
        "blobs": len(shown),
        "capped": len(listed) > EVENT_DEAD_LETTER_CAP,
        "by_subscription": dict(sorted(per_subscription.items())),
        "newest": [blob.name for blob in sorted(shown, key=lambda blob: blob.created_on, reverse=True)[:5]],
    }


def _window(job: JobRecord, now: datetime) -> str:
    """The job's window as the status page shows it: open (takes new inputs), closing (its window has passed and
    its last tasks finish), terminated."""
    if job.state is not JobState.ACTIVE:
        return job.state.value
    return "open" if now < job.window_end else "closing"


def _pools(gw: Gateways, pipelines: set[str]) -> list[dict[str, object]]:
    """The pools of the active jobs' pipelines: drift from the file and nodes by state (starttaskfailed included).

    One pool read per pool and one node counts listing: the cost grows with the pools in use, not the inputs.
    """
    plans: dict[str, PoolPlan] = {}
    for name in sorted(pipelines):
        pipeline = gw.pipelines.by_name(name)
        if pipeline is not None:
            plans.setdefault(pipeline.pool.id.lower(), gw.pipelines.pool_plan(pipeline.pool.id))
    return [report.as_dict() for report in gw.batch.pool_reports(list(plans.values()))]
