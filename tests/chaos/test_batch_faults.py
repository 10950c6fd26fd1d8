"""Batch faults: 20% of Batch requests answered 429/500/503, 20 ms added to each, and one emulator restart."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.chaos.harness import ChaosStack, Tally, input_content, pipeline, record, retrying, verify

pytestmark = pytest.mark.chaos
INPUTS = 200
FAULTS = ["--fault-rate", "0.2", "--fault-statuses", "429,500,503", "--latency-ms", "20", "--fault-seed", "7"]


@pytest.mark.timeout(600)
def test_throttling_server_errors_and_a_restart_lose_nothing(chaos_dir: Path, stacks: list[ChaosStack]) -> None:
    # DEBUG makes the emulator log one line per request with its status: the injected faults are counted there.
    stack = ChaosStack(chaos_dir, [pipeline("batchfaults")], emulator_args=[*FAULTS, "--log-level", "DEBUG"])
    stacks.append(stack.start())
    names = [f"batch/{index:04d}.txt" for index in range(INPUTS)]
    began = time.monotonic()
    stack.drop({name: input_content(name) for name in names[: INPUTS // 2]})

    # Restart mid-run: once some results are out and the rest are queued, running or being collected.
    halfway = stack.wait_for_manifests(names[: INPUTS // 4], timeout=240)
    assert not halfway, f"the run did not get a quarter of the way before the restart: {len(halfway)} missing"
    stack.restart_emulator()
    restarted_at = time.monotonic() - began
    stack.drop({name: input_content(name) for name in names[INPUTS // 2 :]})

    missing = stack.wait_for_manifests(names, timeout=360)
    verdict = verify(stack, names)
    seconds = time.monotonic() - began
    assert stack.emulator is not None
    log = stack.emulator.log_path.read_text(errors="replace")
    client = stack.batch_client()
    requeued = retrying(lambda: sum(
        1 for job in client.list_jobs() for task in client.list_tasks(job.id, select=["id", "executionInfo"])
        if task.execution_info is not None and (task.execution_info.requeue_count or 0) > 0))  # fmt: skip
    injected = len(re.findall(r" -> (?:429|500|503) in ", log))
    answered = len(re.findall(r" -> \d{3} in ", log))
    record(Tally.of(
        "Batch faults", "emulator --fault-rate 0.2 (429/500/503) --latency-ms 20, restarted once mid-run",
        injected + 1, verdict, seconds,
        notes=f"{injected} faulted answers of {answered} Batch requests (the test's own listings included), "
              f"plus 1 restart at {restarted_at:.0f} s that requeued {requeued} running tasks"))  # fmt: skip

    assert injected > 0
    assert not missing, f"{len(missing)} inputs without a manifest, e.g. {sorted(missing)[:10]}"
    assert verdict.lost == [] and verdict.misfiled == []
    assert verdict.duplicate_tasks == 0 and verdict.stray_tasks == 0
    assert verdict.duplicate_manifests == 0
    assert verdict.succeeded == INPUTS
