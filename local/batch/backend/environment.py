"""What a process on a node is given: environment variables, application packages, the runner's Attempt."""

from __future__ import annotations

import contextlib
import copy
import os
import re
from pathlib import Path
from typing import Any

from local.batch import clock, runner
from local.batch.backend.records import Doc
from local.batch.backend.state import State
from local.batch.errors import BatchApiError


def auto_user(task: Doc) -> Doc:
    """The task's autoUser specification; empty when it runs as a named user."""
    return dict((task.get("userIdentity") or {}).get("autoUser") or {})


def package_dir(state: State, reference: Doc) -> Path | None:
    """Where an application package reference is found under the packages directory, if anywhere."""
    application = str(reference.get("applicationId") or "")
    if not application or "/" in application or ".." in application:
        return None
    version = reference.get("version")
    base = state.packages_dir / application
    if version:
        candidate = base / str(version)
        return candidate if candidate.is_dir() else None
    if (base / "default").is_dir():
        return base / "default"
    versions = sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    return versions[-1] if len(versions) == 1 else None


def check_packages(state: State, references: Any) -> None:
    if not references:
        return
    missing = [ref for ref in references if package_dir(state, ref) is None]
    if missing:
        raise BatchApiError(
            409,
            "InvalidApplicationPackageReferences",
            "One or more of the specified application package references are invalid.",
            {
                str(ref.get("applicationId")): f"{ref.get('version') or 'default'} not found under {state.packages_dir}"
                for ref in missing
            },
        )


def node_root(state: State, node: Doc) -> Path:
    return state.state_dir / "nodes" / str(node["id"])


def base_environment(state: State, pool: Doc, node: Doc, root: Path) -> dict[str, str]:
    """What any process on a Linux Batch node sees, before task-specific variables."""
    env: dict[str, str] = {}
    for name in ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update(
        {
            "HOME": str(root / "home"),
            "USER": "_azbatch",
            "AZ_BATCH_ACCOUNT_NAME": state.account_name,
            "AZ_BATCH_ACCOUNT_URL": state.account_url,
            "AZ_BATCH_POOL_ID": str(pool["id"]),
            "AZ_BATCH_NODE_ID": str(node["id"]),
            "AZ_BATCH_NODE_IS_DEDICATED": "true" if node["isDedicated"] else "false",
            "AZ_BATCH_NODE_ROOT_DIR": str(root),
            "AZ_BATCH_NODE_SHARED_DIR": str(root / "shared"),
            "AZ_BATCH_NODE_STARTUP_DIR": str(root / "startup"),
            "AZ_BATCH_NODE_STARTUP_WORKING_DIR": str(root / "startup" / "wd"),
            "AZ_BATCH_NODE_MOUNTS_DIR": str(root / "fsmounts"),
            "AZ_BATCH_TASK_USER": "_azbatch",
            "AZ_BATCH_TASK_USER_IDENTITY": "PoolNonAdmin",
            "AZ_BATCH_RESERVED_EPHEMERAL_DISK_SPACE_BYTES": "1000000000",
        }
    )
    return env


def identity_environment(task: Doc) -> dict[str, str]:
    """What the task is told about its user; the process itself always runs as the emulator's OS user."""
    username = (task.get("userIdentity") or {}).get("username")
    if username:
        return {"AZ_BATCH_TASK_USER": str(username), "AZ_BATCH_TASK_USER_IDENTITY": str(username)}
    user = auto_user(task)
    scope = "Task" if user.get("scope") == "task" else "Pool"
    level = "Admin" if user.get("elevationLevel") == "admin" else "NonAdmin"
    return {"AZ_BATCH_TASK_USER_IDENTITY": scope + level}


def install_packages(state: State, references: list[Doc], root: Path) -> dict[str, str]:
    """Link each referenced package into the node's applications directory; the variables that name them."""
    env: dict[str, str] = {}
    for reference in references:
        package = package_dir(state, reference)
        if package is None:
            continue
        application = str(reference["applicationId"])
        version = str(reference.get("version") or "")
        installed = root / "applications" / f"{application}#{version or package.name}"
        if not installed.exists():
            installed.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                installed.symlink_to(package.resolve(), target_is_directory=True)
        suffix = re.sub(r"[^A-Za-z0-9_]", "_", application)
        if version:
            suffix += "_" + re.sub(r"[^A-Za-z0-9_]", "_", version)
        env[f"AZ_BATCH_APP_PACKAGE_{suffix}"] = str(installed)
    return env


def task_attempt(state: State, job: Doc, task: Doc, pool: Doc, node: Doc) -> runner.Attempt:
    """One attempt of a task on a node, as the runner needs it."""
    root = node_root(state, node)
    task_dir = root / "workitems" / str(job["id"]) / "job-1" / str(task["id"])
    env = base_environment(state, pool, node, root)
    env.update(
        {
            "AZ_BATCH_JOB_ID": str(job["id"]),
            "AZ_BATCH_TASK_ID": str(task["id"]),
            "AZ_BATCH_TASK_DIR": str(task_dir),
            "AZ_BATCH_TASK_WORKING_DIR": str(task_dir / "wd"),
            "AZ_BATCH_TASK_RETRY_COUNT": str(task["executionInfo"].get("retryCount", 0)),
        }
    )
    env.update(identity_environment(task))
    if job.get("jobPreparationTask"):
        prep_dir = task_dir.parent / str(job["jobPreparationTask"].get("id") or "jobpreparation")
        env["AZ_BATCH_JOB_PREP_DIR"] = str(prep_dir)
        env["AZ_BATCH_JOB_PREP_WORKING_DIR"] = str(prep_dir / "wd")
    references = list(pool.get("applicationPackageReferences") or []) + list(
        task.get("applicationPackageReferences") or []
    )
    env.update(install_packages(state, references, root))
    for setting in list(job.get("commonEnvironmentSettings") or []) + list(task.get("environmentSettings") or []):
        env[str(setting["name"])] = str(setting.get("value") or "")
    wall_clock = clock.duration_seconds(str(task["constraints"]["maxWallClockTime"]))
    return runner.Attempt(
        job_id=str(job["id"]),
        task_id=str(task["id"]),
        pool_id=str(pool["id"]),
        node_id=str(node["id"]),
        node_root=root,
        command_line=str(task["commandLine"]),
        environment=env,
        resource_files=copy.deepcopy(list(task.get("resourceFiles") or [])),
        output_files=copy.deepcopy(list(task.get("outputFiles") or [])),
        wall_clock_seconds=None if wall_clock >= clock.UNLIMITED_SECONDS else wall_clock,
        auto_storage_connection_string=state.auto_storage,
        private_task_dir=auto_user(task).get("scope") == "task",
    )


def start_task_attempt(state: State, pool: Doc, node: Doc) -> runner.Attempt:
    """The pool's start task on a node; it runs in the node's startup directory."""
    start_task = dict(pool["startTask"])
    root = node_root(state, node)
    startup = root / "startup"
    env = base_environment(state, pool, node, root)
    env.update({"AZ_BATCH_TASK_DIR": str(startup), "AZ_BATCH_TASK_WORKING_DIR": str(startup / "wd")})
    for setting in start_task.get("environmentSettings") or []:
        env[str(setting["name"])] = str(setting.get("value") or "")
    return runner.Attempt(
        job_id="",
        task_id="",
        pool_id=str(pool["id"]),
        node_id=str(node["id"]),
        node_root=root,
        command_line=str(start_task.get("commandLine") or ""),
        environment=env,
        resource_files=copy.deepcopy(list(start_task.get("resourceFiles") or [])),
        output_files=[],
        wall_clock_seconds=None,
        auto_storage_connection_string=state.auto_storage,
        task_dir_override=startup,
    )


def side_task_attempt(state: State, job: Doc, pool: Doc, node: Doc, kind: str) -> tuple[runner.Attempt, int]:
    """The job preparation ("preparation") or release ("release") task as an attempt on a node, and its retries."""
    spec = job["jobPreparationTask" if kind == "preparation" else "jobReleaseTask"]
    task_id = str(spec.get("id") or ("jobpreparation" if kind == "preparation" else "jobrelease"))
    root = node_root(state, node)
    task_dir = root / "workitems" / str(job["id"]) / "job-1" / task_id
    prep_dir = task_dir if kind == "preparation" else task_dir.parent / "jobpreparation"
    env = base_environment(state, pool, node, root)
    env.update(
        {
            "AZ_BATCH_JOB_ID": str(job["id"]),
            "AZ_BATCH_TASK_ID": task_id,
            "AZ_BATCH_TASK_DIR": str(task_dir),
            "AZ_BATCH_TASK_WORKING_DIR": str(task_dir / "wd"),
            "AZ_BATCH_JOB_PREP_DIR": str(prep_dir),
            "AZ_BATCH_JOB_PREP_WORKING_DIR": str(prep_dir / "wd"),
        }
    )
    for setting in list(job.get("commonEnvironmentSettings") or []) + list(spec.get("environmentSettings") or []):
        env[str(setting["name"])] = str(setting.get("value") or "")
    constraints = spec.get("constraints") or {}
    limit = constraints.get("maxWallClockTime") or spec.get("maxWallClockTime")
    if kind == "release":
        limit = limit or "PT15M"  # Batch's default for release tasks
    seconds = clock.duration_seconds(str(limit)) if limit else None
    attempt = runner.Attempt(
        job_id=str(job["id"]),
        task_id=task_id,
        pool_id=str(pool["id"]),
        node_id=str(node["id"]),
        node_root=root,
        command_line=str(spec["commandLine"]),
        environment=env,
        resource_files=copy.deepcopy(list(spec.get("resourceFiles") or [])),
        output_files=[],
        wall_clock_seconds=seconds,
        auto_storage_connection_string=state.auto_storage,
    )
    return attempt, int(constraints.get("maxTaskRetryCount") or 0) if kind == "preparation" else 0
