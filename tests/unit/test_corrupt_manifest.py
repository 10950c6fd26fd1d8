"""A manifest that is not JSON (truncated, or written by a person) is replaced, not a poison message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.collect import collect
from shared.models import CompletionEvent, InputState
from shared.submit import submit
from tests.unit.fakes import make_world
from tests.unit.test_collect_reliability import MANIFEST, run_task


@pytest.mark.parametrize("content", [b'{"task_id": "x", "sta', b"not json at all", b"\xff\xfe\x00", b"[1, 2]"])
def test_a_corrupt_manifest_is_overwritten_by_collection(tmp_path: Path, content: bytes) -> None:
    world = make_world(tmp_path)
    outcome = submit(world.gw, world.blobs.put("input", "a.txt"))
    run_task(world, outcome)
    world.blobs.put("results", MANIFEST, content)

    result = collect(world.gw, CompletionEvent(outcome.job_id, outcome.task_id))

    assert result.action == "published" and result.status == "succeeded"
    manifest = json.loads(world.blobs.text("results", MANIFEST))
    assert manifest["task_id"] == outcome.task_id
    row = world.ledger.get_input(outcome.task_id)
    assert row is not None and row.state is InputState.COLLECTED
