"""A job's summary step with the dev host SIGKILLed again and again while it starts, runs and is collected."""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shared import summary
from tests.chaos.harness import APPS, RESULTS, ChaosStack, Tally, input_content, pipeline, record, retrying, verify
from tests.waiting import wait_until

pytestmark = pytest.mark.chaos
INPUTS = 20
MIN_KILLS = 6
SEED = int(os.environ.get("CHAOS_SEED", "20261124"))
SUMMARY_PATH = "chaos/summary.py"
# Slow enough that the host is killed while it runs: the summary has to survive the host, not race it.
SUMMARY_APP = """\
import json, os, sys, time
listed = json.load(open(sys.argv[1]))
time.sleep(6)
os.makedirs(sys.argv[2], exist_ok=True)
json.dump({"job": listed["job_id"], "count": listed["count"],
           "inputs": sorted(m["input"] for m in listed["manifests"])},
          open(os.path.join(sys.argv[2], "summary.json"), "w"))
"""


@pytest.mark.timeout(600)
def test_summary_runs_once_with_the_host_killed_around_it(chaos_dir: Path, stacks: list[ChaosStack]) -> None:
    rng = random.Random(SEED)  # noqa: S311 - crash timing, not security
    spec = pipeline("sum", summary={"command": "python3 {app_dir}/chaos/summary.py {input} {output_dir}",
                                    "app_files": [SUMMARY_PATH]})  # fmt: skip
    stack = ChaosStack(chaos_dir, [spec], setting_overrides={
        "BATCHDROP_JOB_WINDOW_MINUTES": "1", "BATCHDROP_JOB_CLOSE_GRACE_MINUTES": "0",
    })  # fmt: skip
    stacks.append(stack.start())
    stack.blob_service().get_container_client(APPS).upload_blob(SUMMARY_PATH, SUMMARY_APP.encode())
    if datetime.now(UTC).second > 45:  # every input in one one-minute window: one job, one summary
        time.sleep(61 - datetime.now(UTC).second)
    names = [f"s/{index:02d}.txt" for index in range(INPUTS)]
    began = time.monotonic()
    stack.drop({name: input_content(name) for name in names})
    assert not stack.wait_for_manifests(names, timeout=120)
    job_ids = {job.id for job in stack.batch_client().list_jobs()}
    assert len(job_ids) == 1, job_ids
    job_id = job_ids.pop()
    manifest_name = summary.result_prefix("sum", job_id) + "_manifest.json"
    results = stack.blob_service().get_container_client(RESULTS)

    kills = 0
    killed_while: Counter[str] = Counter()

    def summary_state() -> str:
        found = [t for t in stack.batch_client().list_tasks(job_id) if t.id == summary.SUMMARY_TASK_ID]
        return str(getattr(found[0].state, "value", found[0].state)).lower() if found else "none"

    # Kill the host at random moments from the window's close until the summary is published, and a few times
    # after that (a poll that collects it again must not publish it again).
    while not results.get_blob_client(manifest_name).exists() or kills < MIN_KILLS:
        time.sleep(rng.uniform(0.5, 3.0))
        killed_while[retrying(summary_state)] += 1
        stack.kill_host()
        kills += 1
        stack.start_host()
        assert time.monotonic() - began < 400, f"no summary after {kills} kills ({dict(killed_while)})"

    wait_until(lambda: stack.gateways().ledger.get_job(job_id).state.value == "terminated", 60,  # type: ignore[union-attr]
               what="the job terminated after its summary")  # fmt: skip
    manifest = json.loads(results.download_blob(manifest_name).readall())
    result = json.loads(results.download_blob(summary.result_prefix("sum", job_id) + "summary.json").readall())
    tasks = [task for task in stack.batch_client().list_tasks(job_id) if task.id == summary.SUMMARY_TASK_ID]
    verdict = verify(stack, names, earlier_tasks=[summary.SUMMARY_TASK_ID])
    shown = next(job for job in stack.status()["jobs"] if job["job_id"] == job_id)
    seconds = time.monotonic() - began
    record(Tally.of("summary under crashes", "dev host SIGKILL around a job's summary step, restarted", kills,
                    verdict, seconds,
                    notes=f"seed {SEED}; summary task state at each kill {dict(killed_while)}; summary tasks "
                          f"{len(tasks)}, runs {[t.execution_info.retry_count for t in tasks]}"))  # fmt: skip

    assert killed_while["running"] >= 1, f"no kill while the summary ran: {dict(killed_while)}"
    assert len(tasks) == 1 and tasks[0].execution_info.retry_count == 0  # one task, run once
    assert (manifest["status"], manifest["task_id"], manifest["job_id"]) == ("succeeded", "_summary", job_id)
    assert result == {"job": job_id, "count": INPUTS, "inputs": names}
    assert shown["summary"] == {"state": "succeeded", "manifest": manifest_name}
    assert verdict.lost == [] and verdict.misfiled == []
    assert verdict.duplicate_tasks == 0 and verdict.stray_tasks == 0 and verdict.duplicate_manifests == 0
