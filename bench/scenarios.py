"""The bench's workloads: batchdrop (event path, sweep path) and the naive baseline."""

from __future__ import annotations

import json
import random
import resource
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from azure.batch import BatchClient
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient

from bench.baseline import Baseline
from bench.storage_counts import StorageRequests, counting_gateways
from local.eventgrid.events import BlobWrite, blob_created
from local.stack import Emulator
from shared.batch import AzureBatch
from shared.collect import CollectAction, CollectOutcome, collect
from shared.collect_batch import collect_message
from shared.errors import TransientError
from shared.events import parse_blob_created, submit_event
from shared.gateways import Gateways
from shared.messages import decode_completions
from shared.models import CompletionEvent
from shared.pipelines import PoolSpec
from shared.poll import poll
from shared.settings import load_settings
from shared.storage import AzureBlobs, parse_connection_string
from shared.submit import SubmitOutcome, sweep

# Trivial work: the input, copied. {input} is batchdrop's own sanitised path, never a blob name.
COMMAND = "/bin/sh -c 'mkdir -p out && cp {input} out/copy'"
BASELINE_COMMAND = "/bin/sh -c 'mkdir -p out && cp input/data out/copy'"
T = TypeVar("T")
WORKERS = 8  # concurrent function instances
COLLECT_IDLE_SECONDS = 0.2  # the queue trigger's pause when the queue is empty
REDELIVERIES = 8  # Event Grid and the queue deliver again what failed; the bench does the same
# What a trigger's failure looks like when storage or Batch is briefly unreachable: the host delivers again.
TRANSIENT = (TransientError, AzureError)
_retries = {"count": 0}
_retries_lock = threading.Lock()


def _redelivered(call: Callable[[], T]) -> T:
    """Run one trigger invocation; on a transient failure deliver it again (with backoff), as the host would."""
    for attempt in range(REDELIVERIES):
        try:
            return call()
        except TRANSIENT:
            if attempt == REDELIVERIES - 1:
                raise
            with _retries_lock:
                _retries["count"] += 1
            time.sleep(min(0.2 * 2**attempt, 10.0))
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class ScenarioConfig:
    files: int
    nodes: int
    slots: int
    workdir: str
    connection_string: str
    batch_url: str
    batch_account: str
    batch_key: str
    poll_seconds: float = 10.0  # the poll timer's period: 2 s in the local demo, 30 s advised on Azure
    timeout_seconds: float = 6 * 3600
    # Stop waiting for manifests this long after the first submission and report what was measured so far.
    stop_after_seconds: float | None = None


def _emulator(config: ScenarioConfig) -> Emulator:
    # Only the stats calls are used; the stack's process belongs to the parent.
    return Emulator(name="batch-emulator", process=None, url=config.batch_url, log_path=Path("/dev/null"),  # type: ignore[arg-type]
                    account_name=config.batch_account, account_key=config.batch_key)  # fmt: skip


def _names(tag: str) -> dict[str, str]:
    suffix = f"{tag}{uuid.uuid4().hex[:6]}"
    return {
        "input": f"input-{suffix}",
        "staging": f"staging-{suffix}",
        "results": f"results-{suffix}",
        "apps": f"apps-{suffix}",
        "queue": f"completions-{suffix}",
        "table": f"ledger{suffix}",
        "pool": f"pool-{suffix}",
    }


@dataclass(frozen=True)
class Uploaded:
    """One bench input as its upload's response describes it: what Event Grid's BlobCreated event carries."""

    name: str
    etag: str
    last_modified: datetime
    size: int


def _upload(config: ScenarioConfig, container: str, count: int) -> list[Uploaded]:
    service = BlobServiceClient.from_connection_string(config.connection_string)
    client = service.create_container(container)
    names = [f"batch-{index // 1000:02}/file-{index:06}.txt" for index in range(count)]

    def put(name: str) -> Uploaded:
        payload = f"payload of {name}\n".encode() * 4
        response = client.get_blob_client(name).upload_blob(payload)  # the response headers, as a dict
        return Uploaded(name, str(response["etag"]), response["last_modified"], len(payload))

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(put, names))


def blob_created_event(connection_string: str, container: str, upload: Uploaded, event_id: str) -> dict[str, Any]:
    """The BlobCreated event (Event Grid schema) the local Event Grid raises for an upload, with the upload's time
    as its eventTime (Azure Storage raises it when the blob is committed)."""
    blob_endpoint = parse_connection_string(connection_string)["BlobEndpoint"].rstrip("/")
    account = urlparse(blob_endpoint).path.strip("/")  # Azurite: path-style URLs
    write = BlobWrite(account, container, upload.name, "PutBlob", upload.etag, "application/octet-stream", upload.size)
    event = blob_created(write, blob_endpoint)
    event["id"] = event_id
    event["eventTime"] = upload.last_modified.isoformat().replace("+00:00", "Z")
    return event


def deliver_event(gw: Gateways, event: dict[str, Any]) -> SubmitOutcome:
    """One BlobCreated event through the single-event trigger's use case (shared/triggers/boundary.py)."""
    topic = event.get("topic", event.get("source"))
    created = parse_blob_created(event["id"], event.get("data"), event.get("subject"), topic, event.get("eventTime"))
    return submit_event(gw, created)


def pipelines_settings(config: ScenarioConfig, names: dict[str, str], workdir: Path) -> dict[str, object]:
    """The app settings of a bench run: its own containers, queue, table and pool, one trivial pipeline."""
    pipelines = {
        "pipelines": [
            {
                "name": f"bench-{names['pool'][5:]}",
                "command": COMMAND,
                "outputs": ["**/*"],
                "pool": {"id": names["pool"], "dedicated_nodes": config.nodes, "task_slots_per_node": config.slots},
                "max_retries": 0,
                "max_wall_clock_seconds": 600,
            }
        ]
    }
    pipelines_file = workdir / f"pipelines-{names['pool']}.json"
    pipelines_file.write_text(json.dumps(pipelines))
    return {
        "BatchdropStorage": config.connection_string,
        "BATCHDROP_BATCH_URL": config.batch_url,
        "BATCHDROP_BATCH_ACCOUNT_NAME": config.batch_account,
        "BATCHDROP_BATCH_ACCOUNT_KEY": config.batch_key,
        "BATCHDROP_PIPELINES_FILE": str(pipelines_file),
        "BATCHDROP_INPUT_CONTAINER": names["input"],
        "BATCHDROP_APPS_CONTAINER": names["apps"],
        "BATCHDROP_STAGING_PREFIX": f"st{names['pool'][5:]}",
        "BATCHDROP_RESULTS_CONTAINER": names["results"],
        "BATCHDROP_COMPLETIONS_QUEUE": names["queue"],
        "BATCHDROP_LEDGER_TABLE": names["table"],
        "BATCHDROP_POLL_OVERLAP_SECONDS": 10,
        # The job stays open for the whole run, so every poll (and the steady-state one) is a poll of an active
        # job holding all its tasks, whenever the run starts. Job end is tested in tests/integration/test_faults.py.
        "BATCHDROP_JOB_WINDOW_MINUTES": 1440,
        "BATCHDROP_JOB_CLOSE_GRACE_MINUTES": 7 * 24 * 60,
    }


def _gateways(config: ScenarioConfig, names: dict[str, str], workdir: Path, counter: StorageRequests) -> Gateways:
    """The app's gateways with the storage request counter on every storage client."""
    settings = load_settings(**pipelines_settings(config, names, workdir))
    return counting_gateways(config.connection_string, settings, counter)


# What a collection that leaves an input done answers (a reactivated task is not done yet).
DONE = (CollectAction.PUBLISHED, CollectAction.ALREADY_PUBLISHED, CollectAction.SUPERSEDED)


def _drain(gw: Gateways, queue: QueueClient, pool: ThreadPoolExecutor) -> list[CollectOutcome]:
    """Collect every message now on the queue, WORKERS at a time, as the queue trigger would (shared/triggers/
    collector.py: a lone completion, or the poll's many collected each on its own); what each collection did."""
    handled: list[CollectOutcome] = []
    while True:
        messages = _redelivered(
            lambda: list(queue.receive_messages(messages_per_page=32, max_messages=32, visibility_timeout=60))
        )
        if not messages:
            return handled

        def handle(message: Any) -> list[CollectOutcome]:
            completions = decode_completions(message.content)
            if len(completions) == 1:
                [only] = completions
                assert isinstance(only, CompletionEvent), only
                collected = [_redelivered(lambda: collect(gw, only))]
            else:  # those that fail are sent again one to a message: a later drain collects them. In this thread:
                # the WORKERS threads are the collector's concurrency, and their requests are filed under collect.
                collected = _redelivered(lambda: collect_message(gw, message.id, completions, threads=1)).collected
            try:
                _redelivered(lambda: queue.delete_message(message))
            except ResourceNotFoundError:
                pass  # its visibility ran out (or a retried delete had landed): delivered again, collect is idempotent
            return collected

        for outcomes in pool.map(handle, messages):
            handled.extend(outcomes)


def _manifests(service: BlobServiceClient, container: str) -> int:
    try:
        return sum(
            1 for blob in service.get_container_client(container).list_blobs() if blob.name.endswith("_manifest.json")
        )
    except ResourceNotFoundError:  # nothing collected yet: collect creates the results container
        return 0


class Loop(threading.Thread):
    """A timer or queue trigger running beside submission, as the Functions host runs them."""

    def __init__(self, name: str, body: Callable[[], object], pause: float) -> None:
        super().__init__(name=name, daemon=True)
        self.body = body
        self.pause = pause
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.body()
            except BaseException as error:  # surfaced by check(): a bench must not hide a failure
                self.error = error
                return
            self.stopping.wait(self.pause)

    def check(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"{self.name} failed") from self.error

    def stop(self) -> None:
        self.stopping.set()
        self.join()
        self.check()


def _wait_until(done: Callable[[], bool], loops: list[Loop], config: ScenarioConfig, started: float) -> bool:
    """True once done; False when the run's --stop-after came first (the figures so far are reported)."""
    deadline = time.monotonic() + config.timeout_seconds
    while not done():
        for loop in loops:
            loop.check()
        if config.stop_after_seconds is not None and time.monotonic() - started >= config.stop_after_seconds:
            return False
        if time.monotonic() > deadline:
            raise TimeoutError(f"not done after {config.timeout_seconds} s")
        time.sleep(0.5)
    return True


def _stopped(report: dict[str, float | None], finished: bool, manifests: int) -> None:
    """Mark a report cut short by --stop-after: no time to all manifests, and how many there were."""
    if not finished:
        report["seconds_to_all_manifests"] = None
        report["manifests_when_stopped"] = manifests




def run_app(
    gw: Gateways, counter: StorageRequests, queue: QueueClient, config: ScenarioConfig, submit: Callable[[], None]
) -> tuple[float, float, bool, int]:
    """`submit` with the poll timer and the collect queue trigger running beside it, as the Functions host runs
    them (their storage requests filed under poll and collect), until every file has a manifest or the run is
    cut short: (seconds to all tasks, seconds to all manifests, finished, completions collected).

    Done means every file's task id answered done by a collection: a poll may emit a completion twice (inside its
    overlap), so the number of collections is not the number of files done."""
    collected = [0]
    done: set[str] = set()
    # The collector's own threads (queue trigger instances) run collect only.
    with ThreadPoolExecutor(WORKERS, initializer=counter.enter, initargs=("collect",)) as pool:

        def collect_all() -> None:
            with counter.phase("collect"):
                outcomes = _drain(gw, queue, pool)
                collected[0] += len(outcomes)
                done.update(outcome.task_id for outcome in outcomes if outcome.action in DONE)

        def poll_once() -> None:
            with counter.phase("poll"):
                _redelivered(lambda: poll(gw))

        started = time.monotonic()
        loops = [Loop("poll", poll_once, config.poll_seconds), Loop("collect", collect_all, COLLECT_IDLE_SECONDS)]
        for loop in loops:
            loop.start()
        submit()
        tasks_done = time.monotonic() - started
        finished = _wait_until(lambda: len(done) >= config.files, loops, config, started)
        manifests_done = time.monotonic() - started
        for loop in loops:
            loop.stop()
    return tasks_done, manifests_done, finished, collected[0]


def _run_batchdrop(
    config: ScenarioConfig, submit_all: Callable[[Gateways, list[Uploaded]], None], tag: str
) -> dict[str, float]:
    names = _names(tag)
    workdir = Path(config.workdir)
    inputs = _upload(config, names["input"], config.files)
    counter = StorageRequests(f"st{names['pool'][5:]}")
    gw = _gateways(config, names, workdir, counter)
    emulator = _emulator(config)
    service = BlobServiceClient.from_connection_string(config.connection_string)
    queue = QueueClient.from_connection_string(config.connection_string, names["queue"])
    gw.queue.ensure()  # type: ignore[attr-defined]  # the Functions host creates a trigger's queue
    emulator.reset_stats()
    tasks_done, manifests_done, finished, published = run_app(
        gw, counter, queue, config, lambda: submit_all(gw, inputs)
    )
    storage = counter.per_file(config.files)  # before the steady-state poll below
    stats = emulator.stats()
    total = int(stats["total"])  # type: ignore[call-overload]
    print(f"  {tag}: requests by operation {stats['requests']}", flush=True)
    emulator.reset_stats()
    poll(gw)  # steady state: the job holds every task, all collected
    poll_requests = int(emulator.stats()["total"])  # type: ignore[call-overload]
    manifests = _manifests(service, names["results"])
    assert manifests == config.files or not finished, manifests
    report = _report(config, total, poll_requests, _duplicates(config, gw, names), tasks_done, manifests_done,
                     gw.blobs.bytes_read)  # type: ignore[attr-defined]  # fmt: skip
    _stopped(report, finished, manifests)  # type: ignore[arg-type]
    report["completion_messages"] = published  # completions collected: > files when a poll re-emitted one
    report.update(storage)
    # Collect leaves staging to the job's end (the poll clears it after termination, past this run's window).
    report["staging_containers_left_for_job_end"] = sum(
        1 for _ in service.list_containers(name_starts_with=f"{gw.settings.staging_prefix}-")
    )
    return report


def _duplicates(config: ScenarioConfig, gw: Gateways, names: dict[str, str]) -> int:
    client = BatchClient(config.batch_url, AzureNamedKeyCredential(config.batch_account, config.batch_key))
    jobs = [job.id for job in client.list_jobs() if job.pool_info and job.pool_info.pool_id == names["pool"]]
    tasks = sum(1 for job in jobs for _ in client.list_tasks(job, select=["id"]))
    return tasks - config.files


def _report(config: ScenarioConfig, total: int, poll_requests: int, duplicates: int, tasks_done: float,
            manifests_done: float, output_bytes: int) -> dict[str, float]:  # fmt: skip
    return {
        "files": config.files,
        "poll_period_seconds": config.poll_seconds,
        "batch_requests_total": total,
        "batch_requests_per_file": round(total / config.files, 4),
        "poll_requests_per_poll": poll_requests,
        "duplicate_tasks": duplicates,
        "seconds_to_all_tasks": round(tasks_done, 2),
        "seconds_to_all_manifests": round(manifests_done, 2),
        "output_bytes_through_functions": output_bytes,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "cpu_seconds_app": round(sum(resource.getrusage(resource.RUSAGE_SELF)[:2]), 1),  # user + system
        "redeliveries_after_transient_errors": _retries["count"],
    }


def _events(inputs: list[T]) -> Iterator[T]:
    """Every event delivered twice, shuffled: at-least-once delivery."""
    doubled = inputs * 2
    random.Random(7).shuffle(doubled)
    return iter(doubled)


def batchdrop_events(config: ScenarioConfig) -> dict[str, float]:
    def submit_all(gw: Gateways, inputs: list[Uploaded]) -> None:
        input_container = gw.settings.input_container
        events = [blob_created_event(config.connection_string, input_container, upload, f"evt-{index}")
                  for index, upload in enumerate(inputs)]  # fmt: skip
        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(lambda event: _redelivered(lambda: deliver_event(gw, event)), _events(events)))

    return _run_batchdrop(config, submit_all, "ev")


def batchdrop_sweep(config: ScenarioConfig) -> dict[str, float]:
    def submit_all(gw: Gateways, inputs: list[Uploaded]) -> None:
        report = _redelivered(lambda: sweep(gw))
        assert report.submitted == len(inputs), report

    return _run_batchdrop(config, submit_all, "sw")


def baseline(config: ScenarioConfig) -> dict[str, float]:
    names = _names("bl")
    inputs = [upload.name for upload in _upload(config, names["input"], config.files)]
    service = BlobServiceClient.from_connection_string(config.connection_string)
    for role in ("staging", "results"):
        service.create_container(names[role])
    client = BatchClient(config.batch_url, AzureNamedKeyCredential(config.batch_account, config.batch_key))
    AzureBatch(client).ensure_pool(
        PoolSpec(id=names["pool"], dedicated_nodes=config.nodes, task_slots_per_node=config.slots)
    )
    naive = Baseline(client, service, AzureBlobs.from_connection_string(config.connection_string),
                     f"job-{names['pool']}", names["pool"], names, BASELINE_COMMAND)  # fmt: skip
    emulator = _emulator(config)
    emulator.reset_stats()
    started = time.monotonic()
    monitor = Loop("baseline monitor", lambda: _redelivered(naive.poll_and_collect), config.poll_seconds)
    monitor.start()
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(lambda name: _redelivered(lambda: naive.on_event(name)), _events(inputs)))
    tasks_done = time.monotonic() - started
    finished = _wait_until(lambda: len(naive.collected) >= 2 * config.files, [monitor], config, started)
    manifests_done = time.monotonic() - started
    # From here on the monitor collects nothing more: a stopped run does not wait for its pass through every
    # task, and the steady-state poll below is its listing alone (its Batch requests; collecting makes none).
    naive.stopping.set()
    monitor.stop()
    manifests = _manifests(service, names["results"])
    assert manifests == config.files or not finished, manifests
    total = int(emulator.stats()["total"])  # type: ignore[call-overload]
    emulator.reset_stats()
    naive.poll_and_collect()
    poll_requests = int(emulator.stats()["total"])  # type: ignore[call-overload]
    tasks = sum(1 for _ in client.list_tasks(naive.job_id, select=["id"]))
    report = _report(config, total, poll_requests, tasks - config.files, tasks_done, manifests_done,
                     naive.output_bytes)  # fmt: skip
    _stopped(report, finished, manifests)  # type: ignore[arg-type]
    return report


SCENARIOS: dict[str, Callable[[ScenarioConfig], dict[str, float]]] = {
    "batchdrop": batchdrop_events,
    "batchdrop_sweep": batchdrop_sweep,
    "baseline": baseline,
}


def _burst(config: ScenarioConfig) -> dict[str, float]:
    from bench.burst import burst  # it imports this module

    return burst(config)


SCENARIOS["burst"] = _burst


def run_in_child(name: str, config: ScenarioConfig, results: Any) -> None:
    """Entry point of a scenario's own process (so its peak RSS is its own)."""
    results.put(SCENARIOS[name](config))
