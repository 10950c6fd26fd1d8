"""function_app.py, unchanged, under the dev host, on Azurite and the Batch emulator: drop files, get results."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import pytest
from azure.batch import BatchClient
from azure.core.credentials import AzureNamedKeyCredential
from azure.storage.blob import BlobServiceClient

from local.stack import PROJECT_ROOT, Azurite, Emulator, Stack, app_settings, free_port, start_eventgrid, start_host
from tests.eventgrid import blob_created, post_events
from tests.waiting import NotYet, wait_until

pytestmark = pytest.mark.e2e

INPUTS = {
    "hello.txt": b"hello world\nsecond line\n",
    "dir/with space ü.csv": b"a,b\n1,2\n",
    "$(touch pwned) `id`; rm -rf ~": b"hostile name, harmless content\n",
    "broken.txt": b"#fail\nthis one fails on purpose\n",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, azurite: Azurite, emulator: Emulator) -> Iterator[Stack]:
    """The app's fixed names (containers input, results, …, table ledger, pipeline report) are used by no
    other test, so it runs on the suite's shared Azurite and emulator; its host and local Event Grid (the
    stack's default subscriptions) are its own. Uploads go through the Event Grid's proxy: the host scans nothing."""
    workdir = tmp_path_factory.mktemp("e2e")
    running = Stack(azurite, emulator)
    try:
        service = BlobServiceClient.from_connection_string(azurite.connection_string)
        for container in ("input", "apps", "staging", "results"):
            service.create_container(container)
        apps = service.get_container_client("apps")
        apps.upload_blob("report/report.py", (PROJECT_ROOT / "apps/report/report.py").read_bytes())
        host_port = free_port()
        running.eventgrid = start_eventgrid(workdir, azurite, f"http://127.0.0.1:{host_port}")
        settings = app_settings(azurite, emulator, {
            "BATCHDROP_SWEEP_SCHEDULE": "0 0 0 1 1 *",  # once a year: the events alone must bring every input
            "BATCHDROP_POLL_SCHEDULE": "*/1 * * * * *",
            "BATCHDROP_POLL_OVERLAP_SECONDS": "5",
        }, running.eventgrid)  # fmt: skip
        running.host = start_host(workdir, "function_app:app", settings, port=host_port)
        yield running
    finally:
        if running.host is not None:
            running.host.stop()
        if running.eventgrid is not None:
            running.eventgrid.stop()


def manifests(service: BlobServiceClient) -> dict[str, dict[str, object]]:
    results = service.get_container_client("results")
    found = {}
    for blob in results.list_blobs():
        if blob.name.endswith("/_manifest.json"):
            found[blob.name[: -len("/_manifest.json")]] = json.loads(results.download_blob(blob.name).readall())
    return found


def wait_for_manifests(
    service: BlobServiceClient, names: set[str], timeout: float = 150
) -> dict[str, dict[str, object]]:
    def every() -> dict[str, dict[str, object]] | NotYet:
        found = manifests(service)
        return found if names <= set(found) else NotYet(sorted(found))

    return wait_until(every, timeout, interval=1, what=f"the manifests of {sorted(names)}")


def post_event(stack: Stack, name: str, account: str = "devstoreaccount1") -> int:
    assert stack.host is not None
    event = blob_created(stack.azurite.blob_endpoint, "input", name, f"evt-{name}", account)
    return post_events(stack.host.url, [event], timeout=30)


def test_dropped_files_get_exactly_one_manifest_each(stack: Stack) -> None:
    assert stack.eventgrid is not None
    service = BlobServiceClient.from_connection_string(stack.eventgrid.connection_string)
    inputs = service.get_container_client("input")
    for name, data in INPUTS.items():
        inputs.upload_blob(name, data)
    # Event Grid delivers the same uploads again, to the Event Grid trigger, on top of the blob trigger's events.
    assert post_event(stack, "hello.txt") in (200, 202)
    found = wait_for_manifests(service, set(INPUTS))

    for name, data in INPUTS.items():
        manifest = found[name]
        assert manifest["input"] == name
        if name == "broken.txt":
            assert manifest["status"] == "failed"
            assert manifest["exit_code"] == 3
            assert manifest["stderr_tail"]
        else:
            assert manifest["status"] == "succeeded", manifest
            report = json.loads(service.get_container_client("results").download_blob(f"{name}/report.json").readall())
            assert report["bytes"] == len(data)
    assert not (PROJECT_ROOT / "pwned").exists()

    batch = BatchClient(stack.emulator.url, AzureNamedKeyCredential(stack.emulator.account_name,
                                                                    stack.emulator.account_key))  # fmt: skip
    jobs = batch.list_jobs(filter="startswith(id,'report-')")  # the sample pipeline's jobs
    task_ids = [task.id for job in jobs for task in batch.list_tasks(job.id, select=["id"])]
    assert len(task_ids) == len(set(task_ids)) == len(INPUTS)

    assert stack.host is not None
    with urllib.request.urlopen(f"{stack.host.url}/api/status", timeout=30) as response:
        status = json.load(response)
    assert status["totals"]["collected"] == len(INPUTS)
    assert status["totals"]["failed"] == 1


def test_an_event_from_another_storage_account_is_refused_and_shown_in_status(stack: Stack) -> None:
    assert post_event(stack, "hello.txt", account="elsewhere") in (200, 202)
    assert stack.host is not None
    with urllib.request.urlopen(f"{stack.host.url}/api/status", timeout=30) as response:
        status = json.load(response)
    reasons = [rejection["reason"] for rejection in status["rejected"] if rejection["input"] == "event evt-hello.txt"]
    assert any("storage account 'elsewhere', not this app's account 'devstoreaccount1'" in r for r in reasons), status


def test_no_key_or_sas_signature_reaches_a_log(stack: Stack) -> None:
    """Runs after the drop test in this module: every log of the stack so far, scanned for secrets."""
    from local.stack import AZURITE_KEY

    secrets = [AZURITE_KEY, stack.emulator.account_key, "AccountKey=", "sig="]
    logs = {service.name: service.log_path.read_text(errors="replace") for service in stack.services()}
    assert "published" in logs["dev-host"], "the app's own log lines are not in the dev host log"
    for name, text in logs.items():
        for secret in secrets:
            assert secret not in text, f"{secret[:12]}... appears in the {name} log"
