"""What a compute node does for one task attempt: directories, resource files, process, output files.

Nothing here touches the emulator's state; the scheduler hands in an Attempt and records the result.
"""

from __future__ import annotations

import contextlib
import glob
import http.client
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from local.batch import containers

DEFAULT_FILE_MODE = 0o770
PRIVATE_DIR_MODE = 0o700
_WILDCARD = re.compile(r"[*?\[]")


@dataclass
class Failure(Exception):
    """A failureInfo as Batch reports it."""

    category: str
    code: str
    message: str
    details: dict[str, str] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"category": self.category, "code": self.code, "message": self.message}
        info["details"] = [{"name": name, "value": value} for name, value in self.details.items()]
        return info


def exit_code_failure() -> Failure:
    """What Batch records for a process that exits non-zero."""
    return Failure(
        "usererror",
        "FailureExitCode",
        "The task process exited with an unexpected exit code",
        {"AdditionalErrorCode": "FailureExitCode"},
    )


@dataclass
class Attempt:
    """Everything a node needs to run one attempt of a task."""

    job_id: str
    task_id: str
    pool_id: str
    node_id: str
    node_root: Path
    command_line: str
    environment: dict[str, str]
    resource_files: list[dict[str, Any]]
    output_files: list[dict[str, Any]]
    wall_clock_seconds: float | None
    auto_storage_connection_string: str | None = None
    task_dir_override: Path | None = None  # the start task runs in <node>/startup
    # userIdentity autoUser scope task: the task directory is owner-only (0700). Every task still runs as the
    # emulator's OS user, so this keeps other OS accounts out, not other tasks (see docs/emulator.md).
    private_task_dir: bool = False
    # containerSettings: the command runs in this container (containers.py), never on the host
    container: containers.ContainerRun | None = None
    # why this attempt must fail before anything is downloaded or run (a container task on a pool without containers)
    refusal: Failure | None = None

    @property
    def task_dir(self) -> Path:
        if self.task_dir_override is not None:
            return self.task_dir_override
        return self.node_root / "workitems" / self.job_id / "job-1" / self.task_id

    @property
    def working_dir(self) -> Path:
        return self.task_dir / "wd"


def node_dirs(node_root: Path) -> None:
    for name in ("shared", "startup", "applications", "workitems", "home"):
        (node_root / name).mkdir(parents=True, exist_ok=True)


def prepare(attempt: Attempt) -> None:
    """Create the task directory and download its resource files; raises Failure on error."""
    try:
        node_dirs(attempt.node_root)
        attempt.task_dir.mkdir(parents=True, exist_ok=True)
        if attempt.private_task_dir:
            attempt.task_dir.chmod(PRIVATE_DIR_MODE)  # before anything is written into it
        attempt.working_dir.mkdir(exist_ok=True)
    except OSError as problem:
        raise Failure(
            "servererror",
            "ResourceDirectoryCreateFailed",
            "Failure encountered creating resource directory for the task.",
            {"Message": str(problem)},
        ) from None
    for resource in attempt.resource_files:
        _download(attempt, resource)


def _target(working_dir: Path, relative: str) -> Path:
    target = (working_dir / relative).resolve()
    if not target.is_relative_to(working_dir.resolve()):
        raise Failure(
            "usererror",
            "ResourceFileCreateFailed",
            "Failure encountered creating resource file.",
            {"FilePath": relative, "Message": "the path leaves the task working directory"},
        )
    return target


def _chmod(path: Path, file_mode: str | None) -> None:
    mode = int(file_mode, 8) if file_mode else DEFAULT_FILE_MODE
    path.chmod(mode)


# Everything a failed transfer can raise short of an HTTP answer: connection refused or reset, timeouts, a
# response cut short, a malformed URL. Batch reports these as server errors of the transfer.
TRANSFER_ERRORS: tuple[type[Exception], ...] = (OSError, ValueError, http.client.HTTPException)
# Options for the node's storage clients. The SDK's default retries ride out a storage outage for about a
# minute per transfer, as a node agent would; tests of the failure itself turn them off.
STORAGE_CLIENT_OPTIONS: dict[str, Any] = {}
_URL_QUERY = re.compile(r"\?[^\s'\"<>()\[\]]*=[^\s'\"<>()\[\]]*")


def redact_queries(text: str) -> str:
    """`text` with the query of every URL in it (a SAS is a query) replaced; error texts of urllib3 and
    azure-core carry the request URL, query included."""
    return _URL_QUERY.sub("?REDACTED", text)


def _blob_failure(status: int | None, source: str, file_path: str, message: str) -> Failure:
    details = {"FilePath": file_path, "Source": _redact(source), "Message": redact_queries(message)[:500]}
    if status == 404:
        return Failure("usererror", "BlobNotFound", "One of the specified Azure Blob(s) is not found.", details)
    if status in (401, 403):
        return Failure(
            "usererror", "BlobAccessDenied", "Access for one of the specified Azure Blob(s) is denied.", details
        )
    return Failure(
        "servererror",
        "BlobDownloadMiscError",
        "Miscellaneous error encountered while downloading one of the specified Azure Blob(s).",
        details,
    )


def _redact(url: str) -> str:
    """A URL without its query (SAS tokens stay out of task records and logs)."""
    return url.split("?", 1)[0]


def _download(attempt: Attempt, resource: dict[str, Any]) -> None:
    file_path = str(resource.get("filePath") or "")
    file_mode = resource.get("fileMode")
    if resource.get("httpUrl"):
        url = str(resource["httpUrl"])
        target = _target(attempt.working_dir, file_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with urllib.request.urlopen(url, timeout=60) as response, target.open("wb") as sink:  # noqa: S310
                shutil.copyfileobj(response, sink)
        except urllib.error.HTTPError as problem:
            raise _blob_failure(problem.code, url, file_path, f"HTTP {problem.code} {problem.reason}") from None
        except TRANSFER_ERRORS as problem:  # URLError is an OSError
            raise _blob_failure(None, url, file_path, f"{type(problem).__name__}: {problem}") from None
        _chmod(target, file_mode)
        return
    container_url = resource.get("storageContainerUrl")
    container_client: Any
    if container_url:
        from azure.storage.blob import ContainerClient

        container_client = ContainerClient.from_container_url(str(container_url), **STORAGE_CLIENT_OPTIONS)
        source = str(container_url)
    elif resource.get("autoStorageContainerName"):
        name = str(resource["autoStorageContainerName"])
        if not attempt.auto_storage_connection_string:
            raise _blob_failure(None, name, file_path, "the emulator was started without --auto-storage")
        from azure.storage.blob import ContainerClient

        container_client = ContainerClient.from_connection_string(
            attempt.auto_storage_connection_string, name, **STORAGE_CLIENT_OPTIONS
        )
        source = name
    else:
        raise _blob_failure(None, "", file_path, "the resource file names no source")
    prefix = resource.get("blobPrefix") or None
    from azure.core.exceptions import AzureError, HttpResponseError

    unreachable: tuple[type[Exception], ...] = (AzureError, *TRANSFER_ERRORS)  # ServiceRequestError and kin
    try:
        with container_client:
            _download_container(attempt, container_client, source, prefix, file_path, file_mode)
    except HttpResponseError as problem:
        raise _blob_failure(problem.status_code, source, file_path, problem.reason or str(problem)) from None
    except unreachable as problem:
        raise _blob_failure(None, source, file_path, f"{type(problem).__name__}: {problem}") from None


def _download_container(
    attempt: Attempt, container_client: Any, source: str, prefix: str | None, file_path: str, file_mode: Any
) -> None:
    found = False
    for blob in container_client.list_blobs(name_starts_with=prefix):
        found = True
        target = _target(attempt.working_dir, os.path.join(file_path, blob.name))
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as sink:
            container_client.download_blob(blob.name).readinto(sink)
        _chmod(target, file_mode)
    if not found and prefix:
        # Batch treats a prefix that matches nothing as a missing blob.
        raise _blob_failure(404, source, file_path, f"no blob starts with {prefix!r}")


def launch(attempt: Attempt) -> subprocess.Popen[bytes]:
    """Start the command line, split like Batch on Linux (no shell), in its own session."""
    try:
        argv = shlex.split(attempt.command_line)
    except ValueError as problem:
        raise Failure(
            "usererror",
            "CommandLaunchFailed",
            "Failed to launch the specified command line.",
            {"Message": str(problem)},
        ) from None
    if not argv:
        raise Failure(
            "usererror",
            "CommandLaunchFailed",
            "Failed to launch the specified command line.",
            {"Message": "the command line is empty"},
        )
    env_file: Path | None = None
    if attempt.container is not None:
        argv, env_file = _container_argv(attempt, argv)
    stdout = (attempt.task_dir / "stdout.txt").open("wb")
    stderr = (attempt.task_dir / "stderr.txt").open("wb")
    try:
        process = subprocess.Popen(
            argv,
            cwd=attempt.working_dir,
            # A runtime client gets the emulator's own environment (its HOME holds the registry logins); the task's
            # variables reach the container through the env file.
            env=dict(os.environ) if attempt.container is not None else attempt.environment,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        if attempt.container is not None and env_file is not None:
            with _containers_lock:
                _containers[process.pid] = (argv[0], attempt.container.name, env_file)
        return process
    except FileNotFoundError:
        raise Failure(
            "usererror",
            "CommandProgramNotFound",
            "The specified command program is not found.",
            {"Message": f"{argv[0]}: not found"},
        ) from None
    except OSError as problem:
        raise Failure(
            "usererror",
            "CommandLaunchFailed",
            "Failed to launch the specified command line.",
            {"Message": str(problem)},
        ) from None
    finally:
        stdout.close()
        stderr.close()
        if env_file is not None and not _is_registered(env_file):
            env_file.unlink(missing_ok=True)


def _is_registered(env_file: Path) -> bool:
    with _containers_lock:
        return any(entry[2] == env_file for entry in _containers.values())


# The container behind each running runtime client (pid -> runtime, container name, env file): killing the client
# does not stop a container, so kill_tree removes it too.
_containers: dict[int, tuple[str, str, Path]] = {}
_containers_lock = threading.Lock()


def container_failure(message: str) -> Failure:
    """What a container task that cannot start reports. Batch reports a node whose Docker engine does not answer
    as ContainerInvalidSettings (usererror) with the engine's error as the detail (Azure/Batch issue #4)."""
    return Failure(
        "usererror",
        "ContainerInvalidSettings",
        "At least one value of specified task container settings is invalid",
        {"Message": message},
    )


def with_container(attempt: Attempt, settings: dict[str, Any] | None, key: str) -> Attempt:
    """The attempt, to run in the container its containerSettings name (if any)."""
    if settings:
        prep = attempt.environment.get("AZ_BATCH_JOB_PREP_DIR")
        attempt.container = containers.plan(
            settings, attempt.node_root, attempt.task_dir, Path(prep) if prep else None, key
        )
    return attempt


def _container_argv(attempt: Attempt, command: list[str]) -> tuple[list[str], Path]:
    container = attempt.container
    assert container is not None
    runtime = containers.RUNTIME.name()
    if runtime is None:
        raise container_failure(
            f"The Batch emulator cannot run image {container.image}: {containers.RUNTIME.why_not()}. "
            "The command was not run (it never runs on the host in place of the container)."
        )
    descriptor, name = tempfile.mkstemp(prefix="azbatch-env-")  # owner-only; removed when the process ends
    os.close(descriptor)
    env_file = Path(name)
    try:
        containers.write_env_file(env_file, attempt.environment)
        return containers.argv(runtime, container, command, env_file, attempt.working_dir), env_file
    except containers.ContainerError as problem:
        env_file.unlink(missing_ok=True)
        raise container_failure(str(problem)) from None


def kill_tree(pid: int) -> None:
    """SIGKILL the task's whole process group (its own session, so the emulator is not in it), and its container."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with _containers_lock:
        container = _containers.get(pid)
    if container is not None:
        containers.remove(container[0], container[1])


def _forget_container(pid: int) -> None:
    with _containers_lock:
        container = _containers.pop(pid, None)
    if container is not None:
        container[2].unlink(missing_ok=True)


def wait(process: subprocess.Popen[bytes], wall_clock_seconds: float | None) -> tuple[int, bool]:
    """(exit code as Linux reports it, whether the wall clock limit killed it)."""
    timed_out = False
    try:
        code = process.wait(timeout=wall_clock_seconds)
    except subprocess.TimeoutExpired:
        timed_out = True
        kill_tree(process.pid)
        code = process.wait()
    # Killed by a signal: report it the way a Linux shell would (128 + signal).
    if code < 0:
        code = 128 - code
    # Reap anything the task left behind in its session.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    _forget_container(process.pid)
    return code, timed_out


def _non_wildcard_base(pattern: str) -> str:
    parts = pattern.replace("\\", "/").split("/")
    base: list[str] = []
    for part in parts:
        if _WILDCARD.search(part):
            break
        base.append(part)
    return "/".join(base)


def matching_files(working_dir: Path, pattern: str) -> list[tuple[Path, str]]:
    """(file, blob name relative to the pattern's fixed base) for each file the pattern matches."""
    pattern = pattern.replace("\\", "/")
    absolute = os.path.normpath(os.path.join(working_dir, pattern)) if not _WILDCARD.search(pattern) else None
    if absolute is not None:
        path = Path(absolute)
        return [(path, path.name)] if path.is_file() else []
    base = os.path.normpath(os.path.join(working_dir, _non_wildcard_base(pattern)))
    found: list[tuple[Path, str]] = []
    for match in sorted(glob.glob(os.path.join(str(working_dir), pattern), recursive=True)):
        path = Path(match)
        if path.is_file():
            found.append((path, os.path.relpath(os.path.normpath(match), base).replace(os.sep, "/")))
    return found


def should_upload(condition: str, succeeded: bool) -> bool:
    condition = condition.lower()
    if condition == "taskcompletion":
        return True
    if condition == "taskfailure":
        return not succeeded
    return succeeded


def upload_outputs(attempt: Attempt, succeeded: bool) -> None:
    """Upload the OutputFiles whose condition holds; raises a fileUploadError Failure on error."""
    from azure.core.exceptions import AzureError, HttpResponseError
    from azure.storage.blob import ContainerClient, ContentSettings

    failed_upload: tuple[type[Exception], ...] = (AzureError, *TRANSFER_ERRORS)

    for output in attempt.output_files:
        condition = str((output.get("uploadOptions") or {}).get("uploadCondition") or "tasksuccess")
        if not should_upload(condition, succeeded):
            continue
        container = (output.get("destination") or {}).get("container") or {}
        container_url = str(container.get("containerUrl") or "")
        path = str(container.get("path") or "")
        pattern = str(output.get("filePattern") or "")
        headers = {
            str(h.get("name", "")).lower(): str(h.get("value", "")) for h in container.get("uploadHeaders") or []
        }
        settings = ContentSettings(
            content_type=headers.get("content-type"),
            content_encoding=headers.get("content-encoding"),
            content_language=headers.get("content-language"),
            content_disposition=headers.get("content-disposition"),
            cache_control=headers.get("cache-control"),
        )
        try:
            with ContainerClient.from_container_url(container_url, **STORAGE_CLIENT_OPTIONS) as client:
                for local, relative in matching_files(attempt.working_dir, pattern):
                    if _WILDCARD.search(pattern):
                        blob_name = f"{path.rstrip('/')}/{relative}" if path else relative
                    else:
                        blob_name = path or relative
                    with local.open("rb") as data:
                        client.upload_blob(blob_name, data, overwrite=True, content_settings=settings)
        except failed_upload as problem:
            status = problem.status_code if isinstance(problem, HttpResponseError) else None
            # Storage refusing the upload (an expired or read-only SAS) is the task's doing; storage that cannot
            # be reached, or fails, is the service's, and Batch reports it as a server error.
            user_error = status is not None and 400 <= status < 500
            reason = (problem.reason if isinstance(problem, HttpResponseError) else None) or problem
            raise Failure(
                "usererror" if user_error else "servererror",
                "FileUploadMiscError",
                "Miscellaneous error encountered while uploading one of the output files.",
                {
                    "FilePattern": pattern,
                    "Destination": _redact(container_url),
                    "Message": redact_queries(f"{status or type(problem).__name__} {reason}".strip())[:500],
                },
            ) from None
