"""Delivery as Event Grid does it: the validation handshake, optimistic batches, retries, dead letters."""

from __future__ import annotations

import json
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

from local.eventgrid.deadletter import DEAD_LETTER_CONTAINER
from local.stack import Azurite
from tests.local_eventgrid.conftest import Receiver, StartGrid, active, container_through, subscription
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


def _in(container: str) -> str:
    return f"/blobServices/default/containers/{container}/"


def test_the_validation_handshake_activates_a_subscription(start_grid: StartGrid, receiver: Receiver) -> None:
    grid = start_grid([subscription("handshake", "/hook?functionName=x")])
    wait_until(lambda: active(grid)["handshake"]["provisioningState"] == "Succeeded", 20, what="validation")
    [validation] = receiver.validations()
    assert validation.path == "/hook?functionName=x"
    assert validation.headers["aeg-event-type"] == "SubscriptionValidation"
    [event] = validation.events
    assert event["eventType"] == "Microsoft.EventGrid.SubscriptionValidationEvent"
    assert re.fullmatch(r"[0-9a-f]{32}", event["data"]["validationCode"])


@pytest.mark.parametrize(("answer", "reason"), [("wrong", "is not the code sent"), (404, "HTTP 404")])
def test_an_endpoint_that_fails_validation_leaves_the_subscription_inactive(
    start_grid: StartGrid, receiver: Receiver, answer: str | int, reason: str
) -> None:
    receiver.validation = answer
    name = f"ev-{uuid.uuid4().hex[:8]}"
    grid = start_grid([subscription("refused", "/hook")])
    state = wait_until(lambda: (s := active(grid)["refused"])["provisioningState"] != "Creating" and s, 20,
                       what="the validation's outcome")
    assert state["provisioningState"] == "Failed"
    assert "webhook validation failed" in state["reason"] and reason in state["reason"]
    container_through(grid, name).upload_blob("a.txt", b"a")  # the event is published before the upload returns
    assert grid.subscriptions()["published"] == 1
    assert active(grid)["refused"]["pending"] == 0 and receiver.notifications() == []
    assert "is not active" in grid.log_tail()


def test_ready_events_go_out_in_batches_of_at_most_max_events_and_a_single_one_alone(
    start_grid: StartGrid, receiver: Receiver
) -> None:
    name = f"ev-{uuid.uuid4().hex[:8]}"
    grid = start_grid([subscription("batched", "/bulk", subject_begins_with=_in(name), max_events_per_batch=10,
                                    preferred_batch_size_kb=1024)])
    container = container_through(grid, name)
    wait_until(lambda: active(grid)["batched"]["provisioningState"] == "Succeeded", 20, what="validation")
    receiver.gate.clear()  # hold the first deliveries while the other uploads' events queue up
    names = [f"f-{index:03}.txt" for index in range(100)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda blob: container.upload_blob(blob, b"x"), names))
    receiver.gate.set()
    wait_until(lambda: len(receiver.events("/bulk")) >= 100 or None, 30, what="100 events")

    sizes = [len(delivery.events) for delivery in receiver.notifications("/bulk")]
    assert max(sizes) == 10 and sum(sizes) == 100
    assert sorted(e["subject"].rsplit("/", 1)[1] for e in receiver.events("/bulk")) == names

    # One more file, with nothing else coming: it goes out at once, alone (a batch waiting to fill never would).
    container.upload_blob("alone.txt", b"x")
    last = wait_until(
        lambda: len(receiver.notifications("/bulk")) == len(sizes) + 1 and receiver.notifications("/bulk")[-1],
        20, what="the single file's delivery",
    )
    assert [e["subject"].rsplit("/", 1)[1] for e in last.events] == ["alone.txt"]


def test_a_failing_endpoint_gets_the_same_event_again_until_it_accepts(
    start_grid: StartGrid, receiver: Receiver
) -> None:
    name = f"ev-{uuid.uuid4().hex[:8]}"
    receiver.fail["/flaky"] = 2
    grid = start_grid([subscription("flaky", "/flaky", subject_begins_with=_in(name))])
    container_through(grid, name).upload_blob("a.txt", b"a")
    wait_until(lambda: active(grid)["flaky"]["delivered"] == 1, 20, what="the third attempt's success")

    attempts = receiver.notifications("/flaky")
    assert [d.headers["aeg-delivery-count"] for d in attempts] == ["0", "1", "2"]
    assert len({d.events[0]["id"] for d in attempts}) == 1
    assert active(grid)["flaky"]["dead_lettered"] == 0


def _dead_letters(azurite: Azurite, subscription_name: str) -> list[tuple[str, list[dict[str, object]]]]:
    container = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client(
        DEAD_LETTER_CONTAINER)
    if not container.exists():
        return []
    prefix = f"DEVSTOREACCOUNT1/{subscription_name.upper()}/"
    return [(blob.name, json.loads(container.download_blob(blob.name).readall()))
            for blob in container.list_blobs(name_starts_with=prefix)]


def test_after_the_retry_budget_the_event_is_dead_lettered_into_blob_storage(
    start_grid: StartGrid, receiver: Receiver, azurite: Azurite
) -> None:
    name = f"ev-{uuid.uuid4().hex[:8]}"
    sub = f"down-{name}"
    receiver.always["/down"] = 503
    grid = start_grid([subscription(sub, "/down", subject_begins_with=_in(name), max_delivery_attempts=3)])
    container_through(grid, name).upload_blob("a.txt", b"a")

    [(blob_name, events)] = wait_until(lambda: _dead_letters(azurite, sub), 30, what="a dead-letter blob")
    assert re.fullmatch(rf"DEVSTOREACCOUNT1/{sub.upper()}/\d{{4}}/\d{{1,2}}/\d{{1,2}}/\d{{1,2}}/[0-9a-f-]{{36}}\.json",
                        blob_name)
    [event] = events
    assert event["subject"] == f"/blobServices/default/containers/{name}/blobs/a.txt"
    assert (event["deadLetterReason"], event["deliveryAttempts"]) == ("MaxDeliveryAttemptsExceeded", 3)
    assert (event["lastDeliveryOutcome"], event["lastHttpStatusCode"]) == ("Busy", 503)
    assert len(receiver.notifications("/down")) == 3
    assert active(grid)[sub]["dead_lettered"] == 1 and active(grid)[sub]["pending"] == 0


def test_a_bad_request_answer_is_dead_lettered_without_retries(
    start_grid: StartGrid, receiver: Receiver, azurite: Azurite
) -> None:
    name = f"ev-{uuid.uuid4().hex[:8]}"
    sub = f"bad-{name}"
    receiver.always["/bad"] = 400
    grid = start_grid([subscription(sub, "/bad", subject_begins_with=_in(name))])
    container_through(grid, name).upload_blob("a.txt", b"a")
    [(_, [event])] = wait_until(lambda: _dead_letters(azurite, sub), 30, what="a dead-letter blob")
    assert (event["deadLetterReason"], event["deliveryAttempts"], event["lastHttpStatusCode"]) == (
        "UndeliverableDueToClientError", 1, 400)
    assert len(receiver.notifications("/bad")) == 1


def test_events_owed_when_the_grid_stops_are_delivered_after_its_restart(
    start_grid: StartGrid, receiver: Receiver, tmp_path: Path
) -> None:
    name = f"ev-{uuid.uuid4().hex[:8]}"
    receiver.always["/later"] = 500
    subscriptions = [subscription("later", "/later", subject_begins_with=_in(name))]
    grid = start_grid(subscriptions, ("--retry-schedule", "0.2"), workdir=tmp_path)
    container_through(grid, name).upload_blob("a.txt", b"a")
    wait_until(lambda: len(receiver.notifications("/later")) >= 1 or None, 20, what="a failed delivery")
    grid.kill()
    del receiver.always["/later"]

    restarted = start_grid(subscriptions, ("--retry-schedule", "0.2"), workdir=tmp_path)
    wait_until(lambda: active(restarted)["later"]["delivered"] == 1, 20, what="the owed event's delivery")
    assert {d.events[0]["subject"] for d in receiver.notifications("/later")} == {
        f"/blobServices/default/containers/{name}/blobs/a.txt"}
