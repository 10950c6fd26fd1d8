"""Submit use cases: one input from an event, or every new input from a sweep."""

from __future__ import annotations

import logging
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from shared import groups, ids
from shared.errors import JobClosed, RejectedInput, TransientError
from shared.gateways import Gateways
from shared.models import (
    BlobRef,
    InputRecord,
    InputState,
    JobRecord,
    JobState,
    OutputFile,
    ResourceFile,
    TaskContainer,
    TaskSpec,
)
from shared.pipelines import APP_DIR, OUTPUT_DIR, PipelineSpec, RoutingConflict, route

logger = logging.getLogger(__name__)
CLAIM_FRESH = timedelta(minutes=2)
JOB_CLOCK_MARGIN = timedelta(minutes=1)  # how far the clocks of two instances may disagree
SWEEP_CHUNK = 100  # Batch's limit of tasks in one add-collection request
SPEC_THREADS = 8
# One job creation at a time per process: concurrent first events for a new job make one Batch call.
_job_creation = threading.Lock()


class SubmitAction(StrEnum):
    CREATED = "created"
    DUPLICATE = "duplicate"  # already submitted: no Batch request
    IN_PROGRESS = "in-progress"  # another submitter holds a fresh claim
    SKIPPED = "skipped"  # no pipeline takes it
    REJECTED = "rejected"  # refused, reason recorded
    WAITING = "waiting"  # recorded for a scheduled pipeline: submitted when its schedule fires (shared/schedules.py)
    GROUPED = "grouped"  # recorded in its group (shared/groups.py); the group's task runs once it is complete


@dataclass(frozen=True)
class SubmitOutcome:
    """What happened to one input."""

    name: str
    action: SubmitAction
    task_id: str = ""
    job_id: str = ""
    reason: str = ""


@dataclass(frozen=True)
class SweepReport:
    listed: int
    submitted: int
    skipped: int
    rejected: int
    groups_failed: int = 0  # groups incomplete past complete_within, failed by this sweep


def submit_blob(gw: Gateways, container: str, name: str) -> SubmitOutcome:
    """Submit the blob `container/name` as it is now in storage (the event paths call this)."""
    return submit(gw, find_input(gw, container, name))


def check_input_container(gw: Gateways, container: str, name: str) -> None:
    """Refuse a blob an event names outside the input container."""
    if container != gw.settings.input_container:
        raise RejectedInput(f"{container}/{name}: not in the input container {gw.settings.input_container!r}")


def find_input(gw: Gateways, container: str, name: str) -> BlobRef:
    """The blob an event names, as it is now in storage; refused if it is not in the input container or absent."""
    check_input_container(gw, container, name)
    blob = gw.blobs.get_blob(container, name)
    if blob is None:
        raise RejectedInput(f"{container}/{name}: no such blob (deleted, or the event is forged)")
    return blob


def submit(gw: Gateways, blob: BlobRef) -> SubmitOutcome:
    """Submit one input: at most one Batch request when the job already exists."""
    prepared = claim(gw, blob)
    if isinstance(prepared, SubmitOutcome):
        return prepared
    record, pipeline = prepared
    record = _ensure_job(gw, record, pipeline)
    try:
        gw.batch.add_task(record.job_id, _task_spec(gw, record, pipeline))
    except JobClosed:
        record = _move_to_open_job(gw, record, pipeline)
        gw.batch.add_task(record.job_id, _task_spec(gw, record, pipeline))
    record.state = InputState.SUBMITTED
    gw.ledger.save_input(record)
    gw.submitted.add(record.task_id, record.job_id)
    logger.info("submitted %s", blob.name, extra={"job_id": record.job_id, "task_id": record.task_id})
    return SubmitOutcome(blob.name, SubmitAction.CREATED, record.task_id, record.job_id)


def sweep(gw: Gateways) -> SweepReport:
    """Submit every input that has no task yet, in bulk; nothing new means no Batch request.

    Inputs go to Batch a chunk of SWEEP_CHUNK per job as they are claimed, so a sweep over many new files starts
    tasks early, and a sweep cut short (a timer's time limit) leaves its submitted chunks recorded: the next
    sweep takes over only what this one had claimed and not yet submitted.
    """
    known = gw.ledger.known_task_ids()
    counts: Counter[str] = Counter()
    by_job: dict[str, list[Claimed]] = defaultdict(list)
    open_jobs: set[str] = set()
    container = gw.settings.input_container
    new: list[BlobRef] = []

    def claim_new() -> None:
        """Claim the new inputs listed so far (their rows in bulk) and submit each job's full chunks."""
        for blob, outcome in zip(new, claim_many(gw, new, take_over=True), strict=True):
            if isinstance(outcome, RejectedInput):
                gw.ledger.record_rejection(f"{container}/{blob.name}", str(outcome))
                counts["rejected"] += 1
            elif isinstance(outcome, SubmitOutcome):
                counts["skipped"] += outcome.action is SubmitAction.SKIPPED
                counts["rejected"] += outcome.action is SubmitAction.REJECTED
            else:
                record, pipeline = outcome
                if record.job_id not in open_jobs:  # one ledger read per job per sweep, not one per input
                    record = _ensure_job(gw, record, pipeline)
                    open_jobs.add(record.job_id)
                by_job[record.job_id].append((record, pipeline))
                if len(by_job[record.job_id]) == SWEEP_CHUNK:
                    counts["submitted"] += _submit_chunk(gw, record.job_id, by_job.pop(record.job_id))
        new.clear()

    for blob in gw.blobs.list_blobs(container):
        counts["listed"] += 1
        if ids.task_id(container, blob.name, blob.etag) in known:
            continue
        new.append(blob)
        if len(new) == SWEEP_CHUNK:
            claim_new()
    claim_new()
    for job_id, entries in by_job.items():
        counts["submitted"] += _submit_chunk(gw, job_id, entries)
    listed, submitted, skipped, rejected = (counts[key] for key in ("listed", "submitted", "skipped", "rejected"))
    expired = groups.expire_groups(gw)  # the sweep decides group timeouts (and submits a group whose submitter died)
    logger.info("sweep listed %d, submitted %d, skipped %d, rejected %d", listed, submitted, skipped, rejected)
    return SweepReport(listed, submitted, skipped, rejected, len(expired.failed))


def submit_claimed(gw: Gateways, claimed: Sequence[tuple[InputRecord, PipelineSpec]]) -> int:
    """Submit inputs already claimed: each job made sure of once, then one add-collection per SWEEP_CHUNK of a job.

    The bulk event path's submission; returns how many inputs were submitted.
    """
    by_job: dict[str, list[tuple[InputRecord, PipelineSpec]]] = defaultdict(list)
    open_jobs: set[str] = set()
    for record, pipeline in claimed:
        if record.job_id not in open_jobs:  # one ledger read per job, not one per input
            record = _ensure_job(gw, record, pipeline)
            open_jobs.add(record.job_id)
        by_job[record.job_id].append((record, pipeline))
    submitted = 0
    for job_id, entries in by_job.items():
        for start in range(0, len(entries), SWEEP_CHUNK):
            submitted += _submit_chunk(gw, job_id, entries[start : start + SWEEP_CHUNK])
    return submitted


def _submit_chunk(gw: Gateways, job_id: str, entries: list[tuple[InputRecord, PipelineSpec]]) -> int:
    """One Batch request for up to SWEEP_CHUNK claimed inputs of one job, then their rows marked submitted."""
    with ThreadPoolExecutor(SPEC_THREADS) as pool:  # each spec creates a staging container: storage round trips
        specs = list(pool.map(lambda entry: _task_spec(gw, *entry), entries))
    records = [record for record, _ in entries]
    try:
        gw.batch.add_tasks(job_id, specs)
    except JobClosed:  # ended in Batch before the ledger knew: each input goes to the current window's job
        records = []
        for record, pipeline in entries:
            moved = _move_to_open_job(gw, record, pipeline)
            gw.batch.add_task(moved.job_id, _task_spec(gw, moved, pipeline))
            records.append(moved)
    for record in records:
        record.state = InputState.SUBMITTED
    gw.ledger.save_inputs(records)
    for record in records:
        gw.submitted.add(record.task_id, record.job_id)
    return len(records)


def claim(gw: Gateways, blob: BlobRef, take_over: bool = False) -> tuple[InputRecord, PipelineSpec] | SubmitOutcome:
    """Validate, route and claim the input's ledger row; an outcome when there is nothing to submit.

    `take_over` (the sweep) also finishes inputs that another submitter claimed but has not confirmed.
    """
    outcome = claim_many(gw, [blob], take_over)[0]
    if isinstance(outcome, RejectedInput):
        raise outcome
    return outcome


Claimed = tuple[InputRecord, PipelineSpec]


def claim_many(
    gw: Gateways, blobs: Sequence[BlobRef], take_over: bool = False
) -> list[Claimed | SubmitOutcome | RejectedInput]:
    """claim() for many inputs, in order: their ledger rows claimed in bulk (one request per partition for those
    of one partition), a grouped pipeline's members one at a time (a member its group refuses: the refusal, for
    the caller to record)."""
    prepared = [_submitted_here(gw, blob) or _prepare(gw, blob) for blob in blobs]
    rows = [entry[0] for entry in prepared if isinstance(entry, tuple)]
    stored = iter(gw.ledger.claim_inputs(rows) if len(rows) > 1 else [gw.ledger.claim_input(row) for row in rows])
    return [
        entry if isinstance(entry, SubmitOutcome)
        else _decide(gw, entry, *next(stored), take_over) if isinstance(entry, tuple)
        else _member(gw, entry)
        for entry in prepared
    ]  # fmt: skip


def _member(gw: Gateways, add: Callable[[Gateways], SubmitOutcome]) -> SubmitOutcome | RejectedInput:
    try:
        return add(gw)
    except RejectedInput as rejection:
        return rejection


_Prepared = tuple[InputRecord, PipelineSpec | None, BlobRef] | Callable[[Gateways], SubmitOutcome]


def _submitted_here(gw: Gateways, blob: BlobRef) -> SubmitOutcome | None:
    """A repeat of an input this process submitted: a duplicate, known without a ledger read."""
    task_id = ids.task_id(blob.container, blob.name, blob.etag)
    job_id = gw.submitted.job_of(task_id)
    return SubmitOutcome(blob.name, SubmitAction.DUPLICATE, task_id, job_id) if job_id is not None else None


def _prepare(gw: Gateways, blob: BlobRef) -> _Prepared:
    """The row to claim for `blob` (with its pipeline; None when it is refused or skipped), or, for a grouped
    pipeline's member, the step that records it in its group."""
    task_id = ids.task_id(blob.container, blob.name, blob.etag)
    base = InputRecord(task_id, blob.container, blob.name, ids.normalise_etag(blob.etag), "", "", InputState.CLAIMED)
    reason = ids.check_blob_name(blob.name)
    pipeline = None
    if reason is None:
        try:
            pipeline = route(gw.pipelines, blob.name)
        except RoutingConflict as conflict:
            reason = str(conflict)
    if reason is not None:
        return replace(base, state=InputState.REJECTED, reason=reason), None, blob
    if pipeline is None:
        return replace(base, state=InputState.SKIPPED, reason="no pipeline matches this name"), None, blob
    group = pipeline
    if group.group is not None:
        return lambda gw: groups.add_member(gw, blob, group, base)
    job_id = ids.job_id(pipeline.name, blob.created_on, gw.settings.job_window_minutes)
    # The staging container goes on the row (and the ledger's index of them): completion events name only it.
    staging = ids.staging_container(gw.settings.staging_prefix, task_id)
    # A scheduled pipeline's input is claimed as waiting: its schedule's firing moves it to claimed and submits it.
    state = InputState.CLAIMED if pipeline.schedule is None else InputState.WAITING
    return replace(base, pipeline=pipeline.name, job_id=job_id, staging=staging, state=state), pipeline, blob


def _decide(
    gw: Gateways,
    prepared: tuple[InputRecord, PipelineSpec | None, BlobRef],
    stored: InputRecord,
    created: bool,
    take_over: bool,
) -> Claimed | SubmitOutcome:
    """What a claim came to: the row to submit, or the outcome when there is nothing to submit."""
    record, pipeline, blob = prepared
    if record.state is InputState.REJECTED:
        if created:
            gw.ledger.record_rejection(f"{blob.container}/{blob.name}", record.reason)
            logger.warning("rejected %r: %s", blob.name, record.reason, extra={"task_id": record.task_id})
        return SubmitOutcome(blob.name, SubmitAction.REJECTED, record.task_id, reason=record.reason)
    if pipeline is None:
        return SubmitOutcome(blob.name, SubmitAction.SKIPPED, record.task_id, reason=record.reason)
    if stored.state is InputState.WAITING:
        return SubmitOutcome(blob.name, SubmitAction.WAITING, stored.task_id, stored.job_id)
    if not created and stored.state is not InputState.CLAIMED:
        return SubmitOutcome(blob.name, SubmitAction.DUPLICATE, stored.task_id, stored.job_id)
    if not created and not take_over and _claim_is_fresh(gw, stored):
        # Another instance is submitting this very input now; if it dies, the sweep finishes the job.
        return SubmitOutcome(blob.name, SubmitAction.IN_PROGRESS, stored.task_id, stored.job_id)
    return stored, pipeline


def _claim_is_fresh(gw: Gateways, record: InputRecord) -> bool:
    return record.updated_at is not None and gw.clock() - record.updated_at < CLAIM_FRESH


def _ensure_job(gw: Gateways, record: InputRecord, pipeline: PipelineSpec) -> InputRecord:
    """Make sure the record's job exists in Batch and the ledger; late inputs move to an open job.

    A job row seen active is kept in the process and not read again while its window plus the close grace, less
    a margin for clocks that disagree, has not passed: until then no poll closes it or begins its summary
    (shared/poll.py _close_if_done), so the row could not say otherwise. A job ended in Batch by other means
    still refuses the task (JobClosed), and the input moves on as before.
    """
    if _still_open(gw, gw.known_jobs.get(record.job_id)):
        return record
    job = gw.ledger.get_job(record.job_id)
    if job is None:
        with _job_creation:
            job = gw.ledger.get_job(record.job_id)
            if job is None:
                _ensure_pool(gw, pipeline)
                gw.batch.ensure_job(record.job_id, pipeline)
                window_end = _window_end_of(gw, record.job_id, pipeline)
                job, _ = gw.ledger.claim_job(JobRecord(record.job_id, pipeline.name, window_end))
    if job.state is JobState.ACTIVE and not job.summary:  # a job whose summary has begun takes no new input
        if _still_open(gw, job):
            gw.known_jobs[job.job_id] = job
        return record
    return _move_to_open_job(gw, record, pipeline)


def _still_open(gw: Gateways, job: JobRecord | None) -> bool:
    """Whether no poll can have begun to close `job` (a row read active) by now."""
    if job is None:
        return False
    closing = job.window_end + timedelta(minutes=gw.settings.job_close_grace_minutes) - JOB_CLOCK_MARGIN
    return gw.clock() < closing


def _window_end_of(gw: Gateways, job_id: str, pipeline: PipelineSpec) -> datetime:
    stamp = job_id[len(pipeline.name) + 1 :].split("-", 1)[0]
    start = datetime.strptime(stamp, "%Y%m%dT%H%MZ").replace(tzinfo=gw.clock().tzinfo)
    return start + timedelta(minutes=gw.settings.job_window_minutes)


def _move_to_open_job(gw: Gateways, record: InputRecord, pipeline: PipelineSpec) -> InputRecord:
    """The input's window job is closed: give it the job of the current window instead."""
    current = ids.job_id(pipeline.name, gw.clock(), gw.settings.job_window_minutes)
    if current == record.job_id:
        raise TransientError(f"job {current} is closed while its window is still open; retry later")
    logger.info("job %s is closed; %s moves to %s", record.job_id, record.name, current)
    moved = replace(record, job_id=current)
    gw.ledger.save_input(moved)
    return _ensure_job(gw, moved, pipeline)


def _task_spec(gw: Gateways, record: InputRecord, pipeline: PipelineSpec) -> TaskSpec:
    """The task for one input: fixed command template, input and app files as SAS-scoped resource files."""
    settings = gw.settings
    valid_seconds = min(
        pipeline.max_wall_clock_seconds + settings.sas_margin_minutes * 60, settings.sas_max_hours * 3600
    )
    local_input = ids.local_input_path(record.name)
    resources = [ResourceFile(gw.blobs.read_url(record.container, record.name, valid_seconds), local_input)]
    resources += [
        ResourceFile(gw.blobs.read_url(settings.apps_container, app_file, valid_seconds), f"{APP_DIR}/{app_file}")
        for app_file in pipeline.app_files
    ]
    write_url = gw.blobs.write_url(ids.staging_container(settings.staging_prefix, record.task_id), valid_seconds)
    outputs = [_output_file(pattern, write_url, "out") for pattern in pipeline.outputs]
    outputs += [
        OutputFile(f"../{log}", write_url, f"logs/{log}", "taskCompletion") for log in ("stdout.txt", "stderr.txt")
    ]
    return TaskSpec(
        task_id=record.task_id,
        command_line=pipeline.command_line(local_input),
        resource_files=tuple(resources),
        output_files=tuple(outputs),
        max_retries=pipeline.max_retries,
        max_wall_clock_seconds=pipeline.max_wall_clock_seconds,
        environment=(
            ("BATCHDROP_INPUT", local_input),
            ("BATCHDROP_OUTPUT_DIR", OUTPUT_DIR),
            *sorted(pipeline.environment.items()),
        ),
        container=task_container(pipeline),
        packages=tuple((package.id, package.version) for package in pipeline.application_packages),
        required_slots=pipeline.required_slots,
    )


def task_container(pipeline: PipelineSpec) -> TaskContainer | None:
    container = pipeline.container
    if container is None:
        return None
    return TaskContainer(container.image, container.run_options, container.working_directory)


def _ensure_pool(gw: Gateways, pipeline: PipelineSpec) -> None:
    """Create the pipeline's pool (or check it against the file), with its start task's files readable by SAS."""
    plan = gw.pipelines.pool_plan(pipeline.pool.id)
    start_task = plan.spec.start_task
    files: list[ResourceFile] = []
    if start_task is not None:
        # The start task runs whenever a node joins, so its files stay readable as long as a SAS may last; the
        # adapter replaces the start task (new SAS) when the one on the pool nears its expiry.
        valid_seconds = gw.settings.sas_max_hours * 3600
        files = [
            ResourceFile(gw.blobs.read_url(gw.settings.apps_container, name, valid_seconds), f"{APP_DIR}/{name}")
            for name in start_task.resource_files
        ]
    gw.batch.ensure_pool(plan, tuple(files))


def _output_file(pattern: str, container_url: str, prefix: str) -> OutputFile:
    # With a wildcard Batch treats `path` as a prefix; without one, as the blob name itself.
    wildcard = any(char in pattern for char in "*?[")
    path = prefix if wildcard else f"{prefix}/{pattern}"
    return OutputFile(f"{OUTPUT_DIR}/{pattern}", container_url, path, "taskCompletion")
