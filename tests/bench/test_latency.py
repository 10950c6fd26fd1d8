"""The latency scenario run tiny: it must keep reporting what it claims, each phase and p50/p95/max (no timing asserts).

(b), poll-only every 30 s, is left out to keep the run short: it is (a)'s code with another subscriptions file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.latency import PHASES, file_phases, percentiles

ROOT = Path(__file__).resolve().parents[2]
FILES = 3

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def latency(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("latency") / "latency.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "latency", "--duration", str(FILES), "--arrival-seconds", "1",
         "--task-seconds", "1", "--systems", "a_events,c_baseline", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "upload -> manifest" in run.stdout and "goal (a) p50 <= task + 5 s" in run.stdout
    report: dict[str, Any] = json.loads(out.read_text())["latency"]
    return report


def _has_percentiles(stats: dict[str, Any], count: int) -> None:
    assert stats["count"] == count, stats
    assert all(isinstance(stats[key], float | int) for key in ("p50", "p95", "max")), stats
    assert stats["p50"] <= stats["p95"] <= stats["max"]


@pytest.mark.parametrize("system", ["a_events", "c_baseline"])
def test_every_file_has_its_manifest_and_every_phase_its_percentiles(latency: dict[str, Any], system: str) -> None:
    figures = latency["systems"][system]
    assert latency["config"]["files"] == FILES and figures["files"] == FILES
    assert figures["manifests"] == FILES and figures["finished"] is True
    _has_percentiles(figures["upload_to_manifest"], FILES)
    assert list(figures["phases"]) == [phase for phase, _ in PHASES[system]]
    for phase, stats in figures["phases"].items():
        # Every phase observed for every file (none merged into the next for want of a timestamp).
        assert stats["count"] == FILES, (phase, stats)
        _has_percentiles(stats, FILES)
    assert len(figures["load_average_before"]) == 3


def test_batchdrop_published_through_completion_events(latency: dict[str, Any]) -> None:
    figures = latency["systems"]["a_events"]
    # Each file's completion came from a task_finished invocation after its stderr event (the poll runs every
    # 5 minutes), and the task-finished subscription delivered those events: the warm-up file's and the three.
    assert figures["completion_invocations"]["task_finished"] >= FILES + 1
    delivered = {entry["name"]: entry["delivered"] for entry in figures["eventgrid"]["subscriptions"]}
    assert delivered["batchdrop-task-finished"] >= FILES + 1
    for row in figures["per_file"]:
        assert row["stamps"]["stderr_event"] is not None and row["stamps"]["completion_invoked"] is not None
    assert set(latency["goal"]) == {"a_p50_seconds", "limit_seconds", "met"}
    assert latency["goal"]["limit_seconds"] == 1 + 5


def test_a_phase_without_its_timestamp_is_merged_into_the_next() -> None:
    stamps = {"ingest_invoked": 0.5, "task_created": None, "task_started": 1.5, "task_ended": 2.5}
    phases = file_phases("c_baseline", stamps, start=0.0)
    assert phases["event"] == 0.5 and phases["submit"] is None and phases["dispatch"] == 1.0
    assert phases["run"] == 1.0 and phases["collect"] is None


def test_percentiles_are_nearest_rank() -> None:
    values = [float(value) for value in range(1, 21)]
    assert percentiles(values) == {"count": 20, "p50": 10.5, "p95": 19.0, "max": 20.0}
    assert percentiles([]) == {"count": 0, "p50": None, "p95": None, "max": None}
