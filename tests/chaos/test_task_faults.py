"""Task faults: non-zero exits, the wall-clock limit, missing outputs, failed uploads, a missing app file.

Each must end in a `failed` manifest whose fields tell a person what went wrong.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from shared import ids
from shared.collect import MAX_REACTIVATIONS
from shared.models import InputState
from tests.chaos.harness import INPUT, ChaosStack, Tally, input_content, pipeline, record, retrying, verify
from tests.waiting import NotYet, wait_until

pytestmark = pytest.mark.chaos

EXITS = {"exit/one.txt": 1, "exit/two.txt": 2, "exit/forty-two.txt": 42}
TIMEOUT = "slow/forever.txt"
MISSING = "missing/nothing.txt"
UPLOAD = "upload/destination-gone.txt"
NO_APP = "noapp/input.txt"
FINE = "ok/fine.txt"
WALL_CLOCK_SECONDS = 3

PIPELINES = [
    pipeline("exits", "exit/", max_retries=1),
    pipeline("timeouts", "slow/", max_wall_clock_seconds=WALL_CLOCK_SECONDS),
    pipeline("missing", "missing/", outputs=["result.json"]),
    pipeline("uploads", "upload/"),
    pipeline("noapp", "noapp/", app_files=["chaos/app.py", "chaos/never-uploaded.py"]),
    pipeline("fine", "ok/"),
]
FILES = {
    **{name: f"#exit {code}\n".encode() + input_content(name) for name, code in EXITS.items()},
    TIMEOUT: b"#sleep 120\n" + input_content(TIMEOUT),
    MISSING: b"#no-output\n" + input_content(MISSING),
    UPLOAD: b"#sleep 8\n" + input_content(UPLOAD),
    NO_APP: input_content(NO_APP),
    FINE: input_content(FINE),
}


@dataclass
class Outcome:
    manifests: dict[str, dict[str, Any]]
    missing: set[str]


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    stack = ChaosStack(tmp_path_factory.mktemp("task-faults"), PIPELINES)
    try:
        stack.start()
        began = time.monotonic()
        stack.drop(FILES)
        _delete_staging_while_running(stack, UPLOAD)
        missing = stack.wait_for_manifests(FILES, timeout=240)
        verdict = verify(stack, FILES, check_echo=False)
        reasons = {
            name: f"{m.get('exit_code')}/{(m.get('failure') or {}).get('code')}"
            for name, m in verdict.manifests_by_name.items()
        }
        record(Tally.of(
            "task faults", "exit 1/2/42, wall clock 3 s, declared output missing, staging container deleted "
            "mid-task, app file missing", len(FILES) - 1, verdict, time.monotonic() - began,
            notes=f"exit code/failure code per input: {reasons}"))  # fmt: skip
        yield Outcome(verdict.manifests_by_name, missing)
    finally:
        stack.stop()


def _delete_staging_while_running(stack: ChaosStack, name: str) -> None:
    """The output upload fails: the task's staging container is deleted while the task runs."""
    gw = stack.gateways()
    task_id = ids.task_id(INPUT, name, retrying(lambda: gw.blobs.get_blob(INPUT, name)).etag)  # type: ignore[union-attr]

    def running() -> bool | NotYet:
        row = gw.ledger.get_input(task_id)
        if row is not None and row.state is InputState.SUBMITTED and stack.task_state(row.job_id, task_id) == "running":
            return True
        return NotYet(row)

    wait_until(running, 120, interval=0.3, what=f"{name} to start running")
    stack.blob_service().delete_container(ids.staging_container("staging", task_id))


def test_every_faulty_task_has_a_manifest(outcome: Outcome) -> None:
    assert not outcome.missing
    assert outcome.manifests[FINE]["status"] == "succeeded"


@pytest.mark.parametrize(("name", "code"), sorted(EXITS.items()))
def test_non_zero_exit_names_the_code_and_shows_stderr(outcome: Outcome, name: str, code: int) -> None:
    manifest = outcome.manifests[name]
    assert manifest["status"] == "failed"
    assert manifest["exit_code"] == code
    assert manifest["failure"]["code"] == "FailureExitCode"
    assert manifest["retries"] == 1  # the pipeline allows one retry, and it was used
    assert f"the input asks for exit code {code}" in manifest["stderr_tail"]


def test_wall_clock_limit_says_the_task_was_ended_for_running_too_long(outcome: Outcome) -> None:
    manifest = outcome.manifests[TIMEOUT]
    assert manifest["status"] == "failed"
    assert manifest["failure"]["code"] == "TaskEnded"
    assert "wall clock" in manifest["failure"]["message"]
    assert manifest["exit_code"] == 137


def test_failed_upload_names_the_file_pattern(outcome: Outcome) -> None:
    manifest = outcome.manifests[UPLOAD]
    assert manifest["status"] == "failed"
    assert manifest["failure"]["code"] == "FileUploadMiscError"
    # An exit-0 task whose outputs did not upload may have met a storage outage: it ran again, up to the
    # bound, and the manifest says so; here the destination stays gone, so it still failed.
    assert manifest["reactivations"] == MAX_REACTIVATIONS
    assert "ran the task again" in manifest["failure"]["note"]
    details = manifest["failure"]["details"]
    assert details["FilePattern"] and details["Message"]
    assert "sig=" not in str(manifest)


def test_missing_app_file_names_the_file(outcome: Outcome) -> None:
    manifest = outcome.manifests[NO_APP]
    assert manifest["status"] == "failed"
    assert manifest["failure"]["code"] == "BlobNotFound"
    assert "never-uploaded.py" in str(manifest["failure"])
    assert "sig=" not in str(manifest)


def test_missing_declared_output_is_a_failure_naming_the_file(outcome: Outcome) -> None:
    manifest = outcome.manifests[MISSING]
    assert manifest["status"] == "failed"
    assert manifest["exit_code"] == 0
    assert manifest["failure"]["code"] == "MissingOutput"
    assert "out/result.json" in manifest["failure"]["message"]
