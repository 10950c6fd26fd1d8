"""Duplicate storm: every Event Grid event three times, shuffled, while the blob trigger scans and two sweeps race."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from shared import ids
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
# A grouped pipeline in the same storm: each pair's two members make one task and one manifest (shared/groups.py).
GROUPS = 10
PAIRS = pipeline(
    "storm-pairs", "storm-pairs/",
    command="/bin/sh -c 'mkdir -p out && cat {inputs} > out/joined.txt'",
    app_files=[],
    group={"key": r"(?P<key>.+)_R[12]\.txt", "expect": ["*_R1.txt", "*_R2.txt"], "complete_within": "1h"},
)  # fmt: skip


@pytest.mark.timeout(600)
def test_every_event_three_times_and_two_sweeps_give_one_task_and_one_manifest_each(
    chaos_dir: Path, stacks: list[ChaosStack]
) -> None:
    stack = ChaosStack(chaos_dir, [pipeline("storm"), PAIRS],
                       setting_overrides={"BATCHDROP_SWEEP_SCHEDULE": "*/2 * * * * *"})  # fmt: skip
    stacks.append(stack.start())
    names = [f"storm/{index:04d}.txt" for index in range(INPUTS)]
    keys = [f"storm-pairs/{index:02d}" for index in range(GROUPS)]
    members = [f"{key}_R{read}.txt" for key in keys for read in (1, 2)]
    began = time.monotonic()
    stack.drop({name: input_content(name) for name in names + members})

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

    deliveries = shuffled([(name, f"evt-{index}") for index, name in enumerate(names + members)] * COPIES, SEED)
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

    missing = stack.wait_for_manifests(names + keys, timeout=240)
    etags = {blob.name: blob.etag for blob in stack.blob_service().get_container_client("input").list_blobs()}
    group_tasks = {
        key: ids.group_task_id("storm-pairs", key, {m: etags[m] for m in (f"{key}_R1.txt", f"{key}_R2.txt")})
        for key in keys
    }
    verdict = verify(stack, names, earlier_tasks=group_tasks.values())  # the groups' tasks are expected, not strays
    group_problems = _check_groups(stack, keys, group_tasks)
    seconds = time.monotonic() - began
    record(Tally.of(
        "duplicate storm", f"each BlobCreated event posted {COPIES}x shuffled + blob trigger + 2 concurrent sweeps "
        f"(+ {GROUPS} two-member groups)",
        len(deliveries), verdict, seconds,
        notes=f"webhook answers {dict(statuses)}; sweeps {dict(sweeps)}; groups: {len(keys)}, problems "
              f"{group_problems[:3]}"))  # fmt: skip

    assert not missing, f"no manifest for {sorted(missing)[:10]}"
    assert verdict.lost == [] and verdict.misfiled == []
    assert verdict.duplicate_tasks == 0 and verdict.stray_tasks == 0
    assert len(stack.task_ids()) == INPUTS + GROUPS  # one task per single input, one per group
    assert verdict.duplicate_manifests == 0
    assert verdict.succeeded == INPUTS
    assert group_problems == []


def _check_groups(stack: ChaosStack, keys: list[str], group_tasks: dict[str, str]) -> list[str]:
    """Each group: one task, one manifest published once, by its task, listing both members, joining both."""
    results = stack.blob_service().get_container_client("results")
    publishes = stack.publish_counts()
    tasks = Counter(stack.task_ids())
    problems = []
    for key in keys:
        prefix = ids.result_prefix(key)
        manifest = json.loads(results.download_blob(prefix + "_manifest.json").readall())
        listed = [member["name"] for member in manifest.get("members", [])]
        joined = results.download_blob(prefix + "joined.txt").readall()
        expected = input_content(f"{key}_R1.txt") + input_content(f"{key}_R2.txt")
        if manifest.get("task_id") != group_tasks[key] or manifest.get("status") != "succeeded":
            problems.append(f"{key}: manifest of {manifest.get('task_id')} ({manifest.get('status')})")
        if listed != [f"{key}_R1.txt", f"{key}_R2.txt"] or joined != expected:
            problems.append(f"{key}: members {listed}, joined {joined[:40]!r}")
        if tasks[group_tasks[key]] != 1 or publishes[key] != 1:
            problems.append(f"{key}: {tasks[group_tasks[key]]} task(s), published {publishes[key]} time(s)")
    return problems


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
