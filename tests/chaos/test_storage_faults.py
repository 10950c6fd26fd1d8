"""Storage faults: Azurite stopped for 30 seconds mid-run and started again on the same ports and data."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from shared import ids
from shared.models import InputState
from tests.chaos.harness import INPUT, ChaosStack, Tally, input_content, pipeline, record, retrying, verify

pytestmark = pytest.mark.chaos
BEFORE, AFTER = 150, 50
OUTAGE_SECONDS = 30.0
SLOW = "storage/slow.txt"


@pytest.mark.timeout(600)
def test_azurite_down_for_30_seconds_loses_nothing_and_poison_shows_in_status(
    chaos_dir: Path, stacks: list[ChaosStack]
) -> None:
    stack = ChaosStack(chaos_dir, [pipeline("storagefaults")])
    stacks.append(stack.start())
    files = {f"storage/a-{index:04d}.txt": input_content(f"storage/a-{index:04d}.txt") for index in range(BEFORE)}
    files[SLOW] = b"#sleep 150\n" + input_content(SLOW)
    later = {f"storage/b-{index:04d}.txt": input_content(f"storage/b-{index:04d}.txt") for index in range(AFTER)}
    began = time.monotonic()
    stack.drop(files)

    # A completion message that keeps failing: it names the slow task while that task is still running.
    # Sent before the outage, its retries span it; it must end in completions-poison, not in a loop.
    gw = stack.gateways()
    slow_task = ids.task_id(INPUT, SLOW, retrying(lambda: gw.blobs.get_blob(INPUT, SLOW)).etag)  # type: ignore[union-attr]
    deadline = time.monotonic() + 120
    while (row := gw.ledger.get_input(slow_task)) is None or row.state is not InputState.SUBMITTED:
        assert time.monotonic() < deadline, f"the slow input was never submitted: {row}"
        time.sleep(0.5)
    stack.queue("completions").send_message(json.dumps({"job_id": row.job_id, "task_id": slow_task}))

    # Stop storage while tasks are queued, running and being collected.
    early = stack.wait_for_manifests(list(files)[:30], timeout=180)
    assert not early, f"the run did not start before the outage: {sorted(early)[:5]}"
    stopped = time.monotonic()
    ports = stack.stop_azurite()
    time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped)))
    stack.start_azurite(ports)
    outage = time.monotonic() - stopped
    stack.drop(later)
    files.update(later)

    poisoned = 0
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and poisoned == 0:
        poisoned = int(stack.status()["poison"]["completions-poison"])
        time.sleep(2)

    missing = stack.wait_for_manifests(files, timeout=300)
    verdict = verify(stack, files)
    seconds = time.monotonic() - began
    status = stack.status()
    poison_messages = [json.loads(m.content) for m in stack.queue("completions-poison").peek_messages(max_messages=32)]
    blob_trigger_poison = stack.queue("webjobs-blobtrigger-poison")
    trigger_poisoned = (
        int(blob_trigger_poison.get_queue_properties().approximate_message_count or 0)
        if "webjobs-blobtrigger-poison" in stack.queue_names()
        else 0
    )
    reasons = Counter(
        str((manifest.get("failure") or {}).get("code"))
        for manifest in verdict.manifests_by_name.values()
        if manifest.get("status") == "failed"
    )
    record(Tally.of(
        "storage faults", f"Azurite stopped (SIGTERM) and restarted on the same ports/data after {outage:.0f} s", 1,
        verdict, seconds,
        notes=f"failed manifests by reason {dict(reasons)}; completions-poison {len(poison_messages)} "
              f"(status API says {status['poison']}); webjobs-blobtrigger-poison {trigger_poisoned}"))  # fmt: skip

    assert not missing, f"{len(missing)} inputs without a manifest, e.g. {sorted(missing)[:10]}"
    assert verdict.lost == [] and verdict.misfiled == []
    assert verdict.duplicate_tasks == 0 and verdict.stray_tasks == 0
    assert verdict.duplicate_manifests == 0
    # A task caught by the outage fails with the reason Batch gives (download or upload error), not silently.
    for name, manifest in verdict.manifests_by_name.items():
        if manifest["status"] == "failed":
            assert manifest["failure"] and manifest["failure"]["code"] and manifest["failure"]["message"], name
    # The message that kept failing is in the poison queue, the status API shows it, and its input was not lost.
    assert poisoned >= 1
    assert status["poison"]["completions-poison"] == len(poison_messages)
    assert {message["task_id"] for message in poison_messages} == {slow_task}
    assert verdict.manifests_by_name[SLOW]["status"] == "succeeded"
