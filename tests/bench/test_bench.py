"""The benchmark itself, run small: it must keep measuring what it claims (not how fast; no timing asserts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FILES = 12

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, float]]:
    out = tmp_path_factory.mktemp("bench") / "latest.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--files", str(FILES), "--nodes", "1", "--slots", "4",
         "--poll-seconds", "1", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "batch_requests_per_file" in run.stdout  # the side-by-side table
    loaded: dict[str, dict[str, float]] = json.loads(out.read_text())
    return loaded


def test_every_system_reports_every_metric(report: dict[str, dict[str, float]]) -> None:
    from bench.__main__ import ROWS

    for system in ("batchdrop", "batchdrop_sweep", "baseline"):
        batchdrop_only = ("completion_messages", "staging_containers_left_for_job_end")
        only_when_stopped = ("manifests_when_stopped",)
        missing = [row for row in ROWS if row not in batchdrop_only + only_when_stopped and row not in report[system]]
        assert "manifests_when_stopped" not in report[system]  # this run finished
        assert not missing, (system, missing)
        assert report[system]["files"] == FILES


def test_batchdrop_makes_one_task_per_file_though_every_event_came_twice(report: dict[str, dict[str, float]]) -> None:
    assert report["batchdrop"]["duplicate_tasks"] == 0
    assert report["batchdrop_sweep"]["duplicate_tasks"] == 0
    # The naive pattern adds a task per delivery: every file's second event is a duplicate.
    assert report["baseline"]["duplicate_tasks"] == FILES
    # Collect leaves each task's staging container to the job's end, which is past the bench's window.
    assert report["batchdrop"]["staging_containers_left_for_job_end"] == FILES


def test_only_the_baseline_pulls_output_bytes_through_the_function(report: dict[str, dict[str, float]]) -> None:
    payload_bytes = sum(len(f"payload of batch-00/file-{index:06}.txt\n") * 4 for index in range(FILES))
    assert report["batchdrop"]["output_bytes_through_functions"] == 0
    assert report["batchdrop_sweep"]["output_bytes_through_functions"] == 0
    # Each of a file's two tasks copies the input; the naive collector downloads both outputs.
    assert report["baseline"]["output_bytes_through_functions"] == 2 * payload_bytes


def test_request_counts_come_from_the_emulator(report: dict[str, dict[str, float]]) -> None:
    ours, sweep, theirs = report["batchdrop"], report["batchdrop_sweep"], report["baseline"]
    # Event path: one Task_Add per file, plus the pool, the job and at least one poll.
    assert FILES + 3 <= ours["batch_requests_total"] < 2 * FILES
    # Sweep: one Task_AddCollection for all twelve, plus pool, job and polls.
    assert 4 <= sweep["batch_requests_total"] < FILES
    # Baseline: per delivery a Job_Add and a Task_Add, so at least 4 per file.
    assert theirs["batch_requests_total"] >= 4 * FILES
    assert report["ratios"]["batch_requests_total"] == theirs["batch_requests_total"] / ours["batch_requests_total"]
    assert ours["poll_requests_per_poll"] == 1


def test_reports_of_separate_runs_combine_into_one_with_ratios(
    report: dict[str, dict[str, float]], tmp_path: Path
) -> None:
    parts = []
    for system in ("batchdrop", "baseline"):
        part = tmp_path / f"{system}.json"
        part.write_text(json.dumps({system: report[system]}))
        parts.append(str(part))
    out = tmp_path / "combined.json"
    run = subprocess.run([sys.executable, "-m", "bench", "--combine", *parts, "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr
    combined = json.loads(out.read_text())
    assert combined["batchdrop"] == report["batchdrop"] and combined["baseline"] == report["baseline"]
    assert combined["ratios"] == report["ratios"]
    assert "batchdrop_sweep" not in combined


def test_a_run_stopped_early_still_reports_requests_and_duplicates(tmp_path: Path) -> None:
    out = tmp_path / "stopped.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--files", str(FILES), "--nodes", "1", "--slots", "4",
         "--poll-seconds", "30", "--stop-after", "0", "--only", "batchdrop", "--only", "baseline", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    stopped = json.loads(out.read_text())
    for system in ("batchdrop", "baseline"):
        figures = stopped[system]
        # Stopped right after submission, before a second poll (every 30 s) could have found completions.
        assert figures["seconds_to_all_manifests"] is None
        assert figures["manifests_when_stopped"] < FILES
        assert figures["poll_requests_per_poll"] >= 1
    assert stopped["batchdrop"]["duplicate_tasks"] == 0
    assert stopped["baseline"]["duplicate_tasks"] == FILES
    assert stopped["baseline"]["batch_requests_total"] >= 4 * FILES  # two requests per delivery, two deliveries


def test_batchdrop_reports_storage_requests_per_file_by_phase_and_operation(
    report: dict[str, dict[str, float]],
) -> None:
    """Issue 16's measurement: every storage request of the app's clients, filed by phase and by operation."""
    for system in ("batchdrop", "batchdrop_sweep"):
        figures = report[system]
        phases = {key: value for key, value in figures.items() if key.startswith("storage_requests_per_file_")}
        assert set(phases) == {f"storage_requests_per_file_{p}" for p in ("claim", "sas", "staging", "collect",
                                                                          "manifest", "poll")}, system  # fmt: skip
        # Every input gets a staging container, is collected and gets one manifest written; the event path claims
        # each input with a request of its own, the sweep claims many in one request per ledger partition.
        for phase in ("staging", "collect", "manifest"):
            assert figures[f"storage_requests_per_file_{phase}"] >= 1, (system, phase, figures)
        assert figures["storage_requests_per_file_claim"] >= (1 if system == "batchdrop" else 0.01), figures
        assert figures["storage_requests_per_file_poll"] > 0, system  # completion messages, up to 32 inputs each
        total = round(sum(phases.values()), 3)
        assert abs(figures["storage_requests_per_file"] - total) < 0.01, (system, figures)
        operations = {key: value for key, value in figures.items() if key.startswith("storage_operation_per_file ")}
        assert abs(sum(operations.values()) - total) < 0.05, (system, operations)
        # The manifest is a block blob upload; the ledger claim a table write.
        assert any(key.startswith("storage_operation_per_file blob PUT") for key in operations), operations
        assert any(key.startswith("storage_operation_per_file table ") for key in operations), operations
