"""NCRONTAB schedules as the Functions timer trigger reads them.

Six fields (`sec min hour day month day-of-week`) or five (no seconds), each a `*`, a number,
a range `a-b`, a step `*/n`, `a-b/n` or `a/n`, or a comma-separated list of those. Months and
weekdays also take three-letter names. As in NCrontab, a moment matches when every field
matches (day-of-month and day-of-week are ANDed, unlike Vixie cron). A schedule may also be
a TimeSpan `hh:mm:ss` (`d.hh:mm:ss`), meaning "every interval since the host started".
Times are UTC, as on Azure unless WEBSITE_TIME_ZONE is set.
"""

from __future__ import annotations

import calendar
import datetime as dt
import itertools
import re
from dataclasses import dataclass
from typing import Protocol

_MONTHS = {name: i for i, name in enumerate(
    ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"], start=1)}
_WEEKDAYS = {name: i for i, name in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])}

# (label, lowest, highest, names)
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("second", 0, 59, {}),
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 6, _WEEKDAYS),
)
_TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d{1,2}):(\d{1,2}):(\d{1,2})$")
# Feb 29 on a given weekday recurs within 28 years; nothing valid has longer gaps.
_SEARCH_LIMIT = dt.timedelta(days=366 * 30)


class ScheduleError(ValueError):
    """A schedule expression that cannot be parsed."""


class Schedule(Protocol):
    def next_after(self, moment: dt.datetime) -> dt.datetime:
        """The first occurrence strictly after `moment` (an aware datetime)."""
        ...

    def describe(self) -> str:
        """The expression as written."""
        ...


def _value(token: str, field: str, low: int, high: int, names: dict[str, int]) -> int:
    upper = token.upper()
    if upper in names:
        return names[upper]
    if not token.isdigit():
        raise ScheduleError(f"{field} field: {token!r} is not a number")
    number = int(token)
    if not low <= number <= high:
        raise ScheduleError(f"{field} field: {number} is outside {low}-{high}")
    return number


def _parse_field(text: str, field: str, low: int, high: int, names: dict[str, int]) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise ScheduleError(f"{field} field: empty list item in {text!r}")
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ScheduleError(f"{field} field: bad step {step_text!r} in {part!r}")
            step = int(step_text)
        if base == "*":
            start, stop = low, high
        elif "-" in base:
            first, _, last = base.partition("-")
            start = _value(first, field, low, high, names)
            stop = _value(last, field, low, high, names)
            if start > stop:
                raise ScheduleError(f"{field} field: range {base!r} runs backwards")
        else:
            start = _value(base, field, low, high, names)
            # `a/n` means from a to the end of the range in steps of n.
            stop = high if slash else start
        values.update(range(start, stop + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class CronSchedule:
    expression: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday

    @classmethod
    def parse(cls, expression: str) -> CronSchedule:
        fields = expression.split()
        if len(fields) == 5:
            fields = ["0", *fields]
        if len(fields) != 6:
            raise ScheduleError(
                f"schedule {expression!r}: expected 6 fields (sec min hour day month day-of-week), "
                f"got {len(fields)}")
        try:
            parsed = [_parse_field(text, *spec) for text, spec in zip(fields, _FIELDS, strict=True)]
        except ScheduleError as error:
            raise ScheduleError(f"schedule {expression!r}: {error}") from None
        return cls(expression, *parsed)

    def describe(self) -> str:
        return self.expression

    def _day_matches(self, day: dt.datetime) -> bool:
        weekday = (day.weekday() + 1) % 7
        return day.month in self.months and day.day in self.days and weekday in self.weekdays

    def next_after(self, moment: dt.datetime) -> dt.datetime:
        candidate = moment.replace(microsecond=0) + dt.timedelta(seconds=1)
        limit = moment + _SEARCH_LIMIT
        while candidate <= limit:
            if not self._day_matches(candidate):
                candidate = candidate.replace(hour=0, minute=0, second=0) + dt.timedelta(days=1)
            elif candidate.hour not in self.hours:
                candidate = candidate.replace(minute=0, second=0) + dt.timedelta(hours=1)
            elif candidate.minute not in self.minutes:
                candidate = candidate.replace(second=0) + dt.timedelta(minutes=1)
            elif candidate.second not in self.seconds:
                candidate += dt.timedelta(seconds=1)
            else:
                return candidate
        raise ScheduleError(f"schedule {self.expression!r} never occurs")


@dataclass(frozen=True)
class IntervalSchedule:
    expression: str
    interval: dt.timedelta

    def describe(self) -> str:
        return self.expression

    def next_after(self, moment: dt.datetime) -> dt.datetime:
        return moment + self.interval


def parse_schedule(expression: str) -> Schedule:
    """Parse an NCRONTAB expression or a TimeSpan; raises ScheduleError naming the problem."""
    text = expression.strip()
    timespan = _TIMESPAN.match(text)
    if timespan:
        days, hours, minutes, seconds = (int(group or 0) for group in timespan.groups())
        if hours > 23 or minutes > 59 or seconds > 59:
            raise ScheduleError(f"schedule {expression!r}: bad TimeSpan")
        interval = dt.timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
        if interval <= dt.timedelta(0):
            raise ScheduleError(f"schedule {expression!r}: the interval must be positive")
        return IntervalSchedule(text, interval)
    schedule = CronSchedule.parse(text)
    # Fail at startup, not at the first tick, for expressions such as "0 0 0 30 2 *".
    schedule.next_after(dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
    return schedule


# The Gregorian calendar (dates and weekdays together) repeats every 400 years: every gap between matching days
# shows up within one cycle and the first matching day of the next (at most 8 years on: a Feb 29 across 2100).
_CYCLE_YEARS = 408


def _matching_days(schedule: CronSchedule) -> list[int]:
    """The ordinals of the days `schedule` fires on, over one calendar cycle from 2000."""
    if len(schedule.days) == 31 and len(schedule.months) == 12 and len(schedule.weekdays) == 7:
        return [0, 1]  # every day: all that matters is that the gap is one day
    found = []
    for year in range(2000, 2000 + _CYCLE_YEARS):
        for month in sorted(schedule.months):
            last = calendar.monthrange(year, month)[1]
            for day in sorted(schedule.days):
                if day > last:
                    break
                ordinal = dt.date(year, month, day).toordinal()
                if ordinal % 7 in schedule.weekdays:  # date.toordinal() % 7 is 0 on a Sunday
                    found.append(ordinal)
    return found


def interval_bounds(schedule: Schedule) -> tuple[dt.timedelta, dt.timedelta]:
    """The shortest and the longest time between two consecutive occurrences of `schedule`."""
    if isinstance(schedule, IntervalSchedule):
        return schedule.interval, schedule.interval
    assert isinstance(schedule, CronSchedule)
    times = sorted(h * 3600 + m * 60 + s for h in schedule.hours for m in schedule.minutes for s in schedule.seconds)
    days = _matching_days(schedule)
    within = [later - earlier for earlier, later in itertools.pairwise(times)]
    # From the day's last occurrence to the next matching day's first.
    across = [(later - earlier) * 86400 - times[-1] + times[0] for earlier, later in itertools.pairwise(days)]
    gaps = within + across
    return dt.timedelta(seconds=min(gaps)), dt.timedelta(seconds=max(gaps))
