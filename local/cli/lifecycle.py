"""Starting and stopping the local stack: `batchdrop up` (foreground or detached) and `batchdrop down`.

Servers are started and stopped through local/stack.py, by pid. `down` stops a stack that another process
started, so it first checks that each recorded pid is still the process `up` started (local/cli/processes.py).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from local import stack as local_stack
from local.cli.errors import CliError, Interrupted
from local.cli.processes import Verdict, identify
from local.cli.signals import deferred_interrupts, ignored_interrupts, interruptible
from local.cli.state import (
    APPS_DIR,
    SUPERVISOR,
    ProcessInfo,
    StackInfo,
    demo_workdir,
    shown,
    stack_file,
    state_dir,
    tail,
)
from local.cli.storage import app_files, prepare_storage
from local.stack import PROJECT_ROOT

HOST_APP = "function_app:app"
# `func start`'s and Azurite's usual ports, used by `up` when free so other tools find the stack where they look.
PREFERRED_HOST_PORT = 7071
PREFERRED_AZURITE_PORTS = (10000, 10001, 10002)
DETACH_TIMEOUT_SECONDS = 180.0
SUPERVISOR_STOP_SECONDS = 30.0
ServiceT = TypeVar("ServiceT", bound=local_stack.Service)


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
    """Azurite, the emulator, the local Event Grid and the dev host, with containers created and apps/ uploaded
    before the host starts; the subscriptions file is BATCHDROP_EVENTGRID_SUBSCRIPTIONS, else
    local/eventgrid/subscriptions.json."""
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
        packages_dir = workdir / "packages"
        emulator = start(lambda: local_stack.start_emulator(workdir, ["--packages-dir", str(packages_dir)]))
        overrides = {"BATCHDROP_PIPELINES_FILE": str(pipelines)}
        # The local Event Grid delivers to the dev host, so the host's port is chosen before either starts.
        host_port = (PREFERRED_HOST_PORT if preferred_ports and _port_free(PREFERRED_HOST_PORT)
                     else local_stack.free_port())
        eventgrid = start(lambda: local_stack.start_eventgrid(
            workdir, azurite, f"http://127.0.0.1:{host_port}", settings=overrides))
        settings = local_stack.app_settings(azurite, emulator, overrides, eventgrid)
        prepare_storage(azurite.connection_string)
        host = start(lambda: local_stack.start_host(workdir, HOST_APP, settings, port=host_port))
        running = local_stack.Stack(azurite=azurite, emulator=emulator, host=host, eventgrid=eventgrid)
        processes = {
            service.name: ProcessInfo(service.pid, service.url, str(service.log_path), identify(service.pid))
            for service in running.services()
        }
    except BaseException:
        for service_started in reversed(started):
            service_started.stop()
        raise
    info = StackInfo(
        workdir=str(workdir),
        # Clients write through the local Event Grid's proxy, so that their uploads raise events.
        storage_connection_string=eventgrid.connection_string,
        host_url=host.url.rstrip("/"),
        emulator_url=emulator.url.rstrip("/"),
        blob_url=eventgrid.blob_endpoint,
        processes=processes,
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        packages_dir=str(packages_dir),
    )
    return running, info


def stop_stack(running: local_stack.Stack) -> None:
    """Stop in reverse start order (the host still needs storage and Batch while it stops), deaf to a second Ctrl-C."""
    with ignored_interrupts():
        running.stop()


def describe_stack(info: StackInfo) -> list[str]:
    pid = {name: entry.pid for name, entry in info.processes.items()}
    return [
        f"  storage (Azurite)  {info.blob_url}  (pid {pid.get('azurite', '?')})",
        f"  Batch emulator     {info.emulator_url}  (pid {pid.get('batch-emulator', '?')})",
        f"  local Event Grid   proxy to Azurite at {info.blob_url}  (pid {pid.get('eventgrid', '?')}); "
        f"subscriptions from {shown(local_stack.subscriptions_file())}",
        f"  dev host           {info.host_url}  (pid {pid.get('dev-host', '?')}); status at {info.host_url}/api/status",
        f"  status page        {info.host_url}/api/page  (`batchdrop open`)",
        f"  data and logs      {shown(Path(info.workdir))}/ (logs/*.log)",
    ]


def first_dead(running: local_stack.Stack) -> local_stack.Service | None:
    return next((service for service in running.services() if not service.alive()), None)


def cmd_up(args: argparse.Namespace) -> int:
    if args.detach:
        return _up_detached(args)
    refuse_if_running()
    with interruptible():
        running: local_stack.Stack | None = None
        try:
            print("starting Azurite, the Batch emulator, the local Event Grid and the dev host ...", flush=True)
            running, info = start_local_stack(
                state_dir() / "stack", Path(args.pipelines).resolve(), preferred_ports=not args.random_ports
            )
            info.record_supervisor(os.getpid())
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
                print("stopped Azurite, the Batch emulator, the local Event Grid and the dev host.", flush=True)


def refuse_if_running() -> None:
    info = StackInfo.load(stack_file())
    if info is None:
        return
    survey = info.survey()
    live = [seen.pid for seen in survey if seen.finding.verdict is Verdict.RUNNING]
    if live:
        raise CliError(
            f"a local stack is already running (pids {', '.join(map(str, live))}); "
            "use it, or stop it with `batchdrop down`"
        )
    unknown = [seen for seen in survey if seen.finding.verdict is Verdict.UNIDENTIFIED]
    if unknown:
        named = "; ".join(f"pid {seen.pid} ({seen.name}): {seen.finding.why}" for seen in unknown)
        raise CliError(
            f"{shown(stack_file())} records processes that may still run: {named}. "
            "Stop them yourself if they are batchdrop's, then run `batchdrop down` to forget them"
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
    refuse_if_running()
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
                f"the stack did not start (exit {supervisor.returncode}); {shown(log_path)} ends with:\n"
                + tail(log_path, 30)
            )
        info = StackInfo.load(stack_file())
        if info is not None and info.supervisor_pid == supervisor.pid:
            print(f"batchdrop is up in the background (pid {supervisor.pid}; `batchdrop down` stops it):")
            print("\n".join(describe_stack(info)))
            return 0
        time.sleep(0.2)
    local_stack.stop_pid(supervisor.pid, timeout=30)
    raise CliError(f"the stack was not ready after {DETACH_TIMEOUT_SECONDS:.0f} s; see {shown(log_path)}")


def cmd_down(args: argparse.Namespace) -> int:
    stopped_any = False
    left_alone: list[str] = []
    for path in (stack_file(), demo_workdir() / "stack.json"):
        info = StackInfo.load(path)
        if info is None:
            continue
        stopped, refused = stop_recorded(info)
        stopped_any |= stopped
        left_alone += refused
        path.unlink(missing_ok=True)
    for note in left_alone:
        print(f"batchdrop down: {note}", file=sys.stderr)
    print("stopped the local stack." if stopped_any else "nothing was running.")
    return 0


def stop_recorded(info: StackInfo) -> tuple[bool, list[str]]:
    """Stop a recorded stack by pid: its supervisor first (it stops its servers), then any server left over.

    Only pids that are still the processes `up` started are signalled; the others are returned, each with
    the reason it was left alone.
    """
    survey = info.survey()
    refused = [
        f"not signalling pid {seen.pid} (recorded as {seen.name}): {seen.finding.why}"
        for seen in survey
        if seen.finding.verdict in (Verdict.REPLACED, Verdict.UNIDENTIFIED)
    ]
    live = {seen.name: seen.pid for seen in survey if seen.finding.verdict is Verdict.RUNNING}
    if not live:
        return False, refused
    supervisor = live.pop(SUPERVISOR, None)
    if supervisor is not None:
        # The process alone, not its group: a foreground `up` shares its group with the user's shell pipeline.
        os.kill(supervisor, signal.SIGTERM)
        deadline = time.monotonic() + SUPERVISOR_STOP_SECONDS
        while time.monotonic() < deadline and info.still_ours(SUPERVISOR):
            time.sleep(0.1)
        if info.still_ours(SUPERVISOR):
            local_stack.stop_pid(supervisor, timeout=1)
    # Dependants first: the host needs storage and Batch until it stops.
    for name in ("dev-host", "eventgrid", "batch-emulator", "azurite"):
        pid = live.get(name)
        if pid is None or not info.still_ours(name):
            continue
        if name == "azurite":
            local_stack.stop_recorded_azurite(pid, Path(info.processes[name].log))
        else:
            local_stack.stop_pid(pid)
    return True, refused
