"""The burst scenario run small: it must keep measuring what it claims (not how fast; no timing asserts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FILES = 150  # 300 events: three deliveries of 100

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def burst(tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    out = tmp_path_factory.mktemp("burst") / "burst.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "burst", "--files", str(FILES), "--nodes", "1", "--slots", "8",
         "--poll-seconds", "1", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "storage_requests_per_file_claim" in run.stdout
    figures: dict[str, float] = json.loads(out.read_text())["burst"]
    return figures


def test_every_event_twice_in_batches_of_100_makes_one_task_each(burst: dict[str, float]) -> None:
    assert burst["files"] == FILES and burst["events_delivered"] == 2 * FILES
    assert burst["deliveries"] == 3
    assert burst["duplicate_tasks"] == 0
    assert burst["output_bytes_through_functions"] == 0
    assert "manifests_when_stopped" not in burst  # every manifest was published


def test_the_burst_is_submitted_in_add_collections_not_one_request_per_file(burst: dict[str, float]) -> None:
    assert burst["task_add_requests"] == 0
    # 150 inputs of one job: at least 2 requests (100 + 50); the shuffled duplicates can split them further,
    # but each delivery sends at most one request per 100 of its new inputs.
    deliveries = burst["deliveries"] + burst["redeliveries_after_transient_errors"]
    assert 2 <= burst["task_add_collection_requests"] <= deliveries
    assert burst["batch_requests_per_file"] <= 0.05


def test_storage_requests_are_counted_in_every_phase_they_occur(burst: dict[str, float]) -> None:
    assert burst["storage_requests_per_file_claim"] >= 2  # at least the blob's properties and the row's claim
    assert burst["storage_requests_per_file_staging"] >= 1  # one staging container per task
    assert burst["storage_requests_per_file_manifest"] >= 1
    assert burst["storage_requests_per_file_collect"] >= 1
    assert burst["storage_requests_per_file_sas"] == 0  # SAS from the account key: no request (Azurite)
