"""Per-pipeline schedules: one timer fires every scheduled pipeline whose schedule is due.

A scheduled pipeline's inputs are claimed as `waiting` when they arrive (shared/submit.py `claim`), on every
ingest path. A tick of the schedules timer reads the schedule rows (one range read) and, for each pipeline whose
next occurrence after its `last_fired` has passed, claims the firing by writing the row over the version it read
(`last_fired` = now, `firing_since` = now): of two concurrent ticks only one wins. The winner moves the pipeline's
waiting inputs to `claimed` and submits them in bulk (shared/submit.py `submit_claimed`: one add-collection per
job per 100), then clears `firing_since`.

- A schedule missed while the app was down fires once: `last_fired` becomes the tick's time, so every occurrence
  up to now is covered by that one firing.
- A tick that dies halfway leaves `firing_since` set: after FIRING_STALE a later tick takes the firing over and
  submits what is still waiting. Rows it had already moved to `claimed` are the sweep's to finish (it takes over
  stale claims); task ids make a second add-collection add nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from shared.errors import TransientError
from shared.gateways import Gateways
from shared.models import InputState, ScheduleRecord
from shared.ncrontab import CronSchedule
from shared.pipelines import PipelineSpec
from shared.submit import submit_claimed

logger = logging.getLogger(__name__)
# A firing claimed this long ago and not cleared: the tick that claimed it died, another takes it over.
FIRING_STALE = timedelta(minutes=5)


@dataclass(frozen=True)
class Firing:
    """One pipeline's schedule fired by this tick."""

    pipeline: str
    due_at: datetime  # the occurrence that made it due (the first one missed, after an outage)
    submitted: int
    took_over: bool = False  # finished a firing whose tick died


def fire_due(gw: Gateways) -> list[Firing]:
    """One tick: fire each scheduled pipeline whose schedule is due; one range read when none is."""
    now = gw.clock()
    rows = {row.pipeline: row for row in gw.ledger.schedules()}
    fired: list[Firing] = []
    failed: list[str] = []
    for pipeline in gw.pipelines.pipelines:
        row = rows.get(pipeline.name)
        if pipeline.schedule is None and row is None:
            continue  # submitted on upload, and never scheduled
        try:
            if pipeline.schedule is None:
                firing = _unschedule(gw, pipeline, row, now) if row is not None else None
            else:
                firing = _fire_if_due(gw, pipeline, pipeline.schedule, row, now)
        except TransientError as error:  # one pipeline's outage does not hold the others back
            logger.warning("schedule of %s: will fire again: %s", pipeline.name, error)
            failed.append(pipeline.name)
            continue
        if firing is not None:
            fired.append(firing)
    if failed:
        raise TransientError(f"schedules of {', '.join(failed)} did not finish firing; a later tick takes them over")
    return fired


def _fire_if_due(
    gw: Gateways, pipeline: PipelineSpec, schedule: CronSchedule, row: ScheduleRecord | None, now: datetime
) -> Firing | None:
    if row is None:
        # The first tick that knows the pipeline: its schedule counts from now (inputs wait for the next occurrence).
        gw.ledger.save_schedule(ScheduleRecord(pipeline.name, now))
        return None
    due_at = schedule.next_after(row.last_fired)
    if row.firing_since is not None:
        if now - row.firing_since < FIRING_STALE:
            return None  # another tick is firing it now
        claimed = gw.ledger.save_schedule(replace(row, firing_since=now))
        took_over = True
    elif due_at <= now:
        claimed = gw.ledger.save_schedule(replace(row, last_fired=now, firing_since=now))
        took_over = False
    else:
        return None
    if claimed is None:
        return None  # another tick got there first
    submitted = release_waiting(gw, pipeline)
    if gw.ledger.save_schedule(replace(claimed, firing_since=None)) is None:
        logger.info("schedule of %s: another tick took the firing over meanwhile", pipeline.name)
    logger.info("schedule of %s fired (due %s): %d inputs submitted", pipeline.name, due_at.isoformat(), submitted)
    return Firing(pipeline.name, due_at, submitted, took_over)


def _unschedule(gw: Gateways, pipeline: PipelineSpec, row: ScheduleRecord, now: datetime) -> Firing | None:
    """A pipeline that had a schedule and is submitted on upload now: what still waits goes now, then its row goes
    (an input it held must not wait for a schedule that no longer exists)."""
    if row.firing_since is not None and now - row.firing_since < FIRING_STALE:
        return None
    claimed = gw.ledger.save_schedule(replace(row, firing_since=now))
    if claimed is None:
        return None
    submitted = release_waiting(gw, pipeline)
    gw.ledger.delete_schedule(claimed)
    logger.info("%s is submitted on upload now: %d waiting inputs submitted", pipeline.name, submitted)
    return Firing(pipeline.name, now, submitted)


def release_waiting(gw: Gateways, pipeline: PipelineSpec) -> int:
    """Submit every waiting input of `pipeline` in bulk; the number submitted."""
    waiting = [record for record in gw.ledger.inputs(state=InputState.WAITING) if record.pipeline == pipeline.name]
    if not waiting:
        return 0
    claimed = [replace(record, state=InputState.CLAIMED) for record in waiting]
    # Claimed first (their waiting counters go in the same transactions): from here on the sweep can finish them.
    gw.ledger.save_inputs(claimed)
    return submit_claimed(gw, [(record, pipeline) for record in claimed])


def next_run(schedule: CronSchedule, row: ScheduleRecord | None, now: datetime) -> datetime:
    """When the schedule fires next, as status shows it: its next occurrence, or now when it is overdue (the
    next tick fires it)."""
    if row is None:
        return schedule.next_after(now)
    if row.firing_since is not None:
        return now
    return max(schedule.next_after(row.last_fired), now)
