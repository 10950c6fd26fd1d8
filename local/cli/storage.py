"""batchdrop's containers, the application files, and `batchdrop drop`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from azure.core.exceptions import AzureError, ResourceExistsError
from azure.storage.blob import BlobServiceClient, ContainerClient

from local.cli.errors import CliError, first_line
from local.cli.state import APPS_DIR, StackInfo, require_stack, shown
from shared.ids import normalise_etag

INPUT, APPS, RESULTS = "input", "apps", "results"
# Staging is a container per task (`staging-<digest>`), created and deleted by the pipeline itself.
CONTAINERS = (INPUT, APPS, RESULTS)


def blob_service(info: StackInfo) -> BlobServiceClient:
    return BlobServiceClient.from_connection_string(info.storage_connection_string)


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
        raise CliError(f"{shown(apps_dir)} holds no application files to upload")
    return names


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
        raise CliError(f"upload to {INPUT} failed: {type(error).__name__}: {first_line(error)}") from None
    for path, name in zip(paths, names, strict=True):
        print(f"dropped {path} as {INPUT}/{name} ({path.stat().st_size} bytes)")
    return 0
