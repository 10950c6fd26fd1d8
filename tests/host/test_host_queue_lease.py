"""A queue message stays leased while its function runs longer than the visibility timeout."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from azure.storage.queue import QueueClient

from local.host.queues import QueueListener, ReceivedMessage
from local.host.settings import HostOptions
from tests.waiting import wait_for_rise, wait_until

pytestmark = pytest.mark.integration
LEASE_SECONDS = 5


def test_a_long_invocation_keeps_its_message_and_deletes_it_once_done(azurite: Any) -> None:
    name = f"lease-{uuid.uuid4().hex[:8]}"
    queue = QueueClient.from_connection_string(azurite.connection_string, name)
    poison = QueueClient.from_connection_string(azurite.connection_string, f"{name}-poison")
    handled: list[tuple[bytes, int]] = []
    stopping = threading.Event()
    release = threading.Event()

    def slow(received: ReceivedMessage) -> None:
        handled.append((received.body, received.dequeue_count))
        release.wait(60)

    listener = QueueListener(
        "lease-test", queue, poison, HostOptions(message_encoding="none"), slow, stopping, lease_seconds=LEASE_SECONDS
    )
    queue.create_queue()
    listener.start()
    try:
        queue.send_message("long job")
        wait_until(lambda: handled, 15, what="the handler to start")
        # Wall time is what this test is about: the lease the message was received with must have run out,
        # were it not renewed (a sleep, as nothing counts a lease's seconds)...
        time.sleep(LEASE_SECONDS * 1.2)
        # ...and the listener must have polled since, so that it would have received the message again.
        wait_for_rise(lambda: listener.polls, what="the listener's polls after the first lease ran out")
        release.set()
        wait_until(lambda: listener.in_flight == 0, 20, what="the handler to finish")
        assert handled == [(b"long job", 1)]
        assert list(queue.peek_messages()) == []
    finally:
        release.set()
        stopping.set()
