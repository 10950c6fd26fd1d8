"""Timers: the sweep (a safety net for missed events), the completion poll, and the pipelines' schedules."""

from __future__ import annotations

import azure.functions as func

from shared.poll import poll as poll_jobs
from shared.schedules import fire_due
from shared.submit import sweep as sweep_inputs
from shared.triggers.boundary import run

bp = func.Blueprint()


@bp.function_name("sweep")
@bp.timer_trigger(arg_name="timer", schedule="%BATCHDROP_SWEEP_SCHEDULE%", run_on_startup=False)
def sweep(timer: func.TimerRequest) -> None:
    run("sweep", sweep_inputs)


@bp.function_name("poll")
@bp.timer_trigger(arg_name="timer", schedule="%BATCHDROP_POLL_SCHEDULE%", run_on_startup=False)
def poll(timer: func.TimerRequest) -> None:
    run("poll", poll_jobs)


@bp.function_name("schedules")
@bp.timer_trigger(arg_name="timer", schedule="%BATCHDROP_SCHEDULES_SCHEDULE%", run_on_startup=False)
def schedules(timer: func.TimerRequest) -> None:
    """One timer for every scheduled pipeline (shared/schedules.py): one ledger read a tick when none is due."""
    run("schedules", fire_due)
