"""Collect against Azurite and the emulator: concurrent deliveries publish once; infrastructure failures rerun."""

from __future__ import annotations

import http.server
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from azure.batch import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from local.stack import Azurite, Emulator
from shared.collect import MAX_REACTIVATIONS, CollectOutcome, collect
from shared.gateways import build_gateways
from shared.models import CompletionEvent, InputState
from shared.storage import AzureBlobs
from shared.submit import submit_blob
from tests.integration.pipeline_world import PipelineWorld, make_pipeline_world
from tests.waiting import wait_until

pytestmark = pytest.mark.integration
DELIVERIES = 4


@pytest.fixture
def world(tmp_path: Path, azurite: Azurite, emulator: Emulator, namespace: str) -> PipelineWorld:
    return make_pipeline_world(tmp_path, azurite, emulator, namespace)


def tasks_of(world: PipelineWorld) -> list[str]:
    emulator = world.emulator
    client = BatchClient(emulator.url, AzureNamedKeyCredential(emulator.account_name, emulator.account_key))
    jobs = {record.job_id for record in world.gw.ledger.inputs()}
    return [task.id for job in sorted(jobs) for task in client.list_tasks(job, select=["id"])]


def test_one_completion_collected_by_four_instances_at_once_is_published_once(world: PipelineWorld) -> None:
    world.drop("a.txt", b"hello\n")
    submitted = submit_blob(world.gw, world.names["input"], "a.txt")
    wait_until(
        lambda: (task := world.gw.batch.get_task(submitted.job_id, submitted.task_id)) is not None and task.completed,
        60,
        what="the task to complete",
    )
    event = CompletionEvent(submitted.job_id, submitted.task_id)
    instances = [build_gateways(world.gw.settings) for _ in range(DELIVERIES)]  # one per function instance
    start = threading.Barrier(DELIVERIES)
    outcomes: list[CollectOutcome] = []
    errors: list[BaseException] = []

    def deliver(index: int) -> None:
        start.wait()
        try:
            outcomes.append(collect(instances[index], event))
        except BaseException as error:  # the test reports it below
            errors.append(error)

    threads = [threading.Thread(target=deliver, args=(index,)) for index in range(DELIVERIES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert Counter(outcome.action for outcome in outcomes) == {"published": 1, "already-published": DELIVERIES - 1}
    manifest = world.manifest("a.txt")
    assert manifest is not None and manifest["status"] == "succeeded"
    assert manifest["outputs"] == ["a.txt/nested/upper.txt", "a.txt/report.json"]
    assert world.container("results").download_blob("a.txt/nested/upper.txt").readall() == b"HELLO\n"
    record = world.gw.ledger.get_input(submitted.task_id)
    assert record is not None and record.state is InputState.COLLECTED
    assert world.gw.ledger.rejections() == []


class FlakyStorage:
    """An HTTP front for Azurite that answers 503 to the first `failures` downloads, as storage under an
    outage would, then passes requests through. The node downloads the input through it."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.answered: Counter[int] = Counter()
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if front.failures > 0:
                    front.failures -= 1
                    front.answered[503] += 1
                    self.send_error(503, "Server Busy")
                    return
                target = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)["target"][0]
                try:
                    with urllib.request.urlopen(target, timeout=30) as response:  # Azurite, on 127.0.0.1
                        body, status = response.read(), response.status
                except urllib.error.HTTPError as error:
                    body, status = error.read(), error.code
                front.answered[status] += 1
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class InputThroughFront(AzureBlobs):
    """The real blob gateway, except that a task reads its input through the flaky front."""

    front: FlakyStorage
    input_container: str

    def read_url(self, container: str, name: str, valid_seconds: int) -> str:
        url = super().read_url(container, name, valid_seconds)
        if container != self.input_container:
            return url
        return self.front.url + "?" + urllib.parse.urlencode({"target": url})


@pytest.fixture
def flaky(world: PipelineWorld) -> Iterator[tuple[PipelineWorld, FlakyStorage]]:
    front = FlakyStorage(0)
    blobs = InputThroughFront.from_connection_string(world.connection_string)
    blobs.front, blobs.input_container = front, world.names["input"]
    world.gw = replace(world.gw, blobs=blobs)
    yield world, front
    front.close()


def test_an_input_download_that_failed_once_is_run_again_and_succeeds(
    flaky: tuple[PipelineWorld, FlakyStorage],
) -> None:
    world, front = flaky
    front.failures = 1
    world.drop("a.txt", b"hello\n")
    submit_blob(world.gw, world.names["input"], "a.txt")

    manifest = world.run_until_manifests(["a.txt"])["a.txt"]

    assert front.answered[503] == 1
    assert manifest["status"] == "succeeded", manifest
    assert manifest["reactivations"] == 1
    assert world.container("results").download_blob("a.txt/nested/upper.txt").readall() == b"HELLO\n"
    assert len(tasks_of(world)) == 1  # the same task ran again; no second task


def test_an_input_download_that_keeps_failing_is_published_failed_with_the_reason(
    flaky: tuple[PipelineWorld, FlakyStorage],
) -> None:
    world, front = flaky
    front.failures = 1000
    world.drop("a.txt", b"hello\n")
    submit_blob(world.gw, world.names["input"], "a.txt")

    manifest = world.run_until_manifests(["a.txt"], timeout=120)["a.txt"]

    assert front.answered[503] == MAX_REACTIVATIONS + 1
    assert manifest["status"] == "failed"
    assert manifest["reactivations"] == MAX_REACTIVATIONS
    failure = manifest["failure"]
    assert isinstance(failure, dict)
    assert failure["category"] == "servererror" and failure["code"] == "BlobDownloadMiscError"
    assert "503" in str(failure["details"]) and "sig=" not in str(manifest)
    assert len(tasks_of(world)) == 1
