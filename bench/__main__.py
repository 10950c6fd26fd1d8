"""`make bench [FILES=N]`: batchdrop and the naive baseline on one workload, side by side.

Both run against Azurite and the Batch emulator; the emulator's per-operation request counts are the
source of truth for API calls. Each system runs in its own process so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import sys
import tempfile
import time
from pathlib import Path

from bench.latency import SYSTEMS as LATENCY_SYSTEMS
from bench.latency import LatencyConfig, latency_table, run_latency
from bench.scenarios import SCENARIOS, ScenarioConfig, run_in_child
from local.stack import start_azurite, start_emulator

RESULTS = Path(__file__).parent / "results" / "latest.json"
ROWS = [
    "files",
    "poll_period_seconds",
    "batch_requests_total",
    "batch_requests_per_file",
    "poll_requests_per_poll",
    "duplicate_tasks",
    "seconds_to_all_tasks",
    "seconds_to_all_manifests",
    "output_bytes_through_functions",
    "completion_messages",
    "staging_containers_left_for_job_end",
    "manifests_when_stopped",
    "redeliveries_after_transient_errors",
    "peak_rss_mb",
    "cpu_seconds_app",
    "cpu_seconds_azurite",
    "cpu_seconds_batch_emulator_and_tasks",
]


def run_scenario(name: str, config: ScenarioConfig) -> dict[str, float]:
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue = context.Queue()  # type: ignore[type-arg]
    process = context.Process(target=run_in_child, args=(name, config, results))
    process.start()
    deadline = time.monotonic() + config.timeout_seconds
    while time.monotonic() < deadline:
        try:
            outcome: dict[str, float] = results.get(timeout=5)
        except queue.Empty:
            if not process.is_alive():
                raise RuntimeError(f"scenario {name} died with exit code {process.exitcode}") from None
            continue
        process.join(timeout=30)
        return outcome
    process.kill()
    raise RuntimeError(f"scenario {name} ran past {config.timeout_seconds} s")


def burst_table(figures: dict[str, float]) -> str:
    """The burst scenario's figures, one a line (its rows differ from the side-by-side table's)."""
    lines = ["burst (Event Grid batches of 100, every event twice, shuffled)"]
    for row, value in figures.items():
        lines.append(f"  {row:44}{value:>14.3f}" if isinstance(value, float) else f"  {row:44}{value!s:>14}")
    return "\n".join(lines)


def table(report: dict[str, dict[str, float]]) -> str:
    systems = [name for name in ("batchdrop", "batchdrop_sweep", "baseline") if name in report]
    lines = [f"{'metric':34}" + "".join(f"{name:>18}" for name in systems)] if systems else []
    for row in ROWS if systems else []:
        cells = []
        for name in systems:
            value = report[name].get(row)
            cells.append(f"{value:>18.3f}" if isinstance(value, float) else f"{value!s:>18}")
        lines.append(f"{row:34}" + "".join(cells))
    for ratio, value in report.get("ratios", {}).items():
        lines.append(f"ratio {ratio:28}{value:>18.1f}")
    if "burst" in report:
        lines.append(burst_table(report["burst"]))
    if "latency" in report:
        lines.append(latency_table(report["latency"]))  # type: ignore[arg-type]
    return "\n".join(lines)


def _run_latency(args: argparse.Namespace) -> dict[str, object]:
    systems = tuple(name.strip() for name in args.systems.split(",") if name.strip())
    unknown = [name for name in systems if name not in LATENCY_SYSTEMS]
    if unknown or not systems:
        named = ", ".join(unknown) or "(none given)"
        raise SystemExit(f"--systems: unknown {named}; choose of {', '.join(LATENCY_SYSTEMS)}")
    config = LatencyConfig(interval_seconds=args.arrival_seconds, duration_seconds=args.duration,
                           task_seconds=args.task_seconds, systems=systems,
                           completion_lag_seconds=args.completion_lag)  # fmt: skip
    print(f"running latency ({', '.join(systems)}): {config.files} files, 1 every {config.interval_seconds:g} s, "
          f"tasks of {config.task_seconds:g} s ...", file=sys.stderr, flush=True)  # fmt: skip
    return run_latency(config)


def run_isolated(name: str, args: argparse.Namespace) -> dict[str, float]:
    """One scenario on an Azurite and an emulator of its own: none pays for another's data (Azurite's
    in-memory store answers more slowly the more blobs it holds)."""
    with tempfile.TemporaryDirectory(prefix="batchdrop-bench-") as workdir:
        azurite = start_azurite(Path(workdir), in_memory=True)
        emulator = start_emulator(Path(workdir))
        try:
            config = ScenarioConfig(
                files=args.files,
                nodes=args.nodes,
                slots=args.slots,
                workdir=workdir,
                connection_string=azurite.connection_string,
                batch_url=emulator.url,
                batch_account=emulator.account_name,
                batch_key=emulator.account_key,
                poll_seconds=args.poll_seconds,
                stop_after_seconds=args.stop_after,
            )
            figures = run_scenario(name, config)
            # Where the 2 cores went (the uploads included, the same for every scenario): the time to all
            # manifests on this machine is mostly CPU shared by these three processes and the tasks.
            figures["cpu_seconds_azurite"] = _cpu_seconds(azurite.pid)
            figures["cpu_seconds_batch_emulator_and_tasks"] = _cpu_seconds(emulator.pid)
            return figures
        finally:
            emulator.stop()
            azurite.stop()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its waited-for children (/proc/<pid>/stat fields 14-17)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(value) for value in fields[11:15])
    return round(ticks / os.sysconf("SC_CLK_TCK"), 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--poll-seconds", type=float, default=10.0, help="poll timer period (Azure advice: 30)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--stop-after", type=float, metavar="SECONDS",
                        help="stop waiting for manifests this long after the first submission; report the figures "
                        "so far (seconds_to_all_manifests null, manifests_when_stopped)")  # fmt: skip
    parser.add_argument("--only", choices=sorted([*SCENARIOS, "latency"]), action="append",
                        help="run these scenarios only (default: batchdrop, batchdrop_sweep, baseline; the burst "
                        "and latency scenarios run with --only burst / --only latency, as `make bench` does)",
                        )  # fmt: skip
    latency = parser.add_argument_group("latency scenario (--only latency)")
    latency.add_argument("--arrival-seconds", type=float, default=2.0, help="one file every this many seconds")
    latency.add_argument("--duration", type=float, default=30.0, metavar="SECONDS",
                         help="seconds of arrivals (the documented run: 120)")  # fmt: skip
    latency.add_argument("--task-seconds", type=float, default=3.0, help="each task's fixed work (a sleep)")
    latency.add_argument("--completion-lag", type=float, default=0.0, metavar="SECONDS",
                         help="the emulator keeps each finished task `running` this long after its log uploads "
                         "(Batch marks tasks completed late); default 0")  # fmt: skip
    latency.add_argument("--systems", default=",".join(LATENCY_SYSTEMS),
                         help=f"comma-separated, of {', '.join(LATENCY_SYSTEMS)}")  # fmt: skip
    parser.add_argument("--combine", type=Path, nargs="+", metavar="REPORT",
                        help="merge reports of scenarios run separately (--only) into --out; runs nothing")  # fmt: skip
    args = parser.parse_args(argv)
    report: dict[str, dict[str, float]] = {}
    failed: list[str] = []
    if args.combine:
        for path in args.combine:
            loaded = json.loads(path.read_text())
            report.update({name: figures for name, figures in loaded.items() if name in SCENARIOS})
    for name in [] if args.combine else args.only or ["batchdrop", "batchdrop_sweep", "baseline"]:
        if name == "latency":
            report["latency"] = _run_latency(args)  # type: ignore[assignment]  # its own shape (latency_table)
            continue
        started = time.monotonic()
        print(f"running {name} with {args.files} files ...", file=sys.stderr, flush=True)
        try:
            report[name] = run_isolated(name, args)
        except RuntimeError as error:  # the other scenarios still run and are reported
            failed.append(f"{name}: {error}")
            print(f"  {name} FAILED: {error}", file=sys.stderr, flush=True)
            continue
        print(f"  {name} done in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        print(f"  {json.dumps(report[name])}", file=sys.stderr, flush=True)  # kept if a later one hangs
    if "batchdrop" in report and "baseline" in report:
        ours, theirs = report["batchdrop"], report["baseline"]
        report["ratios"] = {
            key: theirs[key] / ours[key] if ours[key] else float("inf")
            for key in ("batch_requests_total", "batch_requests_per_file", "poll_requests_per_poll")
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(table(report))
    print(f"\nwritten to {args.out}")
    for failure in failed:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
