"""Summary use case: one more task per job, run once its window has closed and every input in it is collected.

A pipeline with `summary: {command, app_files}` gets, per job, a task `_summary` (the same id in every job, so a
duplicate poll or a poll after a crash finds it: Batch answers TaskExists, which is success). It is a plain task
that batchdrop adds itself when the job's inputs are collected, not a Batch task dependency, job manager or job
release task (docs/pipelines.md, "summary", says why): its input is the list of the job's manifests, and only
batchdrop knows when the last of those is written.

The job's ledger row carries the step (`JobRecord.summary`):
- "" (not begun), then `pending`: the window has closed; from here the job takes no new input (submit moves a late
  one to an open job), and the summary waits for the job's inputs to be collected and its tasks to end;
- `running`: the task exists in Batch (its manifests list written first, in its own staging container);
- `succeeded` / `failed`: its outputs and manifest are published under `results/_summaries/<pipeline>/<job id>/`.
  Only then is the job terminated.

The task writes only into its own staging container (a SAS for that container alone); batchdrop copies what it
wrote under `out/` into the results, like an input's task. Its logs go to `_logs/`, not `logs/`: the task_finished
path takes only `logs/stderr.txt` (an input task's), so the poll alone collects a summary.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum

from shared import ids
from shared.errors import JobClosed, PermanentError
from shared.gateways import Gateways
from shared.models import InputState, JobRecord, OutputFile, ResourceFile, TaskResult, TaskSpec
from shared.pipelines import APP_DIR, OUTPUT_DIR, PipelineSpec, SummarySpec
from shared.redact import redact, redact_value

logger = logging.getLogger(__name__)

# No input's task id begins with "_" (ids.task_id and ids.rerun_task_id strip it), so this one never collides.
SUMMARY_TASK_ID = "_summary"
MANIFESTS_BLOB = "in/manifests.json"  # in the summary's staging container
MANIFESTS_PATH = "input/manifests.json"  # where the task finds it: `{input}`
LOG_FOLDER = "_logs"
STDERR_TAIL_BYTES = 4096
READ_THREADS = 8


class SummaryState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


FINAL = frozenset({SummaryState.SUCCEEDED.value, SummaryState.FAILED.value})


def spec_of(gw: Gateways, job: JobRecord) -> SummarySpec | None:
    pipeline = gw.pipelines.by_name(job.pipeline)
    return pipeline.summary if pipeline is not None else None


def staging_container(gw: Gateways, job_id: str) -> str:
    """The summary's own staging container: its SAS lets the task write nowhere else."""
    return ids.staging_container(gw.settings.staging_prefix, f"{SUMMARY_TASK_ID}/{job_id}")


def result_prefix(pipeline: str, job_id: str) -> str:
    """`_summaries/<pipeline>/<job id>/` in results (ids.result_prefix keeps every input's folder out of it)."""
    return f"{ids.SUMMARIES}/{pipeline}/{job_id}/"


def state(gw: Gateways, job: JobRecord) -> str | None:
    """The job's summary state as status shows it; None when its pipeline has no summary step."""
    if job.summary:
        return job.summary
    return SummaryState.PENDING.value if spec_of(gw, job) is not None else None


def close_to_inputs(gw: Gateways, job: JobRecord) -> None:
    """The window has closed: mark the summary pending, which also closes the job to late inputs (submit)."""
    job.summary = SummaryState.PENDING.value
    gw.ledger.save_job(job)
    logger.info("job %s: window closed, summary pending", job.job_id, extra={"job_id": job.job_id})


def advance(gw: Gateways, job: JobRecord, pipeline: PipelineSpec, spec: SummarySpec) -> bool:
    """One step of the job's summary (its inputs are all collected); True once its manifest is published."""
    if job.summary in FINAL:
        return True
    if job.summary == SummaryState.PENDING.value:
        counts = gw.batch.task_counts(job.job_id)
        if counts is not None and counts.active + counts.running > 0:
            return False  # a task of the job still runs (a reactivation): the summary waits for it
        return _start(gw, job, pipeline, spec)
    task = gw.batch.get_task(job.job_id, SUMMARY_TASK_ID)
    if task is None:  # Batch does not know it (the job went): start it again, or publish why it cannot run
        return _start(gw, job, pipeline, spec)
    if not task.completed:
        return False
    publish(gw, job, task)
    return True


def _start(gw: Gateways, job: JobRecord, pipeline: PipelineSpec, spec: SummarySpec) -> bool:
    """Write the manifests list, add the task (an existing one is success), then record it running.

    A crash anywhere here repeats the step on the next poll: the list is rewritten with the same content and
    Batch answers TaskExists for the task, so the job still has one summary task.
    """
    task = _task_spec(gw, job, pipeline, spec)
    try:
        gw.batch.add_task(job.job_id, task)
    except JobClosed as closed:
        # The job ended in Batch before its summary could run (terminated or deleted by hand): say so.
        _write_manifest(gw, job, None, [], {}, failure={
            "category": "batchdrop", "code": "JobClosed",
            "message": f"the summary task could not be added: the job is closed in Batch ({closed})",
        })  # fmt: skip
        return True
    job.summary = SummaryState.RUNNING.value
    gw.ledger.save_job(job)
    logger.info("job %s: summary task added", job.job_id, extra={"job_id": job.job_id, "task_id": SUMMARY_TASK_ID})
    return False


def manifests(gw: Gateways, job: JobRecord) -> list[dict[str, object]]:
    """The manifests of the job's collected inputs, each as published (re-run and superseded rows left out)."""
    results = gw.settings.results_container
    names = sorted(
        {
            ids.result_prefix(record.name) + ids.MANIFEST_NAME
            for record in gw.ledger.inputs(state=InputState.COLLECTED, job_id=job.job_id)
            if record.outcome != "superseded"
        }
    )
    with ThreadPoolExecutor(READ_THREADS) as pool:
        documents = list(pool.map(lambda name: gw.blobs.read_json(results, name), names))
    return [
        {"manifest": name, **document}
        for name, document in zip(names, documents, strict=True)
        # A later upload's task in another job may own the name by now: list only this job's own manifests.
        if document is not None and document.get("job_id") == job.job_id
    ]


def _task_spec(gw: Gateways, job: JobRecord, pipeline: PipelineSpec, spec: SummarySpec) -> TaskSpec:
    settings = gw.settings
    valid_seconds = min(
        pipeline.max_wall_clock_seconds + settings.sas_margin_minutes * 60, settings.sas_max_hours * 3600
    )
    staging = staging_container(gw, job.job_id)
    write_url = gw.blobs.write_url(staging, valid_seconds)  # creates the container
    listed = manifests(gw, job)
    gw.blobs.write_json(staging, MANIFESTS_BLOB, {
        "pipeline": job.pipeline, "job_id": job.job_id, "count": len(listed), "manifests": listed,
    })  # fmt: skip
    resources = [ResourceFile(gw.blobs.read_url(staging, MANIFESTS_BLOB, valid_seconds), MANIFESTS_PATH)]
    resources += [
        ResourceFile(gw.blobs.read_url(settings.apps_container, app_file, valid_seconds), f"{APP_DIR}/{app_file}")
        for app_file in spec.app_files
    ]
    outputs = [OutputFile(f"{OUTPUT_DIR}/**/*", write_url, "out", "taskCompletion")]
    outputs += [
        OutputFile(f"../{log}", write_url, f"{LOG_FOLDER}/{log}", "taskCompletion")
        for log in ("stdout.txt", "stderr.txt")
    ]
    return TaskSpec(
        task_id=SUMMARY_TASK_ID,
        command_line=spec.command_line(MANIFESTS_PATH),
        resource_files=tuple(resources),
        output_files=tuple(outputs),
        max_retries=pipeline.max_retries,
        max_wall_clock_seconds=pipeline.max_wall_clock_seconds,
        environment=(
            ("BATCHDROP_INPUT", MANIFESTS_PATH),
            ("BATCHDROP_OUTPUT_DIR", OUTPUT_DIR),
            ("BATCHDROP_JOB_ID", job.job_id),
            ("BATCHDROP_PIPELINE", job.pipeline),
            *sorted(pipeline.environment.items()),
        ),
    )


def publish(gw: Gateways, job: JobRecord, task: TaskResult) -> None:
    """Copy the summary's outputs and logs into results, then its manifest (create-only), then its state."""
    results = gw.settings.results_container
    prefix = result_prefix(job.pipeline, job.job_id)
    existing = gw.blobs.read_json(results, prefix + ids.MANIFEST_NAME)
    if existing is not None and existing.get("job_id") == job.job_id:
        _record(gw, job, existing)  # published before (a duplicate poll, or a crash after the manifest)
        return
    staging = staging_container(gw, job.job_id)
    outputs: list[str] = []
    logs: dict[str, str] = {}
    refused: dict[str, str] = {}
    try:
        for blob in gw.blobs.list_blobs(staging):
            try:
                if blob.name.startswith("out/"):
                    target = ids.output_result_name(prefix, blob.name[len("out/") :])
                    outputs.append(target)
                elif blob.name.startswith(f"{LOG_FOLDER}/"):
                    target = ids.log_result_name(prefix, blob.name[len(LOG_FOLDER) + 1 :])
                    logs[blob.name[len(LOG_FOLDER) + 1 :]] = target
                else:
                    continue
            except ids.UnsafeName as unsafe:
                refused[blob.name] = str(unsafe)
                continue
            gw.blobs.copy(staging, blob.name, results, target)
    except PermanentError:
        # A copy source vanished: another poll published this summary and cleared its staging meanwhile.
        current = gw.blobs.read_json(results, prefix + ids.MANIFEST_NAME)
        if current is None:
            raise
        _record(gw, job, current)
        return
    failure = task.failure
    if task.outcome.value == "succeeded" and refused:
        failure = {"category": "batchdrop", "code": "UnsafeOutputName",
                   "message": "the summary wrote output(s) that batchdrop does not publish: " + "; ".join(
                       f"{name} ({why})" for name, why in list(refused.items())[:5])}  # fmt: skip
    _write_manifest(gw, job, task, sorted(outputs), logs, failure=failure, refused=refused)


def _write_manifest(
    gw: Gateways,
    job: JobRecord,
    task: TaskResult | None,
    outputs: list[str],
    logs: dict[str, str],
    failure: dict[str, object] | None,
    refused: dict[str, str] | None = None,
) -> None:
    results = gw.settings.results_container
    prefix = result_prefix(job.pipeline, job.job_id)
    succeeded = task is not None and task.outcome.value == "succeeded" and not refused
    stderr = logs.get("stderr.txt")
    stderr_tail = gw.blobs.read_tail(results, stderr, STDERR_TAIL_BYTES) if stderr and not succeeded else ""
    manifest: dict[str, object] = {
        "kind": "summary",
        "pipeline": job.pipeline,
        "job_id": job.job_id,
        "task_id": SUMMARY_TASK_ID,
        "status": SummaryState.SUCCEEDED.value if succeeded else SummaryState.FAILED.value,
        "exit_code": task.exit_code if task else None,
        "failure": redact_value(failure),
        "outputs": outputs,
        "refused_outputs": refused or {},
        "stdout": logs.get("stdout.txt"),
        "stderr": stderr,
        "stderr_tail": redact(stderr_tail),
        "started_at": task.started_at.isoformat() if task and task.started_at else None,
        "finished_at": task.finished_at.isoformat() if task and task.finished_at else None,
        "retries": task.retries if task else 0,
        "published_at": gw.clock().isoformat(),
    }
    if not gw.blobs.write_json_if(results, prefix + ids.MANIFEST_NAME, manifest, None):
        manifest = gw.blobs.read_json(results, prefix + ids.MANIFEST_NAME) or manifest  # another poll's: its word
    _record(gw, job, manifest)
    gw.blobs.delete_container(staging_container(gw, job.job_id))


def _record(gw: Gateways, job: JobRecord, manifest: dict[str, object]) -> None:
    status = str(manifest.get("status", ""))
    job.summary = status if status in FINAL else SummaryState.FAILED.value
    gw.ledger.save_job(job)
    logger.info("job %s: summary %s", job.job_id, job.summary, extra={"job_id": job.job_id, "task_id": SUMMARY_TASK_ID})
