"""Fixtures for the dev host's tests: dev hosts running tests/host/sample_app.py on the suite's shared Azurite."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient
from azure.storage.queue import QueueClient

from local.stack import Azurite, Service, start_host

SAMPLE_APP = "tests.host.sample_app:app"


def read_records(record_dir: Path, function: str) -> list[dict[str, Any]]:
    path = record_dir / f"{function}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass
class SampleHost:
    """A dev host running the sample app, with its own container and queue names."""

    service: Service
    azurite: Azurite
    workdir: Path
    record_dir: Path
    container_name: str
    queue_name: str

    @property
    def url(self) -> str:
        return self.service.url

    def records(self, function: str) -> list[dict[str, Any]]:
        return read_records(self.record_dir, function)

    @property
    def blobs(self) -> BlobServiceClient:
        return BlobServiceClient.from_connection_string(self.azurite.connection_string)

    @property
    def container(self) -> ContainerClient:
        return self.blobs.get_container_client(self.container_name)

    def queue(self, name: str) -> QueueClient:
        return QueueClient.from_connection_string(self.azurite.connection_string, name)

    def log(self) -> str:
        return self.service.log_path.read_text(errors="replace")


def sample_settings(
    azurite: Azurite, record_dir: Path, container: str, queue: str, schedule: str = "*/1 * * * * *"
) -> dict[str, str]:
    return {
        "SampleStorage": azurite.connection_string,
        "SAMPLE_CONTAINER": container,
        "SAMPLE_QUEUE": queue,
        "SAMPLE_SCHEDULE": schedule,
        "SAMPLE_RECORD_DIR": str(record_dir),
    }


StartSample = Callable[..., SampleHost]


@pytest.fixture(scope="session")
def start_sample(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartSample]:
    """Start a dev host on the sample app; stopped at the end of the session at the latest."""
    started: list[Service] = []

    def start(
        extra_args: Sequence[str] = ("--blob-scan-seconds", "0.3"),
        *,
        container: str | None = None,
        queue: str | None = None,
        workdir: Path | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> SampleHost:
        token = uuid.uuid4().hex[:10]
        workdir = workdir or tmp_path_factory.mktemp("host")
        record_dir = workdir / "records"
        record_dir.mkdir(parents=True, exist_ok=True)
        container = container or f"in-{token}"
        queue = queue or f"q-{token}"
        # Each workdir (state directory) is its own host id, so side-by-side hosts do not take each
        # other's blob-trigger messages; a test that restarts "the same" host passes the id itself.
        env = {**sample_settings(azurite, record_dir, container, queue), **(settings or {})}
        service = start_host(workdir, SAMPLE_APP, env, extra_args)
        started.append(service)
        return SampleHost(service, azurite, workdir, record_dir, container, queue)

    yield start
    for service in started:
        if service.alive():
            service.stop()


@pytest.fixture(scope="session")
def sample_host(start_sample: StartSample) -> SampleHost:
    """One shared host for tests that only add their own uniquely named inputs."""
    host = start_sample()
    host.blobs.create_container(host.container_name)
    return host
