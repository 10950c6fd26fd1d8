"""Where the CLI keeps its state, and the stack file that `up` writes and every other command reads.

`.batchdrop/stack.json` (or `$BATCHDROP_STATE_DIR/stack.json`) holds the process ids, their identities,
the URLs and the Azurite connection string, readable by the owner only.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from local.cli.errors import CliError
from local.cli.processes import Finding, Identity, Verdict, check, identify
from local.stack import PROJECT_ROOT

STATE_DIR_SETTING = "BATCHDROP_STATE_DIR"
APPS_DIR = PROJECT_ROOT / "apps"
SAMPLES_DIR = PROJECT_ROOT / "samples"
DEFAULT_PIPELINES = SAMPLES_DIR / "pipelines.json"
SUPERVISOR = "supervisor"


def state_dir() -> Path:
    """`.batchdrop/` at the project root, or BATCHDROP_STATE_DIR (tests run their own stacks there)."""
    override = os.environ.get(STATE_DIR_SETTING)
    return Path(override).resolve() if override else PROJECT_ROOT / ".batchdrop"


def stack_file() -> Path:
    return state_dir() / "stack.json"


def demo_workdir() -> Path:
    return state_dir() / "demo"


@dataclass
class ProcessInfo:
    pid: int
    url: str
    log: str
    identity: Identity | None = None

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ProcessInfo:
        return cls(**{**raw, "identity": Identity.from_json(raw.get("identity"))})


@dataclass(frozen=True)
class RecordedProcess:
    """One recorded process and what it is now."""

    name: str
    pid: int
    finding: Finding


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
    supervisor_identity: Identity | None = None
    packages_dir: str = ""  # the emulator's --packages-dir, where `batchdrop package add` puts packages

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
            raise CliError(f"{shown(path)} is unreadable ({error}); remove it and run `batchdrop up` again") from None
        try:
            processes = {name: ProcessInfo.from_json(entry) for name, entry in raw.pop("processes", {}).items()}
            supervisor_identity = Identity.from_json(raw.pop("supervisor_identity", None))
            return cls(processes=processes, supervisor_identity=supervisor_identity, **raw)
        except (TypeError, KeyError, ValueError, AttributeError) as error:
            raise CliError(f"{shown(path)} is not a batchdrop stack file ({error}); remove it") from None

    def record_supervisor(self, pid: int) -> None:
        """Record the process that runs the stack (`up` in the foreground, or `demo`)."""
        self.supervisor_pid = pid
        self.supervisor_identity = identify(pid)

    def recorded(self) -> dict[str, tuple[int, Identity | None]]:
        """name → (pid, identity) of every recorded process, the supervisor (the `up` process) included."""
        found = {name: (entry.pid, entry.identity) for name, entry in self.processes.items()}
        if self.supervisor_pid is not None:
            found[SUPERVISOR] = (self.supervisor_pid, self.supervisor_identity)
        return found

    def survey(self) -> list[RecordedProcess]:
        """What each recorded pid is now."""
        return [RecordedProcess(name, pid, check(pid, identity)) for name, (pid, identity) in self.recorded().items()]

    def live_pids(self) -> dict[str, int]:
        """The recorded processes that are still the ones we started."""
        return {seen.name: seen.pid for seen in self.survey() if seen.finding.verdict is Verdict.RUNNING}

    def still_ours(self, name: str) -> bool:
        pid, identity = self.recorded()[name]
        return check(pid, identity).verdict is Verdict.RUNNING


def require_stack() -> StackInfo:
    info = StackInfo.load(stack_file())
    if info is None or not info.live_pids():
        raise CliError("no local stack is running: start one with `batchdrop up --detach` (or `batchdrop up`)")
    return info


def shown(path: Path) -> str:
    """A path relative to the project when it is inside it (shorter, and what the user typed)."""
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
