"""Pipeline specs (which inputs run which command) and routing of an input to its pipeline."""

from __future__ import annotations

import fnmatch
import json
import re
import string
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.errors import ConfigError
from shared.ids import PIPELINE_NAME

PLACEHOLDERS = frozenset({"input", "output_dir", "app_dir"})
OUTPUT_DIR = "out"
APP_DIR = "app"


class PoolSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    vm_size: str = "standard_d2s_v3"
    dedicated_nodes: Annotated[int, Field(ge=0, le=1000)] = 1
    low_priority_nodes: Annotated[int, Field(ge=0, le=1000)] = 0
    task_slots_per_node: Annotated[int, Field(ge=1, le=256)] = 4
    image_publisher: str = "canonical"
    image_offer: str = "ubuntu-24_04-lts"
    image_sku: str = "server"
    node_agent_sku_id: str = "batch.node.ubuntu 24.04"


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

    @field_validator("command")
    @classmethod
    def _placeholders_exist(cls, command: str) -> str:
        try:
            fields = {name for _, name, _, _ in string.Formatter().parse(command) if name is not None}
        except ValueError as error:
            raise ValueError(f"command template {command!r} is malformed: {error}") from None
        unknown = sorted(fields - PLACEHOLDERS)
        if unknown:
            raise ValueError(
                f"command uses unknown placeholder(s) {', '.join('{' + n + '}' for n in unknown)}; "
                f"known: {', '.join('{' + n + '}' for n in sorted(PLACEHOLDERS))}"
            )
        return command

    @field_validator("app_files", "outputs")
    @classmethod
    def _relative_paths(cls, paths: tuple[str, ...]) -> tuple[str, ...]:
        for path in paths:
            if not path or path.startswith("/") or ".." in path.split("/"):
                raise ValueError(f"{path!r} must be a relative path without '..'")
        return paths

    def command_line(self, input_path: str) -> str:
        """The task's command line: the template with only batchdrop's own safe paths substituted."""
        return self.command.format(input=input_path, output_dir=OUTPUT_DIR, app_dir=APP_DIR)


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
        return self

    def matching(self, name: str) -> list[PipelineSpec]:
        return [pipeline for pipeline in self.pipelines if pipeline.match.matches(name)]

    def by_name(self, name: str) -> PipelineSpec | None:
        return next((pipeline for pipeline in self.pipelines if pipeline.name == name), None)


class RoutingConflict(Exception):
    """More than one pipeline takes the same input."""


def route(pipelines: PipelineSet, name: str) -> PipelineSpec | None:
    """The pipeline for an input name, None when none takes it; RoutingConflict when several do."""
    found = pipelines.matching(name)
    if len(found) > 1:
        raise RoutingConflict(f"pipelines {', '.join(p.name for p in found)} all match {name!r}")
    return found[0] if found else None


def load_pipelines(path: Path) -> PipelineSet:
    """Read and validate a pipelines file; errors name the file and the field."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: pipelines file not found (BATCHDROP_PIPELINES_FILE)") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON: {error}") from None
    try:
        return PipelineSet.model_validate(raw)
    except ValidationError as error:
        problems = []
        for issue in error.errors():
            where = _describe_location(raw, issue["loc"])
            problems.append(f"{where}: {issue['msg']}")
        raise ConfigError(f"{path}: " + "; ".join(problems)) from None


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
