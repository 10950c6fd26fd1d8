"""The file operations of tasks and compute nodes: list, get (with ocp-range), properties and delete."""

from __future__ import annotations

import mimetypes
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from werkzeug.http import parse_range_header

from local.batch import clock, odata
from local.batch.errors import BatchApiError, conflict, not_found
from local.batch.service import BatchService, Doc
from local.batch.wire import Request, Response, page


def _invalid_range() -> BatchApiError:
    return BatchApiError(416, "InvalidRange", "The range specified is invalid for the current size of the resource.")


def _files_root(service: BatchService, request: Request) -> Path:
    """The task's directory, or the node's root for the node file operations."""
    if "node" in request.params:
        return service.node_file_root(request.params["pool"], request.params["node"])
    return service.task_file_root(request.params["job"], request.params["task"])


def _task_file(service: BatchService, request: Request) -> tuple[Path, str]:
    root = _files_root(service, request)
    name = request.params["path"].replace("\\", "/").strip("/")
    target = (root / name).resolve()
    if not target.is_relative_to(root.resolve()) or not target.exists():
        raise not_found("FileNotFound", "file")
    return target, name


def _file_url(request: Request, name: str) -> str:
    if "node" in request.params:
        pool, node = request.params["pool"], request.params["node"]
        return f"{request.base_url}/pools/{pool}/nodes/{node}/files/{quote(name, safe='')}"
    job, task = request.params["job"], request.params["task"]
    return f"{request.base_url}/jobs/{job}/tasks/{task}/files/{quote(name, safe='')}"


def _file_properties(path: Path) -> tuple[os.stat_result, Doc]:
    stat = path.stat()
    modified = datetime.fromtimestamp(stat.st_mtime, UTC)
    # Batch returns no creationTime for files on Linux nodes (and fileMode only there).
    properties: Doc = {
        "lastModified": clock.fmt(modified),
        "contentLength": 0 if path.is_dir() else stat.st_size,
        "contentType": "application/octet-stream",
        "fileMode": f"0{stat.st_mode & 0o777:o}",
    }
    return stat, properties


def _file_headers(request: Request, path: Path, name: str) -> dict[str, str]:
    stat, properties = _file_properties(path)
    return {
        "ocp-batch-file-isdirectory": "true" if path.is_dir() else "false",
        "ocp-batch-file-url": _file_url(request, name),
        "ocp-batch-file-mode": str(properties["fileMode"]),
        "Last-Modified": clock.rfc1123(datetime.fromtimestamp(stat.st_mtime, UTC)),
        "Content-Type": mimetypes.guess_type(name)[0] or "application/octet-stream",
    }


def byte_range(header: str, length: int) -> tuple[int, int]:
    """`ocp-range: bytes=a-b`, `a-` or `-n` as (start, stop) within a file of `length` bytes; else 416."""
    parsed = parse_range_header(header.strip())
    if parsed is None or parsed.units != "bytes" or len(parsed.ranges) != 1:
        raise _invalid_range()
    start, stop = parsed.ranges[0]
    if length == 0:
        return 0, 0
    if stop is None and start < 0:  # a suffix longer than the file is the whole file (RFC 9110 14.1.2)
        return max(0, length + start), length
    found = parsed.range_for_length(length)
    if found is None:
        raise _invalid_range()
    return found


def file_list(service: BatchService, request: Request) -> Response:
    root = _files_root(service, request)
    recursive = request.query.get("recursive", "false").lower() == "true"
    entries: list[Doc] = []
    if root.is_dir():
        paths = sorted(root.rglob("*") if recursive else root.iterdir())
        for index, path in enumerate(paths, 1):
            name = path.relative_to(root).as_posix()
            try:
                _stat, properties = _file_properties(path)
            except OSError:
                continue
            entry: Doc = {
                "name": name,
                "url": _file_url(request, name),
                "isDirectory": path.is_dir(),
                "properties": properties,
                "_seq": index,
            }
            entries.append(entry)
    return page(request, "files", BatchService.page(entries, request.query, odata.FILE_FILTERS, selectable=False))


def file_get(service: BatchService, request: Request) -> Response:
    path, name = _task_file(service, request)
    if path.is_dir():
        raise conflict("OperationInvalidForCurrentState", "The specified path is a directory.")
    data = path.read_bytes()
    headers = _file_headers(request, path, name)
    requested = request.header("ocp-range")
    if requested:
        start, stop = byte_range(requested, len(data))
        data = data[start:stop]
    return Response(200, data, headers)


def file_head(service: BatchService, request: Request) -> Response:
    path, name = _task_file(service, request)
    headers = _file_headers(request, path, name)
    headers["Content-Length"] = str(0 if path.is_dir() else path.stat().st_size)
    return Response(200, None, headers)


def file_delete(service: BatchService, request: Request) -> Response:
    path, _name = _task_file(service, request)
    recursive = request.query.get("recursive", "false").lower() == "true"
    if path.is_dir():
        if any(path.iterdir()) and not recursive:
            raise conflict("DirectoryNotEmpty", "The directory is not empty; use recursive=true.")
        shutil.rmtree(path)
    else:
        path.unlink()
    return Response(200)
