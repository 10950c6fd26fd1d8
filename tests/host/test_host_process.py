"""The dev host as the team runs it: `python -m local.host` on the sample app, against Azurite."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import QueueClient

from local.stack import PROJECT_ROOT
from tests.host.conftest import SAMPLE_APP, SampleHost, StartSample, read_records, sample_settings
from tests.waiting import host_count, wait_for_host_passes, wait_for_rise, wait_until

pytestmark = pytest.mark.integration
BLOB_FUNCTION = "Host.Functions.on_blob"
DISPATCH_QUEUE = "blobtrigger[SampleStorage]"  # the blob trigger's dispatch queue's listener


def request(
    url: str,
    method: str = "GET",
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    data = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def send(queue: QueueClient, text: str) -> None:
    """As a Functions queue output or a well-behaved producer writes it: base64, creating the queue if need be
    (a host that has just started may not have polled, and so created, its queue yet)."""
    content = base64.b64encode(text.encode()).decode()
    try:
        queue.send_message(content)
    except ResourceNotFoundError:
        queue.create_queue()
        queue.send_message(content)


def peek(queue: QueueClient) -> list[Any]:
    try:
        return list(queue.peek_messages(max_messages=32))
    except ResourceNotFoundError:  # not created yet
        return []


def decoded(queue: QueueClient) -> list[str]:
    return [base64.b64decode(message.content).decode() for message in peek(queue)]


def settled(url: str) -> None:
    """Wait until the blob function's container has been scanned twice more and then the dispatch queue polled
    twice more with nothing in flight: any blob the test added has by then been invoked as often as it will be."""
    wait_for_host_passes(url, "blob_scans", BLOB_FUNCTION)
    wait_for_host_passes(url, "queue_polls", DISPATCH_QUEUE)


def test_http_function_gets_the_request_and_its_response_is_returned(sample_host: SampleHost) -> None:
    status, headers, body = request(
        f"{sample_host.url}/api/items/7/a/b%20c?x=1&y=2", "POST", b"payload", {"x-sample": "hello"}
    )
    assert status == 201
    assert headers["X-Echo"] == "yes"
    assert headers["Content-Type"].startswith("application/json")
    echoed = json.loads(body)
    assert echoed["method"] == "POST"
    assert echoed["route_params"] == {"id": "7", "rest": "a/b c"}
    assert echoed["params"] == {"x": "1", "y": "2"}
    assert echoed["body"] == "payload"
    assert echoed["header"] == "hello"
    assert echoed["url"] == f"{sample_host.url}/api/items/7/a/b%20c?x=1&y=2"


def test_http_errors(sample_host: SampleHost) -> None:
    assert request(f"{sample_host.url}/api/items/7/x", "DELETE")[0] == 404  # method not declared
    assert request(f"{sample_host.url}/api/nothing-here")[0] == 404
    status = request(f"{sample_host.url}/api/boom")[0]
    assert status == 500
    # A function's exception is logged once, with its traceback.
    log = wait_until(lambda: sample_host.log() if "RuntimeError: boom" in sample_host.log() else "", 5)
    assert log.count("RuntimeError: boom") == 1
    assert "Executed 'Functions.boom' (Failed" in log


def test_queue_message_is_processed_deleted_and_its_output_sent(sample_host: SampleHost) -> None:
    queue = sample_host.queue(sample_host.queue_name)
    send(queue, "hello queue")
    [record] = wait_until(
        lambda: [r for r in sample_host.records("on_message") if r["body"] == "hello queue"], what="the queue function"
    )
    assert record["dequeue_count"] == 1
    assert record["pop_receipt"] is True
    output = sample_host.queue(f"{sample_host.queue_name}-out")
    wait_until(lambda: "echo:hello queue" in decoded(output), what="the queue output")
    wait_until(lambda: not peek(queue), 5, what="the message to be deleted")


def test_a_failing_message_is_retried_then_poisoned(sample_host: SampleHost) -> None:
    queue = sample_host.queue(sample_host.queue_name)
    send(queue, "fail-always")
    poison = sample_host.queue(f"{sample_host.queue_name}-poison")
    wait_until(lambda: "fail-always" in decoded(poison), 30, what="the poison queue")
    attempts = [r["dequeue_count"] for r in sample_host.records("on_message") if r["body"] == "fail-always"]
    assert attempts == [1, 2, 3, 4, 5]
    assert not peek(queue)


def test_a_message_that_is_not_base64_goes_straight_to_poison(sample_host: SampleHost) -> None:
    queue = sample_host.queue(sample_host.queue_name)
    queue.send_message('{"plain": "json"}')
    poison = sample_host.queue(f"{sample_host.queue_name}-poison")
    wait_until(lambda: '{"plain": "json"}' in [m.content for m in peek(poison)], 10, what="the poison queue")
    assert "is not base64-encoded" in sample_host.log()


def test_new_blob_invokes_with_properties_and_leaves_a_receipt(sample_host: SampleHost) -> None:
    container = sample_host.container
    container.upload_blob("dir/new file.txt", b"hello blob", metadata={"owner": "tests"})
    [record] = wait_until(
        lambda: [
            r for r in sample_host.records("on_blob") if r["name"] == f"{sample_host.container_name}/dir/new file.txt"
        ],
        what="the blob function",
    )
    etag = container.get_blob_client("dir/new file.txt").get_blob_properties().etag
    assert record["length"] == record["content_length"] == 10
    assert record["etag"] == etag
    assert record["metadata"] == {"owner": "tests"}
    assert record["last_modified"] and record["created_on"]
    assert record["uri"].endswith(f"/{sample_host.container_name}/dir/new%20file.txt")
    assert record["stream_type"] == "BlobInputStream"  # streams; nothing was read up front
    hosts = sample_host.blobs.get_container_client("azure-webjobs-hosts")
    receipts = [blob.name for blob in hosts.list_blobs(name_starts_with="blobreceipts/")]
    assert any(
        name.endswith(f"/Host.Functions.on_blob/{etag}/{sample_host.container_name}/dir/new file.txt")
        for name in receipts
    )


def test_hostile_blob_names_are_triggered_like_any_other(sample_host: SampleHost) -> None:
    names = [
        "with space.txt",
        "ünïcødé-日本.txt",
        "semi;colon.txt",
        "$(touch pwned).txt",
        "back`tick`.txt",
        "quote'\"s.txt",
        "-leading.txt",
        "a%20b.txt",
        "q?x=1#f.txt",
    ]
    for name in names:
        sample_host.container.upload_blob(f"hostile/{name}", b"x")
    prefix = f"{sample_host.container_name}/hostile/"

    def seen() -> list[str]:
        return sorted(r["name"][len(prefix) :] for r in sample_host.records("on_blob") if r["name"].startswith(prefix))

    wait_until(lambda: len(seen()) >= len(names), what="every hostile name")
    settled(sample_host.url)
    assert seen() == sorted(names)


def test_a_blob_name_of_the_maximum_length_is_triggered_once(sample_host: SampleHost) -> None:
    name = "long/" + "n" * (1024 - len("long/"))  # 1,024 characters: no room left for a receipt prefix
    sample_host.container.upload_blob(name, b"x")
    wait_until(
        lambda: [r for r in sample_host.records("on_blob") if r["name"].endswith(name)], 15, what="the long name"
    )
    settled(sample_host.url)
    assert len([r for r in sample_host.records("on_blob") if r["name"].endswith(name)]) == 1


def test_the_function_can_stream_a_large_blob(sample_host: SampleHost) -> None:
    content = os.urandom(1024 * 1024) * 12  # 12 MiB: several ranged reads
    sample_host.container.upload_blob("read-large.bin", content, max_concurrency=4)
    [record] = wait_until(
        lambda: [r for r in sample_host.records("on_blob") if r["name"].endswith("read-large.bin")],
        30,
        what="the blob function",
    )
    assert record["sha256"] == hashlib.sha256(content).hexdigest()


def test_a_failing_blob_is_tried_five_times_then_poisoned(sample_host: SampleHost) -> None:
    sample_host.container.upload_blob("fail-blob.txt", b"x")
    poison = sample_host.queue("webjobs-blobtrigger-poison")

    def poisoned() -> list[dict[str, Any]]:
        messages = [json.loads(base64.b64decode(m.content)) for m in peek(poison)]
        return [
            m for m in messages if m["BlobName"] == "fail-blob.txt" and m["ContainerName"] == sample_host.container_name
        ]

    [message] = wait_until(poisoned, 30, what="the blob poison queue")
    assert message["FunctionId"] == "Host.Functions.on_blob"
    attempts = [r for r in sample_host.records("on_blob") if r["name"].endswith("/fail-blob.txt")]
    assert len(attempts) == 5


def test_timer_runs_on_startup_and_on_schedule(sample_host: SampleHost) -> None:
    records = wait_until(
        lambda: sample_host.records("tick")[:3] if len(sample_host.records("tick")) >= 3 else [], 10, what="three ticks"
    )
    assert records[0]["past_due"] is False
    assert "Timer fired at startup (RunOnStartup)" in sample_host.log()


def test_restart_does_not_redispatch_a_blob_with_a_receipt(start_sample: StartSample, tmp_path: Path) -> None:
    same_host = {"AzureFunctionsWebHost__hostid": f"restart-{uuid.uuid4().hex[:8]}"}
    first = start_sample(workdir=tmp_path / "first", settings=same_host)
    first.blobs.create_container(first.container_name)
    first.container.upload_blob("once.txt", b"1")
    wait_until(lambda: first.records("on_blob"), what="the first invocation")
    first.service.stop()
    second = start_sample(workdir=tmp_path / "second", container=first.container_name, settings=same_host)
    # The blob was there before this host started, so any scan of it has covered it.
    wait_for_rise(lambda: host_count(second.url, "blob_scans", BLOB_FUNCTION), since=0, what="its blob scans")
    wait_for_host_passes(second.url, "queue_polls", DISPATCH_QUEUE)  # had one been dispatched, it has run
    assert second.records("on_blob") == []
    second.container.upload_blob("once.txt", b"2", overwrite=True)  # a new version is new work
    [record] = wait_until(lambda: second.records("on_blob"), what="the changed blob")
    assert record["length"] == 1 and record["name"].endswith("/once.txt")
    second.service.stop()


def test_event_grid_pushes_reach_blob_and_event_grid_functions(start_sample: StartSample) -> None:
    # The pushed function is never scanned; scans of the ordinary one are effectively off too.
    host = start_sample(["--blob-scan-seconds", "3600", "--webhook-key", "k3y"])
    host.blobs.create_container(host.container_name)
    host.container.upload_blob("pushed.txt", b"pushed")
    subject = f"/blobServices/default/containers/{host.container_name}/blobs/pushed.txt"
    event = {
        "id": "e1",
        "eventType": "Microsoft.Storage.BlobCreated",
        "subject": subject,
        "eventTime": "2026-11-24T10:00:00Z",
        "dataVersion": "",
        "data": {"url": "ignored"},
    }
    blobs_url = f"{host.url}/runtime/webhooks/blobs?functionName=Host.Functions.on_pushed_blob"
    headers = {"aeg-event-type": "Notification", "Content-Type": "application/json"}
    assert request(blobs_url, "POST", [event], headers)[0] == 401
    assert request(f"{blobs_url}&code=k3y", "POST", [event], headers)[0] == 202
    [record] = wait_until(lambda: host.records("on_pushed_blob"), what="the pushed blob")
    assert record["name"] == f"{host.container_name}/pushed.txt"
    # The same event again (Event Grid delivers at least once): the receipt stops a second run.
    assert request(f"{blobs_url}&code=k3y", "POST", [event], headers)[0] == 202
    pushed_again = host_count(host.url, "queue_polls", DISPATCH_QUEUE)
    validation = [
        {
            "id": "v",
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "data": {"validationCode": "code-123"},
        }
    ]
    status, _, body = request(
        f"{host.url}/runtime/webhooks/EventGrid?functionName=on_event&code=k3y",
        "POST",
        validation,
        {"aeg-event-type": "SubscriptionValidation"},
    )
    assert (status, json.loads(body)) == (200, {"validationResponse": "code-123"})
    status, _, _ = request(
        f"{host.url}/runtime/webhooks/EventGrid?functionName=on_event&code=k3y", "POST", [event], headers
    )
    assert status == 202
    assert [r["id"] for r in wait_until(lambda: host.records("on_event"))] == ["e1"]
    # Had the second push been dispatched, its message would have been polled and its invocation finished.
    wait_for_host_passes(host.url, "queue_polls", DISPATCH_QUEUE, since=pushed_again)
    assert len(host.records("on_pushed_blob")) == 1


def test_sigterm_releases_a_message_whose_function_is_still_running(start_sample: StartSample) -> None:
    host = start_sample(settings={"SAMPLE_SLOW_SECONDS": "30"})
    queue = host.queue(host.queue_name)
    send(queue, "slow")
    wait_until(lambda: host.records("on_message"), what="the slow function to start")
    started = time.monotonic()
    host.service.stop(timeout=20)
    assert time.monotonic() - started < 10
    assert not host.service.alive()
    # Released, not lost: visible again at once, with one dequeue behind it.
    [message] = wait_until(lambda: peek(queue), 5, what="the released message")
    assert base64.b64decode(message.content) == b"slow"
    assert message.dequeue_count == 1


def test_exactly_one_ready_line_and_a_clean_exit_on_sigterm(azurite: Any, tmp_path: Path) -> None:
    settings = sample_settings(azurite, tmp_path, "in-ready", "q-ready", "0 0 0 1 1 *")
    # As `func start`: the settings file fills in what the environment does not set.
    from_file = {name: settings.pop(name) for name in ("SAMPLE_CONTAINER", "SAMPLE_SCHEDULE", "SAMPLE_RECORD_DIR")}
    settings_file = tmp_path / "local.settings.json"
    settings_file.write_text(json.dumps({"IsEncrypted": False, "Values": {**from_file, "SAMPLE_QUEUE": "Not Valid!"}}))
    env = {**os.environ, **settings}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "local.host",
            "--app",
            SAMPLE_APP,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--state-dir",
            str(tmp_path / "state"),
            "--settings",
            str(settings_file),
        ],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("READY http://127.0.0.1:") and line.endswith("\n")
        url = line.split()[1]
        status, _, body = request(f"{url}/admin/host/status")
        assert status == 200 and json.loads(body)["state"] == "Running"
        # The yearly timer ran once at startup (run_on_startup); the admin endpoint runs it again now.
        wait_until(lambda: len(read_records(tmp_path, "tick")) == 1, 5, what="the startup tick")
        assert request(f"{url}/admin/functions/tick", "POST", {"input": ""})[0] == 202
        wait_until(lambda: len(read_records(tmp_path, "tick")) == 2, 5, what="the manual tick")
        process.terminate()
        assert process.wait(timeout=15) == 0
        assert process.stdout.read() == ""
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("SAMPLE_QUEUE", "refers to app setting %SAMPLE_QUEUE%, which is not set"),
        ("SampleStorage", "connection 'SampleStorage'"),
    ],
)
def test_startup_errors_exit_non_zero_naming_the_setting(
    azurite: Any, tmp_path: Path, missing: str, message: str
) -> None:
    settings = sample_settings(azurite, tmp_path, "in-x", "q-x")
    env = {name: value for name, value in {**os.environ, **settings}.items() if name != missing}
    result = subprocess.run(
        [sys.executable, "-m", "local.host", "--app", SAMPLE_APP, "--port", "0", "--state-dir", str(tmp_path)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert message in result.stderr


def test_storage_deleted_under_a_running_host_is_created_again(start_sample: StartSample) -> None:
    host = start_sample()
    host.blobs.create_container(host.container_name)
    host.container.upload_blob("before.txt", b"1")
    wait_until(lambda: host.records("on_blob"), what="the first blob")
    # What a test that wipes storage between cases does to a running host.
    host.blobs.delete_container("azure-webjobs-hosts")
    host.queue(host.queue_name).delete_queue()
    host.container.upload_blob("after.txt", b"2")
    wait_until(lambda: len(host.records("on_blob")) == 2, 20, what="the blob after the wipe")
    queue = host.queue(host.queue_name)

    def recreated() -> bool:
        try:
            queue.get_queue_properties()
        except ResourceNotFoundError:
            return False
        return True

    wait_until(recreated, 10, what="the queue to be created again")
    send(queue, "after the wipe")
    wait_until(
        lambda: [r for r in host.records("on_message") if r["body"] == "after the wipe"],
        20,
        what="the message after the wipe",
    )
