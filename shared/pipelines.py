"""Pipeline specs (which inputs run which command) and routing of an input to its pipeline."""

from __future__ import annotations

import fnmatch
import heapq
import json
import re
import string
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.errors import ConfigError
from shared.groups_spec import GroupSpec
from shared.ids import MAX_BLOB_NAME, PIPELINE_NAME
from shared.ncrontab import CronSchedule, ScheduleError, interval_bounds, parse_schedule
from shared.pools import PoolDefaults, PoolSpec, check_environment
from shared.runtime import (
    APP_DIR,
    GROUP_PLACEHOLDERS,
    OUTPUT_DIR,
    PACKAGE_PLACEHOLDER,
    PATH_PLACEHOLDERS,
    ContainerSpec,
    PackageRef,
    check_template,
    needs_shell,
    render,
    template_fields,
)

PLACEHOLDERS = PATH_PLACEHOLDERS
__all__ = [
    "APP_DIR", "OUTPUT_DIR", "PLACEHOLDERS", "ContainerSpec", "GroupSpec", "PackageRef", "PoolPlan", "PoolSpec",
]  # fmt: skip


@dataclass(frozen=True)
class PoolPlan:
    """A pool as batchdrop creates it: its spec and the containers of every pipeline that runs on it."""

    spec: PoolSpec
    containers: tuple[ContainerSpec, ...] = ()

    @property
    def id(self) -> str:
        return self.spec.id


class MatchSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prefix: str = ""
    glob: str = "*"

    @field_validator("glob")
    @classmethod
    def _glob_is_valid(cls, glob: str) -> str:
        if not glob:
            raise ValueError("glob is empty; use '*' for every name")
        try:
            re.compile(fnmatch.translate(glob))
        except re.error as error:
            raise ValueError(f"invalid glob {glob!r}: {error}") from None
        if glob.count("[") != glob.count("]"):
            raise ValueError(f"invalid glob {glob!r}: unbalanced brackets")
        return glob

    def matches(self, name: str) -> bool:
        if not name.startswith(self.prefix):
            return False
        return fnmatch.fnmatchcase(name[len(self.prefix) :], self.glob)

    def common_name(self, other: MatchSpec) -> str | None:
        """A blob name both specs take, or None when no name that can be submitted matches both.

        Exact for the semantics of `matches` (prefix, then `fnmatch.fnmatchcase` on the rest: case-sensitive,
        `*` any run of characters including `/`, `**` the same as `*`, `?` any one character including `/`,
        `[...]`/`[!...]` a set or its complement, no escapes) over the names `ids.check_blob_name` lets
        through (1 to 1,024 characters, no control characters, not ending in `/` or `.`).
        """
        first, second = self._tokens(), other._tokens()
        name = _common_name(first, second, empty_star_cost=2)
        if name is not None and len(name) > MAX_BLOB_NAME:
            # the readable witness can be longer than needed; the shortest one decides
            name = _common_name(first, second, empty_star_cost=0)
        return name if name is not None and len(name) <= MAX_BLOB_NAME else None

    def _tokens(self) -> list[_Chars | None]:
        return [_one_char(char) for char in self.prefix] + _glob_tokens(self.glob)


def _check_relative_paths(paths: tuple[str, ...]) -> tuple[str, ...]:
    for path in paths:
        if not path or path.startswith("/") or ".." in path.split("/"):
            raise ValueError(f"{path!r} must be a relative path without '..'")
    return paths


class SummarySpec(BaseModel):
    """The pipeline's summary step: one more task per job, once its window has closed and its inputs are collected.

    `{input}` is the local path of the job's manifests list (shared/summary.py); the task runs on the host of the
    pipeline's pool, without the pipeline's container or application packages.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: Annotated[str, Field(min_length=1)]
    app_files: tuple[str, ...] = ()

    @field_validator("command")
    @classmethod
    def _placeholders(cls, command: str) -> str:
        check_template(command)
        if any(name == PACKAGE_PLACEHOLDER for name, _ in template_fields(command)):
            raise ValueError("a summary runs without application packages: {package:ID} is not available here")
        return command

    @field_validator("app_files")
    @classmethod
    def _relative_paths(cls, paths: tuple[str, ...]) -> tuple[str, ...]:
        return _check_relative_paths(paths)

    def command_line(self, manifests_path: str) -> str:
        """The summary task's command line: the template with batchdrop's own safe paths substituted."""
        return render(self.command, manifests_path, (), None)


class ScheduledSubmit(BaseModel):
    """`submit: {"schedule": "<NCRONTAB>"}`: inputs are held until the schedule fires (shared/schedules.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schedule: str

    @field_validator("schedule")
    @classmethod
    def _ncrontab(cls, schedule: str) -> str:
        parse_ncrontab(schedule)
        return schedule

    def cron(self) -> CronSchedule:
        return parse_ncrontab(self.schedule)


@lru_cache(maxsize=64)  # every claim of a scheduled pipeline's input asks for its schedule
def parse_ncrontab(expression: str) -> CronSchedule:
    """A pipeline's schedule: NCRONTAB with seconds (6 fields) or without (5 fields, second 0); UTC."""
    try:
        schedule = CronSchedule.parse(expression.strip())
        schedule.next_after(datetime(2000, 1, 1, tzinfo=UTC))  # one that never occurs ("0 0 0 30 2 *") is refused
    except ScheduleError as error:
        raise ValueError(str(error)) from None
    return schedule


class PipelineSpec(BaseModel):
    """One pipeline: which inputs it takes and how a task runs on one of them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=PIPELINE_NAME.pattern)]
    match: MatchSpec = MatchSpec()
    command: Annotated[str, Field(min_length=1)]
    app_files: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ("**/*",)
    pool: PoolSpec
    max_retries: Annotated[int, Field(ge=0, le=100)] = 1
    max_wall_clock_seconds: Annotated[int, Field(ge=1, le=7 * 24 * 3600)] = 3600

    container: ContainerSpec | None = None
    application_packages: tuple[PackageRef, ...] = ()
    environment: dict[str, str] = {}
    required_slots: Annotated[int, Field(ge=1, le=256)] = 1
    summary: SummarySpec | None = None
    submit: Literal["on_upload"] | ScheduledSubmit = "on_upload"

    @field_validator("submit", mode="before")
    @classmethod
    def _submit(cls, submit: object) -> object:
        # Checked here rather than by the union, so that a bad schedule gets one message, not one per alternative.
        if submit == "on_upload" or isinstance(submit, ScheduledSubmit):
            return submit
        if isinstance(submit, dict) and set(submit) == {"schedule"} and isinstance(submit["schedule"], str):
            parse_ncrontab(submit["schedule"])
            return submit
        raise ValueError('must be "on_upload" or {"schedule": "<NCRONTAB>"}')

    @property
    def schedule(self) -> CronSchedule | None:
        """The pipeline's schedule, None when its inputs are submitted on upload."""
        return self.submit.cron() if isinstance(self.submit, ScheduledSubmit) else None
    group: GroupSpec | None = None  # inputs that belong together run as one task (shared/groups.py)

    @field_validator("command")
    @classmethod
    def _placeholders_exist(cls, command: str) -> str:
        return check_template(command)

    @field_validator("app_files", "outputs")
    @classmethod
    def _relative_paths(cls, paths: tuple[str, ...]) -> tuple[str, ...]:
        for path in paths:
            if not path or path.startswith("/") or ".." in path.split("/"):
                raise ValueError(f"{path!r} must be a relative path without '..'")
        return paths

    @field_validator("environment")
    @classmethod
    def _environment(cls, environment: dict[str, str]) -> dict[str, str]:
        return check_environment(environment)

    @model_validator(mode="after")
    def _consistent(self) -> PipelineSpec:
        ids = [package.id for package in self.application_packages]
        repeated = sorted({package_id for package_id in ids if ids.count(package_id) > 1})
        if repeated:
            raise ValueError(f"application_packages: {', '.join(repeated)} listed more than once")
        unknown = sorted(
            {spec for name, spec in template_fields(self.command) if name == PACKAGE_PLACEHOLDER} - set(ids)
        )
        if unknown:
            raise ValueError(
                f"command: {', '.join('{package:' + i + '}' for i in unknown)} names no entry of application_packages"
            )
        if needs_shell(self.command, self.container) and "'" in self.command:
            raise ValueError(
                "command: runs under /bin/sh -c '...' ({package:ID}, or a container's own working "
                "directory), so it may not contain a single quote"
            )
        _check_group_placeholders(self)
        if self.required_slots > self.pool.task_slots_per_node:
            raise ValueError(
                f"required_slots {self.required_slots} is more than pool.task_slots_per_node "
                f"{self.pool.task_slots_per_node}: no node could run the task"
            )
        return self

    def command_line(self, input_path: str, inputs: tuple[str, ...] = (), group: str = "") -> str:
        """The task's command line: the template with only batchdrop's own safe paths substituted."""
        return render(self.command, input_path, self.application_packages, self.container, inputs, group)


def _check_group_placeholders(pipeline: PipelineSpec) -> None:
    """{input} is one input's; {inputs} and {group} a group's: each only where it has a value."""
    used = {name for name, _ in template_fields(pipeline.command)}
    if pipeline.group is None and used & GROUP_PLACEHOLDERS:
        names = ", ".join("{" + name + "}" for name in sorted(used & GROUP_PLACEHOLDERS))
        raise ValueError(f"command: {names} only exist in a pipeline with a `group`")
    if pipeline.group is not None and "input" in used:
        raise ValueError("command: a grouped pipeline's task runs on every member: use {inputs}, not {input}")
    image_default = pipeline.container is not None and pipeline.container.working_directory == "containerImageDefault"
    if image_default and "inputs" in used:
        raise ValueError(
            "command: {inputs} cannot be used with container.working_directory containerImageDefault (the members' "
            "paths are relative to the task's working directory)"
        )


class PipelineSet(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pipelines: tuple[PipelineSpec, ...]

    @model_validator(mode="after")
    def _unique_names(self) -> PipelineSet:
        names = [pipeline.name for pipeline in self.pipelines]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ValueError(f"pipeline names must be unique; repeated: {', '.join(duplicated)}")
        if not self.pipelines:
            raise ValueError("at least one pipeline is required")
        pools: dict[str, PipelineSpec] = {}
        for pipeline in self.pipelines:
            first = pools.setdefault(pipeline.pool.id.lower(), pipeline)
            if first.pool != pipeline.pool:
                raise ValueError(
                    f"pipelines {first.name!r} and {pipeline.name!r} both use pool {pipeline.pool.id!r} with "
                    "different settings; a pool has one spec: make them equal or use another pool id"
                )
        return self

    def pool_plan(self, pool_id: str) -> PoolPlan:
        """The pool with this id, with the containers of every pipeline that runs on it."""
        on_pool = [p for p in self.pipelines if p.pool.id.lower() == pool_id.lower()]
        if not on_pool:
            raise KeyError(pool_id)
        containers = tuple(dict.fromkeys(p.container for p in on_pool if p.container is not None))
        return PoolPlan(on_pool[0].pool, containers)

    def overlaps(self) -> list[str]:
        """Every pair of pipelines that could both take one input, with a name they would both take.

        Pipelines with different prefixes never conflict: a name both take starts with both prefixes, so one
        prefix extends the other, and the longer one wins (`route`): a folder can have its own pipeline beside a
        catch-all. Only pipelines with the same prefix must not share a name.
        """
        found = []
        for index, first in enumerate(self.pipelines):
            for second in self.pipelines[index + 1 :]:
                if first.match.prefix != second.match.prefix:
                    continue
                name = first.match.common_name(second.match)
                if name is not None:
                    found.append(
                        f"pipelines[{first.name!r}].match ({_describe_match(first.match)}) and "
                        f"pipelines[{second.name!r}].match ({_describe_match(second.match)}) can both take {name!r}"
                    )
        return found

    def matching(self, name: str) -> list[PipelineSpec]:
        return [pipeline for pipeline in self.pipelines if pipeline.match.matches(name)]

    def by_name(self, name: str) -> PipelineSpec | None:
        return next((pipeline for pipeline in self.pipelines if pipeline.name == name), None)


class RoutingConflict(Exception):
    """More than one pipeline takes the same input.

    `load_pipelines` refuses such files, so this only guards pipeline sets built without it.
    """


def route(pipelines: PipelineSet, name: str) -> PipelineSpec | None:
    """The pipeline for an input name: of those that take it, the one with the longest prefix; None when none
    takes it; RoutingConflict when several with that prefix do."""
    found = pipelines.matching(name)
    if not found:
        return None
    longest = max(len(pipeline.match.prefix) for pipeline in found)
    winners = [pipeline for pipeline in found if len(pipeline.match.prefix) == longest]
    if len(winners) > 1:
        raise RoutingConflict(f"pipelines {', '.join(p.name for p in winners)} all match {name!r}")
    return winners[0]


def load_pipelines(
    path: Path, pool_defaults: PoolDefaults | None = None, schedules_timer: str | None = None
) -> PipelineSet:
    """Read and validate a pipelines file, the deployment's pool defaults filling what its pools leave out;
    errors name the file and the field. `schedules_timer` is the schedule of the timer that fires the pipelines'
    schedules (BATCHDROP_SCHEDULES_SCHEDULE): a pipeline schedule that fires more often is refused."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: pipelines file not found (BATCHDROP_PIPELINES_FILE)") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON: {error}") from None
    raw = _with_pool_defaults(raw, pool_defaults or PoolDefaults())
    try:
        pipelines = PipelineSet.model_validate(raw)
    except ValidationError as error:
        problems = []
        for issue in error.errors():
            where = _describe_location(raw, issue["loc"])
            problems.append(f"{where}: {issue['msg']}")
        raise ConfigError(f"{path}: " + "; ".join(problems)) from None
    overlaps = pipelines.overlaps()
    if overlaps:
        raise ConfigError(f"{path}: " + "; ".join(overlaps) + "; an input may match one pipeline at most")
    too_often = _faster_than_timer(pipelines, schedules_timer) if schedules_timer is not None else []
    if too_often:
        raise ConfigError(f"{path}: " + "; ".join(too_often))
    return pipelines


def _faster_than_timer(pipelines: PipelineSet, timer: str) -> list[str]:
    """The pipelines whose schedule can fire twice between two ticks of the timer that drives them all."""
    scheduled = [(pipeline, pipeline.schedule) for pipeline in pipelines.pipelines if pipeline.schedule is not None]
    if not scheduled:
        return []
    try:
        _, timer_gap = interval_bounds(parse_schedule(timer))
    except ScheduleError as error:
        return [f"BATCHDROP_SCHEDULES_SCHEDULE: {error}"]
    problems = []
    for pipeline, schedule in scheduled:
        shortest, _ = interval_bounds(schedule)
        if shortest < timer_gap:
            problems.append(
                f"pipelines[{pipeline.name!r}].submit.schedule: {schedule.expression!r} can fire "
                f"{_seconds(shortest)} apart, more often than the timer that fires schedules "
                f"(BATCHDROP_SCHEDULES_SCHEDULE {timer!r}, up to {_seconds(timer_gap)} apart); "
                "make it fire less often, or the timer more often"
            )
    return problems


def _seconds(gap: timedelta) -> str:
    return f"{int(gap.total_seconds())} s"


def _with_pool_defaults(raw: object, defaults: PoolDefaults) -> object:
    """`raw` with every pipeline's pool object filled by `defaults`; anything malformed is left to validation."""
    if not isinstance(raw, dict) or not isinstance(raw.get("pipelines"), list):
        return raw
    pipelines = [
        {**item, "pool": defaults.fill(item["pool"])} if isinstance(item, dict) and isinstance(item.get("pool"), dict)
        else item
        for item in raw["pipelines"]
    ]  # fmt: skip
    return {**raw, "pipelines": pipelines}


def _describe_location(raw: object, location: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    node = raw
    for part in location:
        if isinstance(part, int) and isinstance(node, list) and part < len(node):
            node = node[part]
            label = node.get("name") if isinstance(node, dict) else None
            parts.append(f"[{label!r}]" if label else f"[{part}]")
        else:
            node = node.get(str(part)) if isinstance(node, dict) else None
            parts.append(f".{part}")
    return "".join(parts).lstrip(".") or "file"


def _describe_match(match: MatchSpec) -> str:
    return f"prefix {match.prefix!r}, glob {match.glob!r}"


# Overlap of two match specs: each is a tiny automaton over one token per position (a set of characters, or
# None for `*`); a cheapest-first search of their product finds a name both accept, if there is one.

_Chars = tuple[tuple[int, int], ...]  # sorted, disjoint, inclusive code point ranges
_State = tuple[int, int, bool, bool, bool]  # position in each, whether each `*` there took a character, ends well

NAME_CHARS: _Chars = ((0x20, 0x7E), (0x80, sys.maxunicode))  # what ids.check_blob_name allows in a name
_BAD_LAST: _Chars = ((ord("."), ord(".")), (ord("/"), ord("/")))  # ids.check_blob_name refuses them last
_READABLE = "x" + string.ascii_lowercase + string.digits + string.ascii_uppercase + "-_"


def _one_char(char: str) -> _Chars:
    return _intersect(((ord(char), ord(char)),), NAME_CHARS)


def _glob_tokens(glob: str) -> list[_Chars | None]:
    """The glob as fnmatch reads it: None for `*`, else the characters that one position may hold."""
    tokens: list[_Chars | None] = []
    index = 0
    while index < len(glob):
        char = glob[index]
        end = _bracket_end(glob, index) if char == "[" else None
        if char == "*":
            if not tokens or tokens[-1] is not None:
                tokens.append(None)
        elif char == "?":
            tokens.append(NAME_CHARS)
        elif end is not None:
            tokens.append(_bracket_chars(glob[index : end + 1]))
            index = end
        else:
            tokens.append(_one_char(char))
        index += 1
    return tokens


def _bracket_end(glob: str, start: int) -> int | None:
    """Where the set opened at `start` closes, by fnmatch's rules; None when the `[` is a plain character."""
    index = start + 1
    if index < len(glob) and glob[index] == "!":
        index += 1
    if index < len(glob) and glob[index] == "]":
        index += 1
    end = glob.find("]", index)
    return end if end >= 0 else None


def _bracket_chars(expression: str) -> _Chars:
    """The characters a `[...]` set takes, asking fnmatch's own translation rather than re-implementing it."""
    pattern = re.compile(fnmatch.translate(expression))
    # The set is literals and ranges between characters of the expression, so membership can only change at
    # one of them or just after one: a probe per stretch decides the whole stretch.
    edges = sorted({0} | {ord(char) for char in expression} | {ord(char) + 1 for char in expression})
    edges = [edge for edge in edges if edge <= sys.maxunicode]
    ranges = [
        (low, next_low - 1)
        for low, next_low in zip(edges, [*edges[1:], sys.maxunicode + 1], strict=True)
        if pattern.match(chr(low))
    ]
    return _intersect(tuple(ranges), NAME_CHARS)


def _intersect(first: _Chars, second: _Chars) -> _Chars:
    found = []
    for low, high in first:
        for other_low, other_high in second:
            if max(low, other_low) <= min(high, other_high):
                found.append((max(low, other_low), min(high, other_high)))
    return tuple(sorted(found))


def _subtract(chars: _Chars, removed: _Chars) -> _Chars:
    left = list(chars)
    for cut_low, cut_high in removed:
        left = [
            piece
            for low, high in left
            for piece in ((low, min(high, cut_low - 1)), (max(low, cut_high + 1), high))
            if piece[0] <= piece[1]
        ]
    return tuple(left)


def _pick(chars: _Chars) -> str:
    readable = next((char for char in _READABLE if _intersect(chars, _one_char(char))), None)
    return readable or chr(chars[0][0])


def _common_name(first: list[_Chars | None], second: list[_Chars | None], empty_star_cost: int) -> str | None:
    """The cheapest name both token lists accept: a character costs 1, a `*` that took none `empty_star_cost`."""
    start: _State = (0, 0, False, False, False)
    cheapest = {start: 0}
    came_from: dict[_State, tuple[_State, str]] = {}
    queue = [(0, 0, start)]
    pushed = 0
    while queue:
        cost, _, state = heapq.heappop(queue)
        if cost > cheapest[state]:
            continue
        if state[0] == len(first) and state[1] == len(second) and state[4]:
            name = []
            while state != start:
                state, char = came_from[state]
                name.append(char)
            return "".join(reversed(name))
        for step_cost, following, char in _moves(first, second, state, empty_star_cost):
            if cost + step_cost < cheapest.get(following, sys.maxsize):
                cheapest[following] = cost + step_cost
                came_from[following] = (state, char)
                pushed += 1
                heapq.heappush(queue, (cost + step_cost, pushed, following))
    return None


def _moves(
    first: list[_Chars | None], second: list[_Chars | None], state: _State, empty_star_cost: int
) -> Iterator[tuple[int, _State, str]]:
    at_first, at_second, first_took, second_took, ends_well = state
    if at_first < len(first) and first[at_first] is None:
        yield (0 if first_took else empty_star_cost), (at_first + 1, at_second, False, second_took, ends_well), ""
    if at_second < len(second) and second[at_second] is None:
        yield (0 if second_took else empty_star_cost), (at_first, at_second + 1, first_took, False, ends_well), ""
    if at_first == len(first) or at_second == len(second):
        return
    first_token, second_token = first[at_first], second[at_second]
    first_chars = NAME_CHARS if first_token is None else first_token
    both = _intersect(first_chars, NAME_CHARS if second_token is None else second_token)
    if not both:
        return
    good_last = _subtract(both, _BAD_LAST)
    following = (
        at_first + (first_token is not None),
        at_second + (second_token is not None),
        first_token is None,
        second_token is None,
        bool(good_last),
    )
    yield 1, following, _pick(good_last or both)
