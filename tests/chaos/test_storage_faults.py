"""Storage faults: Azurite stopped for 30 seconds mid-run and started again on the same ports and data."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from shared import ids
from shared.models import InputRecord, InputState
from tests.chaos.harness import (
    INPUT,
    MANIFEST,
    ChaosStack,
    Tally,
    Verdict,
    input_content,
    pipeline,
    record,
    retrying,
    verify,
)
from tests.waiting import NotYet, wait_until

pytestmark = pytest.mark.chaos
BEFORE, AFTER = 150, 50
OUTAGE_SECONDS = 30.0
SLOW = "storage/slow.txt"
# The outage must find tasks at every stage: queued, starting (their resource files download), running and
# uploading. Each early input keeps a slot a second, and the nodes take 1.5 s to start a task (as a real node
# agent does), so at any moment some slots are downloading. Uploads ride out the outage on the storage SDK's
# retries (15 s, 18 s, 24 s); downloads fail at once (BlobDownloadMiscError), and each failure frees its slot
# for the next queued task, which fails the same way: the queue drains into failures while storage is down.
BUSY = b"#sleep 1\n"
START_DELAY = ["--task-start-delay-ms", "1500"]
EARLY = 30  # manifests published before the outage begins


@dataclass
class Outcome:
    verdict: Verdict
    missing: set[str]
    poisoned: int
    poison_messages: list[dict[str, Any]]
    status: dict[str, Any]
    slow_task: str


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    stack = ChaosStack(tmp_path_factory.mktemp("storage-faults"), [pipeline("storagefaults")], START_DELAY)
    try:
        stack.start()
        yield run_outage(stack)
    finally:
        stack.stop()


def run_outage(stack: ChaosStack) -> Outcome:
    files = {f"storage/a-{i:04d}.txt": BUSY + input_content(f"storage/a-{i:04d}.txt") for i in range(BEFORE)}
    files[SLOW] = b"#sleep 150\n" + input_content(SLOW)
    later = {f"storage/b-{index:04d}.txt": input_content(f"storage/b-{index:04d}.txt") for index in range(AFTER)}
    began = time.monotonic()
    gw = stack.gateways()

    # A completion message that keeps failing: it names the slow task while that task is still running.
    # The slow task runs first (so that the outage cannot fail its download); the message's retries span
    # the outage, and it must end in completions-poison, not loop for ever nor be lost.
    stack.drop({SLOW: files[SLOW]})
    slow_task = ids.task_id(INPUT, SLOW, retrying(lambda: gw.blobs.get_blob(INPUT, SLOW)).etag)  # type: ignore[union-attr]

    def slow_running() -> InputRecord | NotYet:
        row = gw.ledger.get_input(slow_task)
        submitted = row is not None and row.state is InputState.SUBMITTED
        if submitted and row is not None and stack.task_state(row.job_id, slow_task) == "running":
            return row
        return NotYet(row)

    row = wait_until(slow_running, 120, interval=0.5, what="the slow input to start")
    stack.queue("completions").send_message(json.dumps({"job_id": row.job_id, "task_id": slow_task}))
    stack.drop({name: data for name, data in files.items() if name != SLOW})

    # Stop storage while tasks are queued, running and being collected: once any EARLY inputs are published
    # (tasks run in no particular order, so waiting for particular ones could wait for the end of the run).
    wanted = {ids.result_prefix(name) + MANIFEST for name in files}
    wait_until(
        lambda: len(retrying(stack.manifest_names) & wanted) >= EARLY,
        180,
        interval=0.5,
        what="the run to get going before the outage",
    )
    stopped = time.monotonic()
    ports = stack.stop_azurite()
    time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped)))
    stack.start_azurite(ports)
    outage = time.monotonic() - stopped
    stack.drop(later)
    files.update(later)

    poisoned = 0
    # Not reaching the poison queue is reported in the tally below, not failed here.
    with contextlib.suppress(AssertionError):
        poisoned = wait_until(
            lambda: int(stack.status()["poison"]["completions-poison"]),
            150,
            interval=2,
            what="the completion message in completions-poison",
        )

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
    first_failures = Counter(
        code for code in re.findall(r"failed outside its own code \((\w+)\); reactivated, attempt 1 ", stack.host_log())
    )
    reasons = Counter(
        str((manifest.get("failure") or {}).get("code"))
        for manifest in verdict.manifests_by_name.values()
        if manifest.get("status") == "failed"
    )
    record(Tally.of(
        "storage faults", f"Azurite stopped (SIGTERM) and restarted on the same ports/data after {outage:.0f} s", 1,
        verdict, seconds,
        notes=f"failed manifests by reason {dict(reasons)}; tasks run again after an infrastructure failure "
              f"{verdict.reactivated} (first failures by code {dict(first_failures)}); completions-poison "
              f"{len(poison_messages)} (status API says {status['poison']}); webjobs-blobtrigger-poison "
              f"{trigger_poisoned}"))  # fmt: skip

    return Outcome(verdict, missing, poisoned, poison_messages, status, slow_task)


@pytest.mark.timeout(600)
def test_nothing_is_lost_and_no_task_is_duplicated(outcome: Outcome) -> None:
    verdict = outcome.verdict
    assert not outcome.missing, f"{len(outcome.missing)} inputs without a manifest: {sorted(outcome.missing)[:10]}"
    assert verdict.lost == [] and verdict.misfiled == []
    assert verdict.duplicate_tasks == 0 and verdict.stray_tasks == 0


def test_a_task_caught_by_the_outage_fails_with_the_reason_batch_gave(outcome: Outcome) -> None:
    for name, manifest in outcome.verdict.manifests_by_name.items():
        if manifest["status"] == "failed":
            assert manifest["failure"]["code"] and manifest["failure"]["message"], name
            assert "sig=" not in json.dumps(manifest), name


def test_a_message_that_keeps_failing_is_poisoned_and_shown_in_status(outcome: Outcome) -> None:
    assert outcome.poisoned >= 1
    assert outcome.status["poison"]["completions-poison"] == len(outcome.poison_messages)
    assert {message["task_id"] for message in outcome.poison_messages} == {outcome.slow_task}
    # ... and its input was not lost: the poll's own completion event published it.
    assert outcome.verdict.manifests_by_name[SLOW]["status"] == "succeeded"


def test_no_manifest_is_published_twice(outcome: Outcome) -> None:
    assert outcome.verdict.duplicate_manifests == 0


def test_tasks_caught_by_the_outage_run_again_rather_than_fail(outcome: Outcome) -> None:
    failed = {
        name: manifest["failure"]["code"]
        for name, manifest in outcome.verdict.manifests_by_name.items()
        if manifest["status"] == "failed"
    }
    assert failed == {}
    # The outage did catch tasks (else this scenario proved nothing): they ran again as the same tasks.
    assert outcome.verdict.reactivated > 0
