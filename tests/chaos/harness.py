"""Drive the whole local stack for the chaos scenarios: start, break, restart, count.

A `ChaosStack` is Azurite + the Batch emulator + the dev host running function_app.py unchanged, in one
work directory, with a pipelines file and an application of the scenario's own. Everything it starts
binds 127.0.0.1 and is stopped by process id. `Tally` is what a scenario measured; `record` keeps it
for the table that `make chaos` prints and docs/reliability.md reproduces.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from azure.batch import BatchClient
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import AzureError
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient, QueueServiceClient

from local.stack import (
    PROJECT_ROOT,
    Azurite,
    Emulator,
    EventGrid,
    Service,
    app_settings,
    free_port,
    start_azurite,
    start_emulator,
    start_eventgrid,
    start_host,
)
from shared import ids
from shared.gateways import Gateways, build_gateways
from shared.settings import load_settings
from tests.eventgrid import blob_created, post_events
from tests.waiting import wait_until

T = TypeVar("T")
INPUT, APPS, RESULTS = "input", "apps", "results"
MANIFEST = "_manifest.json"
APP_PATH = "chaos/app.py"
RESULTS_FILE = PROJECT_ROOT / ".batchdrop" / "chaos" / "results.jsonl"
SESSION: list[Tally] = []  # this run's rows, printed by conftest.pytest_terminal_summary

# The scenarios' application. The first line of the input steers it, so one app covers every fault:
#   "#exit N"     write a reason to stderr and exit N
#   "#sleep S"    sleep S seconds, then behave normally
#   "#no-output"  exit 0 having written nothing
# otherwise it copies the input to out/echo.txt, so a published echo.txt proves whose output it is.
CHAOS_APP = """\
import hashlib, json, os, sys, time
source, out = sys.argv[1], sys.argv[2]
data = open(source, "rb").read()
first = data.split(b"\\n", 1)[0].decode("utf-8", "replace")
if first.startswith("#exit "):
    code = int(first.split()[1])
    sys.stderr.write("chaos app: the input asks for exit code %d\\n" % code)
    sys.exit(code)
if first.startswith("#sleep "):
    time.sleep(float(first.split()[1]))
if first == "#no-output":
    print("chaos app: writing no output, as the input asks")
    sys.exit(0)
os.makedirs(out, exist_ok=True)
open(os.path.join(out, "echo.txt"), "wb").write(data)
with open(os.path.join(out, "digest.json"), "w") as digest:
    json.dump({"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}, digest)
print("chaos app: echoed", len(data), "bytes")
"""


def pipeline(name: str, prefix: str = "", **overrides: Any) -> dict[str, Any]:
    """A pipelines-file entry running the chaos app on inputs under `prefix`."""
    spec: dict[str, Any] = {
        "name": name,
        "match": {"prefix": prefix, "glob": "*"},
        "command": "python3 {app_dir}/chaos/app.py {input} {output_dir}",
        "app_files": [APP_PATH],
        "outputs": ["**/*"],
        "pool": {"id": "chaos-pool", "dedicated_nodes": 2, "task_slots_per_node": 4},
        "max_retries": 0,
        "max_wall_clock_seconds": 300,
    }
    spec.update(overrides)
    return spec


def retrying(action: Callable[[], T], attempts: int = 20, pause: float = 0.5) -> T:
    """The test's own reads, retried: the faults are injected into everyone, the test included."""
    for attempt in range(attempts):
        try:
            return action()
        except (AzureError, OSError):
            if attempt == attempts - 1:
                raise
            time.sleep(pause)
    raise AssertionError("unreachable")


def input_content(name: str) -> bytes:
    return f"chaos input {name}\n".encode()


def in_parallel(work: Callable[[T], object], items: Iterable[T], workers: int = 16) -> None:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(work, items):
            pass


@dataclass
class ChaosStack:
    """The local stack of one scenario, in its own work directory: Azurite, the emulator, the local Event Grid
    (the stack's default subscriptions; every blob client, the app's and the test's, writes through its proxy)
    and the dev host, which the Event Grid reaches on a port chosen once and kept across host restarts."""

    workdir: Path
    pipelines: list[dict[str, Any]]
    emulator_args: list[str] = field(default_factory=list)
    setting_overrides: dict[str, str] = field(default_factory=dict)
    blob_scan_seconds: float = 1.0
    azurite: Azurite | None = None
    emulator: Emulator | None = None
    host: Service | None = None
    eventgrid: EventGrid | None = None
    host_port: int = 0
    settings: dict[str, str] = field(default_factory=dict)
    host_starts: int = 0
    _host_log_offset: int = 0

    # lifecycle
    def start(self) -> ChaosStack:
        self.azurite = start_azurite(self.workdir)
        self.emulator = start_emulator(self.workdir, self.emulator_args)
        self.host_port = free_port()
        self.eventgrid = start_eventgrid(self.workdir, self.azurite, f"http://127.0.0.1:{self.host_port}")
        service = self.blob_service()
        for container in (INPUT, APPS, RESULTS):
            service.create_container(container)
        service.get_container_client(APPS).upload_blob(APP_PATH, CHAOS_APP.encode())
        pipelines_file = self.workdir / "pipelines.json"
        pipelines_file.write_text(json.dumps({"pipelines": self.pipelines}, indent=2))
        self.settings = app_settings(self.azurite, self.emulator, {
            "BATCHDROP_PIPELINES_FILE": str(pipelines_file),
            "BATCHDROP_SWEEP_SCHEDULE": "*/3 * * * * *",
            "BATCHDROP_POLL_SCHEDULE": "*/1 * * * * *",
            "BATCHDROP_POLL_OVERLAP_SECONDS": "10",
            **self.setting_overrides,
        }, self.eventgrid)  # fmt: skip
        self.start_host()
        return self

    def start_host(self) -> Service:
        """The dev host on function_app.py, same state directory and settings on every start."""
        log = self.workdir / "logs" / "host.log"
        self._host_log_offset = log.stat().st_size if log.exists() else 0
        self.host = start_host(
            self.workdir, "function_app:app", self.settings, ["--blob-scan-seconds", str(self.blob_scan_seconds)],
            port=self.host_port,
        )
        self.host_starts += 1
        return self.host

    def kill_host(self) -> list[str]:
        """SIGKILL the dev host; returns the functions that were mid-invocation at that moment."""
        assert self.host is not None
        in_flight = self.running_functions()
        self.host.kill()
        return in_flight

    def restart_emulator(self) -> None:
        """Stop the emulator by pid and start it again: same state directory, same port, same options."""
        assert self.emulator is not None
        port = urllib.parse.urlsplit(self.emulator.url).port
        assert port is not None
        self.emulator.stop()
        self.emulator = start_emulator(self.workdir, self.emulator_args, port=port)

    def stop_azurite(self) -> tuple[int, int, int]:
        assert self.azurite is not None
        ports = (self.azurite.blob_port, self.azurite.queue_port, self.azurite.table_port)
        self.azurite.stop()
        return ports

    def start_azurite(self, ports: tuple[int, int, int]) -> None:
        self.azurite = start_azurite(self.workdir, ports=ports)

    def stop(self) -> None:
        for service in (self.host, self.eventgrid, self.emulator, self.azurite):
            if service is not None:
                service.stop()

    # clients
    def blob_service(self) -> BlobServiceClient:
        """Through the local Event Grid's proxy: uploads raise BlobCreated events, as on Azure."""
        assert self.eventgrid is not None
        return BlobServiceClient.from_connection_string(self.eventgrid.connection_string)

    def batch_client(self) -> BatchClient:
        assert self.emulator is not None
        credential = AzureNamedKeyCredential(self.emulator.account_name, self.emulator.account_key)
        return BatchClient(self.emulator.url, credential)

    def gateways(self) -> Gateways:
        """The app's own gateways, built in this process: another instance of the app."""
        return build_gateways(load_settings(**self.settings))

    def queue(self, name: str) -> QueueClient:
        assert self.azurite is not None
        return QueueClient.from_connection_string(self.azurite.connection_string, name)

    def queue_names(self) -> set[str]:
        assert self.azurite is not None
        service = QueueServiceClient.from_connection_string(self.azurite.connection_string)
        return {queue.name for queue in service.list_queues()}

    # input
    def drop(self, files: Mapping[str, bytes], workers: int = 16) -> None:
        container = self.blob_service().get_container_client(INPUT)
        in_parallel(lambda name: container.upload_blob(name, files[name], overwrite=True), list(files), workers)

    def post_event(self, name: str, event_id: str) -> int:
        """One Event Grid BlobCreated delivery to the ingest_event webhook; the HTTP status."""
        assert self.host is not None and self.azurite is not None
        return post_events(self.host.url, [blob_created(self.azurite.blob_endpoint, INPUT, name, event_id)])

    def status(self) -> dict[str, Any]:
        assert self.host is not None
        with urllib.request.urlopen(f"{self.host.url}/api/status", timeout=60) as response:
            document: dict[str, Any] = json.load(response)
            return document

    # observation
    def manifest_names(self) -> set[str]:
        results = self.blob_service().get_container_client(RESULTS)
        return {blob.name for blob in results.list_blobs() if blob.name.endswith("/" + MANIFEST)}

    def wait_for_manifests(
        self, names: Iterable[str], timeout: float, while_waiting: Callable[[], None] | None = None
    ) -> set[str]:
        """Wait until every input has a manifest (or the timeout); the inputs still without one."""
        wanted = {ids.result_prefix(name) + MANIFEST: name for name in names}
        missing = set(wanted.values())

        def all_published() -> bool:
            nonlocal missing
            try:
                found = self.manifest_names()
            except AzureError:
                found = set()
            missing = {name for blob, name in wanted.items() if blob not in found}
            if missing and while_waiting is not None:
                while_waiting()
            return not missing

        # A scenario reports what is missing in its tally rather than failing here.
        with contextlib.suppress(AssertionError):
            wait_until(all_published, timeout, interval=1, what="every manifest")
        return missing

    def task_ids(self) -> list[str]:
        """Every task id of every job, as Batch lists them (duplicates kept)."""
        client = self.batch_client()

        def listing() -> list[str]:
            return [task.id for job in client.list_jobs() for task in client.list_tasks(job.id, select=["id"])]

        return retrying(listing)

    def task_state(self, job_id: str, task_id: str) -> str:
        """Batch's state of one task as its wire value: active, preparing, running, completed."""
        client = self.batch_client()
        state = retrying(lambda: client.get_task(job_id, task_id)).state
        return str(getattr(state, "value", state)).lower()

    def host_log(self) -> str:
        return (self.workdir / "logs" / "host.log").read_text(errors="replace")

    def running_functions(self) -> list[str]:
        """Functions of the current host incarnation that started an invocation and have not finished it."""
        log = self.workdir / "logs" / "host.log"
        with log.open("rb") as handle:
            handle.seek(self._host_log_offset)
            text = handle.read().decode(errors="replace")
        started = {invocation: name for name, invocation in re.findall(
            r"Executing 'Functions\.(\w+)' \(Reason=.*?, Id=([0-9a-f-]+)\)", text)}  # fmt: skip
        finished = set(re.findall(r"Executed 'Functions\.\w+' \(\w+, Id=([0-9a-f-]+)", text))
        return sorted(name for invocation, name in started.items() if invocation not in finished)

    def publish_counts(self) -> Counter[str]:
        """How many times collect published each input's manifest (from the dev host's log)."""
        return Counter(re.findall(r"shared\.collect: published (.+): (?:succeeded|failed)$", self.host_log(), re.M))


@dataclass
class Verdict:
    """What the end state says about the promise: one task and one manifest per input, each its own."""

    inputs: int
    manifests: int
    succeeded: int
    failed: int
    lost: list[str]
    duplicate_tasks: int
    stray_tasks: int
    duplicate_manifests: int
    misfiled: list[str]
    manifests_by_name: dict[str, dict[str, Any]]
    reactivated: int = 0  # inputs whose task batchdrop ran again after an infrastructure failure


def verify(
    stack: ChaosStack,
    files: Mapping[str, bytes] | Sequence[str],
    check_echo: bool = True,
    earlier_tasks: Iterable[str] = (),
) -> Verdict:
    """Read every manifest, every task id and the host log; compare with the inputs that were dropped.

    `files` maps input names to their content (or lists names whose content is `input_content(name)`).
    `earlier_tasks` are the tasks of uploads no longer in `input` (replaced or deleted): not strays.
    """
    contents = dict(files) if isinstance(files, Mapping) else {name: input_content(name) for name in files}
    names = list(contents)
    service = stack.blob_service()
    results = service.get_container_client(RESULTS)
    etags = {blob.name: blob.etag for blob in retrying(lambda: list(service.get_container_client(INPUT).list_blobs()))}
    expected_tasks = {ids.task_id(INPUT, name, etags[name]): name for name in names if name in etags}
    expected_tasks.update({task: "(earlier upload)" for task in earlier_tasks})
    manifests: dict[str, dict[str, Any]] = {}
    lost: list[str] = []
    misfiled: list[str] = []

    def read(name: str) -> None:
        prefix = ids.result_prefix(name)
        try:
            body = retrying(lambda: results.download_blob(prefix + MANIFEST).readall(), attempts=3)
        except AzureError:
            lost.append(name)
            return
        manifest = json.loads(body)
        manifests[name] = manifest
        wrong = []
        if manifest.get("input") != name:
            wrong.append(f"input {manifest.get('input')!r}")
        if manifest.get("task_id") != ids.task_id(INPUT, name, etags.get(name, "")):
            wrong.append(f"task_id {manifest.get('task_id')!r}")
        if any(not str(output).startswith(prefix) for output in manifest.get("outputs") or []):
            wrong.append(f"outputs {manifest.get('outputs')}")
        if check_echo and manifest.get("status") == "succeeded":
            if prefix + "echo.txt" not in (manifest.get("outputs") or []):
                wrong.append(f"no echo.txt among outputs {manifest.get('outputs')}")
            else:
                echo = retrying(lambda: results.download_blob(prefix + "echo.txt").readall(), attempts=3)
                if echo != contents[name]:
                    wrong.append(f"echo.txt holds {echo[:60]!r}")
        if wrong:
            misfiled.append(f"{name}: " + "; ".join(wrong))

    in_parallel(read, names)
    task_ids = stack.task_ids()
    per_task = Counter(task_ids)
    publishes = stack.publish_counts()
    statuses = Counter(str(manifest.get("status")) for manifest in manifests.values())
    return Verdict(
        inputs=len(names),
        manifests=len(manifests),
        succeeded=statuses["succeeded"],
        failed=statuses["failed"],
        lost=sorted(lost),
        duplicate_tasks=sum(count - 1 for count in per_task.values() if count > 1),
        stray_tasks=len([task for task in per_task if task not in expected_tasks]),
        duplicate_manifests=sum(count - 1 for name, count in publishes.items() if name in set(names) and count > 1),
        misfiled=sorted(misfiled),
        manifests_by_name=manifests,
        reactivated=sum(1 for manifest in manifests.values() if manifest.get("reactivations")),
    )


@dataclass
class Tally:
    """One row of the reliability table."""

    scenario: str
    injected: str
    injections: int
    inputs: int
    manifests: int
    succeeded: int
    failed: int
    duplicate_tasks: int
    duplicate_manifests: int
    lost: int
    misfiled: int
    seconds: float
    notes: str = ""
    reactivated: int = 0
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @classmethod
    def of(cls, scenario: str, injected: str, injections: int, verdict: Verdict, seconds: float,
           notes: str = "") -> Tally:  # fmt: skip
        return cls(scenario, injected, injections, verdict.inputs, verdict.manifests, verdict.succeeded,
                   verdict.failed, verdict.duplicate_tasks + verdict.stray_tasks, verdict.duplicate_manifests,
                   len(verdict.lost), len(verdict.misfiled), round(seconds, 1), notes,
                   verdict.reactivated)  # fmt: skip


def record(tally: Tally) -> None:
    """Append a scenario's numbers to .batchdrop/chaos/results.jsonl (the conftest prints the table)."""
    SESSION.append(tally)
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS_FILE.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(asdict(tally)) + "\n")


def table(tallies: Sequence[Tally]) -> str:
    """The reliability table in Markdown."""
    lines = [
        "| scenario | injected | times | inputs | manifests (ok / failed) | duplicate tasks | duplicate manifests "
        "| lost | misfiled | tasks run again | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in tallies:
        lines.append(
            f"| {t.scenario} | {t.injected} | {t.injections} | {t.inputs} | {t.manifests} ({t.succeeded} / {t.failed}) "
            f"| {t.duplicate_tasks} | {t.duplicate_manifests} | {t.lost} | {t.misfiled} | {t.reactivated} "
            f"| {t.seconds} |"
        )
    return "\n".join(lines)


def shuffled(items: Iterable[T], seed: int) -> list[T]:
    ordered = list(items)
    random.Random(seed).shuffle(ordered)  # noqa: S311 - test data order, not security
    return ordered
