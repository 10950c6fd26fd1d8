"""Autoscale pools through the real SDK, on an emulator whose evaluation interval is shortened.

`--autoscale-interval-seconds 0.5` makes every pool's 5-minute interval half a second; the 30-second
sample period and the formula's TimeInterval_* shrink by the same factor (1/600), so the idle window
`TimeInterval_Minute * 10` below lasts one second.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from azure.batch import BatchClient
from azure.batch import models as m
from azure.core.exceptions import HttpResponseError

from local.stack import Emulator, start_emulator
from tests.emulator.conftest import VM, client_for, unique
from tests.waiting import NotYet, wait_until

MAX_NODES = 3
# The shape of the pipeline's generated formula: scale to pending tasks within [0, MAX_NODES]; go to 0
# only once no task was pending for the whole idle window.
SCALE_TO_PENDING = f"""
$pending = max(0, $PendingTasks.GetSample(1));
$enough = $PendingTasks.GetSamplePercent(TimeInterval_Minute * 10) >= 70;
$recent = $enough ? max($PendingTasks.GetSample(TimeInterval_Minute * 10)) : 1;
$TargetDedicatedNodes = $pending > 0 ? min({MAX_NODES}, $pending) : ($recent > 0 ? $TargetDedicatedNodes : 0);
$NodeDeallocationOption = taskcompletion;
"""
INTERVAL = timedelta(minutes=5)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    started = start_emulator(Path(tmp_path_factory.mktemp("autoscale")), ["--autoscale-interval-seconds", "0.5"])
    yield started
    started.stop()


@pytest.fixture(scope="module")
def batch(emulator: Emulator) -> BatchClient:
    return client_for(emulator)


def autoscale_pool(batch: BatchClient, formula: str) -> str:
    pool_id = unique("auto")
    batch.create_pool(
        m.BatchPoolCreateOptions(
            id=pool_id,
            **VM,
            enable_auto_scale=True,
            auto_scale_formula=formula,
            auto_scale_evaluation_interval=INTERVAL,
        )
    )
    return pool_id


def error_code(problem: pytest.ExceptionInfo[HttpResponseError]) -> str | None:
    return problem.value.error.code if problem.value.error else None


def test_pool_scales_from_zero_to_the_backlog_and_back_to_zero_when_idle(batch: BatchClient) -> None:
    pool_id = autoscale_pool(batch, SCALE_TO_PENDING)
    pool = batch.get_pool(pool_id)
    assert pool.enable_auto_scale and pool.current_dedicated_nodes == 0
    assert pool.auto_scale_run is not None and pool.auto_scale_run.error is None
    assert pool.auto_scale_run.results is not None
    assert pool.auto_scale_run.results.startswith("$TargetDedicatedNodes=0;$NodeDeallocationOption=taskcompletion;")

    job_id = unique("job")
    batch.create_job(m.BatchJobCreateOptions(id=job_id, pool_info=m.BatchPoolInfo(pool_id=pool_id)))
    batch.create_tasks(job_id, [m.BatchTaskCreateOptions(id=f"t{i}", command_line="sleep 2") for i in range(6)])

    seen: set[int] = set()

    def nodes_are(count: int) -> m.BatchPool | NotYet:
        current = batch.get_pool(pool_id)
        seen.add(int(current.current_dedicated_nodes or 0))
        return current if current.current_dedicated_nodes == count else NotYet(current.current_dedicated_nodes)

    wait_until(lambda: nodes_are(MAX_NODES), 20, what=f"the pool to grow to {MAX_NODES} nodes")
    counts = wait_until(
        lambda: (c := batch.get_job_task_counts(job_id).task_counts).succeeded == 6 or NotYet(c),
        30,
        what="the backlog to finish",
    )
    assert counts
    idle = wait_until(lambda: nodes_are(0), 20, what="the pool to shrink to 0 once idle")
    assert max(seen) == MAX_NODES  # never more than the formula's cap
    assert list(batch.list_nodes(pool_id)) == []
    assert idle.auto_scale_run is not None and idle.auto_scale_run.results is not None
    assert idle.auto_scale_run.results.startswith("$TargetDedicatedNodes=0;")
    # taskcompletion: shrinking while tasks ran let them finish; none was requeued.
    for task in batch.list_tasks(job_id):
        assert task.execution_info is not None
        assert task.execution_info.result == m.BatchTaskExecutionResult.SUCCESS
        assert task.execution_info.requeue_count == 0


def test_evaluate_reports_results_and_refuses_unsupported_constructs_by_name(batch: BatchClient) -> None:
    pool_id = autoscale_pool(batch, "$TargetDedicatedNodes = 1;")

    def evaluate(formula: str) -> m.AutoScaleRun:
        options = m.BatchPoolEvaluateAutoScaleOptions(auto_scale_formula=formula)
        return batch.evaluate_pool_auto_scale(pool_id, options)

    run = evaluate("$TargetDedicated = 2; $spare = 1")  # the spec's example shape
    assert run.error is None and run.results == "$TargetDedicated=2;$NodeDeallocationOption=requeue;$spare=1"
    assert run.timestamp is not None
    assert batch.get_pool(pool_id).current_dedicated_nodes == 1  # evaluating does not apply

    for formula, named in (
        ("$TargetDedicatedNodes = max(0, $CPUPercent.GetSample(1));", "the variable $CPUPercent"),
        ("$TargetDedicatedNodes = percentile($PendingTasks.GetSample(1), 50);", "the function percentile()"),
    ):
        run = evaluate(formula)
        assert run.results is None and run.error is not None
        assert run.error.code == "FormulaNotSupportedByEmulator"
        assert run.error.message is not None and f"does not support {named}" in run.error.message

    run = evaluate("$TargetDedicatedNodes = (1 +")
    assert run.error is not None and run.error.code == "AutoScalingFormulaSyntaxError"
    assert run.error.message is not None and run.error.message.startswith("Line 1, Col 29: ")
    assert run.error.error_values and {v.name for v in run.error.error_values} == {"Message", "Line", "Column"}

    run = evaluate("$TargetDedicatedNodes = avg($PendingTasks.GetSample(TimeInterval_Hour, 90));")
    assert run.error is not None and run.error.code == "InsufficientSampleData"

    with pytest.raises(HttpResponseError) as too_long:
        evaluate("$TargetDedicatedNodes = 1;" + " " * 8200)
    assert too_long.value.status_code == 400 and error_code(too_long) == "AutoScaleFormulaTooLong"


def test_enable_disable_and_resize_refused_while_enabled(batch: BatchClient) -> None:
    pool_id = unique("fixed")
    batch.create_pool(m.BatchPoolCreateOptions(id=pool_id, **VM, target_dedicated_nodes=1))
    with pytest.raises(HttpResponseError) as not_enabled:
        batch.evaluate_pool_auto_scale(
            pool_id, m.BatchPoolEvaluateAutoScaleOptions(auto_scale_formula="$TargetDedicatedNodes=1")
        )
    assert not_enabled.value.status_code == 409

    batch.enable_pool_auto_scale(
        pool_id,
        m.BatchPoolEnableAutoScaleOptions(
            auto_scale_formula="$TargetDedicatedNodes = 2;", auto_scale_evaluation_interval=INTERVAL
        ),
    )
    pool = batch.get_pool(pool_id)  # enabling evaluates at once
    assert pool.enable_auto_scale and pool.auto_scale_formula == "$TargetDedicatedNodes = 2;"
    assert pool.auto_scale_evaluation_interval == INTERVAL
    assert pool.current_dedicated_nodes == 2 and pool.target_dedicated_nodes == 2

    with pytest.raises(HttpResponseError) as refused:
        batch.begin_resize_pool(pool_id, m.BatchPoolResizeOptions(target_dedicated_nodes=4), polling_interval=0)  # type: ignore[arg-type]
    assert refused.value.status_code == 409 and error_code(refused) == "AutoScalingEnabled"

    # Enabling again changes only what it names: a new formula, the same interval.
    batch.enable_pool_auto_scale(
        pool_id, m.BatchPoolEnableAutoScaleOptions(auto_scale_formula="$TargetDedicatedNodes = 3;")
    )
    pool = batch.get_pool(pool_id)
    assert pool.current_dedicated_nodes == 3 and pool.auto_scale_evaluation_interval == INTERVAL

    batch.disable_pool_auto_scale(pool_id)
    pool = batch.get_pool(pool_id)
    assert not pool.enable_auto_scale and pool.auto_scale_formula is None and pool.current_dedicated_nodes == 3
    batch.begin_resize_pool(pool_id, m.BatchPoolResizeOptions(target_dedicated_nodes=1), polling_interval=0).result()  # type: ignore[arg-type]
    assert batch.get_pool(pool_id).current_dedicated_nodes == 1


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"auto_scale_formula": "$TargetDedicatedNodes = (1"}, "AutoScalingFormulaSyntaxError"),
        (
            {"auto_scale_formula": "$TargetDedicatedNodes = std($PendingTasks.GetSample(5))"},
            "FormulaNotSupportedByEmulator",
        ),
        ({"auto_scale_formula": "$TargetDedicatedNodes = 1;" + " " * 8200}, "AutoScaleFormulaTooLong"),
        ({"auto_scale_evaluation_interval": timedelta(minutes=4)}, "InvalidPropertyValue"),
        ({"auto_scale_evaluation_interval": timedelta(hours=169)}, "InvalidPropertyValue"),
        ({"auto_scale_formula": None}, "MissingRequiredProperty"),
    ],
)
def test_pool_add_refuses_bad_autoscale_settings(batch: BatchClient, changes: dict[str, object], code: str) -> None:
    settings: dict[str, object] = {
        "enable_auto_scale": True,
        "auto_scale_formula": "$TargetDedicatedNodes = 0",
        "auto_scale_evaluation_interval": INTERVAL,
        **changes,
    }
    with pytest.raises(HttpResponseError) as refused:
        batch.create_pool(m.BatchPoolCreateOptions(id=unique("bad"), **VM, **settings))  # type: ignore[arg-type]
    assert refused.value.status_code == 400 and error_code(refused) == code
