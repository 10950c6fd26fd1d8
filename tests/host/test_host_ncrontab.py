"""NCRONTAB schedules: the next occurrence is what the Functions host would pick."""

from __future__ import annotations

import datetime as dt

import pytest

from shared.ncrontab import CronSchedule, IntervalSchedule, ScheduleError, parse_schedule


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


def occurrences(expression: str, start: str, count: int) -> list[str]:
    schedule = parse_schedule(expression)
    moment = at(start)
    found = []
    for _ in range(count):
        moment = schedule.next_after(moment)
        found.append(moment.strftime("%Y-%m-%d %H:%M:%S"))
    return found


@pytest.mark.parametrize(
    ("expression", "start", "expected"),
    [
        (
            "*/30 * * * * *",
            "2026-01-01T00:00:10",
            ["2026-01-01 00:00:30", "2026-01-01 00:01:00", "2026-01-01 00:01:30"],
        ),
        (
            "*/2 * * * * *",
            "2026-01-01T00:00:59.500",
            ["2026-01-01 00:01:00", "2026-01-01 00:01:02", "2026-01-01 00:01:04"],
        ),
        ("0 */5 * * * *", "2026-01-01T00:03:00", ["2026-01-01 00:05:00", "2026-01-01 00:10:00", "2026-01-01 00:15:00"]),
        (
            "0 30 9 * * 1-5",
            "2026-11-27T10:00:00",  # a Friday after 09:30: next is Monday
            ["2026-11-30 09:30:00", "2026-12-01 09:30:00", "2026-12-02 09:30:00"],
        ),
        ("0 0 0 1 JAN,jul *", "2026-03-01T00:00:00", ["2026-07-01 00:00:00", "2027-01-01 00:00:00"]),
        (
            "15,45 0 12 * * SUN",
            "2026-11-24T00:00:00",
            ["2026-11-29 12:00:15", "2026-11-29 12:00:45", "2026-12-06 12:00:15"],
        ),
        (
            "0 0 10-14/2 * * *",
            "2026-01-01T11:00:00",
            ["2026-01-01 12:00:00", "2026-01-01 14:00:00", "2026-01-02 10:00:00"],
        ),
        (
            "5/20 * * * * *",
            "2026-01-01T00:00:00",
            ["2026-01-01 00:00:05", "2026-01-01 00:00:25", "2026-01-01 00:00:45"],
        ),
        ("0 0 0 29 2 *", "2026-01-01T00:00:00", ["2028-02-29 00:00:00"]),
        # Five fields: no seconds field, fires at second 0.
        ("*/15 * * * *", "2026-01-01T00:07:00", ["2026-01-01 00:15:00", "2026-01-01 00:30:00"]),
    ],
)
def test_next_occurrences(expression: str, start: str, expected: list[str]) -> None:
    assert occurrences(expression, start, len(expected)) == expected


def test_occurrence_is_strictly_after_the_given_moment() -> None:
    schedule = parse_schedule("0 * * * * *")
    assert schedule.next_after(at("2026-01-01T00:01:00")) == at("2026-01-01T00:02:00")


def test_day_and_weekday_must_both_match() -> None:
    # The 13th that is a Friday (NCrontab ANDs the fields, unlike Vixie cron).
    assert occurrences("0 0 0 13 * FRI", "2026-01-01T00:00:00", 2) == ["2026-02-13 00:00:00", "2026-03-13 00:00:00"]


def test_timespan_schedule_is_an_interval() -> None:
    schedule = parse_schedule("00:05:00")
    assert isinstance(schedule, IntervalSchedule)
    assert schedule.next_after(at("2026-01-01T00:00:01")) == at("2026-01-01T00:05:01")


def test_parsed_fields() -> None:
    schedule = CronSchedule.parse("1,2 3-5 */12 1 * MON-WED")
    assert schedule.seconds == {1, 2}
    assert schedule.minutes == {3, 4, 5}
    assert schedule.hours == {0, 12}
    assert schedule.days == {1}
    assert schedule.months == set(range(1, 13))
    assert schedule.weekdays == {1, 2, 3}


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("* * * *", "expected 6 fields"),
        ("60 * * * * *", "second field: 60 is outside 0-59"),
        ("* * 24 * * *", "hour field: 24 is outside 0-23"),
        ("* * * 0 * *", "day field: 0 is outside 1-31"),
        ("* * * * 13 *", "month field: 13 is outside 1-12"),
        ("* * * * * 7", "day-of-week field: 7 is outside 0-6"),
        ("*/0 * * * * *", "bad step"),
        ("5-1 * * * * *", "runs backwards"),
        ("a * * * * *", "is not a number"),
        ("1,,2 * * * * *", "empty list item"),
        ("0 0 0 30 2 *", "never occurs"),
        ("%SCHEDULE% * * * * *", "is not a number"),
    ],
)
def test_bad_expressions_name_the_problem(expression: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        parse_schedule(expression)
