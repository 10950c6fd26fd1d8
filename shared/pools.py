"""Pool specs of the pipelines file: VM image, scale (fixed or autoscale with its formula), start task, environment.

What each field becomes on Batch is in docs/pipelines.md; shared/batch.py does the mapping.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

logger = logging.getLogger(__name__)

# The image of a pool without containers (Batch's own Pool_Add example in the REST spec 2025-06-01 uses it).
DEFAULT_IMAGE = ("canonical", "ubuntu-24_04-lts", "server", "batch.node.ubuntu 24.04")
# Batch lists microsoft-dsvm/ubuntu-hpc among the Linux images for container workloads (docs: "Run container
# applications on Azure Batch", Linux support); it ships a Docker-compatible runtime. The older
# microsoft-azure-batch/ubuntu-server-container images are Ubuntu 20.04, out of support.
CONTAINER_IMAGE = ("microsoft-dsvm", "ubuntu-hpc", "2204", "batch.node.ubuntu 22.04")

MAX_FORMULA = 8000  # Batch: "The formula string can't exceed 8 KB"
MAX_FORMULA_STATEMENTS = 100  # Batch: "up to 100 statements that are separated by semicolons"
MIN_EVALUATION_MINUTES = 5  # Batch refuses autoScaleEvaluationInterval below 5 minutes ...
MAX_EVALUATION_MINUTES = 168 * 60  # ... and above 168 hours
GENERATED_EVALUATION_MINUTES = 5

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
APP_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Names that hold secrets by convention: a part of the name (split on '_') that is one of these or ends in one.
_SECRET_NAME_PARTS = ("PASSWORD", "PASSWD", "SECRET", "TOKEN", "CREDENTIAL", "CREDENTIALS", "CONNECTIONSTRING")
_SECRET_NAME_KEYS = frozenset({"KEY", "APIKEY", "ACCESSKEY", "ACCOUNTKEY", "PRIVATEKEY", "SECRETKEY", "SASKEY"})
_SECRET_VALUE = re.compile(
    r"(?i)(sig=|accountkey=|sharedaccesskey=|sharedaccesssignature=|password=|pwd=|-----BEGIN|"
    r"\beyJ[A-Za-z0-9_-]{10,}\.)"  # a JWT's header
)
_LONG_TOKEN = re.compile(r"[A-Za-z0-9+=_-]{32,}")
_LONG_HEX = re.compile(r"\b[0-9A-Fa-f]{32,}\b")
KEEP_OUT_ADVICE = (
    "looks like a secret; keep secrets out of the pipelines file: put it in an app setting (Key Vault reference) "
    "and give the application a managed identity, or for a registry use password_setting"
)


def secret_reason(name: str, value: str) -> str | None:
    """Why an environment variable looks like a secret, None when it does not."""
    parts = name.upper().split("_")
    if any(part.endswith(_SECRET_NAME_PARTS) or part in _SECRET_NAME_KEYS for part in parts):
        return f"its name {name!r}"
    if _SECRET_VALUE.search(value):
        return "its value"
    if _LONG_HEX.search(value):
        return "its value (a long hex token)"
    for token in _LONG_TOKEN.findall(value):
        if re.search(r"[0-9]", token) and re.search(r"[a-z]", token) and re.search(r"[A-Z]", token):
            return "its value (a long base64-like token)"
    return None


def check_one_line(text: str) -> str:
    """A command line or option string: one line, no control characters (they would reach Batch verbatim)."""
    if any(ord(char) < 32 for char in text):
        raise ValueError("must be one line without control characters")
    return text


def check_environment(environment: dict[str, str]) -> dict[str, str]:
    """Environment variable names Batch and batchdrop leave to the user, and values that are no secrets."""
    for name, value in environment.items():
        if not ENV_NAME.match(name):
            raise ValueError(f"environment variable name {name!r} must match [A-Za-z_][A-Za-z0-9_]*")
        if name.upper().startswith("AZ_BATCH_"):
            raise ValueError(f"environment variable {name!r}: AZ_BATCH_* names are set by Batch itself")
        if name.upper().startswith("BATCHDROP_"):
            raise ValueError(f"environment variable {name!r}: BATCHDROP_* names are set by batchdrop itself")
        if len(value) > 4096:
            raise ValueError(f"environment variable {name!r}: value is longer than 4,096 characters")
        reason = secret_reason(name, value)
        if reason is not None:
            raise ValueError(f"environment variable {name!r}: {reason} {KEEP_OUT_ADVICE}")
    return environment


def check_relative_paths(paths: tuple[str, ...]) -> tuple[str, ...]:
    for path in paths:
        if not path or path.startswith("/") or ".." in path.split("/") or "\\" in path:
            raise ValueError(f"{path!r} must be a relative path without '..'")
    return paths


class StartTaskSpec(BaseModel):
    """The pool's start task: runs on each node as it joins the pool (and after a reboot or reimage)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: Annotated[str, Field(min_length=1, max_length=8000)]
    resource_files: tuple[str, ...] = ()  # blob names in the apps container; land at app/<name>
    environment: dict[str, str] = {}
    wait_for_success: bool = True
    elevation: Literal["nonadmin", "admin"] = "nonadmin"
    max_retries: Annotated[int, Field(ge=0, le=100)] = 1

    @field_validator("resource_files")
    @classmethod
    def _relative(cls, paths: tuple[str, ...]) -> tuple[str, ...]:
        return check_relative_paths(paths)

    @field_validator("environment")
    @classmethod
    def _no_secrets(cls, environment: dict[str, str]) -> dict[str, str]:
        return check_environment(environment)

    @field_validator("command")
    @classmethod
    def _one_line(cls, command: str) -> str:
        return check_one_line(command)


class FixedScale(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dedicated: Annotated[int, Field(ge=0, le=1000)] = 0
    spot: Annotated[int, Field(ge=0, le=1000)] = 0


class AutoScale(BaseModel):
    """Either batchdrop's generated formula (min/max nodes, Spot or not, idle minutes) or the user's own formula."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_nodes: Annotated[int, Field(ge=0, le=1000)] | None = None
    max_nodes: Annotated[int, Field(ge=1, le=1000)] | None = None
    spot: bool | None = None
    idle_minutes: Annotated[int, Field(ge=1, le=7 * 24 * 60)] | None = None
    formula: Annotated[str, Field(min_length=1)] | None = None
    evaluation_interval_minutes: Annotated[int, Field(ge=MIN_EVALUATION_MINUTES, le=MAX_EVALUATION_MINUTES)] | None = (
        None
    )

    @field_validator("formula")
    @classmethod
    def _formula_within_limits(cls, formula: str | None) -> str | None:
        if formula is None:
            return None
        if len(formula) > MAX_FORMULA:
            raise ValueError(f"is {len(formula):,} characters; Batch takes at most {MAX_FORMULA:,}")
        statements = [part for part in formula.split(";") if part.strip() and not part.strip().startswith("//")]
        if len(statements) > MAX_FORMULA_STATEMENTS:
            raise ValueError(f"has {len(statements)} statements; Batch takes at most {MAX_FORMULA_STATEMENTS}")
        return formula

    @model_validator(mode="after")
    def _one_kind(self) -> AutoScale:
        generated = {
            "min_nodes": self.min_nodes,
            "max_nodes": self.max_nodes,
            "spot": self.spot,
            "idle_minutes": self.idle_minutes,
        }
        given = sorted(name for name, value in generated.items() if value is not None)
        if self.formula is not None:
            if given:
                raise ValueError(f"formula replaces {', '.join(given)}: give either a formula or those fields")
            return self
        if self.evaluation_interval_minutes is not None:
            raise ValueError("evaluation_interval_minutes goes with a formula; the generated one uses 5 minutes")
        if self.max_nodes is None:
            raise ValueError("max_nodes is required (or give a formula)")
        if (self.min_nodes or 0) > self.max_nodes:
            raise ValueError(f"min_nodes {self.min_nodes} is above max_nodes {self.max_nodes}")
        return self


class ScaleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    fixed: FixedScale | None = None
    auto: AutoScale | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ScaleSpec:
        if (self.fixed is None) == (self.auto is None):
            raise ValueError("give exactly one of fixed or auto")
        return self


class PoolSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    vm_size: Annotated[str, Field(pattern=r"^[A-Za-z0-9_]{1,64}$")] = "standard_d2s_v3"
    # `fixed` shorthand kept for existing files: dedicated_nodes/low_priority_nodes = scale.fixed.dedicated/spot
    dedicated_nodes: Annotated[int, Field(ge=0, le=1000)] = 1
    low_priority_nodes: Annotated[int, Field(ge=0, le=1000)] = 0
    scale: ScaleSpec | None = None
    task_slots_per_node: Annotated[int, Field(ge=1, le=256)] = 4
    # None: the default image, or the container-capable one when a pipeline on this pool runs a container
    image_publisher: str | None = None
    image_offer: str | None = None
    image_sku: str | None = None
    node_agent_sku_id: str | None = None
    start_task: StartTaskSpec | None = None

    @model_validator(mode="after")
    def _one_way_to_scale(self) -> PoolSpec:
        shorthand = {"dedicated_nodes", "low_priority_nodes"} & self.model_fields_set
        if self.scale is not None and shorthand:
            raise ValueError(f"give scale or {' and '.join(sorted(shorthand))}, not both")
        image = [self.image_publisher, self.image_offer, self.image_sku, self.node_agent_sku_id]
        if any(part is not None for part in image) and not all(part for part in image):
            raise ValueError("image_publisher, image_offer, image_sku and node_agent_sku_id go together")
        if self.start_task is not None and self.start_task.elevation == "admin":
            logger.warning("pool %s: the start task runs as admin (elevation: admin)", self.id)
        return self

    def image(self, containers: bool) -> tuple[str, str, str, str]:
        """(publisher, offer, sku, node agent SKU) of the pool's VM image."""
        if self.image_publisher and self.image_offer and self.image_sku and self.node_agent_sku_id:
            return self.image_publisher, self.image_offer, self.image_sku, self.node_agent_sku_id
        return CONTAINER_IMAGE if containers else DEFAULT_IMAGE

    def fixed_nodes(self) -> tuple[int, int] | None:
        """(dedicated, Spot) targets of a fixed-size pool, None for an autoscale pool."""
        if self.scale is None:
            return self.dedicated_nodes, self.low_priority_nodes
        if self.scale.fixed is not None:
            return self.scale.fixed.dedicated, self.scale.fixed.spot
        return None

    def autoscale(self) -> tuple[str, int] | None:
        """(formula, evaluation interval in minutes) of an autoscale pool, None for a fixed-size pool."""
        auto = self.scale.auto if self.scale is not None else None
        if auto is None:
            return None
        if auto.formula is not None:
            return auto.formula, auto.evaluation_interval_minutes or 15  # Batch's default interval
        assert auto.max_nodes is not None  # checked by AutoScale
        formula = pending_tasks_formula(
            auto.min_nodes or 0, auto.max_nodes, bool(auto.spot), auto.idle_minutes or 10, self.task_slots_per_node
        )
        return formula, GENERATED_EVALUATION_MINUTES


def pending_tasks_formula(min_nodes: int, max_nodes: int, spot: bool, idle_minutes: int, slots: int) -> str:
    """batchdrop's autoscale formula, after the shape of Batch's documented pending-tasks example.

    $PendingTasks counts active and running tasks. Nodes follow the largest backlog of the last `idle_minutes`
    (the latest sample alone while fewer than 70% of that window's samples exist, e.g. for a new pool), one node
    per `slots` tasks, within [min_nodes, max_nodes]; after `idle_minutes` without a task it is min_nodes.
    `taskcompletion` lets a node finish its running tasks before it goes.
    """
    window = f"TimeInterval_Minute * {idle_minutes}"
    target, other = (
        ("$TargetLowPriorityNodes", "$TargetDedicatedNodes")
        if spot
        else ("$TargetDedicatedNodes", "$TargetLowPriorityNodes")
    )
    return "\n".join(
        [
            f"// batchdrop: {min_nodes} to {max_nodes} {'Spot' if spot else 'dedicated'} nodes, {slots} tasks per "
            f"node; back to {min_nodes} after {idle_minutes} minutes without tasks",
            f"$samples = $PendingTasks.GetSamplePercent({window});",
            f"$pending = $samples < 70 ? max($PendingTasks.GetSample(1)) : max($PendingTasks.GetSample({window}));",
            f"$wanted = $pending > 0 ? ceil($pending / {slots}) : {min_nodes};",
            f"{target} = max({min_nodes}, min({max_nodes}, $wanted));",
            f"{other} = 0;",
            "$NodeDeallocationOption = taskcompletion;",
        ]
    )


@dataclass(frozen=True)
class PoolDefaults:
    """What a deployment gives the pools of its pipelines file, for the fields a pool leaves out.

    A pool that states its own `vm_size` or scale (`scale`, `dedicated_nodes`, `low_priority_nodes`) keeps it;
    one that leaves them out gets `vm_size`, and either autoscale from 0 to `max_nodes` (`scale_to_zero`) or
    `max_nodes` fixed nodes, Spot when `use_spot`. The azd template sets these from its pool parameters.
    """

    vm_size: str = "standard_d2s_v3"
    max_nodes: int = 2
    use_spot: bool = False
    scale_to_zero: bool = False

    def fill(self, pool: dict[str, object]) -> dict[str, object]:
        """The pool's raw JSON object with the deployment's values in the fields it leaves out."""
        filled = dict(pool)
        filled.setdefault("vm_size", self.vm_size)
        if not {"scale", "dedicated_nodes", "low_priority_nodes"} & filled.keys():
            if self.scale_to_zero:
                filled["scale"] = {"auto": {"min_nodes": 0, "max_nodes": self.max_nodes, "spot": self.use_spot}}
            else:
                kind = "spot" if self.use_spot else "dedicated"
                filled["scale"] = {"fixed": {kind: self.max_nodes}}
        return filled


@dataclass(frozen=True)
class PoolDrift:
    """One difference between the pipelines file and the pool in Batch, and what was or is to be done."""

    field: str
    wanted: str
    actual: str
    action: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "wanted": self.wanted, "actual": self.actual, "action": self.action}


@dataclass(frozen=True)
class PoolReport:
    """A pool as status shows it: its drift from the file and its nodes by state."""

    pool_id: str
    exists: bool
    drift: tuple[PoolDrift, ...] = ()
    nodes: tuple[tuple[str, int], ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {
            "pool_id": self.pool_id,
            "exists": self.exists,
            "drift": [item.as_dict() for item in self.drift],
            "nodes": dict(self.nodes),
        }
