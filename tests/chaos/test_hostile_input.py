"""Hostile and malformed input through the whole running app: strange names, a zero-byte file, a file deleted
before its task runs, a file replaced while its task runs, and queue messages that are wrong or early or late.

Each input ends with exactly one manifest (the deleted one's says why it failed), nothing reaches a shell,
every refused message is recorded with its reason, and the dev host never goes down.
(Event Grid events of other types, containers and accounts are covered by the Event Grid tests.)
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from local.stack import PROJECT_ROOT
from shared import ids
from shared.models import InputState
from tests.chaos.harness import (
    INPUT,
    MANIFEST,
    RESULTS,
    ChaosStack,
    Tally,
    Verdict,
    input_content,
    pipeline,
    record,
    retrying,
    verify,
)
from tests.waiting import NotYet, wait_for_host_passes, wait_until

pytestmark = pytest.mark.chaos
COLLECT_QUEUE = "queue:collect"  # the dev host's listener for the collect function's queue

# Names a shell would act on, names that differ only in case or collide once sanitised, the longest
# allowed name. A "../" segment cannot even be created (the SDK and storage normalise the URL): "..x" stands in.
HOSTILE_NAMES = [
    "hostile/ünï ☃ café.txt",
    "hostile/sp ace s.txt",
    "hostile/; rm -rf ~",
    "hostile/$(touch pwned-dollar)",
    "hostile/`touch pwned-backtick`",
    'hostile/it\'s "quoted".txt',
    "hostile/..x/..y",
    "hostile/-rf",
    "hostile/--help",
    "hostile/Case.txt",
    "hostile/case.txt",
    "hostile/a b.txt",  # sanitised locally to input/a_b.txt, as is the next one
    "hostile/a_b.txt",
    "hostile/" + "n" * (1024 - len("hostile/")),
]
EMPTY = "hostile/empty.bin"
REPLACED = "hostile/replaced.txt"
VANISHING = "hostile/vanishing.txt"
BUSY = [f"hostile/busy-{index}.txt" for index in range(7)]  # with REPLACED's first run: every slot of the pool
BUSY_SECONDS = 15
REPLACEMENT = b"second upload of hostile/replaced.txt\n"


@dataclass
class Outcome:
    verdict: Verdict
    missing: set[str]
    vanishing: dict[str, Any]
    superseded: str
    rejections: list[dict[str, str]]
    host_alive: bool
    host_starts: int
    pwned: list[str]
    late_message_publishes: int


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    workdir = tmp_path_factory.mktemp("hostile")
    stack = ChaosStack(workdir, [pipeline("hostile")])
    try:
        stack.start()
        yield run(stack, workdir)
    finally:
        stack.stop()


def _task_of(stack: ChaosStack, name: str) -> str:
    gw = stack.gateways()
    blob = retrying(lambda: gw.blobs.get_blob(INPUT, name))
    assert blob is not None, name
    return ids.task_id(INPUT, name, blob.etag)


def _wait_for_task(stack: ChaosStack, task_id: str, states: set[str], timeout: float = 120) -> str:
    """Wait until the input is submitted and its task is in one of `states`; returns its job id."""
    gw = stack.gateways()

    def reached() -> str | NotYet:
        row = gw.ledger.get_input(task_id)
        if row is not None and row.state is InputState.SUBMITTED and stack.task_state(row.job_id, task_id) in states:
            return row.job_id
        return NotYet(row)

    return wait_until(reached, timeout, interval=0.3, what=f"task {task_id} to reach {states}")


def run(stack: ChaosStack, workdir: Path) -> Outcome:
    began = time.monotonic()
    queue = stack.queue("completions")

    # A file replaced while its task runs: the first upload's task is running when the second upload lands.
    stack.drop({REPLACED: f"#sleep {BUSY_SECONDS}\n".encode() + input_content(REPLACED)})
    stack.drop({name: f"#sleep {BUSY_SECONDS}\n".encode() + input_content(name) for name in BUSY})
    first_upload = _task_of(stack, REPLACED)
    _wait_for_task(stack, first_upload, {"running"})
    stack.drop({REPLACED: REPLACEMENT})

    # A file deleted before its task runs: every slot is busy, so its task waits; the blob goes meanwhile.
    stack.drop({VANISHING: input_content(VANISHING)})
    vanishing_task = _task_of(stack, VANISHING)
    _wait_for_task(stack, vanishing_task, {"active"})
    stack.blob_service().get_container_client(INPUT).delete_blob(VANISHING)

    files = {name: input_content(name) for name in HOSTILE_NAMES}
    files[EMPTY] = b""
    stack.drop(files)

    # Queue messages: not JSON, unknown job and task, and one for a task that has not completed yet.
    busy_task = _task_of(stack, BUSY[0])
    busy_job = _wait_for_task(stack, busy_task, {"running", "completed"})
    for body in ("this is not json", json.dumps({"job_id": "no-such-job", "task_id": "no-such-task"}),
                 json.dumps({"job_id": busy_job, "task_id": busy_task})):  # fmt: skip
        queue.send_message(body)

    files.update({name: f"#sleep {BUSY_SECONDS}\n".encode() + input_content(name) for name in BUSY})
    files[REPLACED] = REPLACEMENT
    missing = stack.wait_for_manifests([*files, VANISHING], timeout=300)

    # A message for a task already collected: nothing is published again (once the collect function's queue
    # has been polled twice more with nothing in flight, the message has been handled).
    assert stack.host is not None
    queue.send_message(json.dumps({"job_id": busy_job, "task_id": busy_task}))
    wait_for_host_passes(stack.host.url, "queue_polls", COLLECT_QUEUE)
    verdict = verify(stack, files, earlier_tasks=[first_upload, vanishing_task])
    results = stack.blob_service().get_container_client(RESULTS)
    vanishing = json.loads(
        retrying(lambda: results.download_blob(ids.result_prefix(VANISHING) + MANIFEST).readall(), attempts=3)
    )
    superseded_row = stack.gateways().ledger.get_input(first_upload)
    rejections = stack.status()["rejected"]
    # The tasks run under the work directory; the host and the emulator run in the project root.
    pwned = sorted(str(path) for path in [*workdir.rglob("pwned*"), *PROJECT_ROOT.glob("pwned*")])
    poisoned = stack.status()["poison"]
    assert stack.host is not None
    host_alive = stack.host.alive()
    verdict.inputs += 1  # the deleted input: it has a manifest of its own, read above
    verdict.manifests += 1
    verdict.failed += vanishing["status"] == "failed"
    late_publishes = stack.publish_counts()[BUSY[0]]
    record(Tally.of(
        "hostile input", f"{len(HOSTILE_NAMES)} hostile names, 1 zero-byte file, 1 deleted before its task ran, "
        "1 replaced while its task ran, 4 bad/early/late queue messages", len(HOSTILE_NAMES) + 3 + 4,
        verdict, time.monotonic() - began,
        notes=f"deleted input: {vanishing['status']} {(vanishing.get('failure') or {}).get('code')}; first upload "
              f"of the replaced file: {superseded_row.outcome if superseded_row else None}; rejections recorded "
              f"{len(rejections)}; poison queue {poisoned}; host restarts {stack.host_starts - 1}; files named "
              f"pwned* {len(pwned)}"))  # fmt: skip
    return Outcome(
        verdict, missing, vanishing, superseded_row.outcome if superseded_row else "", rejections, host_alive,
        stack.host_starts, pwned, late_publishes,
    )  # fmt: skip


def test_every_input_has_exactly_one_manifest_of_its_own(outcome: Outcome) -> None:
    verdict = outcome.verdict
    assert not outcome.missing, sorted(outcome.missing)
    assert verdict.lost == [] and verdict.misfiled == [], verdict.misfiled[:5]
    assert verdict.duplicate_tasks == 0 and verdict.stray_tasks == 0 and verdict.duplicate_manifests == 0
    for name in [*HOSTILE_NAMES, EMPTY, *BUSY]:
        assert verdict.manifests_by_name[name]["status"] == "succeeded", name


def test_nothing_reaches_a_shell(outcome: Outcome) -> None:
    assert outcome.pwned == []


def test_the_longest_name_publishes_under_a_digest_folder_naming_its_input(outcome: Outcome) -> None:
    longest = HOSTILE_NAMES[-1]
    manifest = outcome.verdict.manifests_by_name[longest]
    assert manifest["input"] == longest
    assert all(str(output).startswith("_long-names/") for output in manifest["outputs"])


def test_a_file_deleted_before_its_task_ran_fails_naming_the_file(outcome: Outcome) -> None:
    manifest = outcome.vanishing
    assert manifest["status"] == "failed"
    assert manifest["failure"]["code"] == "BlobNotFound"
    assert manifest["reactivations"] == 0  # the file is gone: running again cannot help
    assert "sig=" not in json.dumps(manifest)


def test_a_file_replaced_while_its_task_ran_publishes_the_second_upload(outcome: Outcome) -> None:
    manifest = outcome.verdict.manifests_by_name[REPLACED]  # verify() checked its task and its echo.txt
    assert manifest["status"] == "succeeded"
    assert outcome.superseded == "superseded"


def test_bad_messages_are_recorded_with_their_reason_and_a_late_one_publishes_nothing(outcome: Outcome) -> None:
    reasons = " | ".join(rejection["reason"] for rejection in outcome.rejections)
    assert "not JSON" in reasons
    assert "unknown task no-such-task" in reasons
    assert outcome.late_message_publishes == 1


def test_the_host_never_went_down(outcome: Outcome) -> None:
    assert outcome.host_alive and outcome.host_starts == 1
