"""Blob triggers: container scans (ordinary blob triggers) and Event Grid pushes (source=EventGrid) dispatch via
receipts; a queue runs the functions.

A blob trigger with source=EventGrid is never scanned, as on Azure: its blobs arrive only as Event Grid pushes to
`/runtime/webhooks/blobs` (locally from the local Event Grid, local/eventgrid).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from azure.core.exceptions import AzureError, ResourceNotFoundError

from .bindings import BlobTrigger, FunctionSpec
from .blobs import BlobInputStream, sdk_blob_client
from .invocation import Invoker
from .queues import Handler, QueueListener, ReceivedMessage
from .receipts import BlobVersion, Receipts, TriggerMessage, quoted_etag
from .settings import HostOptions
from .storage import StorageAccounts

logger = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

# Parallel dispatches during a scan: a drop of a thousand files is dispatched in seconds, not minutes.
DISPATCH_THREADS = 16


def _in_parallel(work: Callable[[T], R], items: list[T], workers: int) -> list[R | None]:
    """work(item) for each item on up to `workers` daemon threads (a SIGTERM never waits for them)."""
    results: list[R | None] = [None] * len(items)
    pending = iter(range(len(items)))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                index = next(pending, None)
            if index is None:
                return
            results[index] = work(items[index])

    threads = [threading.Thread(target=worker, name="dispatch", daemon=True)
               for _ in range(min(workers, len(items)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _describe(received: ReceivedMessage) -> str:
    try:
        message = TriggerMessage.from_json(received.body)
    except (ValueError, KeyError, TypeError):
        return f"message {received.id}"
    return f"blob {message.blob.container}/{message.blob.name} for {message.function_id}"


def _trigger(spec: FunctionSpec) -> BlobTrigger:
    assert isinstance(spec.trigger, BlobTrigger)
    return spec.trigger


class BlobTriggers:
    """Every blob-triggered function of an app."""

    def __init__(self, functions: list[FunctionSpec], accounts: StorageAccounts, invoker: Invoker,
                 options: HostOptions, host_id: str, scan_seconds: float, stopping: threading.Event) -> None:
        self.functions = {spec.full_name: spec for spec in functions}
        self.accounts = accounts
        self.invoker = invoker
        self.options = options
        self.scan_seconds = scan_seconds
        self.stopping = stopping
        self.receipts: dict[str, Receipts] = {}
        for spec in functions:
            connection = _trigger(spec).connection
            if connection not in self.receipts:
                self.receipts[connection] = Receipts(accounts.get(connection), host_id,
                                                     options.message_encoding)
        self.listeners: list[QueueListener] = []
        self.scanned = {name: spec for name, spec in self.functions.items() if not _trigger(spec).event_grid}
        self._scans = dict.fromkeys(self.scanned, 0)
        self._scans_lock = threading.Lock()

    def scans(self) -> dict[str, int]:
        """Completed container scans per scanned function (full name; source=EventGrid ones are never scanned).
        A scan counts once every blob it listed has been dispatched (its message queued) or left for the next
        scan after a storage error; a count two higher than one read earlier means a whole scan ran after that
        read."""
        with self._scans_lock:
            return dict(self._scans)

    def start(self) -> None:
        for connection, receipts in self.receipts.items():
            listener = QueueListener(
                f"blobtrigger[{connection}]", receipts.dispatch_queue, receipts.poison_queue,
                self.options, self._handler(receipts), self.stopping, describe=_describe)
            listener.start()
            self.listeners.append(listener)
        for spec in self.scanned.values():
            threading.Thread(target=self._scan_forever, args=(spec,), name=f"scan:{spec.name}",
                             daemon=True).start()

    def push(self, spec: FunctionSpec, container: str, blob_name: str) -> bool:
        """An Event Grid BlobCreated for this function's container; True if the blob was dispatched."""
        trigger = _trigger(spec)
        if container != trigger.container or not trigger.matches(blob_name):
            logger.info("Event for %s/%s does not match %s's path; ignored", container, blob_name, spec.name)
            return False
        account = self.accounts.get(trigger.connection)
        try:
            etag = account.blobs.get_blob_client(container, blob_name).get_blob_properties().etag
        except ResourceNotFoundError:
            logger.warning("Event for %s/%s, which no longer exists; ignored", container, blob_name)
            return False
        version = BlobVersion(container, blob_name, quoted_etag(etag))
        return self.receipts[trigger.connection].dispatch(spec.full_name, version)

    def push_all(self, spec: FunctionSpec, blobs: list[tuple[str, str]]) -> list[AzureError | None]:
        """An Event Grid delivery's blobs (container, name) pushed in parallel, as a scan dispatches: a batch of 100
        events is dispatched in about the time of a few, well within Event Grid's 30 s. The storage error of
        each blob that could not be dispatched, else None."""

        def push(blob: tuple[str, str]) -> AzureError | None:
            try:
                self.push(spec, *blob)
            except AzureError as error:
                return error
            return None

        return [outcome if isinstance(outcome, AzureError) else None
                for outcome in _in_parallel(push, blobs, DISPATCH_THREADS)]

    def _scan_forever(self, spec: FunctionSpec) -> None:
        trigger = _trigger(spec)
        receipts = self.receipts[trigger.connection]
        container = self.accounts.get(trigger.connection).blobs.get_container_client(trigger.container)
        done: set[BlobVersion] | None = None
        missing = False
        while not self.stopping.is_set():
            try:
                if done is None:
                    done = receipts.completed(spec.full_name)
                seen: set[BlobVersion] = set()
                for blob in container.list_blobs(name_starts_with=trigger.prefix or None):
                    if trigger.matches(blob.name):
                        seen.add(BlobVersion(trigger.container, blob.name, quoted_etag(blob.etag)))
                new = sorted(seen - done, key=lambda version: version.name)
                for version, dispatched in zip(new, self._dispatch_all(spec, receipts, new), strict=True):
                    if dispatched is not None:
                        done.add(version)
                    if dispatched:
                        logger.info("New blob %s/%s for %s", version.container, version.name, spec.name)
                done &= seen  # forget deleted blobs and replaced versions
                missing = False
                with self._scans_lock:
                    self._scans[spec.full_name] += 1
            except ResourceNotFoundError:
                if not missing:
                    logger.warning("%s: container '%s' does not exist yet", spec.name, trigger.container)
                missing = True
            except AzureError as error:
                logger.warning("%s: scanning '%s' failed: %s", spec.name, trigger.container, error)
            except Exception:
                logger.exception("%s: scanning '%s' failed", spec.name, trigger.container)
            self.stopping.wait(self.scan_seconds)

    def _dispatch_all(self, spec: FunctionSpec, receipts: Receipts,
                      versions: list[BlobVersion]) -> list[bool | None]:
        """Dispatch in parallel (three requests each); None where it did not happen (retried next scan)."""

        def dispatch(version: BlobVersion) -> bool | None:
            if self.stopping.is_set():
                return None
            try:
                return receipts.dispatch(spec.full_name, version)
            except AzureError as error:
                logger.warning("%s: dispatching %s/%s failed: %s", spec.name, version.container,
                               version.name, error)
                return None

        return _in_parallel(dispatch, versions, DISPATCH_THREADS)

    def _handler(self, receipts: Receipts) -> Handler:
        blobs = receipts.account.blobs

        def handle(received: ReceivedMessage) -> None:
            message = TriggerMessage.from_json(received.body)
            spec = self.functions.get(message.function_id)
            if spec is None:
                logger.warning("Blob trigger message for unknown function %s; dropped", message.function_id)
                return
            blob = blobs.get_blob_client(message.blob.container, message.blob.name)
            try:
                properties = blob.get_blob_properties()
            except ResourceNotFoundError:
                logger.warning("%s: blob %s/%s no longer exists; not invoking", spec.name,
                               message.blob.container, message.blob.name)
                return
            if quoted_etag(properties.etag) != quoted_etag(message.blob.etag):
                # The newer version has its own receipt and message, as on the Functions host.
                logger.info("%s: blob %s/%s changed since it was dispatched; skipping the old version",
                            spec.name, message.blob.container, message.blob.name)
                return
            trigger_value: Any = BlobInputStream(blob, properties)
            if spec.sdk_type is not None and isinstance(spec.trigger, BlobTrigger):
                trigger_value = sdk_blob_client(spec.sdk_type, spec.trigger.connection, properties)
            self.invoker.invoke(spec, trigger_value,
                                reason=f"New blob detected: {message.blob.container}/{message.blob.name}",
                                retry_count=received.dequeue_count - 1)

        return handle
