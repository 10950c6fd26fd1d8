"""List operations: $filter, $select, maxresults and odata.nextLink paging as the SDK follows it."""

from __future__ import annotations

import urllib.request

import pytest
from azure.batch import BatchClient
from azure.batch import models as m
from azure.core.exceptions import HttpResponseError

from local.stack import Emulator
from tests.emulator.conftest import wait_for_task


def _stats(emulator: Emulator) -> dict[str, int]:
    with urllib.request.urlopen(f"{emulator.url}/_emulator/stats", timeout=10) as response:
        return dict(__import__("json").load(response)["requests"])


@pytest.fixture
def finished_job(batch: BatchClient, job_id: str) -> str:
    tasks = [m.BatchTaskCreateOptions(id=f"ok-{i:02d}", command_line="true") for i in range(12)]
    tasks += [m.BatchTaskCreateOptions(id=f"bad-{i}", command_line=f"/bin/sh -c 'exit {i + 1}'") for i in range(3)]
    batch.create_tasks(job_id, tasks)
    for task in tasks:
        wait_for_task(batch, job_id, task.id)
    return job_id


def ids(tasks: object) -> list[str]:
    return sorted(t.id for t in tasks)  # type: ignore[attr-defined]


def test_filter_by_state_result_exit_code_and_id_prefix(batch: BatchClient, finished_job: str) -> None:
    assert len(ids(batch.list_tasks(finished_job, filter="state eq 'completed'"))) == 15
    assert ids(batch.list_tasks(finished_job, filter="executionInfo/result eq 'failure'")) == [
        "bad-0",
        "bad-1",
        "bad-2",
    ]
    assert ids(batch.list_tasks(finished_job, filter="executionInfo/exitCode eq 2")) == ["bad-1"]
    assert ids(batch.list_tasks(finished_job, filter="executionInfo/exitCode gt 1")) == ["bad-1", "bad-2"]
    assert len(ids(batch.list_tasks(finished_job, filter="startswith(id,'ok-')"))) == 12
    combined = "startswith(id,'bad-') and (executionInfo/exitCode eq 1 or executionInfo/exitCode eq 3)"
    assert ids(batch.list_tasks(finished_job, filter=combined)) == ["bad-0", "bad-2"]
    assert ids(batch.list_tasks(finished_job, filter="state eq 'active'")) == []


def test_filter_by_state_transition_time_with_datetime_literals(batch: BatchClient, finished_job: str) -> None:
    tasks = sorted(batch.list_tasks(finished_job), key=lambda t: t.state_transition_time)
    middle = tasks[7].state_transition_time
    literal = middle.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    after = ids(batch.list_tasks(finished_job, filter=f"stateTransitionTime gt datetime'{literal}'"))
    at_or_after = ids(batch.list_tasks(finished_job, filter=f"stateTransitionTime ge datetime'{literal}'"))
    before = ids(batch.list_tasks(finished_job, filter=f"stateTransitionTime lt datetime'{literal}'"))
    assert after == sorted(t.id for t in tasks[8:])
    assert at_or_after == sorted(t.id for t in tasks[7:])
    assert before == sorted(t.id for t in tasks[:7])
    combined = f"state eq 'completed' and stateTransitionTime le datetime'{literal}'"
    assert ids(batch.list_tasks(finished_job, filter=combined)) == sorted(t.id for t in tasks[:8])


def test_select_keeps_only_the_named_properties_including_nested_ones(batch: BatchClient, finished_job: str) -> None:
    tasks = list(
        batch.list_tasks(finished_job, filter="startswith(id,'bad-0')", select=["id", "state", "executionInfo"])
    )
    assert len(tasks) == 1
    raw = tasks[0].as_dict()
    assert set(raw) == {"id", "state", "executionInfo"}
    assert raw["executionInfo"]["exitCode"] == 1 and raw["executionInfo"]["failureInfo"]["code"] == "FailureExitCode"
    nested = next(iter(batch.list_tasks(finished_job, filter="id eq 'bad-1'", select=["id", "executionInfo/exitCode"])))
    assert nested.as_dict() == {"id": "bad-1", "executionInfo": {"exitCode": 2}}


def test_paging_follows_odata_next_link_with_filter_and_select(
    batch: BatchClient, finished_job: str, emulator: Emulator
) -> None:
    before = _stats(emulator).get("Task_List", 0)
    tasks = list(batch.list_tasks(finished_job, max_results=4, filter="startswith(id,'ok-')", select=["id"]))
    pages = _stats(emulator)["Task_List"] - before
    assert sorted(t.id for t in tasks) == [f"ok-{i:02d}" for i in range(12)]
    assert pages == 3  # 4 + 4 + 4, the last page carries no nextLink
    assert all(set(t.as_dict()) == {"id"} for t in tasks)


def test_paging_keeps_working_when_items_are_deleted_between_pages(batch: BatchClient, finished_job: str) -> None:
    pager = batch.list_tasks(finished_job, max_results=5).by_page()
    first = [t.id for t in next(pager)]
    batch.delete_task(finished_job, first[0])
    rest = [t.id for page in pager for t in page]
    assert len(first) + len(rest) == 15 and not set(first) & set(rest)


def test_jobs_and_pools_lists_filter_too(batch: BatchClient, finished_job: str, pool_id: str) -> None:
    assert [j.id for j in batch.list_jobs(filter=f"id eq '{finished_job}'")] == [finished_job]
    assert [p.id for p in batch.list_pools(filter=f"id eq '{pool_id}'", select=["id", "state"])] == [pool_id]
    assert [p.id for p in batch.list_pools(filter="state eq 'deleting' and id eq 'x'")] == []


def test_invalid_filter_and_max_results_are_400(batch: BatchClient, finished_job: str) -> None:
    with pytest.raises(HttpResponseError) as raised:
        list(batch.list_tasks(finished_job, filter="state eq"))
    assert raised.value.status_code == 400
    assert raised.value.error is not None and raised.value.error.code == "InvalidQueryParameterValue"
    with pytest.raises(HttpResponseError) as too_many:
        list(batch.list_tasks(finished_job, max_results=5000))
    assert too_many.value.status_code == 400


def test_stats_count_requests_by_operation_and_reset(emulator: Emulator, batch: BatchClient, job_id: str) -> None:
    emulator.reset_stats()
    batch.get_job(job_id)
    batch.get_job(job_id)
    list(batch.list_jobs())
    with urllib.request.urlopen(f"{emulator.url}/_emulator/stats", timeout=10) as response:
        stats = __import__("json").load(response)
    assert (stats["total"], stats["requests"]) == (3, {"Job_Get": 2, "Job_List": 1})


def test_select_applies_to_single_gets_too(batch: BatchClient, finished_job: str, pool_id: str) -> None:
    task = batch.get_task(finished_job, "bad-2", select=["id", "state", "stateTransitionTime", "executionInfo"])
    assert set(task.as_dict()) - {"odata.metadata"} == {"id", "state", "stateTransitionTime", "executionInfo"}
    assert task.execution_info is not None and task.execution_info.exit_code == 3
    assert set(batch.get_job(finished_job, select=["id", "state"]).as_dict()) - {"odata.metadata"} == {"id", "state"}
    assert set(batch.get_pool(pool_id, select=["id"]).as_dict()) - {"odata.metadata"} == {"id"}


@pytest.mark.parametrize(
    "bad_filter",
    [
        "State eq 'completed'",  # property names are case-sensitive
        "commandLine eq 'true'",  # not a filterable property of tasks
        "state gt 'active'",  # state allows eq and ne only
        "executionInfo/result ge 'failure'",
        "stateTransitionTime gt '2020-01-01T00:00:00Z'",  # a DateTime needs a DateTime literal
        "executionInfo/exitCode eq '1'",
        "not (state eq 'active')",
        "startswith(state,'act')",
    ],
)
def test_filters_batch_would_refuse_are_400(batch: BatchClient, job_id: str, bad_filter: str) -> None:
    with pytest.raises(HttpResponseError) as raised:
        list(batch.list_tasks(job_id, filter=bad_filter))
    assert raised.value.status_code == 400
    assert raised.value.error is not None and raised.value.error.code == "InvalidQueryParameterValue"


def test_datetime_literals_in_w3c_and_rfc_1123_forms(batch: BatchClient, finished_job: str) -> None:
    assert len(ids(batch.list_tasks(finished_job, filter="creationTime gt DateTime'2011-05-08T08:49:37Z'"))) == 15
    rfc = "creationTime gt DateTime'Sun, 08 May 2011 08:49:37 GMT'"
    assert len(ids(batch.list_tasks(finished_job, filter=rfc))) == 15
    assert ids(batch.list_tasks(finished_job, filter="creationTime lt datetime'2011-05-08T08:49:37Z'")) == []


def test_task_files_filter_by_name_prefix(batch: BatchClient, finished_job: str) -> None:
    names = [f.name for f in batch.list_task_files(finished_job, "ok-00", filter="startswith(name,'std')")]
    assert sorted(names) == ["stderr.txt", "stdout.txt"]
