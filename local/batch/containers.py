"""Container tasks on an emulated node: which runtime runs them (docker or podman), and the argv it is given.

Batch on a Linux node (BatchTaskCreateOptions.containerSettings in the REST spec 2025-06-01): "all directories
recursively below the AZ_BATCH_NODE_ROOT_DIR ... are mapped into the container, all Task environment variables
are mapped into the container, and the Task command line is executed in the container". The emulator does the
same with `<runtime> run`: the node root bind-mounted at the same path (or only the containerHostBatchBindMounts
sources), the working directory the task's `wd` (workingDirectory taskWorkingDirectory, the default), and each
task variable passed by name (`-e NAME`, its value in the runtime's own environment, so no value is in an argv).

Without a usable runtime a container task fails; its command never runs on the host as if it were in the image.
"""

from __future__ import annotations

import hashlib
import logging
import shlex
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

RUNTIMES = ("docker", "podman")
RUNTIME_CHOICES = ("auto", "none", *RUNTIMES)
# Variables the emulator copies from its own environment into every task's: they describe the host, not the task,
# and would override the image's own PATH and locale inside a container.
HOST_VARIABLES = frozenset({"PATH", "LANG", "LC_ALL", "TZ", "TMPDIR"})
_PROBE_TIMEOUT = 15.0

# containerRunOptions the emulator passes on. An allow-list rather than a deny-list: anything that could reach
# the host outside the task's directories (-v/--volume/--mount, --privileged, --device, --cap-add, --pid/--ipc
# host, --env-file, --security-opt, ...) is refused, as is a bare word (it would be taken for the image).
_WITH_VALUE = frozenset(
    {
        "--cpus", "--cpu-shares", "-c", "--cpuset-cpus", "--memory", "-m", "--memory-swap", "--memory-reservation",
        "--shm-size", "--ulimit", "--user", "-u", "--workdir", "-w", "--env", "-e", "--entrypoint", "--network",
        "--net", "--hostname", "-h", "--label", "-l", "--pull", "--platform", "--add-host", "--dns", "--gpus",
        "--tmpfs", "--stop-timeout", "--pids-limit",
    }
)  # fmt: skip
_FLAGS = frozenset({"--init", "--read-only", "--rm", "-t", "--tty", "-i", "--interactive", "--no-healthcheck"})


class ContainerError(Exception):
    """A container task cannot be started; the message says why (it goes into the task's failureInfo)."""


def check_run_options(options: str) -> list[str]:
    """containerRunOptions split as a shell would (shlex), each option checked against the allow-list."""
    try:
        words = shlex.split(options)
    except ValueError as problem:
        raise ContainerError(f"containerRunOptions cannot be parsed: {problem}") from None
    index = 0
    while index < len(words):
        word = words[index]
        name, equals, value = word.partition("=")
        if name in _FLAGS and not equals:
            index += 1
            continue
        if name in _WITH_VALUE:
            if not equals:
                if index + 1 >= len(words):
                    raise ContainerError(f"containerRunOptions: {name} needs a value")
                value = words[index + 1]
                index += 1
            if name in ("--network", "--net") and value.startswith("container:"):
                raise ContainerError(f"containerRunOptions: {word} would join another container's network")
            index += 1
            continue
        short = word[:2]
        if word.startswith("-") and not word.startswith("--") and short in _WITH_VALUE and len(word) > 2:
            index += 1  # -m1g, -eNAME=value
            continue
        raise ContainerError(
            f"containerRunOptions: {word!r} is not allowed by the Batch emulator (it runs only options that keep "
            "the container to the task's directories; see docs/emulator.md, Containers)"
        )
    return words


@dataclass
class Runtime:
    """The container runtime of this emulator: chosen by --container-runtime, probed once (`<cli> info`)."""

    choice: str = "auto"
    _probed: bool = False
    _found: str | None = None
    _why_not: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def configure(self, choice: str) -> None:
        if choice not in RUNTIME_CHOICES:
            raise ValueError(f"container runtime must be one of {', '.join(RUNTIME_CHOICES)}, not {choice!r}")
        with self._lock:
            self.choice, self._probed, self._found, self._why_not = choice, False, None, ""

    def name(self) -> str | None:
        """The runtime's command (docker or podman), or None if no usable one; probed on first use, then cached."""
        with self._lock:
            if not self._probed:
                self._found, self._why_not = self._probe()
                self._probed = True
            return self._found

    def why_not(self) -> str:
        """Why there is no runtime, for failure messages and the log."""
        self.name()
        return self._why_not

    def _probe(self) -> tuple[str | None, str]:
        if self.choice == "none":
            return None, "the emulator was started with --container-runtime none"
        candidates = RUNTIMES if self.choice == "auto" else (self.choice,)
        reasons: list[str] = []
        for candidate in candidates:
            if shutil.which(candidate) is None:
                reasons.append(f"{candidate} is not on PATH")
                continue
            try:
                probe = subprocess.run(
                    [candidate, "info"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    timeout=_PROBE_TIMEOUT,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as problem:
                reasons.append(f"`{candidate} info` failed: {problem}")
                continue
            if probe.returncode == 0:
                logger.info("container runtime: %s", candidate)
                return candidate, ""
            detail = probe.stderr.decode("utf-8", "replace").strip().splitlines()
            reasons.append(
                f"`{candidate} info` exited {probe.returncode}" + (f" ({detail[-1][:200]})" if detail else "")
                + " - its engine is not running or not reachable"
            )  # fmt: skip
        why = "no usable container runtime (docker or podman): " + "; ".join(reasons)
        logger.info("%s", why)
        return None, why


RUNTIME = Runtime()


@dataclass
class ContainerRun:
    """How one attempt runs in a container; built from the task's containerSettings and the node's layout."""

    image: str
    run_options: str
    working_directory: str  # taskworkingdirectory | containerimagedefault (lowercased)
    mounts: list[tuple[Path, bool]]  # host path (mounted at the same path), read-only
    name: str


def plan(settings: dict[str, Any], node_root: Path, task_dir: Path, prep_dir: Path | None, key: str) -> ContainerRun:
    """The container for a task: containerHostBatchBindMounts absent means the whole node root, as on Batch."""
    sources = {
        "shared": node_root / "shared",
        "startup": node_root / "startup",
        "vfsmounts": node_root / "fsmounts",
        "task": task_dir,
        "jobprep": prep_dir,
        "applications": node_root / "applications",
    }
    listed = settings.get("containerHostBatchBindMounts")
    mounts: list[tuple[Path, bool]] = []
    if listed is None:
        mounts.append((node_root, False))
    else:
        for entry in listed:
            path = sources.get(str(entry.get("source") or "").lower())
            if path is not None:
                mounts.append((path, bool(entry.get("isReadOnly"))))
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:20]
    return ContainerRun(
        image=str(settings["imageName"]),
        run_options=str(settings.get("containerRunOptions") or ""),
        working_directory=str(settings.get("workingDirectory") or "taskWorkingDirectory").lower(),
        mounts=mounts,
        name=f"azbatch-{digest}",
    )


def write_env_file(path: Path, environment: dict[str, str]) -> None:
    """The task's variables for `--env-file` (owner-only): values stay out of argv, where `ps` would show them,
    and out of the runtime's own environment, where a task variable such as DOCKER_HOST would redirect it."""
    lines = []
    for name in sorted(environment):
        if name in HOST_VARIABLES:
            continue
        value = environment[name]
        if "\n" in value or "\r" in value or "\n" in name or "=" in name:
            raise ContainerError(f"environment variable {name!r}: an --env-file cannot carry a line break or '='")
        lines.append(f"{name}={value}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text("".join(lines), encoding="utf-8")


def argv(runtime: str, container: ContainerRun, command: list[str], env_file: Path, working_dir: Path) -> list[str]:
    """`<runtime> run ...` for the task; raises ContainerError for refused containerRunOptions."""
    options = check_run_options(container.run_options)
    built = [runtime, "run", "--rm", "--name", container.name, "--env-file", str(env_file)]
    for path, read_only in container.mounts:
        path.mkdir(parents=True, exist_ok=True)
        built += ["--volume", f"{path}:{path}" + (":ro" if read_only else "")]
    if container.working_directory == "taskworkingdirectory":
        built += ["--workdir", str(working_dir)]
    return [*built, *options, container.image, *command]


def remove(runtime: str, name: str) -> None:
    """Stop and remove a container (in the background: callers hold the emulator's lock)."""

    def run() -> None:
        subprocess.run(
            [runtime, "rm", "--force", name],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )

    threading.Thread(target=run, name=f"remove-{name}", daemon=True).start()


def prefetch(runtime: str, images: list[str], pool_id: str) -> None:
    """Pull a pool's containerImageNames in the background, as Batch prefetches them on each node."""

    def run() -> None:
        for image in images:
            pulled = subprocess.run(
                [runtime, "pull", image],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=1800,
                check=False,
            )
            if pulled.returncode != 0:
                logger.warning(
                    "pool %s: %s pull %s failed (exit %d): %s",
                    pool_id,
                    runtime,
                    image,
                    pulled.returncode,
                    pulled.stderr.decode("utf-8", "replace").strip()[-300:],
                )
            else:
                logger.info("pool %s: prefetched image %s with %s", pool_id, image, runtime)

    threading.Thread(target=run, name=f"prefetch-{pool_id}", daemon=True).start()
