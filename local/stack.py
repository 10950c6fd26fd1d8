"""Start and stop the local stack: Azurite, the Batch emulator and the dev host, as subprocesses.

Every server binds 127.0.0.1, is started with its own log file and is stopped by process id.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

PROJECT_ROOT = Path(__file__).resolve().parent.parent
AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's published development key; it protects nothing and is the same for every Azurite user.
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
READY_TIMEOUT_SECONDS = 60.0
T = TypeVar("T")


class StackError(RuntimeError):
    """A local server did not start; `pid` is the process that was started (and stopped again), if any."""

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    """One started server: its process, its URL and its log."""

    name: str
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL if it lingers."""
        stop_pid(self.pid, timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=1)

    def kill(self) -> None:
        """SIGKILL the whole process group at once (for crash tests)."""
        _signal_group(self.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


AZURITE_CLOSED = "successfully closed"


@dataclass
class Azurite(Service):
    blob_port: int = 0
    queue_port: int = 0
    table_port: int = 0

    def stop(self, timeout: float = 10.0) -> None:
        stop_recorded_azurite(self.pid, self.log_path, timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=1)

    @property
    def blob_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.blob_port}/{AZURITE_ACCOUNT}"

    @property
    def queue_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.queue_port}/{AZURITE_ACCOUNT}"

    @property
    def table_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.table_port}/{AZURITE_ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={self.blob_endpoint};QueueEndpoint={self.queue_endpoint};"
            f"TableEndpoint={self.table_endpoint};"
        )


@dataclass
class Emulator(Service):
    account_name: str = ""
    account_key: str = ""

    def stats(self) -> dict[str, object]:
        """The emulator's per-operation request counts."""
        with urllib.request.urlopen(f"{self.url}/_emulator/stats", timeout=10) as response:  # noqa: S310
            stats: dict[str, object] = json.load(response)
            return stats

    def progress(self) -> dict[str, int]:
        """The backend's counters that only grow: dispatcher passes and ticks."""
        progress = self.stats().get("progress")
        assert isinstance(progress, dict), "an emulator without progress counters"
        return {str(name): int(value) for name, value in progress.items()}

    def reset_stats(self) -> None:
        """Zero the emulator's request counts (a request signed with the account's key, as the emulator wants)."""
        from local.batch.auth import signed_headers

        target = "/_emulator/stats/reset"
        headers = signed_headers("POST", target, self.account_name, self.account_key)
        request = urllib.request.Request(f"{self.url}{target}", method="POST", headers=headers)  # noqa: S310
        with urllib.request.urlopen(request, timeout=10):  # noqa: S310
            pass

    def preempt(self, pool_id: str, node_id: str, replace_after_seconds: float = 0.0) -> dict[str, object]:
        """Pre-empt a Spot node (fault injection): its tasks are requeued, a new node replaces it later."""
        from urllib.parse import quote

        from local.batch.auth import signed_headers

        target = f"/_emulator/pools/{quote(pool_id, safe='')}/nodes/{quote(node_id, safe='')}/preempt"
        body = json.dumps({"replaceAfterSeconds": replace_after_seconds}).encode()
        content = {"Content-Type": "application/json", "Content-Length": str(len(body))}
        headers = signed_headers("POST", target, self.account_name, self.account_key, content)
        request = urllib.request.Request(f"{self.url}{target}", body, method="POST", headers=headers)  # noqa: S310
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            node = json.loads(response.read())
        assert isinstance(node, dict), "the emulator answers a preempt with the node"
        return node


@dataclass
class EventGrid(Service):
    """The local Event Grid (local/eventgrid): `url` is its proxy in front of Azurite's blob service."""

    azurite: Azurite | None = None
    app_url: str = ""
    subscriptions_file: Path | None = None

    @property
    def blob_endpoint(self) -> str:
        return f"{self.url}/{AZURITE_ACCOUNT}"

    @property
    def connection_string(self) -> str:
        """Azurite's connection string with the blob endpoint through the proxy (writes raise events)."""
        assert self.azurite is not None
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={self.blob_endpoint};QueueEndpoint={self.azurite.queue_endpoint};"
            f"TableEndpoint={self.azurite.table_endpoint};"
        )

    def subscriptions(self) -> dict[str, object]:
        """Each subscription's state (provisioningState, pending, delivered, dead_lettered, batch sizes)."""
        with urllib.request.urlopen(f"{self.url}/_eventgrid/subscriptions", timeout=10) as response:  # noqa: S310
            document: dict[str, object] = json.load(response)
            return document


@dataclass
class Stack:
    """Azurite + emulator (+ local Event Grid + dev host): what `batchdrop up` and the e2e tests run."""

    azurite: Azurite
    emulator: Emulator
    host: Service | None = None
    extra: list[Service] = field(default_factory=list)
    eventgrid: EventGrid | None = None

    def services(self) -> list[Service]:
        found: list[Service] = [self.azurite, self.emulator]
        if self.eventgrid is not None:
            found.append(self.eventgrid)
        if self.host is not None:
            found.append(self.host)
        return found + self.extra

    def stop(self) -> None:
        for service in reversed(self.services()):
            service.stop()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # A zombie child counts as gone.
        finished, _ = os.waitpid(pid, os.WNOHANG)
        return finished == 0
    except ChildProcessError:
        return True


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """Stop a server started by this module (its own process group) by process id."""
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return
        time.sleep(0.05)
    _signal_group(pid, signal.SIGKILL)


def stop_recorded_azurite(pid: int, log_path: Path, timeout: float = 10.0) -> None:
    """Stop an Azurite started by this module, by pid, given its log (also one started by another process).

    Azurite ignores SIGTERM once it has served a request: the first SIGINT closes its three services (each
    logs "successfully closed" once its data is saved), a second one ends the process.
    """
    before = _count_closed(log_path)
    _signal_group(pid, signal.SIGINT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _pid_alive(pid) and _count_closed(log_path) < before + 3:
        time.sleep(0.05)
    _signal_group(pid, signal.SIGINT)
    stop_pid(pid, timeout=3)


def _count_closed(log_path: Path) -> int:
    try:
        return log_path.read_text(errors="replace").count(AZURITE_CLOSED)
    except OSError:
        return 0


def _spawn(argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None, cwd: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = log_path.open("ab")
    try:
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdout=subprocess.PIPE,
            stderr=log_file,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        log_file.close()


def _stop_on_interrupt(wait: Callable[[], T], process: subprocess.Popen[bytes]) -> T:
    """A Ctrl-C (or any error) while waiting for a server must not leave it running."""
    try:
        return wait()
    except BaseException:
        stop_pid(process.pid)
        raise


def _log_tail(log_path: Path) -> str:
    return log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""


class _StdoutPump:
    """Copies a child's stdout into its log line by line, from a thread; until `stop_queueing`, the lines are
    also queued for a waiter (`None` once stdout closes).

    A thread rather than a `readline()` in the waiter: a child that hangs without printing must not hang
    the waiter past its timeout.
    """

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path, queue_lines: bool = True) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._queueing = threading.Event()
        if queue_lines:
            self._queueing.set()
        self._process = process
        self._log_path = log_path
        threading.Thread(target=self._pump, name=f"log-{process.pid}", daemon=True).start()

    def stop_queueing(self) -> None:
        self._queueing.clear()

    def _pump(self) -> None:
        assert self._process.stdout is not None
        try:
            with self._log_path.open("ab") as log_file:
                for raw in iter(self._process.stdout.readline, b""):
                    log_file.write(raw)
                    log_file.flush()
                    if self._queueing.is_set():
                        self.lines.put(raw.decode(errors="replace").strip())
        finally:
            self.lines.put(None)


def _await_ready_line(name: str, process: subprocess.Popen[bytes], log_path: Path, timeout: float) -> str:
    """Wait up to `timeout` seconds for the server's `READY <url>` line on stdout; stop it (by pid) otherwise."""
    stdout = _StdoutPump(process, log_path)
    deadline = time.monotonic() + timeout
    closed = False
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = stdout.lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                closed = True
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=min(5.0, max(remaining, 0.1)))
                break
            if line.startswith("READY "):
                return line.split(" ", 1)[1]
    finally:
        stdout.stop_queueing()
    exit_code = process.poll()
    stop_pid(process.pid)
    if exit_code is not None:
        ended = f"exited with code {exit_code}"
    else:
        ended = "closed its stdout" if closed else f"no READY line after {timeout:g} s"
    raise StackError(
        f"{name} (pid {process.pid}) did not print READY ({ended}); log {log_path}:\n{_log_tail(log_path)}",
        pid=process.pid,
    )


def _await_ports(
    name: str, process: subprocess.Popen[bytes], ports: Sequence[int], log_path: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    pending = list(ports)
    while pending and time.monotonic() < deadline:
        if process.poll() is not None:
            break
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", pending[0])) == 0:
                pending.pop(0)
                continue
        time.sleep(0.1)
    if pending:
        exit_code = process.poll()
        stop_pid(process.pid)
        raise StackError(
            f"{name} (pid {process.pid}) did not open ports {pending} (exit code {exit_code}); "
            f"log:\n{_log_tail(log_path)}",
            pid=process.pid,
        )


def start_server(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = READY_TIMEOUT_SECONDS,
) -> Service:
    """Start a server that prints `READY <url>` once it serves; StackError (and the server stopped) if it
    has not within `ready_timeout` seconds."""
    process = _spawn(argv, log_path, env, PROJECT_ROOT)
    url = _stop_on_interrupt(lambda: _await_ready_line(name, process, log_path, ready_timeout), process)
    return Service(name=name, process=process, url=url, log_path=log_path)


def azurite_binary() -> Path:
    binary = PROJECT_ROOT / "node_modules" / ".bin" / "azurite"
    if not binary.exists():
        raise StackError(f"{binary} is missing: run `make install` (npm ci installs Azurite)")
    return binary


def start_azurite(
    workdir: Path,
    ports: tuple[int, int, int] | None = None,
    in_memory: bool = False,
    ready_timeout: float = READY_TIMEOUT_SECONDS,
) -> Azurite:
    """Azurite for blobs, queues and tables, data kept under workdir/azurite.

    `in_memory` skips Azurite's disk persistence, which re-serialises its whole database every few seconds
    and so slows every request once it holds tens of thousands of entries (the benchmark's scale); data
    then does not survive a restart.
    """
    blob_port, queue_port, table_port = ports or (free_port(), free_port(), free_port())
    data_dir = workdir / "azurite"
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "logs" / "azurite.log"
    argv = [
        str(azurite_binary()), "--skipApiVersionCheck", "--silent",
        *(["--inMemoryPersistence"] if in_memory else ["--location", str(data_dir)]),
        "--blobHost", "127.0.0.1", "--blobPort", str(blob_port),
        "--queueHost", "127.0.0.1", "--queuePort", str(queue_port),
        "--tableHost", "127.0.0.1", "--tablePort", str(table_port),
    ]  # fmt: skip
    process = _spawn(argv, log_path, None, PROJECT_ROOT)
    _StdoutPump(process, log_path, queue_lines=False)
    ports_opened = (blob_port, queue_port, table_port)
    _stop_on_interrupt(lambda: _await_ports("azurite", process, ports_opened, log_path, ready_timeout), process)
    return Azurite(
        name="azurite", process=process, url=f"http://127.0.0.1:{blob_port}", log_path=log_path,
        blob_port=blob_port, queue_port=queue_port, table_port=table_port,
    )  # fmt: skip


def start_emulator(
    workdir: Path,
    extra_args: Sequence[str] = (),
    port: int = 0,
    ready_timeout: float = READY_TIMEOUT_SECONDS,
    env: Mapping[str, str] | None = None,
) -> Emulator:
    """The Batch emulator with its state under workdir/batch (`env`: its whole environment, default ours)."""
    from local.batch.account import DEV_ACCOUNT_KEY, DEV_ACCOUNT_NAME

    argv = [
        sys.executable, "-m", "local.batch", "--host", "127.0.0.1", "--port", str(port),
        "--state-dir", str(workdir / "batch"), *extra_args,
    ]  # fmt: skip
    server = start_server("batch-emulator", argv, workdir / "logs" / "batch-emulator.log", env, ready_timeout)
    return Emulator(
        name=server.name, process=server.process, url=server.url, log_path=server.log_path,
        account_name=DEV_ACCOUNT_NAME, account_key=DEV_ACCOUNT_KEY,
    )  # fmt: skip


def app_settings(azurite: Azurite, emulator: Emulator, overrides: Mapping[str, str] | None = None,
                 eventgrid: EventGrid | None = None) -> dict[str, str]:
    """The app settings that point batchdrop at the local stack; with `eventgrid`, the app's blob writes (and the
    SAS URLs it hands to Batch tasks) go through its proxy, so they raise events. The host's own storage
    (AzureWebJobsStorage: receipts, timers) stays direct."""
    settings = {
        "BatchdropStorage": eventgrid.connection_string if eventgrid is not None else azurite.connection_string,
        "AzureWebJobsStorage": azurite.connection_string,
        "BATCHDROP_BATCH_URL": emulator.url,
        "BATCHDROP_BATCH_ACCOUNT_NAME": emulator.account_name,
        "BATCHDROP_BATCH_ACCOUNT_KEY": emulator.account_key,
        "BATCHDROP_PIPELINES_FILE": str(PROJECT_ROOT / "samples" / "pipelines.json"),
        "BATCHDROP_SWEEP_SCHEDULE": "*/30 * * * * *",
        "BATCHDROP_POLL_SCHEDULE": "*/2 * * * * *",
        "BATCHDROP_SCHEDULES_SCHEDULE": "*/5 * * * * *",
    }
    if eventgrid is not None:  # it delivers the tasks' completion events to task_finished: the poll is the net
        settings["BATCHDROP_COMPLETION_EVENTS"] = "true"
    settings.update(overrides or {})
    return settings


def start_host(
    workdir: Path,
    app: str,
    env: Mapping[str, str],
    extra_args: Sequence[str] = (),
    port: int = 0,
    ready_timeout: float = READY_TIMEOUT_SECONDS,
) -> Service:
    """The dev host running `app` (module:attribute) with the given app settings."""
    argv = [
        sys.executable, "-m", "local.host", "--app", app, "--host", "127.0.0.1", "--port", str(port),
        "--state-dir", str(workdir / "host"), *extra_args,
    ]  # fmt: skip
    return start_server("dev-host", argv, workdir / "logs" / "host.log", {**os.environ, **env}, ready_timeout)


SUBSCRIPTIONS_SETTING = "BATCHDROP_EVENTGRID_SUBSCRIPTIONS"
DEFAULT_SUBSCRIPTIONS = PROJECT_ROOT / "local" / "eventgrid" / "subscriptions.json"


def subscriptions_file() -> Path:
    """BATCHDROP_EVENTGRID_SUBSCRIPTIONS if set, else local/eventgrid/subscriptions.json."""
    configured = os.environ.get(SUBSCRIPTIONS_SETTING)
    return Path(configured).resolve() if configured else DEFAULT_SUBSCRIPTIONS


def start_eventgrid(
    workdir: Path,
    azurite: Azurite,
    app_url: str,
    subscriptions: Path | None = None,
    settings: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    port: int = 0,
    ready_timeout: float = READY_TIMEOUT_SECONDS,
) -> EventGrid:
    """The local Event Grid: a proxy in front of Azurite's blob service (its URL is the stack's blob endpoint) that
    delivers BlobCreated events to the subscriptions file's endpoints under `app_url` (the dev host's URL, known
    before the host starts: pick its port first). `settings` resolve the file's placeholders. Journal under
    workdir/eventgrid."""
    chosen = subscriptions or subscriptions_file()
    argv = [
        sys.executable, "-m", "local.eventgrid", "--azurite-blob-url", azurite.url, "--app-url", app_url,
        "--subscriptions", str(chosen), "--state-dir", str(workdir / "eventgrid"), "--port", str(port),
        *extra_args,
    ]  # fmt: skip
    env = {**os.environ, **(settings or {})}
    server = start_server("eventgrid", argv, workdir / "logs" / "eventgrid.log", env, ready_timeout)
    return EventGrid(
        name=server.name, process=server.process, url=server.url, log_path=server.log_path,
        azurite=azurite, app_url=app_url, subscriptions_file=chosen,
    )  # fmt: skip
