"""Duplicate storm: every Event Grid event three times, shuffled, while the blob trigger scans and two sweeps race."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from shared.errors import TransientError
from shared.messages import encode_completion
from shared.models import CompletedTask, CompletionEvent, InputState
from shared.submit import sweep
from tests.chaos.harness import (
    ChaosStack,
    Tally,
    in_parallel,
    input_content,
    pipeline,
    record,
    shuffled,
    verify,
)
from tests.waiting import NotYet, wait_until

pytestmark = pytest.mark.chaos
INPUTS = 150
COPIES = 3
SEED = 5
NEVER = "0 0 0 1 1 *"  # an NCRONTAB schedule that does not fire during a test (midnight, January 1st)


@pytest.mark.timeout(600)
def test_every_event_three_times_and_two_sweeps_give_one_task_and_one_manifest_each(
    chaos_dir: Path, stacks: list[ChaosStack]
) -> None:
    stack = ChaosStack(chaos_dir, [pipeline("storm")], setting_overrides={"BATCHDROP_SWEEP_SCHEDULE": "*/2 * * * * *"})
    stacks.append(stack.start())
    names = [f"storm/{index:04d}.txt" for index in range(INPUTS)]
    began = time.monotonic()
    stack.drop({name: input_content(name) for name in names})

    # Two more instances of the app sweeping at once, beside the dev host's own sweep timer.
    posting_done = threading.Event()
    sweeps: Counter[str] = Counter()

    def sweeper(label: str) -> None:
        gw = stack.gateways()
        rounds = 0
        while not posting_done.is_set() or rounds < 3:
            try:
                report = sweep(gw)
                sweeps[f"{label} submitted"] += report.submitted
            except TransientError:
                sweeps[f"{label} transient"] += 1
            rounds += 1
        sweeps[f"{label} rounds"] = rounds

    threads = [threading.Thread(target=sweeper, args=(label,), daemon=True) for label in ("sweep-a", "sweep-b")]
    for thread in threads:
        thread.start()

    deliveries = shuffled([(name, f"evt-{index}") for index, name in enumerate(names)] * COPIES, SEED)
    statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def deliver(delivery: tuple[str, str]) -> None:
        # Event Grid retries a delivery that did not get a 2xx; so does this test, a few times.
        for _ in range(5):
            status = stack.post_event(*delivery)
            with lock:
                statuses[status] += 1
            if status < 300:
                return
            time.sleep(0.5)

    in_parallel(deliver, deliveries, workers=8)
    posting_done.set()
    for thread in threads:
        thread.join(timeout=120)

    missing = stack.wait_for_manifests(names, timeout=240)
    verdict = verify(stack, names)
    seconds = time.monotonic() - began
    record(Tally.of(
        "duplicate storm", f"each BlobCreated event posted {COPIES}x shuffled + blob trigger + 2 concurrent sweeps",
        len(deliveries), verdict, seconds,
        notes=f"webhook answers {dict(statuses)}; sweeps {dict(sweeps)}"))  # fmt: skip

    assert not missing, f"no manifest for {sorted(missing)[:10]}"
    assert verdict.lost == [] and verdict.misfiled == []
    assert verdict.duplicate_tasks == 0 and verdict.stray_tasks == 0
    assert len(stack.task_ids()) == INPUTS
    assert verdict.duplicate_manifests == 0
    assert verdict.succeeded == INPUTS


COMPLETION_INPUTS = 64


@pytest.mark.timeout(600)
def test_every_completion_message_three_times_at_once_publishes_each_manifest_once(
    chaos_dir: Path, stacks: list[ChaosStack]
) -> None:
    """Storage queues deliver at least once: the collector must survive the same completion arriving 3x at once."""
    # The dev host's poll never fires here; this test plays the poll and delivers each event three times.
    stack = ChaosStack(chaos_dir, [pipeline("completions")], setting_overrides={"BATCHDROP_POLL_SCHEDULE": NEVER})
    stacks.append(stack.start())
    names = [f"completions/{index:04d}.txt" for index in range(COMPLETION_INPUTS)]
    began = time.monotonic()
    stack.drop({name: input_content(name) for name in names})
    gw = stack.gateways()

    def all_completed() -> list[CompletedTask] | NotYet:
        jobs = {record.job_id for record in gw.ledger.inputs(InputState.SUBMITTED)}
        completed = [task for job in sorted(jobs) for task in gw.batch.completed_since(job, None)]
        return completed if len(completed) >= COMPLETION_INPUTS else NotYet(f"{len(completed)} tasks completed")

    completed = wait_until(all_completed, 180, interval=1, what=f"{COMPLETION_INPUTS} completed tasks")
    job_of = {record.task_id: record.job_id for record in gw.ledger.inputs()}
    bodies = shuffled([encode_completion(CompletionEvent(job_of[t.task_id], t.task_id, t.result)) for t in completed]
                      * COPIES, SEED)  # fmt: skip
    queue = stack.queue("completions")
    in_parallel(queue.send_message, bodies, workers=16)

    missing = stack.wait_for_manifests(names, timeout=240)
    verdict = verify(stack, names)
    publishes = stack.publish_counts()
    record(Tally.of(
        "duplicate completions", f"each completion message enqueued {COPIES}x at once (at-least-once queue)",
        len(bodies), verdict, time.monotonic() - began,
        notes=f"inputs published more than once: {sum(1 for n in names if publishes[n] > 1)}; "
              f"misfiled: {verdict.misfiled[:3]}"))  # fmt: skip

    assert not missing
    assert verdict.lost == [] and verdict.duplicate_tasks == 0
    assert verdict.misfiled == [], verdict.misfiled[:5]
    assert verdict.duplicate_manifests == 0, {name: n for name, n in publishes.items() if n > 1}
