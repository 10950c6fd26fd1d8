"""Timers: the sweep (scheduled runs and a safety net for missed events) and the completion poll."""

from __future__ import annotations

import azure.functions as func

from shared.poll import poll as poll_jobs
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
