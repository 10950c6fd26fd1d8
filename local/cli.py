"""`batchdrop`: run the local stack and use it — up, down, drop, status, results, demo.

State lives in `.batchdrop/` at the project root: `stack.json` (process ids, URLs and the Azurite connection
string, readable by the owner only) and the servers' data and logs. Nothing here prints a key, a connection
string or a SAS token.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TypeVar

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContainerClient

from local import stack as local_stack
from shared.ids import normalise_etag, result_prefix

PROJECT_ROOT = local_stack.PROJECT_ROOT
STATE_DIR_SETTING = "BATCHDROP_STATE_DIR"
APPS_DIR = PROJECT_ROOT / "apps"
SAMPLES_DIR = PROJECT_ROOT / "samples"
DEFAULT_PIPELINES = SAMPLES_DIR / "pipelines.json"

INPUT, APPS, RESULTS = "input", "apps", "results"
# Staging is a container per task (`staging-<digest>`), created and deleted by the pipeline itself.
CONTAINERS = (INPUT, APPS, RESULTS)
MANIFEST = "_manifest.json"
FAIL_MARKER = b"#fail"
HOST_APP = "function_app:app"
# `func start`'s and Azurite's usual ports, used by `up` when free so other tools find the stack where they look.
PREFERRED_HOST_PORT = 7071
PREFERRED_AZURITE_PORTS = (10000, 10001, 10002)
DEMO_TIMEOUT_SECONDS = 240.0
DETACH_TIMEOUT_SECONDS = 180.0
AZURITE_STOP_SECONDS = 10.0
AZURITE_CLOSED = "service successfully closed"
FUNCTION_KEY_SETTING = "BATCHDROP_FUNCTION_KEY"
# What each recorded process's command line contains: `down` never signals a reused pid.
PROCESS_MARKERS = {"supervisor": ("local.cli", "bin/batchdrop"), "azurite": ("azurite",),
                   "batch-emulator": ("local.batch",), "dev-host": ("local.host",)}  # fmt: skip


def state_dir() -> Path:
    """`.batchdrop/` at the project root, or BATCHDROP_STATE_DIR (tests run their own stacks there)."""
    override = os.environ.get(STATE_DIR_SETTING)
    return Path(override).resolve() if override else PROJECT_ROOT / ".batchdrop"


def stack_file() -> Path:
    return state_dir() / "stack.json"


def demo_workdir() -> Path:
    return state_dir() / "demo"


ServiceT = TypeVar("ServiceT", bound=local_stack.Service)


class CliError(Exception):
    """A failure the user can act on; printed as one message, exit status 1."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: stop what we started."""


# ---------------------------------------------------------------------------------------------- state file


@dataclass
class ProcessInfo:
    pid: int
    url: str
    log: str


@dataclass
class StackInfo:
    """What `up` (or `demo`) records so that other commands, and `down`, find the running stack."""

    workdir: str
    storage_connection_string: str
    host_url: str
    emulator_url: str
    blob_url: str
    processes: dict[str, ProcessInfo] = field(default_factory=dict)
    supervisor_pid: int | None = None
    started_at: str = ""

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".tmp")
        # The file holds a connection string: readable by its owner only.
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(asdict(self), handle, indent=2)
        partial.replace(path)

    @classmethod
    def load(cls, path: Path) -> StackInfo | None:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise CliError(f"{_shown(path)} is unreadable ({error}); remove it and run `batchdrop up` again") from None
        try:
            processes = {name: ProcessInfo(**entry) for name, entry in raw.pop("processes", {}).items()}
            return cls(processes=processes, **raw)
        except TypeError as error:
            raise CliError(f"{_shown(path)} is not a batchdrop stack file ({error}); remove it") from None

    def live_pids(self) -> dict[str, int]:
        named = {name: entry.pid for name, entry in self.processes.items()}
        if self.supervisor_pid is not None:
            named["supervisor"] = self.supervisor_pid
        return {name: pid for name, pid in named.items() if _is_our_process(pid, name)}


def _shown(path: Path) -> str:
    """A path relative to the project when it is inside it (shorter, and what the user typed)."""
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def _is_our_process(pid: int, name: str) -> bool:
    """The pid is alive and (where /proc exists) still runs the program we started under that name."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.parent.exists():
        return True
    try:
        text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    if not text:  # a zombie: exited, waiting to be reaped
        return False
    return any(marker in text for marker in PROCESS_MARKERS.get(name, (name,)))


def require_stack() -> StackInfo:
    info = StackInfo.load(stack_file())
    if info is None or not info.live_pids():
        raise CliError("no local stack is running: start one with `batchdrop up --detach` (or `batchdrop up`)")
    return info


# ------------------------------------------------------------------------------------------ starting up


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers bind: a port in TIME_WAIT after a previous run is free for them too.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_local_stack(workdir: Path, pipelines: Path, preferred_ports: bool) -> tuple[local_stack.Stack, StackInfo]:
    """Azurite, the emulator and the dev host, with containers created and apps/ uploaded before the host starts."""
    if not pipelines.is_file():
        raise CliError(f"pipelines file {pipelines} does not exist")
    workdir.mkdir(parents=True, exist_ok=True)
    started: list[local_stack.Service] = []

    def start(starter: Callable[[], ServiceT]) -> ServiceT:
        # A server's pid is known only once its start returns: hold Ctrl-C until then, so it can be stopped.
        with deferred_interrupts() as received:
            service = starter()
            started.append(service)
        if received:
            raise Interrupted(received[0])
        return service

    try:
        azurite_ports = None
        if preferred_ports and all(_port_free(port) for port in PREFERRED_AZURITE_PORTS):
            azurite_ports = PREFERRED_AZURITE_PORTS
        azurite = start(lambda: local_stack.start_azurite(workdir, azurite_ports))
        emulator = start(lambda: local_stack.start_emulator(workdir))
        settings = local_stack.app_settings(azurite, emulator, {"BATCHDROP_PIPELINES_FILE": str(pipelines)})
        prepare_storage(azurite.connection_string)
        host_port = PREFERRED_HOST_PORT if preferred_ports and _port_free(PREFERRED_HOST_PORT) else 0
        host = start(lambda: local_stack.start_host(workdir, HOST_APP, settings, port=host_port))
    except BaseException:
        for service_started in reversed(started):
            stop_service(service_started)
        raise
    running = local_stack.Stack(azurite=azurite, emulator=emulator, host=host)
    info = StackInfo(
        workdir=str(workdir),
        storage_connection_string=azurite.connection_string,
        host_url=host.url.rstrip("/"),
        emulator_url=emulator.url.rstrip("/"),
        blob_url=azurite.blob_endpoint,
        processes={s.name: ProcessInfo(s.pid, s.url, str(s.log_path)) for s in running.services()},
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    return running, info


def prepare_storage(connection_string: str, apps_dir: Path = APPS_DIR) -> list[str]:
    """Create batchdrop's containers and upload the application files; the uploaded blob names."""
    # Closed at once: Azurite waits for open keep-alive connections before it exits.
    with BlobServiceClient.from_connection_string(connection_string) as service:
        create_containers(service)
        return upload_apps(service.get_container_client(APPS), apps_dir)


def create_containers(service: BlobServiceClient) -> None:
    for name in CONTAINERS:
        try:
            service.create_container(name)
        except ResourceExistsError:
            pass


def app_files(apps_dir: Path) -> list[tuple[str, Path]]:
    """(blob name, file) for every application file: the path relative to apps/, without caches."""
    found: list[tuple[str, Path]] = []
    for path in sorted(apps_dir.rglob("*")):
        relative = path.relative_to(apps_dir)
        if not path.is_file() or "__pycache__" in relative.parts or path.suffix == ".pyc":
            continue
        if any(part.startswith(".") for part in relative.parts):
            continue
        found.append((relative.as_posix(), path))
    return found


def upload_apps(container: ContainerClient, apps_dir: Path) -> list[str]:
    """Upload apps/ into the `apps` container, keeping relative paths (`report/report.py`)."""
    names: list[str] = []
    for name, path in app_files(apps_dir):
        with path.open("rb") as data:
            container.upload_blob(name, data, overwrite=True)
        names.append(name)
    if not names:
        raise CliError(f"{_shown(apps_dir)} holds no application files to upload")
    return names


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[list[str]]:
    """Record Ctrl-C and SIGTERM instead of raising; the caller raises once it is safe."""
    received: list[str] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        received.append(signal.Signals(signum).name)

    previous_int = signal.signal(signal.SIGINT, hold)
    previous_term = signal.signal(signal.SIGTERM, hold)
    try:
        yield received
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)


def _raise_interrupted(signum: int, frame: FrameType | None) -> NoReturn:
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Ctrl-C and SIGTERM both raise Interrupted, so `finally` blocks stop the servers."""
    previous_int = signal.signal(signal.SIGINT, _raise_interrupted)
    previous_term = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)


def stop_pid(pid: int, name: str, log_path: Path | None = None) -> None:
    """Stop one server we started, by pid; Azurite gets the signals it needs to exit promptly."""
    if name == "azurite" and log_path is not None:
        stop_azurite(pid, log_path)
    local_stack.stop_pid(pid)


def stop_azurite(pid: int, log_path: Path) -> None:
    """Azurite closes its services on the first SIGINT (or SIGTERM) but then keeps running; a second SIGINT ends it.

    Waiting for the three "successfully closed" lines first means its data is saved before it exits.
    """
    closed_before = _count_in(log_path, AZURITE_CLOSED)
    _signal_group(pid, signal.SIGINT)
    deadline = time.monotonic() + AZURITE_STOP_SECONDS
    while time.monotonic() < deadline and _is_our_process(pid, "azurite"):
        if _count_in(log_path, AZURITE_CLOSED) >= closed_before + 3:
            break
        time.sleep(0.05)
    _signal_group(pid, signal.SIGINT)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and _is_our_process(pid, "azurite"):
        time.sleep(0.05)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _count_in(path: Path, text: str) -> int:
    try:
        return path.read_text(errors="replace").count(text)
    except OSError:
        return 0


def stop_service(service: local_stack.Service) -> None:
    stop_pid(service.pid, service.name, service.log_path)
    service.stop()  # reaps the child; returns at once when it has exited


def stop_stack(running: local_stack.Stack) -> None:
    """Stop in reverse start order (the host still needs storage and Batch while it stops), deaf to a second Ctrl-C."""
    previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    previous_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        for service in reversed(running.services()):
            stop_service(service)
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)


def describe_stack(info: StackInfo) -> list[str]:
    pid = {name: entry.pid for name, entry in info.processes.items()}
    return [
        f"  storage (Azurite)  {info.blob_url}  (pid {pid.get('azurite', '?')})",
        f"  Batch emulator     {info.emulator_url}  (pid {pid.get('batch-emulator', '?')})",
        f"  dev host           {info.host_url}  (pid {pid.get('dev-host', '?')}); status at {info.host_url}/api/status",
        f"  data and logs      {_shown(Path(info.workdir))}/ (logs/*.log)",
    ]


def first_dead(running: local_stack.Stack) -> local_stack.Service | None:
    return next((service for service in running.services() if not service.alive()), None)


def cmd_up(args: argparse.Namespace) -> int:
    if args.detach:
        return _up_detached(args)
    _refuse_if_running()
    with interruptible():
        running: local_stack.Stack | None = None
        try:
            print("starting Azurite, the Batch emulator and the dev host ...", flush=True)
            running, info = start_local_stack(
                state_dir() / "stack", Path(args.pipelines).resolve(), preferred_ports=not args.random_ports
            )
            info.supervisor_pid = os.getpid()
            info.save(stack_file())
            print("batchdrop is up:")
            print("\n".join(describe_stack(info)))
            print(f"  apps uploaded      {', '.join(name for name, _ in app_files(APPS_DIR))}")
            print(
                "drop files with `batchdrop drop FILE...`; Ctrl-C (or `batchdrop down`) stops everything.", flush=True
            )
            while True:
                dead = first_dead(running)
                if dead is not None:
                    print(f"{dead.name} exited with code {dead.process.poll()}; its log ends with:", file=sys.stderr)
                    print(dead.log_tail(20), file=sys.stderr)
                    return 1
                time.sleep(1.0)
        except Interrupted as signal_name:
            print(f"\n{signal_name}: stopping ...", flush=True)
            return 0
        finally:
            if running is not None:
                stop_stack(running)
                _forget_stack(os.getpid())
                print("stopped Azurite, the Batch emulator and the dev host.", flush=True)


def _refuse_if_running() -> None:
    info = StackInfo.load(stack_file())
    if info is None:
        return
    live = info.live_pids()
    if live:
        raise CliError(
            f"a local stack is already running (pids {', '.join(map(str, live.values()))}); "
            "use it, or stop it with `batchdrop down`"
        )
    stack_file().unlink(missing_ok=True)


def _forget_stack(supervisor_pid: int) -> None:
    info = StackInfo.load(stack_file())
    if info is not None and info.supervisor_pid == supervisor_pid:
        stack_file().unlink(missing_ok=True)


def _up_detached(args: argparse.Namespace) -> int:
    """Run the foreground `up` as a background process (its own session) and return once it is ready.

    The servers stay children of that process, which keeps reading their output, so they never write
    into a closed pipe after this command has returned.
    """
    _refuse_if_running()
    state_dir().mkdir(parents=True, exist_ok=True)
    log_path = state_dir() / "up.log"
    argv = [sys.executable, "-m", "local.cli", "up", "--pipelines", str(Path(args.pipelines).resolve())]
    if args.random_ports:
        argv.append("--random-ports")
    with log_path.open("ab") as log:
        supervisor = subprocess.Popen(
            argv, cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + DETACH_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if supervisor.poll() is not None:
            raise CliError(
                f"the stack did not start (exit {supervisor.returncode}); {_shown(log_path)} ends with:\n"
                + _tail(log_path, 30)
            )
        info = StackInfo.load(stack_file())
        if info is not None and info.supervisor_pid == supervisor.pid:
            print(f"batchdrop is up in the background (pid {supervisor.pid}; `batchdrop down` stops it):")
            print("\n".join(describe_stack(info)))
            return 0
        time.sleep(0.2)
    local_stack.stop_pid(supervisor.pid, timeout=30)
    raise CliError(f"the stack was not ready after {DETACH_TIMEOUT_SECONDS:.0f} s; see {_shown(log_path)}")


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def cmd_down(args: argparse.Namespace) -> int:
    stopped_any = False
    for path in (stack_file(), demo_workdir() / "stack.json"):
        info = StackInfo.load(path)
        if info is None:
            continue
        stopped_any |= stop_recorded(info)
        path.unlink(missing_ok=True)
    print("stopped the local stack." if stopped_any else "nothing was running.")
    return 0


def stop_recorded(info: StackInfo) -> bool:
    """Stop a recorded stack by pid: its supervisor first (it stops its servers), then any server left over."""
    live = info.live_pids()
    if not live:
        return False
    supervisor = live.pop("supervisor", None)
    if supervisor is not None:
        os.kill(supervisor, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _is_our_process(supervisor, "supervisor"):
            time.sleep(0.1)
        if _is_our_process(supervisor, "supervisor"):
            local_stack.stop_pid(supervisor, timeout=1)
    # Dependants first: the host needs storage and Batch until it stops.
    for name in ("dev-host", "batch-emulator", "azurite"):
        pid = live.get(name)
        if pid is not None and _is_our_process(pid, name):
            stop_pid(pid, name, Path(info.processes[name].log))
    return True


# -------------------------------------------------------------------------------------------- drop


def blob_service(info: StackInfo) -> BlobServiceClient:
    return BlobServiceClient.from_connection_string(info.storage_connection_string)


def drop_files(service: BlobServiceClient, files: Sequence[tuple[Path, str]]) -> dict[str, str]:
    """Upload each (file, blob name) into `input`; the new etag of each name (a new upload is a new task)."""
    etags: dict[str, str] = {}
    for path, name in files:
        with path.open("rb") as data:
            uploaded = service.get_blob_client(INPUT, name).upload_blob(data, overwrite=True)
        etags[name] = normalise_etag(str(uploaded["etag"]))
    return etags


def cmd_drop(args: argparse.Namespace) -> int:
    paths = [Path(file) for file in args.files]
    if args.as_name is not None and len(paths) != 1:
        raise CliError("--as NAME names one file; drop several files under their own names")
    for path in paths:
        if not path.exists():
            raise CliError(f"{path}: no such file")
        if not path.is_file():
            raise CliError(f"{path}: not a file (drop the files inside a directory one by one, or with a glob)")
    names = [args.as_name] if args.as_name is not None else [path.name for path in paths]
    for name in names:
        if not name or name.endswith("/") or name.startswith("/"):
            raise CliError(f"{name!r} cannot be a blob name (empty, or starts or ends with '/')")
    service = blob_service(require_stack())
    try:
        drop_files(service, list(zip(paths, names, strict=True)))
    except AzureError as error:
        raise CliError(f"upload to {INPUT} failed: {type(error).__name__}: {_first_line(error)}") from None
    for path, name in zip(paths, names, strict=True):
        print(f"dropped {path} as {INPUT}/{name} ({path.stat().st_size} bytes)")
    return 0


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


# ------------------------------------------------------------------------------------------ status


def fetch_status(host_url: str, timeout: float = 15.0) -> dict[str, Any]:
    """GET {host}/api/status; a function key from BATCHDROP_FUNCTION_KEY when the host wants one."""
    request = urllib.request.Request(f"{host_url}/api/status", headers={"Accept": "application/json"})  # noqa: S310
    key = os.environ.get(FUNCTION_KEY_SETTING)
    if key:
        request.add_header("x-functions-key", key)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            document = json.load(response)
    except urllib.error.HTTPError as error:
        body = error.read(500).decode(errors="replace")
        hint = f" (set {FUNCTION_KEY_SETTING})" if error.code in (401, 403) else ""
        raise CliError(f"GET {host_url}/api/status: HTTP {error.code}{hint}: {body}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise CliError(f"the dev host at {host_url} does not answer ({reason}); is the stack up?") from None
    except ValueError:
        raise CliError(f"GET {host_url}/api/status did not return JSON") from None
    if not isinstance(document, dict):
        raise CliError(f"GET {host_url}/api/status returned {type(document).__name__}, not an object")
    return document


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], numeric: Sequence[int] = ()) -> list[str]:
    """Plain-text columns; numeric columns right-aligned."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max([len(header)] + [len(row[i]) for row in cells]) for i, header in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        padded = [
            v.rjust(w) if i in numeric else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    return [line(headers), *(line(row) for row in cells)]


COUNT_COLUMNS = ("queued", "running", "succeeded", "failed", "collected")


def render_status(document: Mapping[str, Any], limit: int = 10) -> list[str]:
    lines: list[str] = []
    pipelines = document.get("pipelines") or []
    described = [f"{p.get('name')} (prefix {p.get('prefix', '')!r}, glob {p.get('glob', '*')!r})" for p in pipelines]
    lines.append("pipelines: " + (", ".join(described) or "none"))
    jobs = document.get("jobs") or []
    totals = document.get("totals") or {}
    rows: list[list[object]] = []
    for job in jobs:
        counts = job.get("counts") or {}
        rows.append([job.get("job_id", "?"), job.get("pipeline", "?"), job.get("state", "?"),
                     *(counts.get(key, 0) for key in COUNT_COLUMNS)])  # fmt: skip
    rows.append(["TOTAL", "", "", *(totals.get(key, 0) for key in COUNT_COLUMNS)])
    numeric = range(3, 3 + len(COUNT_COLUMNS))
    lines += table(["JOB", "PIPELINE", "STATE", *(c.upper() for c in COUNT_COLUMNS)], rows, numeric)
    poison = document.get("poison") or {}
    poison_text = ", ".join(f"{queue} {count}" for queue, count in poison.items()) or "0"
    lines.append(f"rejected {totals.get('rejected', 0)}, skipped {totals.get('skipped', 0)}, poison: {poison_text}")
    rejected = sorted(document.get("rejected") or [], key=lambda r: str(r.get("at", "")), reverse=True)
    if rejected:
        lines.append("rejected (newest first):")
        lines += [f"  {r.get('input', '?')}: {r.get('reason', '')} ({r.get('at', '')})" for r in rejected[:limit]]
        if len(rejected) > limit:
            lines.append(f"  ... and {len(rejected) - limit} more")
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    host_url = args.url.rstrip("/") if args.url else require_stack().host_url
    if not args.watch:
        print("\n".join(render_status(fetch_status(host_url))))
        return 0
    clear = "\033[H\033[2J" if sys.stdout.isatty() else ""
    try:
        while True:
            try:
                text = "\n".join(render_status(fetch_status(host_url)))
            except CliError as error:
                text = f"(status unavailable: {error})"
            stamp = datetime.now().astimezone().strftime("%H:%M:%S")
            print(f"{clear}{stamp}  every {args.interval:g} s, Ctrl-C to stop\n{text}\n", flush=True)
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


# ----------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Result:
    """One published result: its manifest and where it lives in `results`."""

    manifest_name: str
    manifest: dict[str, Any]

    @property
    def prefix(self) -> str:
        return self.manifest_name[: -len(MANIFEST)]

    @property
    def input(self) -> str:
        return str(self.manifest.get("input", self.prefix.rstrip("/")))

    @property
    def status(self) -> str:
        return str(self.manifest.get("status", "?"))

    @property
    def exit_code(self) -> str:
        code = self.manifest.get("exit_code")
        return "-" if code is None else str(code)

    @property
    def outputs(self) -> list[str]:
        names = self.manifest.get("outputs") or []
        return [str(name) for name in names if isinstance(name, str)]

    def short_outputs(self) -> str:
        shown = [name[len(self.prefix) :] if name.startswith(self.prefix) else name for name in self.outputs]
        return ", ".join(shown) or "-"

    def blob_names(self) -> list[str]:
        """Every blob the manifest vouches for: outputs, logs, and the manifest itself."""
        logs = [self.manifest.get(key) for key in ("stdout", "stderr")]
        return [*self.outputs, *(str(name) for name in logs if isinstance(name, str)), self.manifest_name]


def read_manifest(container: ContainerClient, name: str) -> dict[str, Any] | None:
    try:
        data = container.download_blob(name).readall()
    except ResourceNotFoundError:
        return None
    try:
        document = json.loads(data)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def list_results(service: BlobServiceClient) -> list[Result]:
    container = service.get_container_client(RESULTS)
    found: list[Result] = []
    try:
        names = [blob.name for blob in container.list_blobs() if blob.name.rsplit("/", 1)[-1] == MANIFEST]
    except ResourceNotFoundError:
        return []
    for name in names:
        manifest = read_manifest(container, name)
        if manifest is not None:
            found.append(Result(name, manifest))
    return sorted(found, key=lambda result: result.input)


def render_results(results: Sequence[Result], expected: Mapping[str, str] | None = None) -> list[str]:
    headers = ["INPUT", "STATUS", "EXIT", "OUTPUTS"]
    rows: list[list[object]] = []
    for result in results:
        row: list[object] = [result.input, result.status, result.exit_code, result.short_outputs()]
        if expected is not None:
            want = expected.get(result.input)
            row.append("ok" if want == result.status else f"UNEXPECTED (wanted {want})")
        rows.append(row)
    if expected is not None:
        headers.append("CHECK")
    return table(headers, rows, numeric=(2,))


def download_results(service: BlobServiceClient, results: Sequence[Result], target: Path) -> int:
    """Copy each result's blobs to target/<blob name>; names that would land outside target are skipped."""
    container = service.get_container_client(RESULTS)
    root = target.resolve()
    count = 0
    for result in results:
        for name in result.blob_names():
            destination = (root / name).resolve()
            if not destination.is_relative_to(root) or destination == root:
                print(f"skipped {name!r}: it would be written outside {target}", file=sys.stderr)
                continue
            try:
                data = container.download_blob(name).readall()
            except ResourceNotFoundError:
                print(f"skipped {name!r}: listed in its manifest but missing", file=sys.stderr)
                continue
            try:
                destination.parent.mkdir(parents=True, exist_ok=True)
                destination.write_bytes(data)
            except OSError as error:
                # Blob names allow what file systems may not: 1,024 characters, a file and a folder of one name.
                print(f"skipped {name!r}: {error.strerror or error}", file=sys.stderr)
                continue
            count += 1
    return count


def cmd_results(args: argparse.Namespace) -> int:
    service = blob_service(require_stack())
    try:
        results = list_results(service)
        if not results:
            print("no results yet (a result exists once its _manifest.json does).")
            return 0
        print("\n".join(render_results(results)))
        if args.download:
            count = download_results(service, results, Path(args.download))
            print(f"downloaded {count} files of {len(results)} results into {args.download}")
    except AzureError as error:
        raise CliError(f"reading {RESULTS} failed: {type(error).__name__}: {_first_line(error)}") from None
    return 0


# -------------------------------------------------------------------------------------------- demo


def sample_files(samples_dir: Path) -> list[Path]:
    """The inputs `demo` drops: every file in samples/ except the pipelines file and hidden files."""
    return sorted(
        path for path in samples_dir.iterdir()
        if path.is_file() and path.name != DEFAULT_PIPELINES.name and not path.name.startswith(".")
    )  # fmt: skip


def expected_status(path: Path) -> str:
    """`failed` for an input whose first line is exactly `#fail` (the demo app exits 3), else `succeeded`."""
    with path.open("rb") as handle:
        first_line = handle.readline(len(FAIL_MARKER) + 3).rstrip(b"\r\n")
    return "failed" if first_line == FAIL_MARKER else "succeeded"


@dataclass
class Wait:
    """Manifests still awaited: name → etag of the upload they must describe."""

    etags: dict[str, str]
    found: dict[str, Result] = field(default_factory=dict)

    @property
    def pending(self) -> list[str]:
        return sorted(name for name in self.etags if name not in self.found)

    def check(self, container: ContainerClient) -> list[Result]:
        fresh: list[Result] = []
        for name in self.pending:
            manifest_name = result_prefix(name) + MANIFEST
            manifest = read_manifest(container, manifest_name)
            if manifest is None or normalise_etag(str(manifest.get("input_etag", ""))) != self.etags[name]:
                continue
            self.found[name] = Result(manifest_name, manifest)
            fresh.append(self.found[name])
        return fresh


def wait_for_manifests(
    running: local_stack.Stack, info: StackInfo, service: BlobServiceClient, wait: Wait, timeout: float
) -> bool:
    """Poll `results` until every awaited manifest exists, printing progress; False on timeout."""
    container = service.get_container_client(RESULTS)
    started = time.monotonic()
    next_note = started + 15
    total = len(wait.etags)
    while True:
        elapsed = time.monotonic() - started
        try:
            fresh = wait.check(container)
        except AzureError as error:
            print(f"  [{elapsed:4.0f}s] reading results failed ({type(error).__name__}); retrying", flush=True)
            fresh = []
        done = len(wait.found) - len(fresh)
        for result in fresh:
            done += 1
            code = f", exit code {result.exit_code}" if result.exit_code != "-" else ""
            print(f"  [{elapsed:4.0f}s] {done}/{total} {result.input}: {result.status}{code}", flush=True)
        if not wait.pending:
            return True
        dead = first_dead(running)
        if dead is not None:
            raise CliError(
                f"{dead.name} exited with code {dead.process.poll()}; its log ends with:\n{dead.log_tail(30)}"
            )
        if elapsed > timeout:
            return False
        if time.monotonic() >= next_note:
            next_note += 15
            print(f"  [{elapsed:4.0f}s] waiting for {', '.join(wait.pending)}{_totals_note(info)}", flush=True)
        time.sleep(1.0)


def _totals_note(info: StackInfo) -> str:
    try:
        totals = fetch_status(info.host_url, timeout=5).get("totals") or {}
    except CliError:
        return " (status API not answering)"
    return " (" + ", ".join(f"{key} {totals.get(key, 0)}" for key in COUNT_COLUMNS) + ")"


def cmd_demo(args: argparse.Namespace) -> int:
    samples = sample_files(Path(args.samples))
    if not samples:
        raise CliError(f"no sample files in {args.samples}")
    expected = {path.name: expected_status(path) for path in samples}
    demo_stack_file = demo_workdir() / "stack.json"
    previous = StackInfo.load(demo_stack_file)
    if previous is not None and previous.live_pids():
        raise CliError("another `batchdrop demo` is running; wait for it, or stop it with `batchdrop down`")
    shutil.rmtree(demo_workdir(), ignore_errors=True)
    started = time.monotonic()
    running: local_stack.Stack | None = None
    with interruptible():
        try:
            print("batchdrop demo: starting Azurite, the Batch emulator and the dev host ...", flush=True)
            running, info = start_local_stack(demo_workdir(), Path(args.pipelines).resolve(), preferred_ports=False)
            info.supervisor_pid = os.getpid()
            info.save(demo_stack_file)
            print("\n".join(describe_stack(info)))
            print(f"uploaded to {APPS}: {', '.join(name for name, _ in app_files(APPS_DIR))}")
            service = blob_service(info)
            etags = drop_files(service, [(path, path.name) for path in samples])
            described = [f"{name} (expected to fail)" if expected[name] == "failed" else name for name in etags]
            print(f"dropped {len(etags)} samples into {INPUT}: {', '.join(described)}")
            print(f"waiting for every manifest (timeout {args.timeout:g} s) ...", flush=True)
            wait = Wait(etags)
            complete = wait_for_manifests(running, info, service, wait, args.timeout)
            results = sorted(wait.found.values(), key=lambda result: result.input)
            print()
            if results:
                print("\n".join(render_results(results, expected)))
                for result in results:
                    tail = str(result.manifest.get("stderr_tail") or "").strip().splitlines()
                    if result.status == "failed" and tail:
                        print(f"{result.input} (failed): stderr ends with: {tail[-1]}")
                download_results(service, results, demo_workdir() / "results")
                print(f"\nresults copied to {_shown(demo_workdir() / 'results')}/")
            if not complete:
                _explain_timeout(info, wait, args.timeout)
                return 1
            wrong = [result.input for result in results if expected.get(result.input) != result.status]
            if wrong:
                print(f"FAILED: unexpected status for {', '.join(wrong)}", file=sys.stderr)
                return 1
            print(f"demo passed: {len(results)} manifests with the expected status in "
                  f"{time.monotonic() - started:.0f} s.")  # fmt: skip
            return 0
        except Interrupted as signal_name:
            print(f"\n{signal_name}: stopping ...", file=sys.stderr, flush=True)
            return 130
        finally:
            if running is not None:
                stop_stack(running)
                demo_stack_file.unlink(missing_ok=True)
                print("stopped the local stack.", flush=True)


def _explain_timeout(info: StackInfo, wait: Wait, timeout: float) -> None:
    print(f"FAILED: no manifest after {timeout:g} s for {', '.join(wait.pending)}", file=sys.stderr)
    try:
        print("\n".join(render_status(fetch_status(info.host_url, timeout=5))), file=sys.stderr)
    except CliError as error:
        print(f"(status unavailable: {error})", file=sys.stderr)
    for name, process in info.processes.items():
        print(f"--- last lines of {name} log ({_shown(Path(process.log))}):", file=sys.stderr)
        print(_tail(Path(process.log), 15), file=sys.stderr)


# -------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchdrop",
        description="Run batchdrop locally (Azurite + the Batch emulator + the dev host) and use it.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="start Azurite, the Batch emulator and the dev host")
    up.add_argument("--detach", action="store_true", help="leave the stack running in the background and return")
    up.add_argument("--pipelines", default=str(DEFAULT_PIPELINES), metavar="FILE",
                    help="pipelines file (default: samples/pipelines.json)")  # fmt: skip
    up.add_argument("--random-ports", action="store_true",
                    help="don't try the usual ports (7071 for the host, 10000-10002 for Azurite) first")  # fmt: skip
    up.set_defaults(handler=cmd_up)

    down = commands.add_parser("down", help="stop the local stack started by `up` (or a demo left behind)")
    down.set_defaults(handler=cmd_down)

    drop = commands.add_parser("drop", help="upload files into the input container")
    drop.add_argument("files", nargs="+", metavar="FILE")
    drop.add_argument("--as", dest="as_name", metavar="NAME", help="blob name for the (single) file")
    drop.set_defaults(handler=cmd_drop)

    status = commands.add_parser("status", help="jobs, task counts, rejected inputs and poison messages")
    status.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    status.add_argument("--interval", type=float, default=2.0, metavar="SECONDS", help="refresh interval for --watch")
    status.add_argument("--url", help="a Functions host to ask instead of the local one (key from "
                        f"{FUNCTION_KEY_SETTING})")  # fmt: skip
    status.set_defaults(handler=cmd_status)

    results = commands.add_parser("results", help="list published results (those with a _manifest.json)")
    results.add_argument("--download", metavar="DIR", help="also copy every result's files into DIR")
    results.set_defaults(handler=cmd_results)

    demo = commands.add_parser("demo", help="up, drop every sample, wait for every manifest, print them, stop")
    demo.add_argument("--timeout", type=float, default=DEMO_TIMEOUT_SECONDS, metavar="SECONDS")
    demo.add_argument("--samples", default=str(SAMPLES_DIR), metavar="DIR")
    demo.add_argument("--pipelines", default=str(DEFAULT_PIPELINES), metavar="FILE")
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except CliError as error:
        print(f"batchdrop {args.command}: {error}", file=sys.stderr)
        return 1
    except local_stack.StackError as error:
        print(f"batchdrop {args.command}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`batchdrop status --watch | head`): stop quietly, like other CLI tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
