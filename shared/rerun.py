"""Re-run use case: run inputs again (their current version) under a new task, once per re-run request.

A re-run request has an id chosen by its client (a retried or duplicated request carries the same id); the task
id of each input's re-run derives from that id and the input's version (`ids.rerun_task_id`), so a repeat of the
request finds its rows, and Batch its tasks, instead of making new ones.

In the ledger a re-run is a row of its own, keyed by its task id, with `run` (n + 1) and `rerun_of` (the row it
replaces). The replaced row moves to the final state `rerun`, which the counters do not count, with `rerun_by`
naming the re-run; so an input is counted once, under its latest run, however often it ran. The rows of one input
form a chain from the upload's own row (`ids.task_id`) along `rerun_by`; its last row is the input's current run.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

from shared import ids
from shared.errors import RejectedInput
from shared.gateways import Gateways
from shared.models import InputRecord, InputState
from shared.pipelines import PipelineSpec, RoutingConflict, route

# The bulk submission path the sweep uses: one add-collection request per SWEEP_CHUNK tasks of a job.
from shared.submit import SWEEP_CHUNK, _ensure_job, _submit_chunk

logger = logging.getLogger(__name__)
MAX_CHAIN = 10_000  # rows followed from an upload's row to its current run; a longer chain is a bug, not a loop
PENDING = (InputState.CLAIMED, InputState.SUBMITTED)
PREPARE_THREADS = 8


class RerunAction(StrEnum):
    SUBMITTED = "submitted"  # a task for the re-run exists in Batch
    DUPLICATE = "duplicate"  # this request re-ran the input before: nothing new
    REFUSED = "refused"  # not re-run; the reason is recorded with the rejections


@dataclass(frozen=True)
class RerunRequest:
    """What to run again: named inputs, the failed ones, or every input of a pipeline."""

    request_id: str
    names: tuple[str, ...] = ()
    failed: bool = False
    every: bool = False  # with `pipeline`: every input the pipeline takes
    pipeline: str | None = None
    since: datetime | None = None  # with `failed`: failures collected at or after this time
    force: bool = False  # terminate a queued or running task of the input first


@dataclass(frozen=True)
class RerunOutcome:
    name: str
    action: RerunAction
    task_id: str = ""
    job_id: str = ""
    run: int = 0
    reason: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "action": self.action.value, "task_id": self.task_id, "job_id": self.job_id,
                "run": self.run, "reason": self.reason}  # fmt: skip


@dataclass
class RerunReport:
    request_id: str
    outcomes: list[RerunOutcome] = field(default_factory=list)

    def count(self, action: RerunAction) -> int:
        return sum(1 for outcome in self.outcomes if outcome.action is action)

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.request_id,
            "submitted": self.count(RerunAction.SUBMITTED),
            "duplicate": self.count(RerunAction.DUPLICATE),
            "refused": self.count(RerunAction.REFUSED),
            "outcomes": [outcome.as_dict() for outcome in self.outcomes],
        }


def parse_request(body: object) -> RerunRequest:
    """The request from its JSON form (the HTTP route's body); RejectedInput naming what is wrong."""
    if not isinstance(body, dict):
        raise RejectedInput("a re-run request is a JSON object")
    known = {"id", "names", "failed", "all", "pipeline", "since", "force"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise RejectedInput(f"unknown field(s) in the re-run request: {', '.join(unknown)}; known: {sorted(known)}")
    request_id = body.get("id")
    if not isinstance(request_id, str) or not ids.RERUN_ID.match(request_id):
        raise RejectedInput("`id` must be the request's own id (a retry sends it again): 1-64 of A-Z a-z 0-9 - _")
    names = body.get("names", [])
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise RejectedInput("`names` must be a list of input names")
    flags = {key: body.get(key, False) for key in ("failed", "all", "force")}
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise RejectedInput(f"`{key}` must be true or false")
    pipeline = body.get("pipeline")
    if pipeline is not None and not isinstance(pipeline, str):
        raise RejectedInput("`pipeline` must be a pipeline name")
    since = _since(body.get("since"))
    request = RerunRequest(
        request_id, tuple(dict.fromkeys(names)), flags["failed"], flags["all"], pipeline, since, flags["force"]
    )
    check_request(request)
    return request


def _since(value: object) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        raise RejectedInput(f"`since` must be an ISO 8601 time, not {str(value)[:40]!r}") from None
    if moment.tzinfo is None:
        raise RejectedInput("`since` must name its time zone (for example 2026-12-01T03:00:00Z)")
    return moment


def check_request(request: RerunRequest) -> None:
    """RejectedInput unless the request asks for exactly one selection: names, failed, or a pipeline's all."""
    modes = [bool(request.names), request.failed, request.every]
    if sum(modes) != 1:
        raise RejectedInput("a re-run names inputs, or asks for the failed ones (`failed`), or for every input of "
                            "a pipeline (`all` with `pipeline`): exactly one of these")  # fmt: skip
    if request.every and not request.pipeline:
        raise RejectedInput("`all` re-runs every input of one pipeline: name it with `pipeline`")
    if request.since is not None and not request.failed:
        raise RejectedInput("`since` selects failures by when they were collected: use it with `failed`")
    if request.names and request.pipeline:
        raise RejectedInput("named inputs go to the pipeline that takes them: drop `pipeline`")


def rerun(gw: Gateways, request: RerunRequest) -> RerunReport:
    """Run the selected inputs again; the tasks go to Batch in bulk, SWEEP_CHUNK per request, per job."""
    check_request(request)
    if request.pipeline is not None and gw.pipelines.by_name(request.pipeline) is None:
        raise RejectedInput(f"no pipeline is named {request.pipeline!r}")
    report = RerunReport(request.request_id)
    by_job: dict[str, list[tuple[InputRecord, PipelineSpec]]] = defaultdict(list)
    open_jobs: set[str] = set()
    with ThreadPoolExecutor(PREPARE_THREADS) as pool:  # each input costs a few storage and ledger round trips
        prepared_inputs = list(pool.map(lambda name: _prepare(gw, request, name), _selected(gw, request)))
    for prepared in prepared_inputs:
        if isinstance(prepared, RerunOutcome):
            report.outcomes.append(prepared)
            continue
        record, pipeline = prepared
        if record.job_id not in open_jobs:  # one ledger read per job per request
            record = _ensure_job(gw, record, pipeline)
            open_jobs.add(record.job_id)
        by_job[record.job_id].append((record, pipeline))
        if len(by_job[record.job_id]) == SWEEP_CHUNK:
            report.outcomes += _submit(gw, record.job_id, by_job.pop(record.job_id))
    for job_id, entries in by_job.items():
        report.outcomes += _submit(gw, job_id, entries)
    logger.info(
        "re-run %s: %d submitted, %d duplicate, %d refused", request.request_id,
        report.count(RerunAction.SUBMITTED), report.count(RerunAction.DUPLICATE), report.count(RerunAction.REFUSED),
    )  # fmt: skip
    return report


def _submit(gw: Gateways, job_id: str, entries: list[tuple[InputRecord, PipelineSpec]]) -> list[RerunOutcome]:
    _submit_chunk(gw, job_id, entries)
    # _submit_chunk marks the rows submitted in place (a closed job moves them to the open one in copies).
    return [
        RerunOutcome(record.name, RerunAction.SUBMITTED, record.task_id, record.job_id, record.run)
        for record, _ in entries
    ]


def _selected(gw: Gateways, request: RerunRequest) -> list[str]:
    if request.names:
        return list(dict.fromkeys(request.names))
    if request.failed:
        names = [
            row.name
            for row in gw.ledger.inputs(state=InputState.COLLECTED)
            if row.outcome == "failed"
            and row.container == gw.settings.input_container
            and (request.pipeline is None or row.pipeline == request.pipeline)
            and (request.since is None or (row.updated_at is not None and row.updated_at >= request.since))
        ]
        return sorted(set(names))
    names = []
    for blob in gw.blobs.list_blobs(gw.settings.input_container):
        try:
            pipeline = route(gw.pipelines, blob.name)
        except RoutingConflict:
            continue
        if pipeline is not None and pipeline.name == request.pipeline:
            names.append(blob.name)
    return names


def _prepare(gw: Gateways, request: RerunRequest, name: str) -> tuple[InputRecord, PipelineSpec] | RerunOutcome:
    """Claim the re-run's row and retire the input's current run; an outcome when there is nothing to submit."""
    container = gw.settings.input_container
    reason = ids.check_blob_name(name)
    blob = gw.blobs.get_blob(container, name) if reason is None else None
    if reason is None and blob is None:
        reason = "the input no longer exists"
    pipeline = None
    if reason is None:
        try:
            pipeline = route(gw.pipelines, name)
        except RoutingConflict as conflict:
            reason = str(conflict)
        if reason is None and pipeline is None:
            reason = "no pipeline takes this input"
        if reason is None and pipeline is not None and pipeline.group is not None:
            reason = "it is a member of a group (pipeline `group`): upload a member again to run its group again"
    if reason is not None or blob is None or pipeline is None:
        return _refuse(gw, name, reason or "unknown input")
    task_id = ids.rerun_task_id(container, name, blob.etag, request.request_id)
    mine = gw.ledger.get_input(task_id)
    if mine is not None and mine.state is not InputState.CLAIMED:
        return RerunOutcome(name, RerunAction.DUPLICATE, task_id, mine.job_id, mine.run, "this request re-ran it")
    first = gw.ledger.get_input(ids.task_id(container, name, blob.etag))
    if first is None:
        return _refuse(gw, name, "this version of the input was never submitted: its first run is still to come")
    current = _current_run(gw, first, task_id)
    ended = _batch_outcome(gw, current) if current.task_id != task_id and current.state in PENDING else None
    pending = current.task_id != task_id and current.state in PENDING and ended is None
    if pending and not request.force:
        why = f"already {'queued or running' if current.state is InputState.SUBMITTED else 'being submitted'}"
        return _refuse(gw, name, f"{why} (task {current.task_id} in job {current.job_id}); force re-runs it anyway, "
                                 "terminating that task first")  # fmt: skip
    job_id = ids.job_id(pipeline.name, gw.clock(), gw.settings.job_window_minutes)
    run = mine.run if mine is not None else (current.run + 1 if current.task_id != task_id else current.run)
    claim = InputRecord(
        task_id, container, name, ids.normalise_etag(blob.etag), pipeline.name, job_id, InputState.CLAIMED,
        run=run, rerun_of=mine.rerun_of if mine is not None else current.task_id,
        staging=ids.staging_container(gw.settings.staging_prefix, task_id),  # its completion events name it
    )  # fmt: skip
    record, created = gw.ledger.claim_input(claim)
    if not created and record.state is not InputState.CLAIMED:
        return RerunOutcome(name, RerunAction.DUPLICATE, task_id, record.job_id, record.run, "this request re-ran it")
    if current.task_id != task_id:
        refusal = _retire(gw, current, record, request.request_id, ended)
        if refusal is not None:
            return _refuse(gw, name, refusal)
    return record, pipeline


def _current_run(gw: Gateways, first: InputRecord, task_id: str) -> InputRecord:
    """The input's latest run: follow `rerun_by` from the upload's own row, stopping at this request's row."""
    row = first
    for _ in range(MAX_CHAIN):
        if row.task_id == task_id or row.state is not InputState.RERUN or not row.rerun_by:
            return row
        following = gw.ledger.get_input(row.rerun_by)
        if following is None:
            return row
        row = following
    raise RejectedInput(f"{first.name}: more than {MAX_CHAIN} runs recorded")


def _batch_outcome(gw: Gateways, row: InputRecord) -> str | None:
    """For a row not yet collected: None while its task is queued or running, else how it ended in Batch
    (a task that completed and awaits collection is not running)."""
    if row.state is InputState.CLAIMED or not row.job_id:
        return None
    task = gw.batch.get_task(row.job_id, row.task_id)
    return task.outcome.value if task is not None and task.completed else None


def _retire(gw: Gateways, current: InputRecord, record: InputRecord, request_id: str, ended: str | None) -> str | None:
    """Mark the current run replaced by `record`, then end its task if it has one pending (`ended`: how an
    uncollected task ended in Batch, None while it runs); the refusal if another re-run replaced it first (the row
    keeps the first `rerun_by` written)."""
    pending = current.state in PENDING and ended is None
    reason = f"re-run as task {record.task_id} (request {request_id})"
    # A pending task is terminated below, and Batch counts a terminated task as failed: status takes the replaced
    # task out of Batch's counts by this outcome.
    outcome = current.outcome if current.state is InputState.COLLECTED else ended or "failed"
    replaced = replace(current, state=InputState.RERUN, rerun_by=record.task_id, reason=reason, outcome=outcome)
    stored = gw.ledger.save_input(replaced)
    if stored.rerun_by != record.task_id:
        winner = stored.rerun_by or "?"
        lost = replace(record, state=InputState.RERUN, rerun_by=winner, reason=f"re-run {winner} came first")
        gw.ledger.save_input(lost)
        return f"another re-run (task {winner}) replaced this run first"
    if pending and current.job_id:
        # Marked first: the terminated task's completion finds its row replaced, and publishes nothing.
        gw.batch.terminate_task(current.job_id, current.task_id)
    return None


def _refuse(gw: Gateways, name: str, reason: str) -> RerunOutcome:
    gw.ledger.record_rejection(f"{gw.settings.input_container}/{name}", f"re-run refused: {reason}")
    logger.warning("re-run of %r refused: %s", name, reason)
    return RerunOutcome(name, RerunAction.REFUSED, reason=reason)
