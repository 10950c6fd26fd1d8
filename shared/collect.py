"""Collect use case: publish a finished task's outputs into `results` by server-side copy, manifest last."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

from shared import ids
from shared.errors import JobClosed, PermanentError, RejectedInput, TransientError
from shared.gateways import Gateways
from shared.groups import current_task_id
from shared.models import CompletionEvent, InputRecord, InputState, TaskResult
from shared.pipelines import OUTPUT_DIR
from shared.redact import redact, redact_value

logger = logging.getLogger(__name__)
MANIFEST = ids.MANIFEST_NAME
LOGS = ids.LOGS_FOLDER
STDERR_TAIL_BYTES = 4096
# A task that failed outside its own code (TaskResult.infrastructure_failure: storage unreachable while the
# node downloaded its files or uploaded its outputs, a node fault) runs again under the same id this many
# times before its failure is published.
MAX_REACTIVATIONS = 3
MANIFEST_WRITE_ATTEMPTS = 5
REFUSALS_NAMED = 5  # in the failure message; the manifest's refused_outputs has them all


class CollectAction(StrEnum):
    PUBLISHED = "published"
    ALREADY_PUBLISHED = "already-published"  # this task's manifest was there: nothing written
    REACTIVATED = "reactivated"  # failed outside its own code: it runs again, nothing published yet
    SUPERSEDED = "superseded"  # the input was replaced: the newer upload's task publishes


@dataclass(frozen=True)
class Published:
    """What collect copied into results, and what it refused to."""

    outputs: list[str]  # results names of the outputs
    logs: dict[str, str]  # log name (stdout.txt) -> its results name
    refused: dict[str, str]  # staging name (out/...) -> why it was not published


@dataclass(frozen=True)
class CollectOutcome:
    task_id: str
    action: CollectAction
    status: str = ""
    manifest: str = ""


def collect(gw: Gateways, event: CompletionEvent) -> CollectOutcome:
    """Publish one completed task's outputs and its manifest; a repeat, even a concurrent one, publishes once."""
    record = gw.ledger.get_input(event.task_id)
    if record is None:
        raise RejectedInput(f"completion for unknown task {event.task_id} (job {event.job_id})")
    if record.job_id != event.job_id:
        raise RejectedInput(f"completion names job {event.job_id} but task {event.task_id} is in {record.job_id}")
    result_prefix = ids.result_prefix(record.name)
    manifest_name = result_prefix + MANIFEST
    if record.state is InputState.RERUN:
        # A re-run replaced this task (terminated it, with --force): the re-run's manifest is the one to publish.
        return CollectOutcome(record.task_id, CollectAction.SUPERSEDED, "superseded", manifest_name)
    if record.state is InputState.COLLECTED:
        return CollectOutcome(record.task_id, CollectAction.ALREADY_PUBLISHED, record.outcome, manifest_name)
    # The manifest is read before publishing only where its content is needed then: a re-run keeps the run it
    # replaces (_keep_history). A first publication, the common case, reads nothing: the create-only write in
    # _write_manifest is the check, and a conflict there is read (this task's: published before; another's: an
    # earlier upload's, replaced at the version read). A repeat then copies again, the same bytes from the same
    # staging container, before it learns that it is one.
    read_first = record.run > 1
    existing = _read_manifest(gw, manifest_name) if read_first else None
    if existing is not None and existing[0].get("task_id") == record.task_id:
        return _already_published(gw, record, existing[0], manifest_name)
    # Before any copy: an earlier upload's task never copies over the outputs of a newer upload's.
    newer = _newer_group_version(gw, record) if record.group_key else _newer_version(gw, record)
    if newer is not None:
        # Rare, so it may read: a repeat whose manifest went out before the input was replaced keeps its word.
        published_before = None if read_first else _published_before(gw, record, manifest_name)
        return published_before or _supersede(gw, record, newer, manifest_name)
    task = event.task if event.task is not None and event.task.completed else None
    task = task or gw.batch.get_task(event.job_id, event.task_id)
    if task is None:
        # A repeat of a completion published before its ledger write can find the job gone from Batch.
        published_before = None if read_first else _published_before(gw, record, manifest_name)
        if published_before is not None:
            return published_before
        raise RejectedInput(f"Batch has no task {event.task_id} in job {event.job_id}")
    if not task.completed:
        raise TransientError(f"task {event.task_id} is {task.state}, not completed yet")
    if task.infrastructure_failure and record.reactivations < MAX_REACTIVATIONS:
        # Running the task again would rewrite the staging outputs that a manifest of this task (published before
        # a crash kept the ledger from saying so) names: look for one first. Only this rare path pays the read.
        published_before = None if read_first else _published_before(gw, record, manifest_name)
        if published_before is not None:
            return published_before
        stored = _count_reactivation(gw, record)
        if stored.state is InputState.COLLECTED:
            # Another delivery published this input after we read its row: its manifest is the last word,
            # and running the task again now would only contradict it.
            return CollectOutcome(record.task_id, CollectAction.ALREADY_PUBLISHED, stored.outcome, manifest_name)
        rerun_refused = _reactivate(gw, record, task)
        if rerun_refused is None:
            return CollectOutcome(record.task_id, CollectAction.REACTIVATED, "", manifest_name)
        task = rerun_refused
    if existing is not None and record.run > 1:
        _keep_history(gw, record, existing[0], result_prefix)
    try:
        published = _publish_outputs(gw, record, result_prefix)
    except PermanentError:
        # A copy source vanished under us: this completion was published meanwhile and its job's staging
        # cleared (a late redelivery). Anything else is a real error.
        current = gw.blobs.read_json(gw.settings.results_container, manifest_name)
        if current is not None and current.get("task_id") == record.task_id:
            return _already_published(gw, record, current, manifest_name)
        raise
    missing = _missing_outputs(gw, record, result_prefix, published.outputs)
    manifest = _manifest(gw, record, task, published, missing)
    winner = _write_manifest(gw, record, manifest_name, manifest, existing[1] if existing else None)
    if winner is not None:
        return _already_published(gw, record, winner, manifest_name)
    _mark_collected(gw, record, str(manifest["status"]))
    # The staging container stays until the job is terminated: poll clears a closed job's staging in bulk.
    logger.info(
        "published %s: %s", record.name, manifest["status"], extra={"job_id": record.job_id, "task_id": record.task_id}
    )
    return CollectOutcome(record.task_id, CollectAction.PUBLISHED, str(manifest["status"]), manifest_name)


def _already_published(
    gw: Gateways, record: InputRecord, manifest: dict[str, object], manifest_name: str
) -> CollectOutcome:
    status = str(manifest.get("status", ""))
    _mark_collected(gw, record, status)
    return CollectOutcome(record.task_id, CollectAction.ALREADY_PUBLISHED, status, manifest_name)


def _read_manifest(gw: Gateways, manifest_name: str) -> tuple[dict[str, object], str] | None:
    return gw.blobs.read_json_version(gw.settings.results_container, manifest_name)


def _published_before(gw: Gateways, record: InputRecord, manifest_name: str) -> CollectOutcome | None:
    """ALREADY_PUBLISHED (and the ledger told) if the manifest there is this task's, else None."""
    found = _read_manifest(gw, manifest_name)
    if found is None or found[0].get("task_id") != record.task_id:
        return None
    return _already_published(gw, record, found[0], manifest_name)


def _write_manifest(
    gw: Gateways, record: InputRecord, manifest_name: str, manifest: dict[str, object], version: str | None
) -> dict[str, object] | None:
    """Write the manifest unless this task's is already there; None when written, else the one found.

    Create-only unless a version was read before (`version`), else etag-conditional over the version read on a
    conflict: two deliveries of one completion cannot both write (the later one finds the first one's), and a
    replaced input's new task still replaces the old task's manifest (or one that is not JSON).
    """
    container = gw.settings.results_container
    for _ in range(MANIFEST_WRITE_ATTEMPTS):
        if gw.blobs.write_json_if(container, manifest_name, manifest, version):
            return None
        current = gw.blobs.read_json_version(container, manifest_name)
        if current is None:
            version = None
            continue
        document, version = current
        if document.get("task_id") == record.task_id:
            return document
        # Another version's manifest: it was written meanwhile by an earlier upload's task; replace it.
    raise TransientError(f"manifest {manifest_name} kept changing under task {record.task_id}; retry later")


def _newer_version(gw: Gateways, record: InputRecord) -> str | None:
    """The etag of the input as it is now, if it was replaced after this task was created."""
    blob = gw.blobs.get_blob(record.container, record.name)
    if blob is None:
        return None  # deleted: this task's manifest is the last word on it
    etag = ids.normalise_etag(blob.etag)
    return etag if etag != record.etag else None


def _newer_group_version(gw: Gateways, record: InputRecord) -> str | None:
    """For a group's task: the task of the group's members as they are now, if a member was uploaded again since."""
    pipeline = gw.pipelines.by_name(record.pipeline)
    group = gw.ledger.get_group(record.pipeline, record.group_key)
    if pipeline is None or pipeline.group is None or group is None:
        return None
    current = current_task_id(pipeline.name, pipeline.group, group)
    return current if current is not None and current != record.task_id else None


def _supersede(gw: Gateways, record: InputRecord, newer_etag: str, manifest_name: str) -> CollectOutcome:
    """The input was replaced: its newer upload has its own task, whose manifest is the one to publish."""
    record.state = InputState.COLLECTED
    record.outcome = "superseded"
    record.reason = (
        f"a member was uploaded again (the group's task is now {newer_etag}) before this task's outputs were "
        "published"
        if record.group_key
        else f"input replaced (etag {newer_etag}) before this task's outputs were published"
    )
    gw.ledger.save_input(record)
    logger.info(
        "not publishing %s: %s", record.name, record.reason, extra={"job_id": record.job_id, "task_id": record.task_id}
    )
    return CollectOutcome(record.task_id, CollectAction.SUPERSEDED, "superseded", manifest_name)


def _count_reactivation(gw: Gateways, record: InputRecord) -> InputRecord:
    """Save one more reactivation before asking Batch: a crash in between spends an attempt, it never loops.

    Returns the row as stored: the ledger keeps a collected row collected, so a delivery that read the row
    before another one published learns of it here instead of undoing it.
    """
    record.reactivations += 1
    return gw.ledger.save_input(record)


def _reactivate(gw: Gateways, record: InputRecord, task: TaskResult) -> TaskResult | None:
    """Run the same task again after an infrastructure failure: None if it will run again, else what to publish."""
    code = (task.failure or {}).get("code")
    fields = {"job_id": record.job_id, "task_id": record.task_id}
    try:
        if gw.batch.reactivate_task(record.job_id, record.task_id):
            logger.warning(
                "task of %s failed outside its own code (%s); reactivated, attempt %d of %d",
                record.name, code, record.reactivations, MAX_REACTIVATIONS, extra=fields,
            )  # fmt: skip
            return None
        # Batch counts the task as succeeded (an exit-0 run whose upload failed, or a later run that
        # succeeded): publish what Batch says now.
        current = gw.batch.get_task(record.job_id, record.task_id)
    except JobClosed:
        current = None
    logger.warning("task of %s failed (%s) and cannot run again", record.name, code, extra=fields)
    record.reactivations -= 1  # it did not run again after all; the manifest says how often it did
    return current if current is not None and current.completed else task


def _keep_history(gw: Gateways, record: InputRecord, previous: dict[str, object], result_prefix: str) -> None:
    """Before a re-run publishes, keep the run it replaces: its manifest, outputs and logs under `_history/<run>/`.

    The re-run's outputs then overwrite same-named ones in the input's folder; outputs of the old run that the
    re-run does not write stay there, unlisted by the new manifest (which is what a consumer reads). The history
    manifest is written last and names the task it keeps: a repeat finds it and copies nothing again, so a
    repeat after the re-run's outputs were published never copies those into the history.
    """
    results = gw.settings.results_container
    run = _run_of(previous)
    history = ids.history_prefix(result_prefix, run)
    kept = gw.blobs.read_json(results, history + MANIFEST)
    if kept is not None and kept.get("task_id") == previous.get("task_id"):
        return
    moved: dict[str, str] = {}
    names = [*_names(previous.get("outputs")), *_names([previous.get("stdout"), previous.get("stderr")])]
    for name in names:
        if name.startswith(result_prefix):
            moved[name] = history + name[len(result_prefix) :]
            gw.blobs.copy(results, name, results, moved[name])
    document = {
        **previous,
        "run": run,
        "outputs": [moved.get(name, name) for name in _names(previous.get("outputs"))],
        "stdout": moved.get(str(previous.get("stdout")), previous.get("stdout")),
        "stderr": moved.get(str(previous.get("stderr")), previous.get("stderr")),
        "replaced_by": record.task_id,
    }
    gw.blobs.write_json(results, history + MANIFEST, document)
    fields = {"job_id": record.job_id, "task_id": record.task_id}
    logger.info("kept run %d of %s under %s", run, record.name, history, extra=fields)


def _run_of(manifest: dict[str, object]) -> int:
    run = manifest.get("run")
    return run if isinstance(run, int) and run > 0 else 1


def _names(values: object) -> list[str]:
    return [value for value in values if isinstance(value, str)] if isinstance(values, list) else []


def _publish_outputs(gw: Gateways, record: InputRecord, result_prefix: str) -> Published:
    """Copy the task's outputs and logs into its input's results folder; a name that is unsafe there is refused.

    Unsafe: an empty, `.` or `..` segment (a leading `/` is an empty one), or a name that would pose as
    batchdrop's own (`_manifest.json` at any depth, `_logs/` at the top). Such an output is not published and
    the manifest fails naming it, rather than being published under an escaped name, because:
    Batch's upload of the files under `out/` never makes the first kind, so the task wrote around Batch with its
    SAS, and the user should see a failure that names what it wrote, not a success with a renamed file they
    would not look for; an app that writes `_manifest.json` learns the name is taken and can rename it; and a
    refused name is never read back, so what happens does not depend on how a storage service or an HTTP stack
    normalises dot segments in the copy's source URL.
    """
    settings = gw.settings
    staging = ids.staging_container(settings.staging_prefix, record.task_id)
    published = Published([], {}, {})
    for blob in gw.blobs.list_blobs(staging):
        try:
            if blob.name.startswith("out/"):
                target = ids.output_result_name(result_prefix, blob.name[len("out/") :])
                published.outputs.append(target)
            elif blob.name.startswith("logs/"):
                target = ids.log_result_name(result_prefix, blob.name[len("logs/") :])
                published.logs[blob.name[len("logs/") :]] = target
            else:
                continue
        except ids.UnsafeName as unsafe:
            published.refused[blob.name] = str(unsafe)
            logger.warning(
                "not publishing %r of %s: %s", blob.name, record.name, unsafe,
                extra={"job_id": record.job_id, "task_id": record.task_id},
            )  # fmt: skip
            continue
        gw.blobs.copy(staging, blob.name, settings.results_container, target)
    published.outputs.sort()
    return published


def _missing_outputs(gw: Gateways, record: InputRecord, result_prefix: str, outputs: list[str]) -> list[str]:
    """Declared outputs (patterns without wildcards) that the task did not produce.

    Batch itself does not fail a task whose output pattern matched nothing, so batchdrop checks.
    """
    pipeline = gw.pipelines.by_name(record.pipeline)
    declared = [p for p in pipeline.outputs if not any(c in p for c in "*?[")] if pipeline else []
    return [name for name in declared if result_prefix + name not in outputs]


def _manifest(
    gw: Gateways, record: InputRecord, task: TaskResult, published: Published, missing: list[str]
) -> dict[str, object]:
    logs = published.logs
    stderr = logs.get("stderr.txt")
    stderr_tail = ""
    status, failure = task.outcome.value, task.failure
    if task.infrastructure_failure and failure is not None:
        failure = {
            **failure,
            "note": f"the failure was outside the task's own code; batchdrop ran the task again "
            f"{record.reactivations} time(s) and it still failed: drop the file again once storage and Batch "
            "are healthy",
        }
    if status == "succeeded" and published.refused:
        status = "failed"
        named = list(published.refused)
        failure = {
            "category": "batchdrop",
            "code": "UnsafeOutputName",
            "message": f"the task exited {task.exit_code} but wrote output(s) that batchdrop does not publish: "
            + "; ".join(f"{name} ({published.refused[name]})" for name in named[:REFUSALS_NAMED])
            + (f"; and {len(named) - REFUSALS_NAMED} more" if len(named) > REFUSALS_NAMED else ""),
            "details": {"refused": published.refused},
        }
    elif status == "succeeded" and missing:
        status = "failed"
        failure = {
            "category": "batchdrop",
            "code": "MissingOutput",
            "message": f"the task exited {task.exit_code} but did not write the declared output(s) "
            + ", ".join(f"{OUTPUT_DIR}/{name}" for name in missing),
            "details": {"missing": missing},
        }
    if status == "failed" and stderr:
        stderr_tail = gw.blobs.read_tail(gw.settings.results_container, stderr, STDERR_TAIL_BYTES)
    group: dict[str, object] = {}
    if record.group_key:  # a group's task: results/<group key>/, every member listed
        group = {
            "group": record.group_key,
            "members": [{"name": name, "etag": etag} for name, etag in record.members],
        }
    return {
        "input": record.name,
        "input_container": record.container,
        "input_etag": record.etag,
        **group,
        "pipeline": record.pipeline,
        "job_id": record.job_id,
        "task_id": record.task_id,
        "run": record.run,
        "status": status,
        "exit_code": task.exit_code,
        # Failure info is what a node saw; a storage error there can carry a SAS URL (adapters redact too).
        "failure": redact_value(failure),
        "outputs": published.outputs,
        "refused_outputs": published.refused,
        "stdout": logs.get("stdout.txt"),
        "stderr": stderr,
        "stderr_tail": redact(stderr_tail),
        "started_at": task.started_at.isoformat() if task.started_at else None,
        "finished_at": task.finished_at.isoformat() if task.finished_at else None,
        "retries": task.retries,
        "reactivations": record.reactivations,
        "published_at": gw.clock().isoformat(),
    }


def _mark_collected(gw: Gateways, record: InputRecord, status: str) -> None:
    record.state = InputState.COLLECTED
    record.outcome = status
    gw.ledger.save_input(record)
