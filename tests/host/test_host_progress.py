"""The dev host's progress counters: what a test waits on before it asserts that the host did nothing more."""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from azure.storage.blob import ContainerClient

from local.host.devhost import DevHost, HostConfig
from local.host.settings import AppSettings
from local.stack import Azurite
from tests.host import sample_app
from tests.host.conftest import SampleHost, read_records, sample_settings
from tests.waiting import wait_until

pytestmark = pytest.mark.integration
BLOB_FUNCTION = "Host.Functions.on_blob"
DISPATCH_QUEUE = "blobtrigger[SampleStorage]"


@dataclass
class InProcessHost:
    host: DevHost
    container: ContainerClient
    record_dir: Path

    def count(self, kind: str, name: str) -> int:
        return self.host.progress()[kind][name]


@pytest.fixture
def running(azurite: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InProcessHost]:
    token = uuid.uuid4().hex[:10]
    record_dir = tmp_path / "records"
    record_dir.mkdir()
    monkeypatch.setenv("SAMPLE_RECORD_DIR", str(record_dir))  # the sample app's functions read it
    settings = sample_settings(azurite, record_dir, f"in-{token}", f"q-{token}")
    host = DevHost(
        sample_app.build_app(), HostConfig(state_dir=tmp_path / "host", blob_scan_seconds=0.2), AppSettings(settings)
    )
    host.start()
    try:
        yield InProcessHost(
            host, ContainerClient.from_connection_string(azurite.connection_string, f"in-{token}"), record_dir
        )
    finally:
        host.stop()


def test_every_trigger_counts_its_passes(running: InProcessHost) -> None:
    first = running.host.progress()
    assert set(first["blob_scans"]) == {BLOB_FUNCTION}  # not Host.Functions.on_pushed_blob (source=EventGrid)
    assert set(first["queue_polls"]) == set(first["queue_in_flight"]) == {DISPATCH_QUEUE, "queue:on_message"}
    assert set(first["timer_ticks"]) == {"tick"}
    wait_until(lambda: running.count("queue_polls", "queue:on_message") >= 2, 10, what="two queue polls")
    assert running.count("blob_scans", BLOB_FUNCTION) == 0  # its container does not exist: no scan completes
    wait_until(lambda: running.count("timer_ticks", "tick") >= 2, 10, what="the startup tick and one more")


def test_two_more_scans_then_two_more_polls_mean_a_new_blob_has_been_handled(running: InProcessHost) -> None:
    """What the sleep-free "nothing happened" tests build on: a count that moved by two covers a whole pass
    that began after the moment it was read."""
    running.container.create_container()
    wait_until(lambda: running.count("blob_scans", BLOB_FUNCTION) >= 1, 10, what="a first scan")
    running.container.upload_blob("counted.txt", b"x")
    scans = running.count("blob_scans", BLOB_FUNCTION)
    wait_until(lambda: running.count("blob_scans", BLOB_FUNCTION) >= scans + 2, 10, what="two more scans")
    polls = running.count("queue_polls", DISPATCH_QUEUE)
    wait_until(
        lambda: (
            running.count("queue_polls", DISPATCH_QUEUE) >= polls + 2
            and running.count("queue_in_flight", DISPATCH_QUEUE) == 0
        ),
        10,
        what="two more dispatch polls",
    )
    # No waiting here: the counts alone say the invocation has run.
    assert [r["name"] for r in read_records(running.record_dir, "on_blob")] == [
        f"{running.container.container_name}/counted.txt"
    ]
    # The source=EventGrid trigger on the same container is never scanned: only an Event Grid push invokes it.
    assert read_records(running.record_dir, "on_pushed_blob") == []


def test_the_running_host_serves_its_progress(sample_host: SampleHost) -> None:
    def progress() -> dict[str, dict[str, int]]:
        with urllib.request.urlopen(f"{sample_host.url}/admin/host/progress", timeout=10) as response:
            document: dict[str, dict[str, int]] = json.load(response)
            return document

    first = progress()
    assert set(first) == {"blob_scans", "queue_polls", "queue_in_flight", "timer_ticks"}
    later = wait_until(
        lambda: (now := progress())["blob_scans"][BLOB_FUNCTION] >= first["blob_scans"][BLOB_FUNCTION] + 2 and now,
        20,
        what="two more blob scans",
    )
    assert later["timer_ticks"]["tick"] >= first["timer_ticks"]["tick"]
