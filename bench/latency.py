"""The latency scenario: files arrive at a steady rate, each task does fixed work; upload → manifest per file.

Three systems, one after another (never side by side: they would share the 2 cores):

- `a_events`: batchdrop on the real local stack (Azurite, the Batch emulator, the local Event Grid, the dev host)
  with completion events (`batchdrop-task-finished`) and the poll every 5 minutes;
- `b_poll_only`: the same stack without the task-finished subscription, the poll every 30 s;
- `c_baseline`: bench/baseline.py on Azurite and the emulator, its monitor listing the job every 30 s.

Each file's delay is split into phases from timestamps the parts already record, read after the run (nothing is
sampled during it but the manifest listing a consumer would do): the client's upload, the dev host's log
(`Executing 'Functions.<name>'` lines, `published <input>` from collect), the local Event Grid's journal (the
`published` time of the task's stderr event), Batch's task times (creation, start, end) through the SDK, and the
manifest's `published_at`. Where a timestamp cannot be observed the phase is left out and the next one spans both.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from azure.batch import BatchClient
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient

from bench.baseline import Baseline
from local import stack as local_stack
from local.cli.lifecycle import HOST_APP
from local.cli.storage import RESULTS, prepare_storage
from shared import ids
from shared.batch import AzureBatch
from shared.pipelines import PoolSpec
from shared.storage import AzureBlobs

SYSTEMS = ("a_events", "b_poll_only", "c_baseline")
LABELS = {
    "a_events": "(a) batchdrop, completion events, poll every 5 min (local stack)",
    "b_poll_only": "(b) batchdrop, poll only every 30 s (local stack, no task-finished subscription)",
    "c_baseline": "(c) naive baseline, its own 30 s monitor (Azurite + emulator)",
}
POLL_EVENTS = "0 */5 * * * *"  # Azure's advised period once completion events run (infra/app/function.bicep)
POLL_ONLY = "*/30 * * * * *"  # the period advised before completion events
SWEEP = "0 */5 * * * *"  # as on Azure: the sweep only catches missed uploads, it must not race the events
BASELINE_POLL_SECONDS = 30.0
POOL = "latency-pool"
STAGING_PREFIX = "staging"  # the app's default
TASK_FINISHED = "batchdrop-task-finished"
WARMUP = "warmup/first.txt"  # creates the pool and the job before the measured arrivals; not measured
HOST_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ \[[^\]]*\] (\S+): (.*)$")
EXECUTING = re.compile(r"^Executing 'Functions\.(\w+)'")
PUBLISHED = re.compile(r"^published (.+): (succeeded|failed)$")
# Each phase ends at its stamp; the chain's first stamp is the upload (returned to the client).
PHASES = {
    "a_events": [("event", "ingest_invoked"), ("submit", "task_created"), ("dispatch", "task_started"),
                 ("run", "task_ended"), ("log_upload", "stderr_event"), ("completion_event", "completion_invoked"),
                 ("to_collect", "collect_started"), ("collect", "manifest_written"), ("seen", "manifest_seen")],
    "b_poll_only": [("event", "ingest_invoked"), ("submit", "task_created"), ("dispatch", "task_started"),
                    ("run", "task_ended"), ("wait_for_poll", "completion_invoked"),
                    ("to_collect", "collect_started"), ("collect", "manifest_written"), ("seen", "manifest_seen")],
    "c_baseline": [("event", "ingest_invoked"), ("submit", "task_created"), ("dispatch", "task_started"),
                   ("run", "task_ended"), ("wait_for_poll", "collect_started"), ("collect", "manifest_written"),
                   ("seen", "manifest_seen")],
}  # fmt: skip


@dataclass(frozen=True)
class LatencyConfig:
    interval_seconds: float = 2.0  # one file every this many seconds
    duration_seconds: float = 30.0  # of arrivals (the docs' full run: 120)
    task_seconds: float = 3.0  # each task's fixed work
    systems: tuple[str, ...] = SYSTEMS
    nodes: int = 2
    slots: int = 4
    watch_seconds: float = 0.2  # how often the consumer lists the results for manifests
    # The emulator keeps a finished task `running` this long after its log uploads (Batch's late `completed`).
    completion_lag_seconds: float = 0.0
    workdir: str = ""

    @property
    def files(self) -> int:
        return max(1, int(self.duration_seconds / self.interval_seconds))

    def command(self, input_path: str) -> str:
        # Fixed work, then the input copied as the output; {input} is batchdrop's sanitised path, never a blob name.
        return f"/bin/sh -c 'sleep {self.task_seconds:g} && mkdir -p out && cp {input_path} out/copy'"


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    """p50, p95 (nearest rank) and max of `values`, in seconds; None when there are none."""
    if not values:
        return {"count": 0, "p50": None, "p95": None, "max": None}
    ordered = sorted(values)
    rank95 = max(0, min(len(ordered) - 1, -(-95 * len(ordered) // 100) - 1))
    return {"count": len(ordered), "p50": round(statistics.median(ordered), 3), "p95": round(ordered[rank95], 3),
            "max": round(ordered[-1], 3)}  # fmt: skip


@dataclass
class Arrivals:
    """The steady-rate uploader and the consumer watching for manifests: both stamp with time.time()."""

    uploaded: dict[str, float] = field(default_factory=dict)  # when the upload call started: the delay's origin
    returned: dict[str, float] = field(default_factory=dict)  # when it returned
    seen: dict[str, float] = field(default_factory=dict)
    stopping: threading.Event = field(default_factory=threading.Event)

    def names(self, count: int) -> list[str]:
        return [f"latency/file-{index:04}.txt" for index in range(count)]

    def upload_steadily(self, service: BlobServiceClient, container: str, names: list[str], interval: float,
                        on_upload: Callable[[str], None] | None = None) -> None:  # fmt: skip
        """File i at start + i x interval (no drift: a slow upload does not delay the next one's slot)."""
        client = service.get_container_client(container)
        start = time.monotonic()
        for index, name in enumerate(names):
            self.stopping.wait(max(0.0, start + index * interval - time.monotonic()))
            self.uploaded[name] = time.time()
            client.upload_blob(name, f"payload of {name}\n".encode(), overwrite=True)
            self.returned[name] = time.time()
            if on_upload is not None:
                on_upload(name)

    def watch(self, service: BlobServiceClient, container: str, every: float) -> None:
        """List the results for manifests, as a consumer waiting for them would."""
        client = service.get_container_client(container)
        while not self.stopping.is_set():
            try:
                for blob in client.list_blobs(name_starts_with="latency/"):
                    if blob.name.endswith("/_manifest.json"):
                        self.seen.setdefault(blob.name[: -len("/_manifest.json")], time.time())
            except ResourceNotFoundError:
                pass  # nothing published yet
            self.stopping.wait(every)


def _wait_for(done: Callable[[], bool], seconds: float, every: float = 0.5) -> bool:
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


@contextmanager
def _thread(target: Callable[[], None], name: str) -> Iterator[threading.Thread]:
    errors: list[BaseException] = []

    def body() -> None:
        try:
            target()
        except BaseException as error:  # re-raised below: a bench must not hide a failure
            errors.append(error)

    thread = threading.Thread(target=body, name=name, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        if errors:
            raise RuntimeError(f"{name} failed") from errors[0]


def _epoch(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _batch_times(client: BatchClient, job_id: str, task_id: str) -> dict[str, float | None]:
    task = client.get_task(job_id, task_id)
    info = task.execution_info
    return {"task_created": _epoch(task.creation_time), "task_started": _epoch(info.start_time if info else None),
            "task_ended": _epoch(info.end_time if info else None)}  # fmt: skip


def host_log(path: Path) -> tuple[dict[str, list[float]], dict[str, float]]:
    """From the dev host's log: each function's invocation start times, and when collect published each input."""
    invoked: dict[str, list[float]] = {}
    published: dict[str, float] = {}
    for line in path.read_text(errors="replace").splitlines():
        match = HOST_LINE.match(line)
        if match is None:
            continue
        at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()  # the host logs local time
        if executing := EXECUTING.match(match.group(3)):
            invoked.setdefault(executing.group(1), []).append(at)
        elif match.group(2) == "shared.collect" and (done := PUBLISHED.match(match.group(3))):
            published.setdefault(done.group(1), at)
    return invoked, published


def stderr_events(journal: Path) -> dict[str, float]:
    """staging container → when the local Event Grid recorded its task's stderr upload (journal `published`)."""
    found: dict[str, float] = {}
    if not journal.exists():
        return found
    for line in journal.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("add") == TASK_FINISHED:
            container = str(record["event"]["subject"]).split("/containers/", 1)[1].split("/", 1)[0]
            found.setdefault(container, float(record["published"]))
    return found


def _latest(times: list[float], not_after: float | None, not_before: float | None = None) -> float | None:
    """The latest of `times` at or before `not_after` (and not before `not_before`): the invocation that did it."""
    if not_after is None:
        return None
    slack = 0.002  # log lines carry milliseconds
    chosen = [at for at in times if at <= not_after + slack and (not_before is None or at >= not_before - slack)]
    return max(chosen) if chosen else None


def file_phases(system: str, stamps: dict[str, float | None], start: float) -> dict[str, float | None]:
    """Each phase's seconds: from the previous observed stamp to its own (None when its stamp is not observed)."""
    phases: dict[str, float | None] = {}
    previous = start
    for phase, stamp in PHASES[system]:
        at = stamps.get(stamp)
        if at is None:
            phases[phase] = None
            continue
        phases[phase] = round(at - previous, 3)
        previous = at
    return phases


def summarise(
    system: str, config: LatencyConfig, per_file: list[dict[str, Any]], extra: dict[str, Any]
) -> dict[str, Any]:
    totals = [row["upload_to_manifest"] for row in per_file if row["upload_to_manifest"] is not None]
    written = [row["upload_to_manifest_written"] for row in per_file if row["upload_to_manifest_written"] is not None]
    phases = {phase: percentiles([row["phases"][phase] for row in per_file if row["phases"].get(phase) is not None])
              for phase, _ in PHASES[system]}  # fmt: skip
    return {
        "label": LABELS[system],
        "files": config.files,
        "manifests": len(totals),
        "upload_to_manifest": percentiles(totals),
        "upload_to_manifest_written": percentiles(written),
        "phases": phases,
        **extra,
        "per_file": per_file,
    }


def _emulator_args(config: LatencyConfig) -> list[str]:
    return ["--completion-lag-seconds", f"{config.completion_lag_seconds:g}"] if config.completion_lag_seconds else []


def _pipelines(config: LatencyConfig, path: Path) -> Path:
    path.write_text(json.dumps({"pipelines": [{
        "name": "latency", "command": config.command("{input}"), "outputs": ["**/*"], "app_files": [],
        "pool": {"id": POOL, "dedicated_nodes": config.nodes, "task_slots_per_node": config.slots},
        "max_retries": 0, "max_wall_clock_seconds": 600,
    }]}))  # fmt: skip
    return path


def _subscriptions(events: bool, path: Path) -> Path:
    document = json.loads(local_stack.DEFAULT_SUBSCRIPTIONS.read_text())
    if not events:
        document["subscriptions"] = [entry for entry in document["subscriptions"] if entry["name"] != TASK_FINISHED]
    path.write_text(json.dumps(document))
    return path


@contextmanager
def local_stack_with(
    workdir: Path, pipelines: Path, subscriptions: Path, poll: str, emulator_args: list[str]
) -> Iterator[local_stack.Stack]:
    """The stack as `batchdrop up` starts it (local/cli/lifecycle.py), with this run's poll, sweep, subscriptions."""
    started: list[local_stack.Service] = []
    try:
        azurite = local_stack.start_azurite(workdir, in_memory=True)
        started.append(azurite)
        emulator = local_stack.start_emulator(workdir, emulator_args)
        started.append(emulator)
        overrides = {"BATCHDROP_PIPELINES_FILE": str(pipelines), "BATCHDROP_POLL_SCHEDULE": poll,
                     "BATCHDROP_SWEEP_SCHEDULE": SWEEP}  # fmt: skip
        host_port = local_stack.free_port()
        grid = local_stack.start_eventgrid(workdir, azurite, f"http://127.0.0.1:{host_port}",
                                           subscriptions=subscriptions, settings=overrides)  # fmt: skip
        started.append(grid)
        settings = local_stack.app_settings(azurite, emulator, overrides, grid)
        prepare_storage(azurite.connection_string)
        host = local_stack.start_host(workdir, HOST_APP, settings, port=host_port)
        started.append(host)
        yield local_stack.Stack(azurite=azurite, emulator=emulator, host=host, eventgrid=grid)
    finally:
        for service in reversed(started):
            service.stop()


def run_batchdrop(system: str, config: LatencyConfig, workdir: Path) -> dict[str, Any]:
    events = system == "a_events"
    poll = POLL_EVENTS if events else POLL_ONLY
    pipelines = _pipelines(config, workdir / "pipelines.json")
    subscriptions = _subscriptions(events, workdir / "subscriptions.json")
    with local_stack_with(workdir, pipelines, subscriptions, poll, _emulator_args(config)) as stack:
        assert stack.eventgrid is not None and stack.host is not None
        writer = BlobServiceClient.from_connection_string(stack.eventgrid.connection_string)  # uploads raise events
        reader = BlobServiceClient.from_connection_string(stack.azurite.connection_string)
        batch = BatchClient(
            stack.emulator.url, AzureNamedKeyCredential(stack.emulator.account_name, stack.emulator.account_key)
        )
        arrivals = Arrivals()
        warm = _warm_up(writer, reader, 60.0 + (0 if events else 35.0))
        names = arrivals.names(config.files)
        settle = config.duration_seconds + config.task_seconds + 60.0 + (0 if events else 30.0)
        with _thread(lambda: arrivals.watch(reader, RESULTS, config.watch_seconds), "manifest watcher"):
            arrivals.upload_steadily(writer, "input", names, config.interval_seconds)
            finished = _wait_for(lambda: len(arrivals.seen) >= len(names), settle)
            arrivals.stopping.set()
        invoked, published = host_log(stack.host.log_path)
        stderr = stderr_events(workdir / "eventgrid" / "journal.jsonl")
        # What enqueued the completion: the event's task_finished, or its delayed re-check when Batch did not say
        # `completed` yet at the event; without events, the poll.
        enqueuers = ("task_finished", "recheck_task") if events else ("poll",)
        completion = sorted(at for function in enqueuers for at in invoked.get(function, []))
        per_file = []
        for name in names:
            manifest = _manifest(reader, name)
            stamps: dict[str, float | None] = {"upload_returned": arrivals.returned.get(name),
                                               "manifest_seen": arrivals.seen.get(name)}  # fmt: skip
            if manifest is not None:
                stamps.update(_batch_times(batch, str(manifest["job_id"]), str(manifest["task_id"])))
                stamps["manifest_written"] = datetime.fromisoformat(str(manifest["published_at"])).timestamp()
                stamps["ingest_invoked"] = _latest(invoked.get("ingest_events", []), stamps["task_created"],
                                                   arrivals.uploaded[name])  # fmt: skip
                stamps["collect_started"] = _latest(invoked.get("collect", []), published.get(name),
                                                    stamps["task_ended"])  # fmt: skip
                if events:
                    staging = ids.staging_container(STAGING_PREFIX, str(manifest["task_id"]))
                    stamps["stderr_event"] = stderr.get(staging)
                # The invocation that enqueued the completion started once the task had finished (the emulator
                # stamps endTime a moment after the log upload that raised the event).
                ends = [at for at in (stamps["task_ended"], stamps.get("stderr_event")) if at is not None]
                finished_at = min(ends) if ends else None
                stamps["completion_invoked"] = _latest(completion, stamps["collect_started"], finished_at)
            per_file.append(_row(system, name, arrivals.uploaded[name], stamps))
        grid_state = stack.eventgrid.subscriptions()
    extra = {"poll_schedule": poll, "finished": finished, "warm_up_seconds": round(warm, 2),
             "completion_invocations": {name: len(invoked.get(name, [])) for name in ("task_finished", "poll",
                                                                                      "recheck_task", "collect")},
             "eventgrid": grid_state}  # fmt: skip
    return summarise(system, config, per_file, extra)


def _row(system: str, name: str, uploaded: float, stamps: dict[str, float | None]) -> dict[str, Any]:
    seen, written = stamps.get("manifest_seen"), stamps.get("manifest_written")
    return {
        "input": name,
        "upload_to_manifest": round(seen - uploaded, 3) if seen is not None else None,
        "upload_to_manifest_written": round(written - uploaded, 3) if written is not None else None,
        "phases": file_phases(system, stamps, uploaded),
        "uploaded_at": round(uploaded, 3),
        "stamps": {key: round(value, 3) if value is not None else None for key, value in stamps.items()},
    }


def _manifest(reader: BlobServiceClient, name: str) -> dict[str, Any] | None:
    try:
        document: dict[str, Any] = json.loads(
            reader.get_blob_client(RESULTS, f"{name}/_manifest.json").download_blob().readall()
        )
    except ResourceNotFoundError:
        return None
    return document


def _warm_up(writer: BlobServiceClient, reader: BlobServiceClient, seconds: float) -> float:
    """One file through the whole path first (pool, job, queues exist), so the figures are the steady state's."""
    started = time.monotonic()
    writer.get_container_client("input").upload_blob(WARMUP, b"warm-up\n", overwrite=True)
    manifest = reader.get_blob_client(RESULTS, f"{WARMUP}/_manifest.json")
    if not _wait_for(manifest.exists, seconds):
        raise RuntimeError(f"the warm-up file's manifest did not appear within {seconds:g} s")
    return time.monotonic() - started


def run_baseline(config: LatencyConfig, workdir: Path) -> dict[str, Any]:
    azurite = local_stack.start_azurite(workdir, in_memory=True)
    emulator = None
    try:
        emulator = local_stack.start_emulator(workdir, _emulator_args(config))
        service = BlobServiceClient.from_connection_string(azurite.connection_string)
        containers = {"input": "input", "staging": "staging", "results": RESULTS}
        for container in containers.values():
            service.create_container(container)
        credential = AzureNamedKeyCredential(emulator.account_name, emulator.account_key)
        batch = BatchClient(emulator.url, credential)
        AzureBatch(batch).ensure_pool(PoolSpec(id=POOL, dedicated_nodes=config.nodes, task_slots_per_node=config.slots))
        naive = Baseline(batch, service, AzureBlobs.from_connection_string(azurite.connection_string),
                         "job-latency", POOL, containers, config.command("input/data"))  # fmt: skip
        arrivals = Arrivals()
        triggered: dict[str, float] = {}

        def on_upload(name: str) -> None:
            # The sample's blob trigger, invoked at once (on Azure a polling blob trigger adds its own delay).
            triggered[name] = time.time()
            naive.on_event(name)

        def monitor() -> None:
            while not arrivals.stopping.wait(BASELINE_POLL_SECONDS):
                naive.poll_and_collect()

        names = arrivals.names(config.files)
        settle = config.duration_seconds + config.task_seconds + BASELINE_POLL_SECONDS + 60.0
        with (
            _thread(lambda: arrivals.watch(service, RESULTS, config.watch_seconds), "manifest watcher"),
            _thread(monitor, "baseline monitor"),
        ):
            arrivals.upload_steadily(service, "input", names, config.interval_seconds, on_upload)
            finished = _wait_for(lambda: len(arrivals.seen) >= len(names), settle)
            arrivals.stopping.set()
        tasks = {
            next(env.value for env in task.environment_settings or [] if env.name == "SOURCE_NAME"): task
            for task in batch.list_tasks(naive.job_id)
        }
        per_file = []
        for name in names:
            stamps: dict[str, float | None] = {"upload_returned": arrivals.returned.get(name),
                                               "ingest_invoked": triggered.get(name),
                                               "manifest_seen": arrivals.seen.get(name)}  # fmt: skip
            if name in tasks:
                task = tasks[name]
                info = task.execution_info
                stamps.update({"task_created": _epoch(task.creation_time),
                               "task_started": _epoch(info.start_time if info else None),
                               "task_ended": _epoch(info.end_time if info else None)})  # fmt: skip
            if name in naive.collect_times:
                stamps["collect_started"], stamps["manifest_written"] = naive.collect_times[name]
            per_file.append(_row("c_baseline", name, arrivals.uploaded[name], stamps))
    finally:
        if emulator is not None:
            emulator.stop()
        azurite.stop()
    return summarise("c_baseline", config, per_file,
                     {"poll_seconds": BASELINE_POLL_SECONDS, "finished": finished})  # fmt: skip


def run_latency(config: LatencyConfig) -> dict[str, Any]:
    """Every chosen system in turn, each on servers of its own; the load average before and after each."""
    report: dict[str, Any] = {"config": {**asdict(config), "files": config.files}, "systems": {}}
    for system in config.systems:
        before = os.getloadavg()
        with tempfile.TemporaryDirectory(prefix=f"batchdrop-latency-{system}-", dir=config.workdir or None) as work:
            figures = (
                run_baseline(config, Path(work))
                if system == "c_baseline"
                else run_batchdrop(system, config, Path(work))
            )
        figures["load_average_before"] = [round(value, 2) for value in before]
        figures["load_average_after"] = [round(value, 2) for value in os.getloadavg()]
        report["systems"][system] = figures
    if "a_events" in report["systems"]:
        p50 = report["systems"]["a_events"]["upload_to_manifest"]["p50"]
        limit = config.task_seconds + 5.0
        report["goal"] = {"a_p50_seconds": p50, "limit_seconds": limit, "met": p50 is not None and p50 <= limit}
    return report


def latency_table(report: dict[str, Any]) -> str:
    config = report["config"]
    lines = [f"latency: {config['files']} files, 1 every {config['interval_seconds']:g} s, "
             f"tasks of {config['task_seconds']:g} s (seconds: p50 / p95 / max)"]  # fmt: skip
    for figures in report["systems"].values():
        total = figures["upload_to_manifest"]
        lines.append(f"  {figures['label']}")
        load = f"load {figures['load_average_before'][0]:.1f}->{figures['load_average_after'][0]:.1f}"
        done = f"manifests {figures['manifests']}/{figures['files']}"
        lines.append(f"    {'upload -> manifest':24}{_cell(total)}   {done}   {load}")
        for phase, stats in figures["phases"].items():
            lines.append(f"    {phase:24}{_cell(stats)}")
    if "goal" in report:
        goal = report["goal"]
        verdict = "met" if goal["met"] else "NOT met"
        lines.append(f"  goal (a) p50 <= task + 5 s = {goal['limit_seconds']:g} s: {verdict} "
                     f"(p50 {goal['a_p50_seconds']})")  # fmt: skip
    return "\n".join(lines)


def _cell(stats: dict[str, Any]) -> str:
    if stats["p50"] is None:
        return f"{'-':>8} {'-':>8} {'-':>8}"
    return f"{stats['p50']:>8.2f} {stats['p95']:>8.2f} {stats['max']:>8.2f}"
