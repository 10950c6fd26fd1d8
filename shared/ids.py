"""Deterministic identities: task and job ids, local file paths, result paths."""

from __future__ import annotations

import hashlib
import posixpath
import re
from datetime import UTC, datetime, timedelta

MAX_BLOB_NAME = 1024
MANIFEST_NAME = "_manifest.json"
LOGS_FOLDER = "_logs/"
MAX_BATCH_ID = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_UNSAFE_FILE = re.compile(r"[^A-Za-z0-9._-]+")
PIPELINE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


def normalise_etag(etag: str) -> str:
    """ETags arrive quoted from some APIs and bare from others."""
    return etag.strip().strip('"')


def input_digest(container: str, name: str, etag: str) -> str:
    key = f"{container}\n{name}\n{normalise_etag(etag)}".encode()
    return hashlib.sha256(key).hexdigest()


def task_id(container: str, name: str, etag: str) -> str:
    """A Batch task id for one upload: readable stem + digest of (container, name, etag)."""
    stem = _UNSAFE.sub("-", name.rsplit("/", 1)[-1])[:24].strip("-_")
    digest = input_digest(container, name, etag)[:32]
    return f"{stem}-{digest}" if stem else f"input-{digest}"


RERUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def rerun_task_id(container: str, name: str, etag: str, rerun_id: str) -> str:
    """The task id of one re-run request's run of an input's version: a repeat of the request maps to it again.

    `-r-` marks it for a reader; the digest also covers the request id, so it never equals the upload's own
    task id (`task_id`) nor another request's.
    """
    stem = _UNSAFE.sub("-", name.rsplit("/", 1)[-1])[:24].strip("-_") or "input"
    key = f"rerun\n{rerun_id}\n{input_digest(container, name, etag)}".encode()
    return f"{stem}-r-{hashlib.sha256(key).hexdigest()[:32]}"


def window_start(created_on: datetime, window_minutes: int) -> datetime:
    created = created_on.astimezone(UTC)
    minutes = int(created.timestamp() // 60)
    return datetime.fromtimestamp((minutes - minutes % window_minutes) * 60, UTC)


def job_id(pipeline: str, created_on: datetime, window_minutes: int) -> str:
    """A Batch job id for a pipeline and the time window of the blob's creation."""
    start = window_start(created_on, window_minutes)
    return f"{pipeline}-{start:%Y%m%dT%H%MZ}-w{window_minutes}"


def window_end(created_on: datetime, window_minutes: int) -> datetime:
    return window_start(created_on, window_minutes) + timedelta(minutes=window_minutes)


def local_input_path(name: str) -> str:
    """Where a task finds its input, relative to its working directory: safe characters only."""
    base = _UNSAFE_FILE.sub("_", name.rsplit("/", 1)[-1])[-100:].lstrip(".-") or "input"
    return f"input/{base}"


MAX_RESULT_PREFIX = 700  # leaves 324 of Azure's 1,024 characters for the output names below it


LONG_NAMES = "_long-names"
# `results/_summaries/<pipeline>/<job id>/`: a job's summary (shared/summary.py); no input's folder is there.
SUMMARIES = "_summaries"
# `<input's folder>/_history/<run>/`: a re-run's collection moves the run it replaces there (shared/collect.py).
HISTORY = "_history"


def result_prefix(name: str) -> str:
    """The folder in `results` for one input; dot segments are escaped so no path resolves upward.

    A name too long to have outputs below it gets `_long-names/<digest>/`; its manifest names the input.
    The escaping is one-to-one: two input names never share a folder (`a//b` is `a/%/b/`, `a/%/b` is
    `a/%%/b/`), and no input's folder is `_long-names/...` or `_summaries/...` (an input of that name is
    `%_long-names/...`, `%_summaries/...`).
    A `_history` segment is `%_history`, so no input's folder is inside another input's history.
    """
    segments = [_escape_segment(segment) for segment in name.split("/")]
    if segments[0] in (LONG_NAMES, SUMMARIES):
        segments[0] = f"%{segments[0]}"
    prefix = "/".join(segments) + "/"
    if len(prefix) > MAX_RESULT_PREFIX:
        return f"{LONG_NAMES}/{hashlib.sha256(name.encode()).hexdigest()[:40]}/"
    return prefix


def _escape_segment(segment: str) -> str:
    if segment in ("", ".", "..", HISTORY) or segment.startswith("%"):
        return f"%{segment}"
    return segment


class UnsafeName(ValueError):
    """A name a task chose for an output that batchdrop will not publish; the message says why."""


_SEPARATORS = re.compile(r"[/\\]")  # a backslash too: some clients and servers read it as '/'


def output_result_name(result_prefix: str, name: str) -> str:
    """Where the task's output `out/<name>` is published; UnsafeName if it cannot be published as that."""
    if _SEPARATORS.split(name, maxsplit=1)[0] + "/" == LOGS_FOLDER:
        raise UnsafeName(f"'{LOGS_FOLDER}' is the folder batchdrop publishes the task's logs in")
    if _SEPARATORS.split(name, maxsplit=1)[0] == HISTORY:
        raise UnsafeName(f"'{HISTORY}/' is the folder batchdrop keeps earlier runs in")
    return _result_name(result_prefix, name)


def log_result_name(result_prefix: str, name: str) -> str:
    """Where the task's log `logs/<name>` is published; UnsafeName if it cannot be published as that."""
    return _result_name(result_prefix, LOGS_FOLDER + name)


def _result_name(result_prefix: str, relative: str) -> str:
    """`relative` below an input's results folder, refused when it could land elsewhere or pose as a manifest.

    A task chooses these names (with its write SAS it can create any name in its staging container), and on
    Azure with a bearer token no signature pins the path a request names, so anything a URL or path normaliser
    could resolve differently is refused rather than trusted to arrive where it was sent.
    """
    for segment in _SEPARATORS.split(relative):
        if not segment:
            raise UnsafeName("it has an empty path segment (a leading or trailing '/', or '//')")
        if not segment.strip(". "):
            raise UnsafeName(f"it has the path segment {segment!r}, which URL and path normalisers resolve or drop")
    if relative.endswith("."):
        raise UnsafeName("it ends with '.', which Azure Storage cannot address reliably")
    if _SEPARATORS.split(relative)[-1] == MANIFEST_NAME:
        raise UnsafeName(f"'{MANIFEST_NAME}' is the name of batchdrop's manifests")
    name = result_prefix + relative
    if len(name) > MAX_BLOB_NAME:
        raise UnsafeName(f"its name in results would be {len(name)} characters long; Azure allows {MAX_BLOB_NAME}")
    # The invariant, checked apart from the rules above: nothing published leaves the input's folder or
    # takes a manifest's name, whatever those rules become.
    if not name.startswith(result_prefix) or posixpath.normpath(name) != name or name.endswith("/" + MANIFEST_NAME):
        raise AssertionError(f"{name!r} would not stay a plain name inside {result_prefix!r}")
    return name


def history_prefix(result_prefix: str, run: int) -> str:
    """Where run `run` of an input is kept once a re-run replaces it: `<input's folder>/_history/<run>/`."""
    return f"{result_prefix}{HISTORY}/{run}/"


def staging_container(prefix: str, task: str) -> str:
    """The task's own staging container: a SAS for it lets the task write nowhere else."""
    digest = hashlib.sha256(task.encode()).hexdigest()[: 62 - len(prefix)]
    return f"{prefix}-{digest}"


def check_blob_name(name: str) -> str | None:
    """Why a blob name cannot be processed, or None when it can."""
    if not name:
        return "the blob name is empty"
    if len(name) > MAX_BLOB_NAME:
        return f"the blob name is {len(name)} characters long; Azure allows {MAX_BLOB_NAME}"
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in name):
        return "the blob name contains control characters"
    if name.endswith(("/", ".")):
        return "the blob name ends with '/' or '.', which Azure Storage cannot address reliably"
    return None


# Groups (shared/groups.py): inputs that belong together run as one task.
MAX_GROUP_KEY = MAX_BLOB_NAME


def group_task_id(pipeline: str, key: str, members: dict[str, str]) -> str:
    """The task of one version of a group: a digest of the pipeline, the key and every member's (name, etag).

    The same members delivered in any order, any number of times, map to it; a new upload of a member (a new
    etag) maps to another, so the group runs again once. `g-` marks it for a reader.
    """
    listed = "\n".join(f"{name}\n{normalise_etag(etag)}" for name, etag in sorted(members.items()))
    digest = hashlib.sha256(f"group\n{pipeline}\n{key}\n{listed}".encode()).hexdigest()[:32]
    stem = _UNSAFE.sub("-", key.rsplit("/", 1)[-1])[:24].strip("-_") or "group"
    return f"{stem}-g-{digest}"


def group_row_key(pipeline: str, key: str) -> str:
    """The ledger row key of a group: any key (Table row keys refuse `/`, `\\`, `#`, `?` and control characters)."""
    return f"{pipeline}~{hashlib.sha256(key.encode()).hexdigest()[:40]}"


def check_group_key(key: str) -> str | None:
    """Why a group key cannot be used, or None when it can.

    Its results go to `result_prefix(key)`, which escapes dot and empty segments and moves a long key under
    `_long-names/`, as for an input's name; only what no folder can stand for is refused.
    """
    if not key:
        return "the group key is empty (the expression's group 'key' matched no characters)"
    if len(key) > MAX_GROUP_KEY:
        return f"the group key is {len(key)} characters long; at most {MAX_GROUP_KEY}"
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in key):
        return "the group key contains control characters"
    return None


def group_token(key: str) -> str:
    """The key as `{group}` and BATCHDROP_GROUP give it to a task: safe characters only, at most 100."""
    return _UNSAFE_FILE.sub("_", key)[-100:].lstrip(".-") or "group"


def group_local_paths(names: list[str]) -> dict[str, str]:
    """Each member's local path (`input/<safe base name>`), distinct: a clash takes its index as a prefix."""
    paths: dict[str, str] = {}
    taken: set[str] = set()
    for index, name in enumerate(sorted(names)):
        base = local_input_path(name)[len("input/") :]
        path, attempt = f"input/{base}", 0
        while path in taken:
            attempt += 1
            path = f"input/{index}-{attempt}-{base}"
        taken.add(path)
        paths[name] = path
    return paths
