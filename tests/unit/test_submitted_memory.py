"""A repeated delivery of an input this process submitted is a duplicate without a ledger read (issue 16)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from shared.errors import TransientError
from shared.gateways import Submitted
from shared.submit import SubmitAction, submit, sweep
from tests.unit.fakes import make_world


def test_a_repeat_of_an_input_submitted_here_asks_no_ledger(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    blob = world.blobs.put("input", "a.txt")
    first = submit(world.gw, blob)
    world.ledger.unavailable = True  # any ledger request would fail now
    again = submit(world.gw, blob)
    assert first.action is SubmitAction.CREATED
    assert (again.action, again.task_id, again.job_id) == (SubmitAction.DUPLICATE, first.task_id, first.job_id)
    assert sum(world.batch.requests.values()) == 3  # pool, job, the one task: no second Batch request either


def test_another_process_reads_the_ledger_for_the_same_repeat(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    blob = world.blobs.put("input", "a.txt")
    submit(world.gw, blob)
    other = replace(world.gw, submitted=Submitted(), known_jobs={})  # a second instance: same ledger, no memory
    assert submit(other, blob).action is SubmitAction.DUPLICATE
    world.ledger.unavailable = True
    with pytest.raises(TransientError):
        submit(other, blob)


def test_inputs_the_sweep_submitted_are_remembered_too(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    blobs = [world.blobs.put("input", f"{index}.txt") for index in range(3)]
    assert sweep(world.gw).submitted == 3
    world.ledger.unavailable = True
    assert {submit(world.gw, blob).action for blob in blobs} == {SubmitAction.DUPLICATE}


def test_the_memory_is_bounded_oldest_first() -> None:
    memory = Submitted(limit=2)
    for index in range(3):
        memory.add(f"t-{index}", "job")
    assert [memory.job_of(f"t-{index}") for index in range(3)] == [None, "job", "job"]
