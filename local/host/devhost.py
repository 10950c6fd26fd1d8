"""The dev host: every function of a FunctionApp, run from its own binding declarations."""

from __future__ import annotations

import hashlib
import logging
import re
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .bindings import (
    BlobTrigger,
    EventGridTrigger,
    FunctionApp,
    FunctionSpec,
    HttpTrigger,
    QueueTrigger,
    TimerTrigger,
    read_functions,
)
from .blob_triggers import BlobTriggers
from .http_functions import call_http_function
from .invocation import Invoker
from .queues import QueueListener, queue_trigger_handler
from .routes import Router
from .server import HostServer, WebRequest
from .settings import AppSettings, HostOptions, StartupError
from .storage import StorageAccounts
from .timers import Timers
from .webhooks import BLOBS_PATH, EVENT_GRID_PATH, Webhooks, WebResponse, error_response, json_response

logger = logging.getLogger(__name__)

HOST_ID_SETTING = "AzureFunctionsWebHost__hostid"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True)
class HostConfig:
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    webhook_key: str | None = None
    blob_scan_seconds: float = 2.0
    options: HostOptions = field(default_factory=HostOptions)
    host_id: str | None = None
    # How long SIGTERM waits for running invocations before releasing their messages.
    shutdown_seconds: float = 5.0


def default_host_id(settings: AppSettings, state_dir: Path) -> str:
    """AzureFunctionsWebHost__hostid if set, else the machine name and a digest of the state directory.

    The Functions host uses the machine (or site) name, so that instances of one app share work.
    Here two hosts on one machine are usually different apps or tests against one storage account,
    so each state directory is its own host; a restart with the same directory keeps its receipts.
    """
    configured = settings.get(HOST_ID_SETTING)
    if configured:
        return re.sub(r"[^a-z0-9-]", "", configured.lower())[:32].strip("-") or "localhost"
    machine = re.sub(r"[^a-z0-9-]", "", socket.gethostname().lower())[:23].strip("-") or "localhost"
    digest = hashlib.sha256(str(state_dir.resolve()).encode("utf-8")).hexdigest()[:8]
    return f"{machine}-{digest}"


class DevHost:
    """Build with the app (its get_functions() is called here, once), then start() and stop()."""

    def __init__(self, app: FunctionApp, config: HostConfig, settings: AppSettings) -> None:
        if config.host not in LOOPBACK:
            raise StartupError(f"--host {config.host}: the dev host enforces no function keys, so it "
                               f"binds a loopback address only ({', '.join(sorted(LOOPBACK))})")
        self.config = config
        self.functions = read_functions(app, settings)
        self.host_id = config.host_id or default_host_id(settings, config.state_dir)
        self.stopping = threading.Event()
        self.accounts = StorageAccounts(settings)
        options = config.options
        self.invoker = Invoker(self.accounts, options.message_encoding)

        def having(kind: type) -> list[FunctionSpec]:
            return [spec for spec in self.functions if isinstance(spec.trigger, kind)]

        for spec in self.functions:  # a missing connection setting fails now, not at the first poll
            for connection in _connections(spec):
                self.accounts.get(connection)
        self.blob_triggers = BlobTriggers(having(BlobTrigger), self.accounts, self.invoker, options,
                                          self.host_id, config.blob_scan_seconds, self.stopping)
        self.queue_listeners = [self._queue_listener(spec) for spec in having(QueueTrigger)]
        self.timers = Timers(having(TimerTrigger), self.invoker, config.state_dir, self.stopping)
        self.router = Router(having(HttpTrigger), options.route_prefix)
        self.webhooks = Webhooks(self.functions, self.invoker, self.blob_triggers.push_all, config.webhook_key)
        self._server: HostServer | None = None
        self._stopped = threading.Event()

    def _queue_listener(self, spec: FunctionSpec) -> QueueListener:
        trigger = spec.trigger
        assert isinstance(trigger, QueueTrigger)
        account = self.accounts.get(trigger.connection)
        return QueueListener(f"queue:{spec.name}", account.queue(trigger.queue_name),
                             account.queue(f"{trigger.queue_name}-poison"), self.config.options,
                             queue_trigger_handler(spec, trigger.queue_name, self.invoker), self.stopping)

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        return self._server.url

    def start(self) -> str:
        """Serve HTTP and start every trigger; returns the base URL."""
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._server = HostServer(self.config.host, self.config.port, self._dispatch)
        except OSError as error:
            raise StartupError(f"cannot listen on {self.config.host}:{self.config.port}: {error}") from None
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                         name="http", daemon=True).start()
        self.blob_triggers.start()
        for listener in self.queue_listeners:
            listener.start()
        self.timers.start()
        self._log_functions()
        return self.url

    def progress(self) -> dict[str, dict[str, int]]:
        """Counters that only grow, for a test that must wait until the host has had its chance to act
        (a scan, a poll, a tick) before asserting that it did nothing."""
        listeners = [*self.blob_triggers.listeners, *self.queue_listeners]
        return {
            "blob_scans": self.blob_triggers.scans(),
            "queue_polls": {listener.label: listener.polls for listener in listeners},
            "queue_in_flight": {listener.label: listener.in_flight for listener in listeners},
            "timer_ticks": self.timers.ticks(),
        }

    def request_stop(self) -> None:
        """Ask wait() to return (safe from a signal handler)."""
        self._stopped.set()

    def wait(self, poll: float = 0.5) -> None:
        while not self._stopped.wait(poll):
            pass

    def stop(self) -> None:
        """Stop taking work, give running invocations a moment, release the rest; idempotent."""
        if self.stopping.is_set():
            return
        logger.info("Stopping the host")
        self.stopping.set()
        self._stopped.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        deadline = time.monotonic() + self.config.shutdown_seconds
        for listener in [*self.blob_triggers.listeners, *self.queue_listeners]:
            listener.drain(deadline)
        self.timers.drain(deadline - time.monotonic())
        logger.info("Host stopped")

    def _log_functions(self) -> None:
        lines = []
        for spec in self.functions:
            trigger = spec.trigger
            if isinstance(trigger, HttpTrigger):
                prefix = f"/{self.config.options.route_prefix}" if self.config.options.route_prefix else ""
                methods = ",".join(sorted(trigger.methods)) if trigger.methods else "*"
                where = f"[{methods}] {self.url}{prefix}/{trigger.route}"
            elif isinstance(trigger, EventGridTrigger):
                where = f"eventGridTrigger {self.url}{EVENT_GRID_PATH}?functionName={spec.name}"
            elif isinstance(trigger, BlobTrigger):
                where = f"blobTrigger {trigger.container}/{trigger.name_pattern}"
                if trigger.event_grid:
                    where += f" (and {self.url}{BLOBS_PATH}?functionName={spec.full_name})"
            elif isinstance(trigger, QueueTrigger):
                where = f"queueTrigger {trigger.queue_name}"
            else:
                where = f"timerTrigger {trigger.schedule.describe()}"
            lines.append(f"  {spec.name}: {where}")
        logger.info("Host %s is running %d function(s):\n%s", self.host_id, len(lines), "\n".join(lines))

    def _dispatch(self, request: WebRequest) -> WebResponse:
        if self.webhooks.handles(request.path):
            return self.webhooks.handle(request.method, request.path, request.query, request.headers,
                                        request.body)
        if request.path.lower().startswith("/admin/"):
            return self._admin(request)
        match = self.router.match(request.method, request.path)
        if match is None:
            return error_response(404, f"no function serves {request.method} {request.path}")
        return call_http_function(self.invoker, match, request)

    def _admin(self, request: WebRequest) -> WebResponse:
        path = request.path.rstrip("/").lower()
        if path == "/admin/host/status" and request.method == "GET":
            return json_response(200, {"id": self.host_id, "state": "Running", "version": "batchdrop-dev"})
        if path == "/admin/host/progress" and request.method == "GET":  # the dev host's own; Azure has none
            return json_response(200, self.progress())
        if path == "/admin/functions" and request.method == "GET":
            return json_response(200, [{"name": spec.name, "trigger": type(spec.trigger).__name__}
                                       for spec in self.functions])
        name = request.path.rstrip("/")[len("/admin/functions/"):]
        if path.startswith("/admin/functions/") and request.method == "POST":
            spec = self.timers.find(name)
            if spec is None:
                return error_response(404, f"no timer function named '{name}' (only timers run this way)")
            self.timers.run_now(spec)
            return WebResponse(202)
        return error_response(404, f"no admin endpoint {request.method} {request.path}")


def _connections(spec: FunctionSpec) -> list[str]:
    connections = [output.connection for output in spec.queue_outputs]
    if isinstance(spec.trigger, BlobTrigger | QueueTrigger):
        connections.append(spec.trigger.connection)
    return connections


def run(app: FunctionApp, config: HostConfig, settings: AppSettings,
        ready: Callable[[str], None] | None = None) -> None:
    """Run until SIGTERM or SIGINT (call from the main thread); `ready` gets the URL once serving."""
    host = DevHost(app, config, settings)
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda *_: host.request_stop())
    url = host.start()
    try:
        if ready is not None:
            ready(url)
        host.wait()
    finally:
        host.stop()
