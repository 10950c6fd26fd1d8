"""The `group` field of a pipeline: which inputs belong together, when a group is complete, how long it may wait.

Semantics (docs/pipelines.md, "group"):
- `key`: a regular expression with a named group `key`, matched against the whole blob name (`re.fullmatch`);
  inputs with the same key belong to one group. A name the pipeline takes that the expression does not match is
  rejected, with the reason recorded.
- `expect`: the members' names, each with exactly one `*` standing for the key (`*_R1.txt` with the key
  `pairs/s1` is `pairs/s1_R1.txt`). The group is complete when every one is present. A name with the key that is
  not one of them is rejected.
- `ready_marker`: the last path segment of the blob that says "complete": every other input with the key that has
  arrived by then is a member (the marker itself is not one, and needs to match `key` too).
- `complete_within`: a duration (`90s`, `15m`, `2h`, `1d`, `1h30m`) from the group's first member; a group still
  incomplete after it gets a failed manifest naming what is missing.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_COMPLETE_WITHIN = timedelta(days=7)
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(text: str) -> timedelta:
    """`1d2h3m4s` (each part optional, in that order) as a timedelta; ValueError naming the text otherwise."""
    found = _DURATION.match(text.strip())
    if not text.strip() or found is None:
        raise ValueError(f"{text!r} is not a duration; write e.g. 90s, 15m, 2h, 1d or 1h30m")
    days, hours, minutes, seconds = (int(part or 0) for part in found.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


class GroupSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: Annotated[str, Field(min_length=1)]
    expect: tuple[str, ...] | None = None
    ready_marker: str | None = None
    complete_within: str = "1h"

    @field_validator("key")
    @classmethod
    def _key_has_group(cls, key: str) -> str:
        try:
            compiled = re.compile(key)
        except re.error as error:
            raise ValueError(f"key {key!r} is not a regular expression: {error}") from None
        if "key" not in compiled.groupindex:
            raise ValueError(f"key {key!r} has no named group 'key'; write e.g. (?P<key>.+)_R[12]\\.txt")
        return key

    @field_validator("expect")
    @classmethod
    def _expect(cls, expect: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if expect is None:
            return None
        if not expect:
            raise ValueError("expect is empty; name at least one member, e.g. ['*_R1.txt', '*_R2.txt']")
        for pattern in expect:
            if pattern.count("*") != 1 or any(char in pattern for char in "?[]"):
                raise ValueError(
                    f"expect entry {pattern!r} must contain exactly one '*' (it stands for the group key) and no "
                    "other wildcard"
                )
        repeated = sorted({pattern for pattern in expect if expect.count(pattern) > 1})
        if repeated:
            raise ValueError(f"expect lists {', '.join(map(repr, repeated))} more than once")
        return expect

    @field_validator("ready_marker")
    @classmethod
    def _marker(cls, marker: str | None) -> str | None:
        if marker is not None and (not marker or "/" in marker or marker in (".", "..")):
            raise ValueError(f"ready_marker {marker!r} must be a file name (no '/'), e.g. '_ready'")
        return marker

    @field_validator("complete_within")
    @classmethod
    def _within(cls, text: str) -> str:
        within = parse_duration(text)
        if within <= timedelta(0) or within > MAX_COMPLETE_WITHIN:
            raise ValueError(f"complete_within {text!r} must be more than 0 and at most 7 days")
        return text

    @model_validator(mode="after")
    def _one_completion_rule(self) -> GroupSpec:
        if (self.expect is None) == (self.ready_marker is None):
            raise ValueError("give exactly one of expect (the members' names) or ready_marker (a marker file)")
        return self

    @property
    def within(self) -> timedelta:
        return parse_duration(self.complete_within)

    def classify(self, name: str) -> tuple[str, bool] | str:
        """(group key, whether `name` is the ready marker), or why `name` belongs to no group of this pipeline."""
        found = re.fullmatch(self.key, name)
        if found is None or found.group("key") is None:
            return f"the name does not match the pipeline's group key {self.key!r}"
        key = found.group("key")
        if self.ready_marker is not None:
            return key, name.rsplit("/", 1)[-1] == self.ready_marker
        if name not in self.expected(key):
            listed = ", ".join(repr(member) for member in self.expected(key))
            return f"group {key!r} expects only {listed}"
        return key, False

    def expected(self, key: str) -> list[str]:
        """The members a group with this key waits for (expect groups; none for marker groups)."""
        return [pattern.replace("*", key, 1) for pattern in self.expect or ()]
