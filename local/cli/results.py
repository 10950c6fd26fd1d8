"""Published results (those with a `_manifest.json`): reading, rendering, downloading; `batchdrop results`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContainerClient

from local.cli.errors import CliError, first_line
from local.cli.state import require_stack
from local.cli.storage import RESULTS, blob_service
from local.cli.tables import table, terminal_width
from shared.ids import HISTORY, history_prefix, result_prefix

MANIFEST = "_manifest.json"


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


def is_current_manifest(blob_name: str) -> bool:
    """A result's manifest, not one of an earlier run kept under `_history/` (no input's folder has a `_history`
    segment: shared.ids.result_prefix escapes it)."""
    segments = blob_name.split("/")
    return segments[-1] == MANIFEST and HISTORY not in segments[:-1]


def list_results(service: BlobServiceClient) -> list[Result]:
    container = service.get_container_client(RESULTS)
    found: list[Result] = []
    try:
        names = [blob.name for blob in container.list_blobs() if is_current_manifest(blob.name)]
    except ResourceNotFoundError:
        return []
    for name in names:
        manifest = read_manifest(container, name)
        if manifest is not None:
            found.append(Result(name, manifest))
    return sorted(found, key=lambda result: result.input)


def render_results(
    results: Sequence[Result], expected: Mapping[str, str] | None = None, width: int | None = None
) -> list[str]:
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
    return table(headers, rows, numeric=(2,), width=width)


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
        if args.json:
            print(json.dumps([{"manifest": result.manifest_name, **result.manifest} for result in results], indent=2))
        elif not results:
            print("no results yet (a result exists once its _manifest.json does).")
            return 0
        else:
            print("\n".join(render_results(results, width=None if args.wide else terminal_width())))
        if args.download:
            count = download_results(service, results, Path(args.download))
            note = f"downloaded {count} files of {len(results)} results into {args.download}"
            print(note, file=sys.stderr if args.json else sys.stdout)  # stdout stays JSON only
    except AzureError as error:
        raise CliError(f"reading {RESULTS} failed: {type(error).__name__}: {first_line(error)}") from None
    return 0


def result_logs(container: ContainerClient, name: str, run: int | None = None) -> list[tuple[str, str, str]]:
    """(stream, blob name, text) of the result's stdout and stderr: the current run's, or run `run` from history."""
    prefix = result_prefix(name)
    manifest_name = (history_prefix(prefix, run) if run is not None else prefix) + MANIFEST
    manifest = read_manifest(container, manifest_name)
    if manifest is None:
        which = f"run {run} of {name!r} is not in its history" if run is not None else f"no result for {name!r} yet"
        raise CliError(f"{which} (no {manifest_name})")
    logs: list[tuple[str, str, str]] = []
    for stream in ("stdout", "stderr"):
        blob = manifest.get(stream)
        if not isinstance(blob, str):
            logs.append((stream, "", "(the task left no log)"))
            continue
        try:
            text = container.download_blob(blob).readall().decode("utf-8", errors="replace")
        except ResourceNotFoundError:
            text = "(listed in the manifest but missing)"
        logs.append((stream, blob, text))
    return logs


def cmd_logs(args: argparse.Namespace) -> int:
    container = blob_service(require_stack()).get_container_client(RESULTS)
    try:
        logs = result_logs(container, args.name, args.run)
    except AzureError as error:
        raise CliError(f"reading {RESULTS} failed: {type(error).__name__}: {first_line(error)}") from None
    for stream, blob, text in logs:
        print(f"==> {stream} ({blob or 'none'}) <==")
        print(text, end="" if text.endswith("\n") or not text else "\n")
    return 0
