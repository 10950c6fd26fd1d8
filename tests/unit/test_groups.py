"""Fan-in groups over the fakes: a group's task runs once, when the group is complete (shared/groups.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared import ids
from shared.collect import collect
from shared.errors import ConfigError, TransientError
from shared.models import GroupState, InputState
from shared.pipelines import load_pipelines
from shared.poll import poll
from shared.status import status
from shared.submit import submit, submit_blob, sweep
from tests.unit.fakes import PIPELINE, World, make_world
from tests.unit.test_bulk_ingest import deliver, event

PAIRS: dict[str, Any] = {
    **PIPELINE,
    "name": "pairs",
    "match": {"prefix": "pairs/", "glob": "*"},
    "command": "python3 {app_dir}/cat.py {output_dir} {group} {inputs}",
    "app_files": ["cat.py"],
    "group": {"key": r"(?P<key>.+)_R[12]\.txt", "expect": ["*_R1.txt", "*_R2.txt"], "complete_within": "10m"},
}
MARKED: dict[str, Any] = {
    **PAIRS,
    "name": "batches",
    "match": {"prefix": "batches/", "glob": "*"},
    "group": {"key": r"(?P<key>batches/[^/]+)/[^/]+", "ready_marker": "_ready"},
}


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path, [PIPELINE, PAIRS, MARKED])


def group_tasks(world: World) -> list[str]:
    return [task_id for _, task_id in world.batch.all_tasks() if "-g-" in task_id]


def manifest(world: World, key: str) -> dict[str, Any]:
    return dict(json.loads(world.blobs.text("results", ids.result_prefix(key) + "_manifest.json")))


def finish_group(world: World) -> None:
    """Every group task runs (writes one output) and completes; poll and collect publish it."""
    for job_id, task_id in world.batch.all_tasks():
        task = world.batch.jobs[job_id].tasks[task_id]
        if task.state == "completed":
            continue
        staging = ids.staging_container("staging", task_id)
        world.blobs.put(staging, "out/joined.txt", b"joined")
        world.blobs.put(staging, "logs/stderr.txt", b"")
        world.batch.finish(job_id, task_id)
    poll(world.gw)
    for completion in world.queue.drain():
        collect(world.gw, completion)


def test_group_runs_once_when_its_second_member_arrives(world: World) -> None:
    first = submit(world.gw, world.blobs.put("input", "pairs/s1_R1.txt"))
    assert first.action == "grouped" and first.task_id == ""
    assert world.batch.task_requests() == 0  # not before the group is complete
    second = submit(world.gw, world.blobs.put("input", "pairs/s1_R2.txt"))
    assert second.action == "grouped" and second.task_id
    assert group_tasks(world) == [second.task_id]
    spec = world.batch.jobs[second.job_id].tasks[second.task_id].spec
    assert [r.file_path for r in spec.resource_files] == ["input/s1_R1.txt", "input/s1_R2.txt", "app/cat.py"]
    assert spec.command_line == "python3 app/cat.py out pairs_s1 input/s1_R1.txt input/s1_R2.txt"
    assert ("BATCHDROP_GROUP", "pairs_s1") in spec.environment
    group = world.ledger.get_group("pairs", "pairs/s1")
    assert group is not None and group.state is GroupState.SUBMITTED and group.runs == 1
    assert sorted(group.members) == ["pairs/s1_R1.txt", "pairs/s1_R2.txt"]
    members = [world.ledger.get_input(ids.task_id("input", n, world.blobs.get_blob("input", n).etag))  # type: ignore[union-attr]
               for n in ("pairs/s1_R1.txt", "pairs/s1_R2.txt")]  # fmt: skip
    assert all(row is not None and row.state is InputState.GROUPED for row in members)


def test_duplicate_and_shuffled_deliveries_make_one_task(world: World) -> None:
    world.blobs.put("input", "pairs/s2_R2.txt")
    world.blobs.put("input", "pairs/s2_R1.txt")
    for name in ("pairs/s2_R2.txt", "pairs/s2_R2.txt", "pairs/s2_R1.txt", "pairs/s2_R1.txt", "pairs/s2_R2.txt"):
        submit_blob(world.gw, "input", name)
    sweep(world.gw)
    deliver(world, [event("pairs/s2_R1.txt"), event("pairs/s2_R2.txt")])
    assert len(group_tasks(world)) == 1
    assert world.batch.task_requests() == 1
    group = world.ledger.get_group("pairs", "pairs/s2")
    assert group is not None and group.runs == 1 and group.duplicates >= 4  # recorded and reported, not dropped
    assert status(world.gw)["groups"]["duplicates"] == group.duplicates  # type: ignore[index]


def test_bulk_delivery_of_both_members_runs_the_group_once(world: World) -> None:
    world.blobs.put("input", "pairs/s3_R1.txt")
    world.blobs.put("input", "pairs/s3_R2.txt")
    report = deliver(world, [event("pairs/s3_R1.txt"), event("pairs/s3_R2.txt"), event("plain.txt")])
    world.blobs.put("input", "plain.txt")
    assert report["grouped"] == 2
    assert len(group_tasks(world)) == 1


def test_reupload_after_the_group_ran_runs_it_again_once(world: World) -> None:
    submit(world.gw, world.blobs.put("input", "pairs/s4_R1.txt"))
    first = submit(world.gw, world.blobs.put("input", "pairs/s4_R2.txt"))
    finish_group(world)
    assert manifest(world, "pairs/s4")["task_id"] == first.task_id
    again = submit(world.gw, world.blobs.put("input", "pairs/s4_R1.txt", b"new"))
    submit_blob(world.gw, "input", "pairs/s4_R1.txt")  # delivered twice
    sweep(world.gw)
    assert again.task_id not in ("", first.task_id)
    assert group_tasks(world) == [first.task_id, again.task_id]
    finish_group(world)
    published = manifest(world, "pairs/s4")
    assert published["task_id"] == again.task_id and published["status"] == "succeeded"
    assert {m["name"] for m in published["members"]} == {"pairs/s4_R1.txt", "pairs/s4_R2.txt"}
    assert published["outputs"] == ["pairs/s4/joined.txt"]
    group = world.ledger.get_group("pairs", "pairs/s4")
    assert group is not None and group.runs == 2 and group.late == ["pairs/s4_R1.txt"]


def test_older_run_finishing_after_the_newer_one_does_not_replace_its_manifest(world: World) -> None:
    submit(world.gw, world.blobs.put("input", "pairs/s5_R1.txt"))
    first = submit(world.gw, world.blobs.put("input", "pairs/s5_R2.txt"))
    second = submit(world.gw, world.blobs.put("input", "pairs/s5_R2.txt", b"v2"))
    world.batch.finish(second.job_id, second.task_id)
    world.blobs.put(ids.staging_container("staging", second.task_id), "logs/stderr.txt", b"")
    poll(world.gw)
    for completion in world.queue.drain():
        collect(world.gw, completion)
    finish_group(world)  # the first run ends last
    assert manifest(world, "pairs/s5")["task_id"] == second.task_id
    old = world.ledger.get_input(first.task_id)
    assert old is not None and old.outcome == "superseded"


def test_incomplete_group_fails_after_its_timeout_naming_the_missing_member_once(world: World) -> None:
    submit(world.gw, world.blobs.put("input", "pairs/s6_R1.txt"))
    sweep(world.gw)
    assert world.blobs.get_blob("results", "pairs/s6/_manifest.json") is None  # not before its deadline
    world.clock.advance(minutes=11)
    report = sweep(world.gw)
    assert report.groups_failed == 1
    failed = manifest(world, "pairs/s6")
    assert failed["status"] == "failed" and failed["missing"] == ["pairs/s6_R2.txt"]
    assert failed["failure"]["code"] == "GroupIncomplete" and "pairs/s6_R2.txt" in failed["failure"]["message"]
    assert [m["name"] for m in failed["members"]] == ["pairs/s6_R1.txt"]
    written = world.blobs.get_blob("results", "pairs/s6/_manifest.json")
    assert sweep(world.gw).groups_failed == 0
    assert world.blobs.get_blob("results", "pairs/s6/_manifest.json") == written  # exactly once
    assert world.batch.task_requests() == 0
    shown = status(world.gw)["groups"]
    assert shown["counts"]["failed"] == 1  # type: ignore[index]
    assert shown["groups"][0]["missing"] == ["pairs/s6_R2.txt"]  # type: ignore[index]


def test_late_member_after_a_failure_still_runs_the_group(world: World) -> None:
    submit(world.gw, world.blobs.put("input", "pairs/s7_R2.txt"))
    world.clock.advance(minutes=11)
    sweep(world.gw)
    late = submit(world.gw, world.blobs.put("input", "pairs/s7_R1.txt"))
    assert late.task_id and group_tasks(world) == [late.task_id]
    group = world.ledger.get_group("pairs", "pairs/s7")
    assert group is not None and group.late == ["pairs/s7_R1.txt"] and group.state is GroupState.SUBMITTED


def test_sweep_submits_a_complete_group_whose_submitter_died(world: World) -> None:
    submit(world.gw, world.blobs.put("input", "pairs/s8_R1.txt"))
    world.batch.unavailable_status = 503  # the second member's submitter fails after recording it
    with pytest.raises(TransientError):
        submit(world.gw, world.blobs.put("input", "pairs/s8_R2.txt"))
    world.batch.unavailable_status = None
    assert group_tasks(world) == []
    sweep(world.gw)
    assert len(group_tasks(world)) == 1


def test_ready_marker_group_runs_on_every_member_present_when_the_marker_arrives(world: World) -> None:
    for name in ("batches/b1/x.csv", "batches/b1/y.csv"):
        assert submit(world.gw, world.blobs.put("input", name)).action == "grouped"
    assert world.batch.task_requests() == 0
    marked = submit(world.gw, world.blobs.put("input", "batches/b1/_ready"))
    spec = world.batch.jobs[marked.job_id].tasks[marked.task_id].spec
    assert [r.file_path for r in spec.resource_files[:2]] == ["input/x.csv", "input/y.csv"]
    assert len(group_tasks(world)) == 1


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("pairs/.._R1.txt", "pairs/.."),
        ("pairs/../../etc_R1.txt", "pairs/../../etc"),
        ("pairs//x_R1.txt", "pairs//x"),
        ("pairs/" + "k" * 1000 + "_R1.txt", "pairs/" + "k" * 1000),
        ("pairs/$(id) `x`; 'q'_R1.txt", "pairs/$(id) `x`; 'q'"),
    ],
)
def test_hostile_group_keys_are_escaped_like_input_names(world: World, name: str, key: str) -> None:
    submit(world.gw, world.blobs.put("input", name))
    done = submit(world.gw, world.blobs.put("input", name.replace("_R1", "_R2")))
    spec = world.batch.jobs[done.job_id].tasks[done.task_id].spec
    assert key not in spec.command_line and all(value != key for _, value in spec.environment)
    finish_group(world)
    prefix = ids.result_prefix(key)
    assert prefix.startswith(("pairs/", "_long-names/")) and "/../" not in "/" + prefix
    published = manifest(world, key)
    assert published["group"] == key and published["status"] == "succeeded"
    assert all(output.startswith(prefix) for output in published["outputs"])


def test_names_outside_the_group_rules_are_rejected_with_a_reason(world: World) -> None:
    unmatched = submit(world.gw, world.blobs.put("input", "pairs/notes.txt"))
    third = submit(world.gw, world.blobs.put("input", "pairs/s9_R3.txt"))
    assert unmatched.action == "rejected" and "group key" in unmatched.reason
    assert third.action == "rejected"
    assert ids.check_group_key("") is not None and ids.check_group_key("a\x07b") is not None
    assert ids.check_group_key("../..") is None  # escaped by result_prefix, like an input's name
    rejected = {row["input"]: row["reason"] for row in world.ledger.rejections()}
    assert "input/pairs/notes.txt" in rejected
    assert world.batch.task_requests() == 0


def write_pipelines(tmp_path: Path, pipeline: dict[str, Any]) -> Path:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"pipelines": [pipeline]}))
    return path


@pytest.mark.parametrize(
    ("group", "command", "message"),
    [
        ({"key": "(.+)_R1", "expect": ["*_R1"]}, None, "no named group 'key'"),
        ({"key": "(?P<key>.+", "expect": ["*_R1"]}, None, "not a regular expression"),
        ({"key": "(?P<key>.+)", "expect": ["*"], "ready_marker": "_ready"}, None, "exactly one of expect"),
        ({"key": "(?P<key>.+)"}, None, "exactly one of expect"),
        ({"key": "(?P<key>.+)", "expect": ["R1.txt"]}, None, "exactly one '*'"),
        ({"key": "(?P<key>.+)", "expect": ["*_R?.txt"]}, None, "no other wildcard"),
        ({"key": "(?P<key>.+)", "ready_marker": "a/b"}, None, "must be a file name"),
        ({"key": "(?P<key>.+)", "ready_marker": "_r", "complete_within": "soon"}, None, "not a duration"),
        ({"key": "(?P<key>.+)", "ready_marker": "_r", "complete_within": "9d"}, None, "at most 7 days"),
        ({"key": "(?P<key>.+)", "ready_marker": "_r"}, "cat {input}", "use {inputs}"),
        (None, "cat {inputs}", "only exist in a pipeline with a `group`"),
    ],
)
def test_group_is_validated_at_load(tmp_path: Path, group: Any, command: str | None, message: str) -> None:
    pipeline = {**PAIRS, "command": command or PAIRS["command"], "group": group}
    if group is None:
        del pipeline["group"]
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("{", r"\{").replace("?", r"\?")):
        load_pipelines(write_pipelines(tmp_path, pipeline))


def test_sample_pipelines_file_has_a_valid_grouped_pipeline() -> None:
    pipelines = load_pipelines(Path(__file__).parents[2] / "samples" / "pipelines.json")
    grouped = [pipeline for pipeline in pipelines.pipelines if pipeline.group is not None]
    assert [pipeline.name for pipeline in grouped] == ["pairs"]
    group = grouped[0].group
    assert group is not None and group.classify("pairs/sample1_R1.txt") == ("pairs/sample1", False)


def test_reuploading_the_ready_marker_runs_the_group_again(world: World) -> None:
    submit(world.gw, world.blobs.put("input", "batches/b2/x.csv"))
    first = submit(world.gw, world.blobs.put("input", "batches/b2/_ready"))
    submit(world.gw, world.blobs.put("input", "batches/b2/z.csv"))  # late: recorded, runs the group again
    again = submit(world.gw, world.blobs.put("input", "batches/b2/_ready", b"again"))
    tasks = group_tasks(world)
    assert first.task_id in tasks and again.task_id in tasks and len(set(tasks)) == len(tasks)
    spec = world.batch.jobs[again.job_id].tasks[again.task_id].spec
    assert [r.file_path for r in spec.resource_files[:2]] == ["input/x.csv", "input/z.csv"]


def test_a_group_takes_at_most_max_members_and_rejects_the_next_with_a_reason(world: World) -> None:
    from shared.groups import MAX_GROUP_MEMBERS

    for index in range(MAX_GROUP_MEMBERS):
        submit(world.gw, world.blobs.put("input", f"batches/big/{index:03}.csv"))
    refused = submit(world.gw, world.blobs.put("input", "batches/big/one-more.csv"))
    assert refused.action == "rejected" and f"{MAX_GROUP_MEMBERS} members" in refused.reason


def test_rerun_refuses_a_member_of_a_group_with_the_reason(world: World) -> None:
    from shared.rerun import RerunRequest, rerun

    submit(world.gw, world.blobs.put("input", "pairs/s10_R1.txt"))
    submit(world.gw, world.blobs.put("input", "pairs/s10_R2.txt"))
    report = rerun(world.gw, RerunRequest("r-1", names=("pairs/s10_R1.txt",)))
    assert [o.action for o in report.outcomes] == ["refused"] and "member of a group" in report.outcomes[0].reason


def test_a_group_tasks_completion_event_finds_it_by_its_staging_container(world: World) -> None:
    from shared.events import BlobCreated
    from shared.finished import FinishedAction, task_finished

    submit(world.gw, world.blobs.put("input", "pairs/s11_R1.txt"))
    done = submit(world.gw, world.blobs.put("input", "pairs/s11_R2.txt"))
    staging = ids.staging_container("staging", done.task_id)
    row = world.ledger.input_for_staging(staging)
    assert row is not None and row.task_id == done.task_id and row.group_key == "pairs/s11"
    world.blobs.put(staging, "out/joined.txt", b"joined")
    world.blobs.put(staging, "logs/stderr.txt", b"")
    world.batch.finish(done.job_id, done.task_id)
    outcome = task_finished(world.gw, BlobCreated("evt-1", staging, "logs/stderr.txt", frozenset({"devstoreaccount1"})))
    assert outcome.action is FinishedAction.ENQUEUED
    collect(world.gw, world.queue.drain()[0])
    assert manifest(world, "pairs/s11")["task_id"] == done.task_id


def test_under_the_shell_inputs_and_group_are_variables_never_names() -> None:
    from shared.runtime import PackageRef, render

    line = render("python3 {package:tool}/join.py {group} {inputs}", "", (PackageRef(id="tool"),), None,
                  ("input/a.txt", "input/b.txt"), "k")  # fmt: skip
    assert line == "/bin/sh -c 'python3 \"$AZ_BATCH_APP_PACKAGE_tool\"/join.py \"$BATCHDROP_GROUP\" $BATCHDROP_INPUTS'"


def test_inputs_with_the_images_own_working_directory_is_refused(tmp_path: Path) -> None:
    pipeline = {**PAIRS, "container": {"image": "tools/join:1", "working_directory": "containerImageDefault"}}
    with pytest.raises(ConfigError, match="containerImageDefault"):
        load_pipelines(write_pipelines(tmp_path, pipeline))
