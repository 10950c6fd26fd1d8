"""Groups: inputs that belong together (a pipeline's `group`, shared/groups_spec.py) run as one task, once complete.

Every member arriving on any path (blob trigger, Event Grid, the bulk endpoint, the sweep) goes through
`add_member`, from `submit.claim`:
1. the member's own input row is claimed (its idempotency key, as for any input), with no job;
2. its version (etag) is added to the group's row (ledger partition `group`, keyed by pipeline and key);
3. if the group is complete, its task is submitted: the task id is a digest of the pipeline, the key and every
   member's version (ids.group_task_id), so repeated or shuffled deliveries make one task, and a new upload of a
   member after the group ran makes one more (the group runs again once). The task's own input row (name = the
   group key, `members` = what it runs on) carries it through poll, completion events and collect like any task;
4. the member's row becomes `grouped`.
Each step can be repeated after a crash: a member row left `claimed` is taken over by the sweep, which does the
steps again, and the sweep also submits a complete group whose task is missing and fails an incomplete group
past its `complete_within` (`expire_groups`): one failed manifest naming the missing members, written create-only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime

from shared import ids
from shared import submit as submitting
from shared.errors import JobClosed
from shared.gateways import Gateways
from shared.models import (
    BlobRef,
    GroupMember,
    GroupRecord,
    GroupState,
    InputRecord,
    InputState,
    OutputFile,
    ResourceFile,
    TaskSpec,
)
from shared.pipelines import APP_DIR, OUTPUT_DIR, GroupSpec, PipelineSpec

logger = logging.getLogger(__name__)
MAX_GROUP_MEMBERS = 100  # members of one group: their names and versions live in one Table row
MARKER_ID = "\0ready-marker"  # the marker's place in a group's identity (no blob name holds a NUL)
MANIFEST = ids.MANIFEST_NAME


class GroupFull(Exception):
    """A new member of a group that has MAX_GROUP_MEMBERS already."""


@dataclass(frozen=True)
class GroupReport:
    """What one pass of `expire_groups` did."""

    submitted: list[str]  # keys of complete groups whose task it submitted
    failed: list[str]  # keys of groups it failed


def add_member(gw: Gateways, blob: BlobRef, pipeline: PipelineSpec, base: InputRecord) -> submitting.SubmitOutcome:
    """Record one input of a grouped pipeline in its group; submit the group's task when this completes it."""
    outcome = submitting.SubmitOutcome
    action = submitting.SubmitAction
    spec = _spec(pipeline)
    classified = spec.classify(blob.name)
    key, is_marker = ("", False) if isinstance(classified, str) else classified
    reason = classified if isinstance(classified, str) else ids.check_group_key(key)
    if reason is not None:
        return _reject(gw, blob, pipeline, base, reason)
    member = replace(base, pipeline=pipeline.name, job_id="", reason=f"group {key!r}")
    stored, created = gw.ledger.claim_input(member)
    if not created and stored.state is not InputState.CLAIMED:
        # This version of the member is recorded already: a repeated delivery. Counted where status shows it.
        gw.ledger.update_group(pipeline.name, key, _count_duplicate)
        return outcome(blob.name, action.DUPLICATE, stored.task_id, stored.job_id, stored.reason)
    seen = GroupMember(ids.normalise_etag(blob.etag), blob.created_on)
    try:
        group = gw.ledger.update_group(
            pipeline.name, key, lambda row: _with_member(row, pipeline, key, blob.name, seen, is_marker, gw.clock())
        )
    except GroupFull:
        return _reject(gw, blob, pipeline, base, f"group {key!r} has {MAX_GROUP_MEMBERS} members already")
    assert group is not None
    group = submit_if_complete(gw, pipeline, group)
    waiting = missing_members(spec, group)
    stored.state = InputState.GROUPED
    stored.reason = (
        f"group {key!r}: waiting for {', '.join(waiting)}" if waiting else f"group {key!r}: task {group.task_id}"
    )
    gw.ledger.save_input(stored)
    return outcome(blob.name, action.GROUPED, group.task_id, group.job_id, stored.reason)


def submit_if_complete(gw: Gateways, pipeline: PipelineSpec, group: GroupRecord) -> GroupRecord:
    """Submit the task of the group's current members if it is complete and that task is not recorded yet."""
    spec = _spec(pipeline)
    task_id = current_task_id(pipeline.name, spec, group)
    if task_id is None or task_id == group.task_id:
        return group
    members = current_members(spec, group)
    seen = [*members.values(), *([group.marker] if group.marker else [])]
    latest = max(member.created_on for member in seen) if seen else gw.clock()
    record = InputRecord(
        task_id=task_id,
        container=gw.settings.input_container,
        name=group.key,
        etag="",
        pipeline=pipeline.name,
        job_id=ids.job_id(pipeline.name, latest, gw.settings.job_window_minutes),
        state=InputState.CLAIMED,
        reason=f"group of {len(members)}",
        staging=ids.staging_container(gw.settings.staging_prefix, task_id),
        group_key=group.key,
        members=tuple(sorted((name, member.etag) for name, member in members.items())),
    )
    stored, created = gw.ledger.claim_input(record)
    if created or stored.state is InputState.CLAIMED:
        stored = _submit(gw, stored, pipeline)
    fields = {"job_id": stored.job_id, "task_id": task_id}
    logger.info("group %r of %s complete: task %s", group.key, pipeline.name, task_id, extra=fields)
    updated = gw.ledger.update_group(
        pipeline.name, group.key, lambda row: _submitted(row, pipeline.name, spec, task_id, stored.job_id)
    )
    return updated or group


def expire_groups(gw: Gateways) -> GroupReport:
    """The sweep's pass over open groups: submit a complete one whose task is missing (its submitter died), and
    fail one incomplete past its deadline with a manifest naming the missing members, once."""
    now = gw.clock()
    report = GroupReport([], [])
    for group in gw.ledger.groups(GroupState.OPEN):
        pipeline = gw.pipelines.by_name(group.pipeline)
        if pipeline is None or pipeline.group is None:
            continue
        if current_task_id(pipeline.name, pipeline.group, group) is not None:
            submit_if_complete(gw, pipeline, group)
            report.submitted.append(group.key)
        elif now >= group.deadline:
            fail_group(gw, pipeline, group)
            report.failed.append(group.key)
    return report


def fail_group(gw: Gateways, pipeline: PipelineSpec, group: GroupRecord) -> None:
    """Publish the failed manifest of a group incomplete past its deadline (create-only), then mark it failed."""
    spec = _spec(pipeline)
    missing = missing_members(spec, group)
    manifest_name = ids.result_prefix(group.key) + MANIFEST
    manifest = _failed_manifest(gw, pipeline, group, missing)
    results = gw.settings.results_container
    if not gw.blobs.write_json_if(results, manifest_name, manifest, None):
        logger.info("group %r of %s: a manifest exists already; not failing it again", group.key, pipeline.name)
    gw.ledger.update_group(pipeline.name, group.key, lambda row: _failed(row, pipeline.name, spec, missing))
    logger.warning("group %r of %s failed: missing %s", group.key, pipeline.name, ", ".join(missing))


def current_members(spec: GroupSpec, group: GroupRecord) -> dict[str, GroupMember]:
    """The members the group's task runs on: the expected ones (expect), or every one (ready_marker)."""
    if spec.expect is None:
        return dict(group.members)
    return {name: group.members[name] for name in spec.expected(group.key) if name in group.members}


def missing_members(spec: GroupSpec, group: GroupRecord) -> list[str]:
    """What the group still waits for: expected member names, or its ready marker."""
    if spec.expect is not None:
        return [name for name in spec.expected(group.key) if name not in group.members]
    return [] if group.marker is not None else [f"the ready marker {spec.ready_marker!r}"]


def current_task_id(pipeline: str, spec: GroupSpec, group: GroupRecord) -> str | None:
    """The task id of the group's members as they are now, None while the group is incomplete."""
    if missing_members(spec, group):
        return None
    versions = {name: member.etag for name, member in current_members(spec, group).items()}
    if group.marker is not None:
        versions[MARKER_ID] = group.marker.etag
    return ids.group_task_id(pipeline, group.key, versions)


def group_task_spec(gw: Gateways, record: InputRecord, pipeline: PipelineSpec) -> TaskSpec:
    """The group's task: every member a resource file at its own safe local path; `{inputs}` lists them."""
    settings = gw.settings
    valid_seconds = min(
        pipeline.max_wall_clock_seconds + settings.sas_margin_minutes * 60, settings.sas_max_hours * 3600
    )
    names = [name for name, _ in record.members]
    paths = ids.group_local_paths(names)
    local_inputs = tuple(paths[name] for name in sorted(names))
    token = ids.group_token(record.group_key)
    resources = [ResourceFile(gw.blobs.read_url(record.container, name, valid_seconds), paths[name]) for name in names]
    resources += [
        ResourceFile(gw.blobs.read_url(settings.apps_container, app_file, valid_seconds), f"{APP_DIR}/{app_file}")
        for app_file in pipeline.app_files
    ]
    write_url = gw.blobs.write_url(ids.staging_container(settings.staging_prefix, record.task_id), valid_seconds)
    outputs = [submitting._output_file(pattern, write_url, "out") for pattern in pipeline.outputs]
    outputs += [
        OutputFile(f"../{log}", write_url, f"logs/{log}", "taskCompletion") for log in ("stdout.txt", "stderr.txt")
    ]
    return TaskSpec(
        task_id=record.task_id,
        command_line=pipeline.command_line("", local_inputs, token),
        resource_files=tuple(resources),
        output_files=tuple(outputs),
        max_retries=pipeline.max_retries,
        max_wall_clock_seconds=pipeline.max_wall_clock_seconds,
        environment=(
            ("BATCHDROP_INPUTS", " ".join(local_inputs)),
            ("BATCHDROP_GROUP", token),
            ("BATCHDROP_OUTPUT_DIR", OUTPUT_DIR),
            *sorted(pipeline.environment.items()),
        ),
        container=submitting.task_container(pipeline),
        packages=tuple((package.id, package.version) for package in pipeline.application_packages),
        required_slots=pipeline.required_slots,
    )


def _submit(gw: Gateways, record: InputRecord, pipeline: PipelineSpec) -> InputRecord:
    record = submitting._ensure_job(gw, record, pipeline)
    try:
        gw.batch.add_task(record.job_id, group_task_spec(gw, record, pipeline))
    except JobClosed:
        record = submitting._move_to_open_job(gw, record, pipeline)
        gw.batch.add_task(record.job_id, group_task_spec(gw, record, pipeline))
    record.state = InputState.SUBMITTED
    return gw.ledger.save_input(record)


def _spec(pipeline: PipelineSpec) -> GroupSpec:
    if pipeline.group is None:
        raise ValueError(f"pipeline {pipeline.name!r} has no group")
    return pipeline.group


def _reject(
    gw: Gateways, blob: BlobRef, pipeline: PipelineSpec, base: InputRecord, reason: str
) -> submitting.SubmitOutcome:
    _, created = gw.ledger.claim_input(
        replace(base, pipeline=pipeline.name, job_id="", state=InputState.REJECTED, reason=reason)
    )
    if created:
        gw.ledger.record_rejection(f"{blob.container}/{blob.name}", reason)
        logger.warning("rejected %r: %s", blob.name, reason, extra={"task_id": base.task_id})
    return submitting.SubmitOutcome(blob.name, submitting.SubmitAction.REJECTED, base.task_id, reason=reason)


# Changes to a group's row, each applied to the row as stored (ledger.update_group); None writes nothing.


def _with_member(
    row: GroupRecord | None,
    pipeline: PipelineSpec,
    key: str,
    name: str,
    seen: GroupMember,
    is_marker: bool,
    now: datetime,
) -> GroupRecord | None:
    group = row or GroupRecord(pipeline.name, key, first_seen=now, deadline=now + _spec(pipeline).within)
    current = group.marker if is_marker else group.members.get(name)
    if current is not None and current.etag == seen.etag:
        return None  # recorded already (a concurrent delivery of the same upload)
    if not is_marker and current is None and len(group.members) >= MAX_GROUP_MEMBERS:
        raise GroupFull(key)
    if group.runs > 0 or group.state is GroupState.FAILED:
        group.late = [*group.late, name]  # after the group ran (it runs again) or failed (it may run now)
    if is_marker:
        group.marker = seen
    else:
        group.members[name] = seen
    if group.state is GroupState.SUBMITTED:
        group.state = GroupState.OPEN  # a new version of the members: its task is not submitted yet
    return group


def _count_duplicate(row: GroupRecord | None) -> GroupRecord | None:
    if row is None:
        return None
    row.duplicates += 1
    return row


def _submitted(
    row: GroupRecord | None, pipeline: str, spec: GroupSpec, task_id: str, job_id: str
) -> GroupRecord | None:
    # Only for the members the row holds now: a newer version's submitter records its own task.
    if row is None or row.task_id == task_id or current_task_id(pipeline, spec, row) != task_id:
        return None
    row.task_id, row.job_id, row.state = task_id, job_id, GroupState.SUBMITTED
    row.runs += 1
    row.missing = []
    return row


def _failed(row: GroupRecord | None, pipeline: str, spec: GroupSpec, missing: list[str]) -> GroupRecord | None:
    if row is None or row.state is not GroupState.OPEN or current_task_id(pipeline, spec, row) is not None:
        return None  # completed meanwhile: its task runs
    row.state = GroupState.FAILED
    row.missing = missing
    return row


def _failed_manifest(
    gw: Gateways, pipeline: PipelineSpec, group: GroupRecord, missing: list[str]
) -> dict[str, object]:
    spec = _spec(pipeline)
    return {
        "input": group.key,
        "input_container": gw.settings.input_container,
        "input_etag": "",
        "group": group.key,
        "members": [{"name": name, "etag": member.etag} for name, member in sorted(group.members.items())],
        "missing": missing,
        "pipeline": pipeline.name,
        "job_id": "",
        "task_id": "",
        "run": 1,
        "status": "failed",
        "exit_code": None,
        "failure": {
            "category": "batchdrop",
            "code": "GroupIncomplete",
            "message": f"group {group.key!r} was still incomplete {spec.complete_within} after its first member "
            f"arrived: missing {', '.join(missing)}",
            "details": {"missing": missing, "deadline": group.deadline.isoformat()},
        },
        "outputs": [],
        "refused_outputs": {},
        "stdout": None,
        "stderr": None,
        "stderr_tail": "",
        "started_at": None,
        "finished_at": None,
        "retries": 0,
        "reactivations": 0,
        "published_at": gw.clock().isoformat(),
    }
