"""Tasks: creation, collections, the state machine, execution semantics, retries, limits, terminate."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from azure.batch import BatchClient
from azure.batch import models as m
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

from local.batch import clock
from local.stack import Emulator
from tests.emulator.conftest import VM, unique, wait_for_task
from tests.waiting import wait_for_dispatch_passes, wait_until

PY = "python3"


def task(task_id: str, command: str, **kwargs: object) -> m.BatchTaskCreateOptions:
    return m.BatchTaskCreateOptions(id=task_id, command_line=command, **kwargs)


def test_task_runs_through_the_states_batch_documents(batch: BatchClient, job_id: str) -> None:
    batch.create_task(job_id, task("t1", f"{PY} -c \"import time; time.sleep(1); print('done')\""))
    created = batch.get_task(job_id, "t1")
    assert created.state in (m.BatchTaskState.ACTIVE, m.BatchTaskState.PREPARING, m.BatchTaskState.RUNNING)
    assert created.creation_time is not None and created.etag and created.url.endswith(f"/jobs/{job_id}/tasks/t1")
    running = wait_until(lambda: (t := batch.get_task(job_id, "t1")).state == m.BatchTaskState.RUNNING and t)
    assert running.previous_state == m.BatchTaskState.PREPARING
    assert running.node_info is not None and running.node_info.pool_id and running.node_info.node_id
    done = wait_for_task(batch, job_id, "t1")
    info = done.execution_info
    assert info is not None
    assert done.previous_state == m.BatchTaskState.RUNNING
    assert info.exit_code == 0 and info.result == m.BatchTaskExecutionResult.SUCCESS and info.failure_info is None
    assert info.retry_count == 0 and info.requeue_count == 0
    assert info.start_time is not None and info.end_time is not None and info.start_time < info.end_time
    assert done.previous_state_transition_time is not None
    assert done.previous_state_transition_time < done.state_transition_time
    assert info.end_time == done.state_transition_time


def test_state_transition_times_have_sub_second_precision_as_batch_writes_them(batch: BatchClient, job_id: str) -> None:
    batch.create_task(job_id, task("t", "true"))
    wait_for_task(batch, job_id, "t")
    raw = batch.send_request(
        __import__("azure.core.rest", fromlist=["HttpRequest"]).HttpRequest(
            "GET", f"{batch._config.endpoint}/jobs/{job_id}/tasks/t?api-version=2025-06-01"
        )
    ).json()
    assert raw["stateTransitionTime"].endswith("Z")
    assert len(raw["stateTransitionTime"].split(".")[1]) == 8  # seven digits and the Z
    assert raw["previousStateTransitionTime"] < raw["stateTransitionTime"]


def test_non_zero_exit_is_a_user_error_with_the_exit_code(batch: BatchClient, job_id: str) -> None:
    batch.create_task(job_id, task("fails", f"{PY} -c \"import sys; print('boom', file=sys.stderr); sys.exit(3)\""))
    info = wait_for_task(batch, job_id, "fails").execution_info
    assert info is not None and info.exit_code == 3 and info.result == m.BatchTaskExecutionResult.FAILURE
    assert info.failure_info is not None
    assert info.failure_info.category == m.BatchErrorSourceCategory.USER_ERROR
    assert info.failure_info.code == "FailureExitCode"
    assert b"".join(batch.download_task_file(job_id, "fails", "stderr.txt")) == b"boom\n"


def test_duplicate_task_is_409_task_exists_case_insensitively(batch: BatchClient, job_id: str) -> None:
    batch.create_task(job_id, task("Same", "true"))
    with pytest.raises(ResourceExistsError) as raised:
        batch.create_task(job_id, task("sAME", "true"))
    assert raised.value.error is not None and raised.value.error.code == "TaskExists"


def test_invalid_task_id_is_400_invalid_property_value(batch: BatchClient, job_id: str) -> None:
    with pytest.raises(HttpResponseError) as raised:
        batch.create_task(job_id, task("x" * 65, "true"))
    assert raised.value.status_code == 400
    assert raised.value.error is not None and raised.value.error.code == "InvalidPropertyValue"


def test_command_line_is_split_without_a_shell(batch: BatchClient, job_id: str) -> None:
    command = f"{PY} -c \"import sys, json; print(json.dumps(sys.argv[1:]))\" '$HOME' ';' 'two words' `id`"
    batch.create_task(job_id, task("argv", command))
    wait_for_task(batch, job_id, "argv")
    out = b"".join(batch.download_task_file(job_id, "argv", "stdout.txt"))
    assert json.loads(out) == ["$HOME", ";", "two words", "`id`"]


def test_shell_runs_only_when_the_command_asks_for_one(batch: BatchClient, job_id: str) -> None:
    batch.create_task(job_id, task("sh", "/bin/sh -c 'echo $AZ_BATCH_TASK_ID-$((1+2))'"))
    wait_for_task(batch, job_id, "sh")
    assert b"".join(batch.download_task_file(job_id, "sh", "stdout.txt")) == b"sh-3\n"


def test_environment_and_working_directory_are_a_linux_nodes(batch: BatchClient, job_id: str, state_dir: Path) -> None:
    script = "import os, json; print(json.dumps({'cwd': os.getcwd(), 'env': dict(os.environ)}))"
    batch.create_task(
        job_id,
        task("env", f'{PY} -c "{script}"', environment_settings=[m.EnvironmentSetting(name="MY_SETTING", value="42")]),
    )
    done = wait_for_task(batch, job_id, "env")
    seen = json.loads(b"".join(batch.download_task_file(job_id, "env", "stdout.txt")))
    env = seen["env"]
    assert done.node_info is not None
    node_root = state_dir.resolve() / "nodes" / done.node_info.node_id
    task_dir = node_root / "workitems" / job_id / "job-1" / "env"
    assert seen["cwd"] == str(task_dir / "wd")
    assert env["AZ_BATCH_TASK_WORKING_DIR"] == str(task_dir / "wd")
    assert env["AZ_BATCH_TASK_DIR"] == str(task_dir)
    assert env["AZ_BATCH_NODE_ROOT_DIR"] == str(node_root)
    assert env["AZ_BATCH_NODE_SHARED_DIR"] == str(node_root / "shared")
    assert env["AZ_BATCH_TASK_ID"] == "env" and env["AZ_BATCH_JOB_ID"] == job_id
    assert env["AZ_BATCH_POOL_ID"] == done.node_info.pool_id and env["AZ_BATCH_NODE_ID"] == done.node_info.node_id
    assert env["AZ_BATCH_ACCOUNT_NAME"] == "devbatch" and env["AZ_BATCH_ACCOUNT_URL"].startswith("http://127.0.0.1:")
    assert env["AZ_BATCH_TASK_RETRY_COUNT"] == "0"
    assert env["MY_SETTING"] == "42"
    # The emulator's own environment does not leak into tasks (a Batch node would not have it).
    assert "PYTEST_CURRENT_TEST" not in env


def test_missing_program_fails_before_running(batch: BatchClient, job_id: str) -> None:
    batch.create_task(job_id, task("nope", "/no/such/program --flag"))
    info = wait_for_task(batch, job_id, "nope").execution_info
    assert info is not None and info.result == m.BatchTaskExecutionResult.FAILURE and info.exit_code is None
    assert info.failure_info is not None and info.failure_info.code == "CommandProgramNotFound"


def test_max_task_retry_count_reruns_a_failing_task(batch: BatchClient, job_id: str, state_dir: Path) -> None:
    script = (
        "import os; e = os.environ; open(e['AZ_BATCH_NODE_SHARED_DIR'] + '/' + e['AZ_BATCH_JOB_ID'], 'a')"
        ".write(e['AZ_BATCH_TASK_RETRY_COUNT']); raise SystemExit(7)"
    )
    batch.create_task(
        job_id, task("retry", f'{PY} -c "{script}"', constraints=m.BatchTaskConstraints(max_task_retry_count=2))
    )
    done = wait_for_task(batch, job_id, "retry")
    info = done.execution_info
    assert info is not None and info.retry_count == 2 and info.exit_code == 7
    assert info.last_retry_time is not None and info.last_retry_time <= info.start_time
    attempts = "".join(p.read_text() for p in state_dir.glob(f"nodes/*/shared/{job_id}"))
    assert sorted(attempts) == ["0", "1", "2"]


def test_job_max_task_retry_count_is_the_default_for_its_tasks(batch: BatchClient, pool_id: str) -> None:
    job_id = unique("job")
    batch.create_job(
        m.BatchJobCreateOptions(
            id=job_id,
            pool_info=m.BatchPoolInfo(pool_id=pool_id),
            constraints=m.BatchJobConstraints(max_task_retry_count=1),
        )
    )
    batch.create_task(job_id, task("r", "false"))
    done = wait_for_task(batch, job_id, "r")
    assert done.constraints is not None and done.constraints.max_task_retry_count == 1
    assert done.execution_info is not None and done.execution_info.retry_count == 1


def test_max_wall_clock_time_kills_the_process_tree(batch: BatchClient, job_id: str) -> None:
    marker = unique("orphan")
    command = f"/bin/sh -c 'sleep 30 & echo $! > child.pid; exec sleep 31 # {marker}'"
    started = time.monotonic()
    batch.create_task(job_id, task("slow", command, constraints=m.BatchTaskConstraints(max_wall_clock_time="PT1S")))
    done = wait_for_task(batch, job_id, "slow", timeout=15)
    assert time.monotonic() - started < 10
    info = done.execution_info
    assert info is not None and info.result == m.BatchTaskExecutionResult.FAILURE
    assert info.failure_info is not None and info.failure_info.code == "TaskEnded"
    assert info.failure_info.category == m.BatchErrorSourceCategory.USER_ERROR
    assert info.exit_code == 137
    child = int(b"".join(batch.download_task_file(job_id, "slow", "wd/child.pid")).strip())
    wait_until(lambda: not os.path.exists(f"/proc/{child}") or _zombie(child), timeout=5)


def _zombie(pid: int) -> bool:
    try:
        return " Z " in open(f"/proc/{pid}/stat").read()
    except OSError:
        return True


def test_terminate_running_task_ends_it_as_batch_does(batch: BatchClient, job_id: str) -> None:
    batch.create_task(job_id, task("long", "sleep 30"))
    wait_until(lambda: batch.get_task(job_id, "long").state == m.BatchTaskState.RUNNING)
    batch.terminate_task(job_id, "long")
    done = wait_for_task(batch, job_id, "long", timeout=10)
    info = done.execution_info
    assert info is not None and info.result == m.BatchTaskExecutionResult.FAILURE
    assert info.failure_info is not None and info.failure_info.code == "TaskEnded"
    with pytest.raises(ResourceExistsError) as raised:
        batch.terminate_task(job_id, "long")
    assert raised.value.error is not None and raised.value.error.code == "TaskCompleted"


def test_reactivate_reruns_a_failed_task_and_refuses_a_succeeded_one(batch: BatchClient, job_id: str) -> None:
    flag = f"/tmp/{unique('flag')}"
    batch.create_task(
        job_id, task("flaky", f"{PY} -c \"import os,sys; sys.exit(0 if os.path.exists('{flag}') else 5)\"")
    )
    assert wait_for_task(batch, job_id, "flaky").execution_info.exit_code == 5  # type: ignore[union-attr]
    with pytest.raises(ResourceExistsError) as not_completed:
        batch.create_task(job_id, task("busy", "sleep 5"))
        wait_until(lambda: batch.get_task(job_id, "busy").state == m.BatchTaskState.RUNNING)
        batch.reactivate_task(job_id, "busy")
    assert not_completed.value.error is not None and not_completed.value.error.code == "TaskNotCompleted"
    open(flag, "w").close()
    try:
        batch.reactivate_task(job_id, "flaky")
        done = wait_for_task(batch, job_id, "flaky")
        assert done.execution_info is not None and done.execution_info.exit_code == 0
        assert done.execution_info.retry_count == 0
        with pytest.raises(ResourceExistsError) as succeeded:
            batch.reactivate_task(job_id, "flaky")
        assert succeeded.value.error is not None and succeeded.value.error.code == "TaskSucceeded"
    finally:
        os.unlink(flag)
    batch.terminate_task(job_id, "busy")


def test_update_and_delete_task(batch: BatchClient, job_id: str) -> None:
    batch.create_task(job_id, task("u", "sleep 5"))
    batch.replace_task(job_id, "u", m.BatchTask(constraints=m.BatchTaskConstraints(max_task_retry_count=4)))
    assert batch.get_task(job_id, "u").constraints.max_task_retry_count == 4  # type: ignore[union-attr]
    batch.delete_task(job_id, "u")
    with pytest.raises(ResourceNotFoundError) as raised:
        batch.get_task(job_id, "u")
    assert raised.value.error is not None and raised.value.error.code == "TaskNotFound"


def test_task_collection_reports_each_task(batch: BatchClient, job_id: str) -> None:
    batch.create_task(job_id, task("exists", "true"))
    result = batch.create_task_collection(
        job_id,
        m.BatchTaskGroup(
            task_values=[
                task("new-1", "true"),
                task("exists", "true"),
                task("bad id!", "true"),
            ]
        ),
    )
    by_id = {r.task_id: r for r in result.result_values}
    assert by_id["new-1"].status == m.BatchTaskAddStatus.SUCCESS and by_id["new-1"].etag
    assert by_id["exists"].status == m.BatchTaskAddStatus.CLIENT_ERROR
    assert by_id["exists"].error is not None and by_id["exists"].error.code == "TaskExists"
    assert by_id["bad id!"].status == m.BatchTaskAddStatus.CLIENT_ERROR
    assert by_id["bad id!"].error is not None and by_id["bad id!"].error.code == "InvalidPropertyValue"


def test_task_collection_over_100_is_refused(batch: BatchClient, job_id: str) -> None:
    with pytest.raises(HttpResponseError) as raised:
        batch.create_task_collection(job_id, m.BatchTaskGroup(task_values=[task(f"t{i}", "true") for i in range(101)]))
    assert raised.value.status_code == 400


def test_create_tasks_halves_chunks_on_request_body_too_large(batch: BatchClient, job_id: str) -> None:
    padding = "x" * 20_000  # 100 of these exceed Batch's 1 MiB request limit, 25 do not
    tasks = [
        task(f"big-{i}", "true", environment_settings=[m.EnvironmentSetting(name="PAD", value=padding)])
        for i in range(120)
    ]
    result = batch.create_tasks(job_id, tasks)
    assert len(result.result_values) == 120
    assert all(r.status == m.BatchTaskAddStatus.SUCCESS for r in result.result_values)
    with pytest.raises(HttpResponseError) as raised:
        batch.create_task_collection(
            job_id,
            m.BatchTaskGroup(
                task_values=[
                    task(f"huge-{i}", "true", environment_settings=[m.EnvironmentSetting(name="PAD", value=padding)])
                    for i in range(100)
                ]
            ),
        )
    assert raised.value.status_code == 413
    assert raised.value.error is not None and raised.value.error.code == "RequestBodyTooLarge"


def test_create_tasks_treats_task_exists_as_success(batch: BatchClient, job_id: str) -> None:
    batch.create_tasks(job_id, [task(f"t{i}", "true") for i in range(150)])
    again = batch.create_tasks(job_id, [task(f"t{i}", "true") for i in range(150)])
    assert len(again.result_values) == 150


def test_pool_slots_bound_concurrency(batch: BatchClient) -> None:
    pool_id = unique("pool")
    batch.create_pool(m.BatchPoolCreateOptions(id=pool_id, **VM, target_dedicated_nodes=1, task_slots_per_node=2))
    job_id = unique("job")
    batch.create_job(m.BatchJobCreateOptions(id=job_id, pool_info=m.BatchPoolInfo(pool_id=pool_id)))
    batch.create_tasks(job_id, [task(f"s{i}", "sleep 0.4") for i in range(6)])
    done = [wait_for_task(batch, job_id, f"s{i}") for i in range(6)]
    intervals = sorted((t.execution_info.start_time, t.execution_info.end_time) for t in done)  # type: ignore[union-attr]
    for moment, _ in intervals:
        overlapping = sum(1 for start, end in intervals if start <= moment < end)
        assert overlapping <= 2
    batch.begin_delete_pool(pool_id, polling_interval=0).result()  # type: ignore[arg-type]


def test_required_slots_are_counted(batch: BatchClient, job_id: str) -> None:
    batch.create_task(job_id, task("wide", "sleep 1", required_slots=3))
    wait_until(lambda: batch.get_task(job_id, "wide").state == m.BatchTaskState.RUNNING)
    counts = batch.get_job_task_counts(job_id)
    assert counts.task_counts.running == 1 and counts.task_slot_counts.running == 3
    wait_for_task(batch, job_id, "wide")
    counts = batch.get_job_task_counts(job_id)
    assert counts.task_counts.succeeded == 1 and counts.task_slot_counts.succeeded == 3


def test_timestamps_are_monotonic_across_tasks(batch: BatchClient, job_id: str) -> None:
    batch.create_tasks(job_id, [task(f"m{i}", "true") for i in range(30)])
    done = [wait_for_task(batch, job_id, f"m{i}") for i in range(30)]
    stamps = [t.state_transition_time for t in done]
    assert len(set(stamps)) == len(stamps)
    assert clock.parse(clock.stamp()) > max(stamps)  # type: ignore[type-var]


def test_task_dependencies_wait_block_and_satisfy(batch: BatchClient, pool_id: str, emulator: Emulator) -> None:
    job_id = unique("deps")
    batch.create_job(
        m.BatchJobCreateOptions(id=job_id, pool_info=m.BatchPoolInfo(pool_id=pool_id), uses_task_dependencies=True)
    )
    satisfy = m.ExitConditions(default=m.ExitOptions(dependency_action=m.DependencyAction.SATISFY))
    batch.create_tasks(
        job_id,
        [
            task("after", "true", depends_on=m.BatchTaskDependencies(task_ids=["first"])),
            task("first", "sleep 0.3"),
            task("1", "true"),
            task("2", "true"),
            task(
                "ranged",
                "true",
                depends_on=m.BatchTaskDependencies(task_id_ranges=[m.BatchTaskIdRange(start=1, end=2)]),
            ),
            task("bad", "false"),
            task("blocked", "true", depends_on=m.BatchTaskDependencies(task_ids=["bad"])),
            task("bad-but-ok", "false", exit_conditions=satisfy),
            task("unblocked", "true", depends_on=m.BatchTaskDependencies(task_ids=["bad-but-ok"])),
        ],
    )
    first = wait_for_task(batch, job_id, "first")
    after = wait_for_task(batch, job_id, "after")
    assert after.execution_info.start_time >= first.execution_info.end_time  # type: ignore[union-attr,operator]
    assert wait_for_task(batch, job_id, "ranged").execution_info.exit_code == 0  # type: ignore[union-attr]
    assert wait_for_task(batch, job_id, "unblocked").execution_info.exit_code == 0  # type: ignore[union-attr]
    wait_for_task(batch, job_id, "bad")
    wait_for_dispatch_passes(emulator)  # the dispatcher has seen "bad" completed: "blocked" stays put
    assert batch.get_task(job_id, "blocked").state == m.BatchTaskState.ACTIVE


def test_dependencies_need_the_job_to_use_them(batch: BatchClient, job_id: str) -> None:
    with pytest.raises(HttpResponseError) as raised:
        batch.create_task(job_id, task("d", "true", depends_on=m.BatchTaskDependencies(task_ids=["x"])))
    assert raised.value.status_code == 400
    assert raised.value.error is not None and raised.value.error.code == "TaskDependenciesNotSpecifiedOnJob"


def test_a_task_needing_more_slots_than_a_node_has_fails_to_schedule(batch: BatchClient, job_id: str) -> None:
    batch.create_task(job_id, task("huge", "true", required_slots=64))
    batch.create_task(job_id, task("small", "true"))
    info = wait_for_task(batch, job_id, "huge").execution_info
    assert info is not None and info.result == m.BatchTaskExecutionResult.FAILURE
    assert info.failure_info is not None and info.failure_info.code == "TaskSchedulingConstraintFailed"
    assert wait_for_task(batch, job_id, "small").execution_info.exit_code == 0  # type: ignore[union-attr]


def test_affinity_info_places_the_task_on_that_node(batch: BatchClient, job_id: str, pool_id: str) -> None:
    nodes = list(batch.list_nodes(pool_id))
    target = nodes[-1]
    for index in range(3):
        batch.create_task(
            job_id, task(f"a{index}", "true", affinity_info=m.BatchAffinityInfo(affinity_id=target.affinity_id))
        )
    for index in range(3):
        done = wait_for_task(batch, job_id, f"a{index}")
        assert done.node_info is not None and done.node_info.node_id == target.id
