"""App settings as one typed object, validated at first use and cached."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import ConfigError
from shared.pools import PoolDefaults

STORAGE_CONNECTION = "BatchdropStorage"


class Settings(BaseSettings):
    """Every setting batchdrop reads; the alias is the app setting's name."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, case_sensitive=False)

    storage_connection_string: str | None = Field(None, alias="BatchdropStorage", repr=False)
    blob_service_uri: str | None = Field(None, alias="BatchdropStorage__blobServiceUri")
    queue_service_uri: str | None = Field(None, alias="BatchdropStorage__queueServiceUri")
    table_service_uri: str | None = Field(None, alias="BatchdropStorage__tableServiceUri")

    batch_url: str = Field(alias="BATCHDROP_BATCH_URL", pattern=r"^https?://\S+$")
    batch_account_name: str | None = Field(None, alias="BATCHDROP_BATCH_ACCOUNT_NAME")
    batch_account_key: str | None = Field(None, alias="BATCHDROP_BATCH_ACCOUNT_KEY", repr=False)

    pipelines_file: Path = Field(alias="BATCHDROP_PIPELINES_FILE")
    # The timer that fires every scheduled pipeline (shared/schedules.py); its binding reads the same setting.
    schedules_schedule: str = Field("0 * * * * *", alias="BATCHDROP_SCHEDULES_SCHEDULE")
    job_window_minutes: int = Field(60, alias="BATCHDROP_JOB_WINDOW_MINUTES", ge=1, le=24 * 60)
    job_close_grace_minutes: int = Field(5, alias="BATCHDROP_JOB_CLOSE_GRACE_MINUTES", ge=0)
    job_retention_hours: float = Field(24.0, alias="BATCHDROP_JOB_RETENTION_HOURS", ge=0)
    poll_overlap_seconds: int = Field(60, alias="BATCHDROP_POLL_OVERLAP_SECONDS", ge=0, le=3600)
    sas_margin_minutes: int = Field(360, alias="BATCHDROP_SAS_MARGIN_MINUTES", ge=1)
    # On Azure the SAS is signed with a user delegation key, which Azure issues for at most 7 days from now,
    # and batchdrop asks for one that outlives the SAS by an hour: 166 hours leaves room for both.
    sas_max_hours: int = Field(48, alias="BATCHDROP_SAS_MAX_HOURS", ge=1, le=24 * 7 - 2)

    # What the pipelines file's pools leave out (shared/pools.py PoolDefaults); the azd template sets them.
    pool_vm_size: str = Field("standard_d2s_v3", alias="BATCHDROP_POOL_VM_SIZE", pattern=r"^[A-Za-z0-9_]{1,64}$")
    pool_max_nodes: int = Field(2, alias="BATCHDROP_POOL_MAX_NODES", ge=1, le=1000)
    pool_use_spot: bool = Field(False, alias="BATCHDROP_POOL_USE_SPOT")
    pool_scale_to_zero: bool = Field(False, alias="BATCHDROP_POOL_SCALE_TO_ZERO")

    input_container: str = Field("input", alias="BATCHDROP_INPUT_CONTAINER")
    apps_container: str = Field("apps", alias="BATCHDROP_APPS_CONTAINER")
    staging_prefix: str = Field("staging", alias="BATCHDROP_STAGING_PREFIX", pattern=r"^[a-z0-9][a-z0-9-]{2,20}$")
    results_container: str = Field("results", alias="BATCHDROP_RESULTS_CONTAINER")
    completions_queue: str = Field("completions", alias="BATCHDROP_COMPLETIONS_QUEUE")
    ledger_table: str = Field("ledger", alias="BATCHDROP_LEDGER_TABLE")
    # Completion events (task_finished): a task Batch does not yet call completed is checked again after
    # delay, 2 x delay, 4 x delay… (capped), this many times, then left to the poll.
    completion_checks_queue: str = Field("completion-checks", alias="BATCHDROP_COMPLETION_CHECKS_QUEUE")
    completion_rechecks: int = Field(6, alias="BATCHDROP_COMPLETION_RECHECKS", ge=0, le=50)
    completion_recheck_seconds: int = Field(2, alias="BATCHDROP_COMPLETION_RECHECK_SECONDS", ge=0, le=3600)
    # Whether completion events reach task_finished (the deployment subscribes it to the staging containers' stderr
    # logs): then the poll, the safety net, enqueues only completions whose input is not collected yet (one point
    # read each) instead of a second message for every task.
    completion_events: bool = Field(False, alias="BATCHDROP_COMPLETION_EVENTS")
    # A queue message can be hidden for at most 7 days.
    completion_recheck_max_seconds: int = Field(
        60, alias="BATCHDROP_COMPLETION_RECHECK_MAX_SECONDS", ge=0, le=7 * 24 * 3600
    )

    @model_validator(mode="after")
    def _storage_is_reachable(self) -> Settings:
        identity = (self.blob_service_uri, self.queue_service_uri, self.table_service_uri)
        if self.storage_connection_string is None and not all(identity):
            missing = [
                name
                for name, value in zip(
                    ("__blobServiceUri", "__queueServiceUri", "__tableServiceUri"), identity, strict=True
                )
                if not value
            ]
            raise ValueError(
                f"set {STORAGE_CONNECTION} (a connection string) or, for managed identity, "
                + ", ".join(STORAGE_CONNECTION + suffix for suffix in missing)
            )
        if (self.batch_account_name is None) != (self.batch_account_key is None):
            raise ValueError("set both BATCHDROP_BATCH_ACCOUNT_NAME and BATCHDROP_BATCH_ACCOUNT_KEY, or neither")
        return self

    @property
    def pool_defaults(self) -> PoolDefaults:
        return PoolDefaults(self.pool_vm_size, self.pool_max_nodes, self.pool_use_spot, self.pool_scale_to_zero)

    @property
    def uses_managed_identity(self) -> bool:
        return self.storage_connection_string is None


def load_settings(**overrides: object) -> Settings:
    """Build Settings from the environment, turning validation errors into one ConfigError naming the settings."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        problems = []
        for issue in error.errors():
            where = ".".join(str(part) for part in issue["loc"]) or "settings"
            field = Settings.model_fields.get(where)
            name = field.alias if field is not None and field.alias else where
            problems.append(f"{name}: {issue['msg']}")
        raise ConfigError("bad or missing app settings: " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide Settings, validated on first use."""
    return load_settings()
