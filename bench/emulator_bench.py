"""Emulator throughput: `python -m bench.emulator_bench [--tasks 1000] [--sequential 50] [--nodes 2 --slots 4]`.

Starts its own emulator (in a temporary state directory, through local/stack.py: the emulator itself must not
depend on the code that launches it, so this lives in bench/) and measures, with trivial tasks (`true`):
- per-task overhead: tasks added one at a time, each waited for; the time from the task's creationTime
  to its completion (endTime), as the emulator records them, so client polling is not counted;
- bulk: N tasks added by one `create_tasks` call, wall time until all are completed, and each task's
  own startTime -> endTime (preparing + running + recording).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from azure.batch import BatchClient
from azure.batch import models as m
from azure.core.credentials import AzureNamedKeyCredential

from local.stack import start_emulator


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def run(tasks: int, sequential: int, nodes: int, slots: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="batch-bench-") as workdir:
        emulator = start_emulator(Path(workdir))
        try:
            client = BatchClient(emulator.url, AzureNamedKeyCredential(emulator.account_name, emulator.account_key))
            client.create_pool(
                m.BatchPoolCreateOptions(
                    id="bench",
                    vm_size="standard_d2s_v3",
                    virtual_machine_configuration=m.VirtualMachineConfiguration(
                        image_reference=m.BatchVmImageReference(
                            publisher="canonical", offer="ubuntu-24_04-lts", sku="server", version="latest"
                        ),
                        node_agent_sku_id="batch.node.ubuntu 24.04",
                    ),
                    target_dedicated_nodes=nodes,
                    task_slots_per_node=slots,
                )
            )
            client.create_job(m.BatchJobCreateOptions(id="seq", pool_info=m.BatchPoolInfo(pool_id="bench")))
            overheads: list[float] = []
            for index in range(sequential):
                client.create_task("seq", m.BatchTaskCreateOptions(id=f"s{index}", command_line="true"))
                while (task := client.get_task("seq", f"s{index}")).state != m.BatchTaskState.COMPLETED:
                    time.sleep(0.002)
                info = task.execution_info
                assert info is not None and info.end_time is not None and info.exit_code == 0
                overheads.append((info.end_time - task.creation_time).total_seconds())

            client.create_job(m.BatchJobCreateOptions(id="bulk", pool_info=m.BatchPoolInfo(pool_id="bench")))
            started = time.perf_counter()
            result = client.create_tasks(
                "bulk", [m.BatchTaskCreateOptions(id=f"b{index}", command_line="true") for index in range(tasks)]
            )
            added = time.perf_counter() - started
            while True:
                counts = client.get_job_task_counts("bulk").task_counts
                if counts.completed == tasks:
                    break
                time.sleep(0.05)
            elapsed = time.perf_counter() - started
            finished = list(client.list_tasks("bulk", select=["id", "executionInfo"]))
            per_task = [
                (t.execution_info.end_time - t.execution_info.start_time).total_seconds()
                for t in finished
                if t.execution_info is not None and t.execution_info.start_time and t.execution_info.end_time
            ]
            return {
                "sequential_tasks": sequential,
                "overhead_median_s": statistics.median(overheads),
                "overhead_p90_s": _percentile(overheads, 0.9),
                "bulk_tasks": tasks,
                "bulk_added": len(result.result_values or []),
                "bulk_add_s": added,
                "bulk_total_s": elapsed,
                "bulk_succeeded": counts.succeeded,
                "bulk_tasks_per_s": tasks / elapsed,
                "bulk_task_median_s": statistics.median(per_task),
                "slots": nodes * slots,
                "requests": emulator.stats()["total"],
            }
        finally:
            emulator.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.emulator_bench", description=__doc__)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--sequential", type=int, default=50)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--slots", type=int, default=4)
    args = parser.parse_args(argv)
    figures = run(args.tasks, args.sequential, args.nodes, args.slots)
    print(f"per-task overhead ({figures['sequential_tasks']} tasks one at a time, creation -> completion):")
    print(f"  median {_ms(figures['overhead_median_s'])}, p90 {_ms(figures['overhead_p90_s'])}")
    print(f"bulk: {figures['bulk_added']} tasks added by one create_tasks call in {figures['bulk_add_s']:.2f} s,")
    print(
        f"  all {figures['bulk_succeeded']} completed in {figures['bulk_total_s']:.2f} s "
        f"({figures['bulk_tasks_per_s']:.0f} tasks/s on {figures['slots']} slots); "
        f"median task start -> end {_ms(figures['bulk_task_median_s'])}"
    )
    print(f"API requests served: {figures['requests']}")
    ok = figures["bulk_succeeded"] == args.tasks and figures["overhead_median_s"] < 0.05
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
