"""What a process on a node is given: environment variables, application packages, the runner's Attempt."""

from __future__ import annotations

import copy
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local.batch import clock, packages, runner
from local.batch.backend.records import Doc
from local.batch.backend.state import State
from local.batch.errors import BatchApiError, missing_property


def auto_user(task: Doc) -> Doc:
    """The task's autoUser specification; empty when it runs as a named user."""
    return dict((task.get("userIdentity") or {}).get("autoUser") or {})


def _references(raw: Any) -> list[Doc]:
    """The references as Batch validates their shape: a list of objects, each with an applicationId string."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise BatchApiError(
            400, "InvalidPropertyValue", "The value provided for one of the properties in the request body is invalid.",
            {"PropertyName": "applicationPackageReferences", "Reason": "must be an array"},
        )  # fmt: skip
    for reference in raw:
        if not isinstance(reference, dict) or not reference.get("applicationId"):
            raise missing_property("applicationPackageReferences.applicationId")
        for name in ("applicationId", "version"):
            if reference.get(name) is not None and not isinstance(reference[name], str):
                raise BatchApiError(
                    400, "InvalidPropertyValue",
                    "The value provided for one of the properties in the request body is invalid.",
                    {"PropertyName": f"applicationPackageReferences.{name}", "Reason": "must be a string"},
                )  # fmt: skip
    return list(raw)


def _version(reference: Doc) -> str | None:
    return str(reference["version"]) if reference.get("version") else None


def check_packages(state: State, references: Any) -> None:
    """A pool's references must name packages the account has, else 409 InvalidApplicationPackageReferences.

    The Batch REST spec (specification/batch/data-plane, BatchApplicationPackageReference.version): "If this is
    omitted on a Pool, and no default version is specified for this application, the request fails with the error
    code InvalidApplicationPackageReferences and HTTP status code 409." Unknown ids and versions answer the same.
    """
    missing: dict[str, str] = {}
    for reference in _references(references):
        try:
            packages.PackageStore(state.packages_dir).find(str(reference["applicationId"]), _version(reference))
        except packages.PackageError as problem:
            missing[str(reference["applicationId"])] = str(problem)
    if missing:
        raise BatchApiError(
            409,
            "InvalidApplicationPackageReferences",
            "One or more of the specified application package references are invalid.",
            missing,
        )


def check_task_packages(references: Any) -> None:
    """A task's references are only checked for shape when it is added: Batch resolves them on the node.

    The spec: "If this is omitted on a Task, and no default version is specified for this application, the Task
    fails with a pre-processing error." The emulator fails unknown ids and versions the same way, at run time.
    """
    _references(references)


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


@dataclass
class PackagedAttempt(runner.Attempt):
    """A task attempt with the application packages its node must have before it runs."""

    application_packages: tuple[packages.Package, ...] = ()
    package_failure: runner.Failure | None = None


def _package_failure(reference: Doc, problem: Exception) -> runner.Failure:
    # TaskFailureInformationCodes.ApplicationPackageError in the Batch SDKs: "An error occurred when trying to
    # deploy a required application package."
    details = {"ApplicationId": str(reference.get("applicationId"))}
    if reference.get("version"):
        details["Version"] = str(reference["version"])
    details["Message"] = str(problem)
    return runner.Failure(
        "usererror", "ApplicationPackageError",
        "An error occurred when trying to deploy a required application package.", details,
    )  # fmt: skip


def resolve_packages(
    state: State, references: list[Doc], root: Path
) -> tuple[list[packages.Package], dict[str, str], runner.Failure | None]:
    """The packages the references name, the variables that point at them on the node, or the first failure."""
    store = packages.PackageStore(state.packages_dir)
    found: list[packages.Package] = []
    env: dict[str, str] = {}
    for reference in references:
        try:
            package = store.find(str(reference.get("applicationId") or ""), _version(reference))
        except packages.PackageError as problem:
            return found, env, _package_failure(reference, problem)
        found.append(package)
        installed = root / "applications" / f"{package.application_id}#{package.version}"
        env[packages.environment_name(package.application_id, _version(reference))] = str(installed)
    return found, env, None


def install_packages(attempt: runner.Attempt) -> None:
    """Unpack the attempt's packages on its node (off the state lock); runner.Failure if one cannot be."""
    if not isinstance(attempt, PackagedAttempt):
        return
    if attempt.package_failure is not None:
        raise attempt.package_failure
    for package in attempt.application_packages:
        try:
            packages.install(package, attempt.node_root)
        except (packages.PackageError, OSError, zipfile.BadZipFile) as problem:
            raise _package_failure(
                {"applicationId": package.application_id, "version": package.version}, problem
            ) from None


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
    to_install, package_env, package_failure = resolve_packages(state, references, root)
    env.update(package_env)
    for setting in list(job.get("commonEnvironmentSettings") or []) + list(task.get("environmentSettings") or []):
        env[str(setting["name"])] = str(setting.get("value") or "")
    wall_clock = clock.duration_seconds(str(task["constraints"]["maxWallClockTime"]))
    return PackagedAttempt(
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
        application_packages=tuple(to_install),
        package_failure=package_failure,
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
