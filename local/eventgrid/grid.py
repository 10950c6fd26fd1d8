"""The local Event Grid: the proxy's observed writes become events, journaled, delivered per subscription."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContentSettings

from .deadletter import write_dead_letters
from .delivery import Delivery, Policy, State
from .events import BlobWrite, blob_created
from .journal import Journal, Owed
from .proxy import ProxyServer
from .subscriptions import Subscription

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GridConfig:
    azurite_blob_url: str  # http://127.0.0.1:<port>, Azurite's blob service
    account: str
    account_key: str
    app_url: str  # the function app's base URL; subscription endpoints are paths under it
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    policy: Policy = field(default_factory=Policy)


class LocalEventGrid:
    def __init__(self, config: GridConfig, subscriptions: list[Subscription]) -> None:
        self.config = config
        self.stopping = threading.Event()
        self.journal = Journal(config.state_dir / "journal.jsonl")
        endpoint = f"{config.azurite_blob_url.rstrip('/')}/{config.account}"
        self.storage = BlobServiceClient.from_connection_string(
            f"DefaultEndpointsProtocol=http;AccountName={config.account};AccountKey={config.account_key};"
            f"BlobEndpoint={endpoint};"
        )
        self.deliveries = [
            Delivery(subscription, config.app_url, config.account, self.journal, self._write_dead_letters,
                     config.policy, self.stopping)
            for subscription in subscriptions
        ]  # fmt: skip
        self._by_name = {delivery.subscription.name: delivery for delivery in self.deliveries}
        azurite = urlsplit(config.azurite_blob_url)
        self.proxy = ProxyServer((config.host, config.port), azurite.hostname or "127.0.0.1", azurite.port or 80,
                                 self.publish, self._properties, self._admin)
        self.published = 0

    @property
    def url(self) -> str:
        return self.proxy.url

    def start(self) -> str:
        """Recover what the journal still owes, serve the proxy, validate and deliver; the proxy's URL."""
        recovered = self.journal.recover()
        for owed in recovered:
            delivery = self._by_name.get(owed.subscription)
            if delivery is not None:
                delivery.owe([owed])
        if recovered:
            logger.info("Recovered %d undelivered event(s) from the journal", len(recovered))
        threading.Thread(target=self.proxy.serve_forever, kwargs={"poll_interval": 0.2}, name="proxy",
                         daemon=True).start()
        for delivery in self.deliveries:
            delivery.start()
        return self.url

    def stop(self) -> None:
        self.stopping.set()
        self.proxy.shutdown()
        self.proxy.server_close()
        self.journal.close()

    def publish(self, write: BlobWrite) -> None:
        """The event for a write, owed to every subscription (not failed) whose filters it passes."""
        event = blob_created(write, f"{self.url}/{write.account}")
        owed = {delivery: Owed(delivery.subscription.name, time.time(), event) for delivery in self.deliveries
                if delivery.state is not State.FAILED and delivery.subscription.matches(event)}
        self.published += 1
        if not owed:
            return
        self.journal.added(owed.values())
        for delivery, entry in owed.items():
            delivery.owe([entry])

    def describe(self) -> dict[str, Any]:
        return {"published": self.published, "subscriptions": [d.describe() for d in self.deliveries]}

    def _properties(self, account: str, container: str, name: str) -> tuple[str, int]:
        properties = self.storage.get_blob_client(container, name).get_blob_properties()
        return properties.content_settings.content_type or "application/octet-stream", int(properties.size)

    def _write_dead_letters(self, subscription: str, events: list[dict[str, Any]]) -> None:
        def write(container: str, name: str, body: bytes) -> None:
            blob = self.storage.get_blob_client(container, name)
            settings = ContentSettings(content_type="application/json")
            try:
                blob.upload_blob(body, overwrite=True, content_settings=settings)
            except ResourceNotFoundError:
                self.storage.create_container(container)
                blob.upload_blob(body, overwrite=True, content_settings=settings)

        name = write_dead_letters(write, self.config.account, subscription, events)
        logger.info("Dead letters of %s written to %s", subscription, name)

    def _admin(self, method: str, path: str) -> tuple[int, Any]:
        if method == "GET" and path.rstrip("/") == "subscriptions":
            return 200, self.describe()
        return 404, {"error": f"no local Event Grid endpoint {method} /_eventgrid/{path}"}


def placeholder_settings(environment: Mapping[str, str]) -> dict[str, str]:
    """The app settings a subscriptions file may name."""
    return {name: value for name, value in environment.items() if name.startswith("BATCHDROP_")}
