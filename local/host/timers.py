"""Timer triggers on their NCRONTAB schedules, with the schedule status the Functions host keeps."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from pathlib import Path
from typing import Any

from azure.functions.timer import TimerRequest

from .bindings import FunctionSpec, TimerTrigger
from .invocation import InvocationFailed, Invoker

logger = logging.getLogger(__name__)

# A tick that starts this much after its scheduled time is reported as past due.
_LATE = dt.timedelta(seconds=2)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _trigger(spec: FunctionSpec) -> TimerTrigger:
    assert isinstance(spec.trigger, TimerTrigger)
    return spec.trigger


class _ScheduleStatus:
    """Last and next occurrence, kept in the state directory so a restart can see a missed tick."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last: dt.datetime | None = None
        self.next: dt.datetime | None = None
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            self.last = dt.datetime.fromisoformat(document["Last"]) if document.get("Last") else None
            self.next = dt.datetime.fromisoformat(document["Next"]) if document.get("Next") else None
        except (OSError, ValueError, KeyError, TypeError):
            pass

    def as_binding(self) -> dict[str, Any]:
        return {"Last": self.last.isoformat() if self.last else None,
                "Next": self.next.isoformat() if self.next else None,
                "LastUpdated": _now().isoformat()}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.as_binding()), encoding="utf-8")
        temporary.replace(self.path)


class Timers:
    """Every timer-triggered function of an app, one thread each; invocations never overlap."""

    def __init__(self, functions: list[FunctionSpec], invoker: Invoker, state_dir: Path,
                 stopping: threading.Event) -> None:
        self.functions = {spec.name.lower(): spec for spec in functions}
        self.invoker = invoker
        self.state_dir = state_dir
        self.stopping = stopping
        self._locks = {name: threading.Lock() for name in self.functions}
        self._running = 0
        self._changed = threading.Condition()
        self._ticks = dict.fromkeys(self.functions, 0)

    def ticks(self) -> dict[str, int]:
        """Scheduled occurrences handled per function (run or skipped while stopping), each counted once its
        invocation has returned; the startup and past-due runs count, manual runs do not."""
        with self._changed:
            return {spec.name: self._ticks[name] for name, spec in self.functions.items()}

    def start(self) -> None:
        for spec in self.functions.values():
            threading.Thread(target=self._run_forever, args=(spec,), name=f"timer:{spec.name}",
                             daemon=True).start()

    def find(self, name: str) -> FunctionSpec | None:
        return self.functions.get(name.lower())

    def run_now(self, spec: FunctionSpec) -> None:
        """Invoke in the background, as the host's admin endpoint does."""
        threading.Thread(target=self._invoke, args=(spec, _ScheduleStatus(self._status_path(spec)), False,
                                                    "Manually triggered"),
                         name=f"timer:{spec.name}:manual", daemon=True).start()

    def drain(self, deadline_seconds: float) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._running == 0, timeout=max(deadline_seconds, 0))

    def _status_path(self, spec: FunctionSpec) -> Path:
        return self.state_dir / "timers" / f"{spec.name}.json"

    def _monitored(self, trigger: TimerTrigger, now: dt.datetime) -> bool:
        if trigger.use_monitor is not None:
            return trigger.use_monitor
        # The Functions host monitors schedules whose occurrences are at least a minute apart.
        first = trigger.schedule.next_after(now)
        return trigger.schedule.next_after(first) - first >= dt.timedelta(minutes=1)

    def _run_forever(self, spec: FunctionSpec) -> None:
        try:
            self._run_schedule(spec)
        except Exception:
            logger.exception("%s: the timer stopped", spec.name)

    def _run_schedule(self, spec: FunctionSpec) -> None:
        trigger = _trigger(spec)
        status = _ScheduleStatus(self._status_path(spec))
        now = _now()
        if self._monitored(trigger, now) and status.next is not None and status.next < now:
            logger.info("%s: the occurrence at %s was missed while the host was down", spec.name,
                        status.next.isoformat())
            self._invoke(spec, status, True, "Timer fired (past due)")
            self._count_tick(spec)
        elif trigger.run_on_startup:
            self._invoke(spec, status, False, "Timer fired at startup (RunOnStartup)")
            self._count_tick(spec)
        scheduled = trigger.schedule.next_after(_now())
        status.next = scheduled
        status.save()
        logger.info("%s: next occurrence %s (schedule %s)", spec.name, scheduled.isoformat(),
                    trigger.schedule.describe())
        while not self.stopping.wait(max((scheduled - _now()).total_seconds(), 0)):
            self._invoke(spec, status, _now() - scheduled > _LATE, "Timer fired")
            self._count_tick(spec)
            scheduled = trigger.schedule.next_after(max(_now(), scheduled))
            status.next = scheduled
            status.save()

    def _count_tick(self, spec: FunctionSpec) -> None:
        with self._changed:
            self._ticks[spec.name.lower()] += 1

    def _invoke(self, spec: FunctionSpec, status: _ScheduleStatus, past_due: bool, reason: str) -> None:
        with self._locks[spec.name.lower()]:
            if self.stopping.is_set():
                return
            with self._changed:
                self._running += 1
            try:
                request = TimerRequest(past_due=past_due, schedule_status=status.as_binding(),
                                       schedule={"AdjustForDST": True})
                self.invoker.invoke(spec, request, reason=reason)
            except InvocationFailed:
                pass  # logged by the invoker; the next occurrence runs as scheduled
            finally:
                status.last = _now()
                with self._changed:
                    self._running -= 1
                    self._changed.notify_all()
