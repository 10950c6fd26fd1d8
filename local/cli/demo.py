"""`batchdrop demo`: up, drop every sample, wait for every manifest, print them, stop."""

from __future__ import annotations

import argparse
import fnmatch
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from azure.core.exceptions import AzureError
from azure.storage.blob import BlobServiceClient, ContainerClient
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from local import stack as local_stack
from local.cli.errors import CliError, Interrupted
from local.cli.lifecycle import describe_stack, first_dead, start_local_stack, stop_stack
from local.cli.packages import add_package, stack_packages
from local.cli.results import MANIFEST, Result, download_results, read_manifest, render_results
from local.cli.signals import interruptible
from local.cli.state import APPS_DIR, StackInfo, demo_workdir, shown, tail
from local.cli.status import fetch_status, render_status, totals_note
from local.cli.storage import APPS, INPUT, RESULTS, app_files, blob_service, drop_files
from shared.ids import normalise_etag, result_prefix
from shared.pipelines import load_pipelines, route

DEMO_TIMEOUT_SECONDS = 240.0
FAIL_MARKER = b"#fail"
# Sample subdirectories whose files are dropped under that prefix, for the pipelines that take it
# (samples/csv/*.csv → input/csv/<name>, the csvstats application-package pipeline; samples/pairs/* → the
# grouped pipeline `pairs`, whose two members make one task and one manifest).
SAMPLE_PREFIXES = ("csv", "pairs")
# The application packages the sample pipelines reference: (id, version, the module that builds its zip).
DEMO_PACKAGES = (("csvstats", "1.0", "apps.csvstats.build"),)
PIPELINES_FILES = "pipelines*.json"


def sample_files(samples_dir: Path) -> list[Path]:
    """The inputs `demo` drops: every file in samples/ except pipelines files (`pipelines*.json`) and hidden files."""
    return sorted(
        path for path in samples_dir.iterdir()
        if path.is_file() and not fnmatch.fnmatchcase(path.name, PIPELINES_FILES) and not path.name.startswith(".")
    )  # fmt: skip


def sample_inputs(samples_dir: Path) -> list[tuple[Path, str]]:
    """(file, blob name) of every input `demo` drops: the top-level samples, then each prefix directory's."""
    inputs = [(path, path.name) for path in sample_files(samples_dir)]
    for prefix in SAMPLE_PREFIXES:
        directory = samples_dir / prefix
        if directory.is_dir():
            inputs.extend((path, f"{prefix}/{path.name}") for path in sample_files(directory))
    return inputs


def upload_demo_packages(info: StackInfo, build_dir: Path) -> list[str]:
    """Build each sample application package and add it to the stack's Batch account, as the default version."""
    added = []
    for application_id, version, builder in DEMO_PACKAGES:
        zip_path = build_dir / f"{application_id}-{version}.zip"
        built = subprocess.run(
            [sys.executable, "-m", builder, "--output", str(zip_path)],
            cwd=local_stack.PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if built.returncode != 0:
            raise CliError(f"building the {application_id} package failed: {built.stderr.strip()[-500:]}")
        add_package(stack_packages(info), application_id, version, zip_path, make_default=True)
        added.append(f"{application_id} {version}")
    return added


def expected_status(path: Path) -> str:
    """`failed` for an input whose first line is exactly `#fail` (the demo app exits 3), else `succeeded`."""
    with path.open("rb") as handle:
        first_line = handle.readline(len(FAIL_MARKER) + 3).rstrip(b"\r\n")
    return "failed" if first_line == FAIL_MARKER else "succeeded"


def group_uploads(pipelines_file: Path, etags: dict[str, str]) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """The uploads split into single inputs (name → etag) and groups of a grouped pipeline (key → members' etags):
    a group publishes one manifest, at its key's folder, listing its members."""
    pipelines = load_pipelines(pipelines_file)
    singles: dict[str, str] = {}
    groups: dict[str, dict[str, str]] = {}
    for name, etag in etags.items():
        pipeline = route(pipelines, name)
        classified = pipeline.group.classify(name) if pipeline is not None and pipeline.group is not None else None
        if isinstance(classified, tuple):
            groups.setdefault(classified[0], {})[name] = etag
        else:
            singles[name] = etag
    return singles, groups


@dataclass
class Wait:
    """Manifests still awaited: name → etag of the upload they must describe; group key → its members' etags."""

    etags: dict[str, str]
    found: dict[str, Result] = field(default_factory=dict)
    groups: dict[str, dict[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in self.groups:
            self.etags.setdefault(key, "")

    @property
    def pending(self) -> list[str]:
        return sorted(name for name in self.etags if name not in self.found)

    def check(self, container: ContainerClient) -> list[Result]:
        fresh: list[Result] = []
        for name in self.pending:
            manifest_name = result_prefix(name) + MANIFEST
            manifest = read_manifest(container, manifest_name)
            if manifest is None or not self._describes(name, manifest):
                continue
            self.found[name] = Result(manifest_name, manifest)
            fresh.append(self.found[name])
        return fresh

    def _describes(self, name: str, manifest: dict[str, object]) -> bool:
        if name in self.groups:
            listed = manifest.get("members")
            entries = [entry for entry in listed if isinstance(entry, dict)] if isinstance(listed, list) else []
            members = {str(entry.get("name")): normalise_etag(str(entry.get("etag"))) for entry in entries}
            return members == self.groups[name]
        return normalise_etag(str(manifest.get("input_etag", ""))) == self.etags[name]


def wait_for_manifests(
    running: local_stack.Stack, info: StackInfo, service: BlobServiceClient, wait: Wait, timeout: float
) -> bool:
    """Poll `results` until every awaited manifest exists, with a progress bar and a line per manifest; False on
    timeout. The bar is drawn on a terminal only; elsewhere (a pipe, a log) the lines are the progress."""
    container = service.get_container_client(RESULTS)
    started = time.monotonic()
    next_note = started + 15
    total = len(wait.etags)
    columns = (TextColumn("  manifests"), BarColumn(bar_width=30), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[note]}"))  # fmt: skip
    with Progress(*columns, console=Console(soft_wrap=True), transient=True) as progress:
        bar = progress.add_task("manifests", total=total, note="")

        def say(text: str) -> None:
            progress.console.print(text, markup=False, highlight=False, emoji=False)

        while True:
            elapsed = time.monotonic() - started
            try:
                fresh = wait.check(container)
            except AzureError as error:
                say(f"  [{elapsed:4.0f}s] reading results failed ({type(error).__name__}); retrying")
                fresh = []
            done = len(wait.found) - len(fresh)
            for result in fresh:
                done += 1
                code = f", exit code {result.exit_code}" if result.exit_code != "-" else ""
                say(f"  [{elapsed:4.0f}s] {done}/{total} {result.input}: {result.status}{code}")
            progress.update(bar, completed=len(wait.found))
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
                note = totals_note(info.host_url)
                progress.update(bar, note=note.strip(" ()"))
                say(f"  [{elapsed:4.0f}s] waiting for {', '.join(wait.pending)}{note}")
            time.sleep(1.0)


def cmd_demo(args: argparse.Namespace) -> int:
    samples = sample_inputs(Path(args.samples))
    if not samples:
        raise CliError(f"no sample files in {args.samples}")
    expected = {name: expected_status(path) for path, name in samples}
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
            info.record_supervisor(os.getpid())
            info.save(demo_stack_file)
            print("\n".join(describe_stack(info)))
            print(f"uploaded to {APPS}: {', '.join(name for name, _ in app_files(APPS_DIR))}")
            packages = upload_demo_packages(info, demo_workdir() / "build")
            print(f"application packages added to the Batch account: {', '.join(packages)}")
            service = blob_service(info)
            etags = drop_files(service, samples)
            described = [f"{name} (expected to fail)" if expected[name] == "failed" else name for name in etags]
            print(f"dropped {len(etags)} samples into {INPUT}: {', '.join(described)}")
            singles, groups = group_uploads(Path(args.pipelines), etags)
            for key, members in groups.items():
                expected[key] = "failed" if any(expected.get(member) == "failed" for member in members) else "succeeded"
                print(f"group {key!r} of {len(members)} members: one task, one manifest")
            wait = Wait(singles, groups=groups)
            print(f"waiting for every manifest (timeout {args.timeout:g} s) ...", flush=True)
            complete = wait_for_manifests(running, info, service, wait, args.timeout)
            results = sorted(wait.found.values(), key=lambda result: result.input)
            print()
            if results:
                print("\n".join(render_results(results, expected)))
                for result in results:
                    stderr_tail = str(result.manifest.get("stderr_tail") or "").strip().splitlines()
                    if result.status == "failed" and stderr_tail:
                        print(f"{result.input} (failed): stderr ends with: {stderr_tail[-1]}")
                download_results(service, results, demo_workdir() / "results")
                print(f"\nresults copied to {shown(demo_workdir() / 'results')}/")
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
        print(f"--- last lines of {name} log ({shown(Path(process.log))}):", file=sys.stderr)
        print(tail(Path(process.log), 15), file=sys.stderr)
