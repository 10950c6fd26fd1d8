"""Queue polling as the Functions host does it: batches, visibility leases, retries, a poison queue."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import azure.functions as func
from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.functions.queue import QueueMessage as FunctionsQueueMessage
from azure.storage.queue import QueueClient

from .bindings import FunctionSpec
from .invocation import InvocationFailed, Invoker
from .settings import HostOptions
from .storage import decode_message, ensure_queue

logger = logging.getLogger(__name__)

# How long a received message stays invisible; renewed every third of it while the function runs,
# so a killed host's messages come back within half a minute (the Functions host uses 10 minutes).
LEASE_SECONDS = 30
_FIRST_POLL_DELAY = 0.05


@dataclass(frozen=True)
class ReceivedMessage:
    id: str
    content: str  # as stored in the queue
    body: bytes  # decoded
    dequeue_count: int
    insertion_time: dt.datetime | None
    expiration_time: dt.datetime | None
    time_next_visible: dt.datetime | None
    pop_receipt: str


@dataclass
class _Lease:
    message_id: str
    pop_receipt: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    settled: bool = False


Handler = Callable[[ReceivedMessage], None]


class QueueListener:
    """Polls one queue and hands each message to `handle`; a raise means "retry, then poison"."""

    def __init__(self, label: str, queue: QueueClient, poison: QueueClient, options: HostOptions,
                 handle: Handler, stopping: threading.Event, lease_seconds: int = LEASE_SECONDS,
                 describe: Callable[[ReceivedMessage], str] | None = None) -> None:
        self.label = label
        self.queue = queue
        self.poison = poison
        self.options = options
        self.handle = handle
        self.stopping = stopping
        self.lease_seconds = lease_seconds
        self.describe = describe or (lambda received: f"message {received.id}")
        self._leases: dict[str, _Lease] = {}
        self._changed = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._polls = 0

    def start(self) -> None:
        for target, name in ((self._poll, "poll"), (self._renew, "renew")):
            thread = threading.Thread(target=target, name=f"{self.label}:{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    @property
    def in_flight(self) -> int:
        with self._changed:
            return len(self._leases)

    @property
    def polls(self) -> int:
        """Receives that have completed, empty ones included (and the messages handed on): a test that
        sees this move by two knows a whole poll ran after the moment it looked."""
        return self._polls

    def drain(self, deadline: float) -> None:
        """Wait for running invocations until `deadline` (monotonic); release the rest to the queue."""
        with self._changed:
            self._changed.wait_for(lambda: not self._leases, timeout=max(deadline - time.monotonic(), 0))
            abandoned = list(self._leases.values())
        for lease in abandoned:
            with lease.lock:
                if lease.settled:
                    continue
                lease.settled = True
                try:
                    self.queue.update_message(lease.message_id, pop_receipt=lease.pop_receipt,
                                              visibility_timeout=0)
                    logger.warning("%s: abandoned message %s at shutdown; it is visible again",
                                   self.label, lease.message_id)
                except AzureError as error:
                    logger.warning("%s: could not release message %s: %s", self.label, lease.message_id, error)

    def _poll(self) -> None:
        delay = _FIRST_POLL_DELAY
        ready = False
        while not self.stopping.is_set():
            with self._changed:
                self._changed.wait_for(
                    lambda: len(self._leases) <= self.options.new_batch_threshold or self.stopping.is_set(),
                    timeout=1.0)
                if len(self._leases) > self.options.new_batch_threshold:
                    continue
            try:
                if not ready:
                    ensure_queue(self.queue)
                    ready = True
                batch = list(self.queue.receive_messages(
                    max_messages=self.options.batch_size, messages_per_page=self.options.batch_size,
                    visibility_timeout=self.lease_seconds))
            except AzureError as error:
                ready = not isinstance(error, ResourceNotFoundError)  # deleted under us: create it again
                logger.warning("%s: polling failed (%s); retrying in %.1fs", self.label, error,
                               self.options.max_polling_interval)
                self.stopping.wait(self.options.max_polling_interval)
                continue
            if not batch:
                self._polls += 1  # only the poll thread writes it
                self.stopping.wait(delay)
                delay = min(delay * 2, self.options.max_polling_interval)
                continue
            delay = _FIRST_POLL_DELAY
            for message in batch:
                self._dispatch(message)
            self._polls += 1

    def _dispatch(self, message: Any) -> None:
        if message.dequeue_count > self.options.max_dequeue_count:
            logger.error("%s: message %s was dequeued %d times already", self.label, message.id,
                         message.dequeue_count)
            self._to_poison(message.id, message.content, message.pop_receipt)
            return
        try:
            body = decode_message(message.content, self.options.message_encoding)
        except ValueError as error:
            # The Functions host moves undecodable messages straight to the poison queue.
            logger.error("%s: message %s: %s (host.json extensions.queues.messageEncoding is %s); "
                         "moving it to %s", self.label, message.id, error, self.options.message_encoding,
                         self.poison.queue_name)
            self._to_poison(message.id, message.content, message.pop_receipt)
            return
        received = ReceivedMessage(
            id=message.id, content=message.content, body=body, dequeue_count=message.dequeue_count,
            insertion_time=message.inserted_on, expiration_time=message.expires_on,
            time_next_visible=message.next_visible_on, pop_receipt=message.pop_receipt)
        lease = _Lease(message.id, message.pop_receipt)
        with self._changed:
            self._leases[message.id] = lease
        threading.Thread(target=self._process, args=(received, lease),
                         name=f"{self.label}:{message.id[:8]}", daemon=True).start()

    def _process(self, received: ReceivedMessage, lease: _Lease) -> None:
        succeeded = False
        try:
            self.handle(received)
            succeeded = True
        except InvocationFailed:
            pass  # logged with its traceback by the invoker
        except Exception:
            logger.exception("%s: handling message %s failed", self.label, received.id)
        try:
            with lease.lock:
                if lease.settled:
                    return
                lease.settled = True
                self._settle(received, lease.pop_receipt, succeeded)
        except AzureError as error:
            logger.warning("%s: could not settle message %s (%s); it will be visible again",
                           self.label, received.id, error)
        finally:
            with self._changed:
                self._leases.pop(received.id, None)
                self._changed.notify_all()

    def _settle(self, received: ReceivedMessage, pop_receipt: str, succeeded: bool) -> None:
        if succeeded:
            self.queue.delete_message(received.id, pop_receipt=pop_receipt)
        elif received.dequeue_count >= self.options.max_dequeue_count:
            logger.error("%s: %s failed %d times; moving it to %s", self.label, self.describe(received),
                         received.dequeue_count, self.poison.queue_name)
            self._to_poison(received.id, received.content, pop_receipt)
        else:
            delay = self.options.retry_delay(received.dequeue_count)
            logger.warning("%s: %s failed (attempt %d of %d); retrying in %ss", self.label,
                           self.describe(received), received.dequeue_count, self.options.max_dequeue_count, delay)
            self.queue.update_message(received.id, pop_receipt=pop_receipt, visibility_timeout=int(delay))

    def _to_poison(self, message_id: str, content: str, pop_receipt: str) -> None:
        try:
            ensure_queue(self.poison)
            self.poison.send_message(content)
            self.queue.delete_message(message_id, pop_receipt=pop_receipt)
        except AzureError as error:
            logger.warning("%s: could not move message %s to %s: %s", self.label, message_id,
                           self.poison.queue_name, error)

    def _renew(self) -> None:
        while not self.stopping.wait(self.lease_seconds / 3):
            with self._changed:
                leases = list(self._leases.values())
            for lease in leases:
                with lease.lock:
                    if lease.settled:
                        continue
                    try:
                        updated = self.queue.update_message(lease.message_id, pop_receipt=lease.pop_receipt,
                                                           visibility_timeout=self.lease_seconds)
                        lease.pop_receipt = updated.pop_receipt or lease.pop_receipt
                    except ResourceNotFoundError:
                        logger.warning("%s: lost the lease on message %s", self.label, lease.message_id)
                    except AzureError as error:
                        logger.warning("%s: could not renew message %s: %s", self.label,
                                       lease.message_id, error)


def queue_message(received: ReceivedMessage) -> func.QueueMessage:
    """The binding value a queue-triggered function receives."""
    return FunctionsQueueMessage(
        id=received.id, body=received.body, dequeue_count=received.dequeue_count,
        insertion_time=received.insertion_time, expiration_time=received.expiration_time,
        time_next_visible=received.time_next_visible, pop_receipt=received.pop_receipt)


def queue_trigger_handler(spec: FunctionSpec, queue_name: str, invoker: Invoker) -> Handler:
    def handle(received: ReceivedMessage) -> None:
        invoker.invoke(spec, queue_message(received),
                       reason=f"New queue message detected on '{queue_name}'.",
                       retry_count=received.dequeue_count - 1)

    return handle
