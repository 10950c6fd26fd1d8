"""Conformance fixtures over the suite's shared Azurite and Batch emulator (tests/conftest.py), the real SDKs as
clients."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.batch import BatchClient
from azure.batch import models as m
from azure.core.credentials import AzureNamedKeyCredential
from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

from local.stack import AZURITE_ACCOUNT, AZURITE_KEY, Azurite, Emulator
from tests.conftest import SharedServers
from tests.waiting import NotYet, wait_until

# What every pool needs on Azure Batch: a VM size and a VM image.
VM: dict[str, Any] = {
    "vm_size": "standard_d2s_v3",
    "virtual_machine_configuration": m.VirtualMachineConfiguration(
        image_reference=m.BatchVmImageReference(
            publisher="canonical", offer="ubuntu-24_04-lts", sku="server", version="latest"
        ),
        node_agent_sku_id="batch.node.ubuntu 24.04",
    ),
}
POOL_ID = "conformance-pool"
POOL_NODES = 2
POOL_SLOTS = 4


def client_for(emulator: Emulator, **kwargs: Any) -> BatchClient:
    return BatchClient(emulator.url, AzureNamedKeyCredential(emulator.account_name, emulator.account_key), **kwargs)


def wait_for_task(client: BatchClient, job_id: str, task_id: str, timeout: float = 30.0) -> m.BatchTask:
    def completed() -> m.BatchTask | NotYet:
        task = client.get_task(job_id, task_id)
        return task if task.state == m.BatchTaskState.COMPLETED else NotYet(task.state)

    return wait_until(completed, timeout, what=f"task {task_id} to complete")


def wait_for_job_state(client: BatchClient, job_id: str, state: m.BatchJobState, timeout: float = 30.0) -> m.BatchJob:
    def in_state() -> m.BatchJob | NotYet:
        job = client.get_job(job_id)
        return job if job.state == state else NotYet(job.state)

    return wait_until(in_state, timeout, what=f"job {job_id} to be {state}")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where tests that start an emulator of their own keep it."""
    return tmp_path_factory.mktemp("emulator-conformance")


@pytest.fixture(scope="session")
def state_dir(emulator: Emulator, shared_servers: SharedServers) -> Path:
    """The shared emulator's state directory."""
    return shared_servers.emulator_state_dir


@pytest.fixture(scope="session")
def batch(emulator: Emulator) -> BatchClient:
    return client_for(emulator)


@pytest.fixture(scope="session")
def pool_id(batch: BatchClient) -> str:
    batch.create_pool(
        m.BatchPoolCreateOptions(
            id=POOL_ID,
            **VM,
            target_dedicated_nodes=POOL_NODES,
            task_slots_per_node=POOL_SLOTS,
        )
    )
    return POOL_ID


@pytest.fixture
def job_id(batch: BatchClient, pool_id: str) -> str:
    job = unique("job")
    batch.create_job(m.BatchJobCreateOptions(id=job, pool_info=m.BatchPoolInfo(pool_id=pool_id)))
    return job


@pytest.fixture(scope="session")
def blobs(azurite: Azurite) -> Iterator[BlobServiceClient]:
    client = BlobServiceClient.from_connection_string(azurite.connection_string)
    yield client
    client.close()


class Containers:
    """Fresh containers in Azurite with SAS URLs, as a pipeline hands them to Batch."""

    def __init__(self, blobs: BlobServiceClient, azurite: Azurite) -> None:
        self.blobs = blobs
        self.azurite = azurite

    def create(self, prefix: str = "c") -> str:
        name = unique(prefix).lower()
        self.blobs.create_container(name)
        return name

    def sas_url(self, container: str, *, read: bool = True, write: bool = True, blob: str | None = None) -> str:
        sas = generate_container_sas(
            AZURITE_ACCOUNT,
            container,
            account_key=AZURITE_KEY,
            permission=ContainerSasPermissions(read=read, write=write, list=True, create=write),
            expiry=datetime.now(UTC) + timedelta(hours=1),
        )
        base = f"{self.azurite.blob_endpoint}/{container}"
        return f"{base}/{blob}?{sas}" if blob else f"{base}?{sas}"

    def upload(self, container: str, name: str, data: bytes) -> None:
        self.blobs.get_blob_client(container, name).upload_blob(data, overwrite=True)

    def read(self, container: str, name: str) -> bytes:
        return bytes(self.blobs.get_blob_client(container, name).download_blob().readall())

    def names(self, container: str) -> list[str]:
        return sorted(blob.name for blob in self.blobs.get_container_client(container).list_blobs())


@pytest.fixture(scope="session")
def containers(blobs: BlobServiceClient, azurite: Azurite) -> Containers:
    return Containers(blobs, azurite)
